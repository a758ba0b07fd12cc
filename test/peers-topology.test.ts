// The rows of bench/peers are what they claim: the client pod reaches the
// server pod in each, the policy rows drop a port they do not allow, the
// gateway rows carry the traffic through their gateways, and nothing is left.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPeerBed, kubeProxyRules, PEER_CONFIGS, type PeerBed } from '../src/lab/peers-topology.ts';
import { listNamespaces } from '../src/lab/topology.ts';
import { run, runIn, spawnIn, stopChild } from '../src/lab/exec.ts';
import { pinDirOf, readNodeMetrics } from '../src/lab/datapath.ts';

const ALLOWED = 11111;
const NOT_ALLOWED = 11112;

async function connects(bed: PeerBed, port: number): Promise<boolean> {
  try {
    await runIn(bed.client.netns, ['timeout', '3', 'bash', '-c', `exec 3<>/dev/tcp/${bed.server.ip}/${port}`]);
    return true;
  } catch {
    return false;
  }
}

async function retryConnect(bed: PeerBed, port: number): Promise<boolean> {
  for (let i = 0; i < 20; i++) {
    if (await connects(bed, port)) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}

/** Waits until something in the server pod listens on `port` (sockperf starts asynchronously). */
async function waitListening(bed: PeerBed, port: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const { stdout } = await runIn(bed.server.netns, ['ss', '-Hltn', `sport = :${port}`]);
    if (stdout.trim() !== '') return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${bed.server.ip}:${port} in ${bed.server.netns} after 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Packets the row's policy dropped on the client's and the server's node: the
 * datapath's DROP_POLICY* counters (clustermesh), the DROP rules of the
 * iptables policy chain (kernel-vxlan-iptables). */
async function policyDrops(bed: PeerBed): Promise<number> {
  let sum = 0;
  for (const node of [bed.client.node, bed.server.node]) {
    if (bed.config === 'clustermesh' || bed.config === 'clustermesh-native') {
      for (const r of readNodeMetrics(pinDirOf(node))) if (r.drop && r.reasonName.startsWith('DROP_POLICY')) sum += Number(r.packets);
    } else {
      const { stdout } = await runIn(node.netns, ['iptables', '-L', 'CMB-POLICY', '-v', '-x', '-n']);
      for (const m of stdout.matchAll(/^\s*(\d+)\s+\d+\s+DROP\b/gm)) sum += Number(m[1]);
    }
  }
  return sum;
}

async function txPackets(netns: string, dev: string): Promise<number> {
  const { stdout } = await run(['ip', '-n', netns, '-s', '-j', 'link', 'show', 'dev', dev]);
  return (JSON.parse(stdout) as Array<{ stats64: { tx: { packets: number } } }>)[0]!.stats64.tx.packets;
}

for (const config of PEER_CONFIGS) {
  test(`${config}: the client pod reaches the server pod across clusters, by the row's path`, async () => {
    const bed = await createPeerBed(config, { prefix: 'cmtb2', allowPorts: [ALLOWED], services: 20 });
    const servers = [ALLOWED, NOT_ALLOWED].map((p) => spawnIn(bed.server.netns, ['sockperf', 'sr', '--tcp', '-i', bed.server.ip, '-p', String(p)]));
    try {
      assert.equal(bed.client.cluster, 1);
      assert.equal(bed.server.cluster, 2);
      const before = bed.gatewayDevice ? await txPackets(bed.gateways[0]!.netns, bed.gatewayDevice) : 0;
      const ours = config === 'clustermesh' || config === 'clustermesh-native';
      const vxlanBefore = ours ? await txPackets(bed.client.node.netns, 'cm_vxlan') : 0;
      assert.ok(await retryConnect(bed, ALLOWED), `${config}: no TCP connection from ${bed.client.ip} to ${bed.server.ip}:${ALLOWED}`);
      if (ours) {
        // Neither row uses the VXLAN device (the device's own counter): the tunnel row
        // encapsulates in its programs (tunnelEncap bpf, the default), the native row not at all.
        assert.equal(bed.tunnelEncap, 'bpf');
        const sent = (await txPackets(bed.client.node.netns, 'cm_vxlan')) - vxlanBefore;
        assert.equal(sent, 0, `${config}: cm_vxlan on the client's node sent ${sent} packets`);
      }
      if (ours || config === 'kernel-vxlan-iptables') {
        // A refused connect proves the policy only when the server listens and the
        // policy's own drop counter moved (not a server still starting, not a lost route).
        await waitListening(bed, NOT_ALLOWED);
        const dropsBefore = await policyDrops(bed);
        assert.equal(await connects(bed, NOT_ALLOWED), false, `${config}: port ${NOT_ALLOWED} is not allowed by the policy but connected`);
        const dropsAfter = await policyDrops(bed);
        assert.ok(dropsAfter > dropsBefore, `${config}: the refused connect to port ${NOT_ALLOWED} was not counted as a policy drop (${dropsBefore} -> ${dropsAfter})`);
      } else {
        assert.ok(await retryConnect(bed, NOT_ALLOWED), `${config}: has no policy, port ${NOT_ALLOWED} should connect`);
      }
      if (bed.gatewayDevice) {
        const after = await txPackets(bed.gateways[0]!.netns, bed.gatewayDevice);
        assert.ok(after > before, `${config}: ${bed.gatewayDevice} on the gateway of cluster1 sent nothing (${before} -> ${after})`);
      }
      if (config === 'gateway') {
        const { stdout } = await runIn(bed.client.node.netns, ['iptables', '-t', 'mangle', '-L', 'SUBMARINER-PREROUTING', '-v', '-x', '-n']);
        const marked = Number(/^\s*(\d+)\s+\d+\s+MARK/m.exec(stdout)?.[1] ?? 0);
        assert.ok(marked > 0, `gateway: the mark rule on ${bed.client.node.netns} matched nothing:\n${stdout}`);
      }
    } finally {
      for (const s of servers) await stopChild(s);
      await bed.stop();
    }
    const left = (await listNamespaces()).filter((n) => n.startsWith(`cmtb2-${bed.topo.id}`));
    assert.deepEqual(left, []);
  });
}

test('kube-proxy rules: one service chain pair per service and a policy rule per allowed pod pair', async () => {
  const { createTopology, destroyTopology } = await import('../src/lab/topology.ts');
  const topo = await createTopology({ clusters: 2, nodesPerCluster: 1, podsPerNode: 1, mode: 'routing', prefix: 'cmtb2' });
  try {
    const text = kubeProxyRules(topo, topo.nodes[0]!, 300, [80, 443]);
    assert.equal(text.match(/^:KUBE-SVC-/gm)?.length, 300);
    assert.equal(new Set(text.match(/-d 10\.96\.\d+\.\d+\/32 -p tcp -m comment/g)).size, 300);
    assert.match(text, /-A CMB-POLICY -s 10\.102\.1\.11\/32 -d 10\.101\.1\.11\/32 -p tcp -m multiport --dports 80,443/);
    await runIn(topo.nodes[0]!.netns, ['iptables-restore', '--test'], { input: text });
  } finally {
    await destroyTopology(topo);
  }
});
