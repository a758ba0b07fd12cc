// tunnelEncap bpf (issue 15): the programs write and strip the VXLAN headers
// (bpf/lib/encap.h) instead of the kernel's VXLAN device. Two clusters of two
// nodes, one pod each, real namespaces and programs attached by the per-node
// datapath command. Checked: nothing goes through the VXLAN device, the wire
// is the device's format (so a node of either setting talks to the other),
// the receiving node's counters and the source identity from the VNI, and the
// device taking over where the BPF path cannot route.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { NodeInfo, PodInfo, Topology } from '../src/lab/topology.ts';
import { runIn } from '../src/lab/exec.ts';
import { applyNodeDatapath, labPodIdentity, readNodeMetrics, type LabDatapath } from '../src/lab/datapath.ts';
import { TraceReason } from '../src/datapath/maps/reasons.ts';
import { datapathSkipReason } from '../src/datapath/testing.ts';
import { tcShow } from './helpers/tc-show.ts';
import { ECHO_PORT, fetchFrom, startEchoBed, type EchoBed } from './helpers/echo-bed.ts';

describe('tunnelEncap bpf: 2 clusters x 2 nodes x 1 pod', { skip: datapathSkipReason(), timeout: 300_000 }, () => {
  let bed: EchoBed | undefined;
  let topo: Topology;
  let dp: LabDatapath;

  before(async () => {
    bed = await startEchoBed({ clusters: 2, nodesPerCluster: 2, podsPerNode: 1, mode: 'clustermesh', prefix: 'cmtenc', routing: 'tunnel', tunnelEncap: 'bpf' });
    ({ topo, dp } = bed);
  });
  after(() => bed?.stop());

  const pod = (c: number, n: number): PodInfo => topo.pods.find((x) => x.cluster === c && x.node.index === n)!;
  const pinDir = (n: NodeInfo): string => dp.pinDirs[topo.nodes.indexOf(n)]!;
  const counter = (n: NodeInfo, reason: number, direction: 'ingress' | 'egress'): bigint =>
    readNodeMetrics(pinDir(n)).filter((r) => r.reason === reason && r.direction === direction).reduce((s, r) => s + r.packets, 0n);
  /** Packets the node's VXLAN device sent (the kernel's counter). */
  async function vxlanTx(n: NodeInfo): Promise<number> {
    const { stdout } = await runIn(n.netns, ['ip', '-s', '-j', 'link', 'show', 'dev', 'cm_vxlan']);
    return (JSON.parse(stdout) as Array<{ stats64: { tx: { packets: number } } }>)[0]!.stats64.tx.packets;
  }
  async function ping(src: PodInfo, dst: PodInfo, n = 3): Promise<void> {
    const { stdout } = await runIn(src.netns, ['ping', '-c', String(n), '-i', '0.2', '-W', '2', dst.ip]);
    assert.match(stdout, new RegExp(`${n} received`), `${src.name} -> ${dst.name}`);
  }

  test('pods reach each other across nodes and clusters, and nothing passes the VXLAN device', async () => {
    const before = await Promise.all(topo.nodes.map(vxlanTx));
    for (const [a, b] of [[pod(1, 1), pod(2, 1)], [pod(1, 1), pod(1, 2)], [pod(2, 2), pod(1, 2)]] as const) {
      await ping(a, b);
      await ping(b, a);
      const got = await fetchFrom(a, `http://${b.ip}:${ECHO_PORT}/bytes?n=${2 << 20}`);
      assert.equal(got.status, 200);
      assert.equal(got.bytes, 2 << 20);
      assert.equal(got.sha256, got.announcedSha256, `${a.name} -> ${b.name}: 2 MiB arrive intact`);
    }
    assert.deepEqual(await Promise.all(topo.nodes.map(vxlanTx)), before, 'cm_vxlan sent nothing on any node');
    for (const n of topo.nodes) assert.match(await tcShow(n.netns, 'eth0', 'ingress'), /from_netdev/, `from_netdev on ${n.name}'s underlay`);
  });

  test('the wire is VXLAN on UDP 8472 with the pod\'s identity as VNI, and the receiver counts the delivery', async () => {
    const src = pod(1, 2);
    const dst = pod(2, 2);
    const sent0 = counter(src.node, TraceReason.TRACE_TO_OVERLAY, 'egress');
    const got0 = counter(dst.node, TraceReason.TRACE_TO_ENDPOINT, 'ingress');
    const capture = runIn(src.node.netns, ['timeout', '10', 'tcpdump', '-l', '-nn', '-v', '-i', 'eth0', '-c', '2', '-T', 'vxlan', `udp dst port 8472 and src host ${src.node.underlayIP}`], { timeoutMs: 15_000 });
    await new Promise((r) => setTimeout(r, 700));
    await ping(src, dst);
    const { stdout } = await capture;
    const vnis = [...stdout.matchAll(/vni (\d+)/g)].map((m) => Number(m[1]));
    assert.ok(vnis.length >= 1, `captured VXLAN packets:\n${stdout}`);
    for (const v of vnis) assert.equal(v, labPodIdentity(topo, src));
    // tcpdump -v checks the outer IPv4 header's checksum and says DF.
    assert.doesNotMatch(stdout, /bad cksum/);
    assert.match(stdout, /flags \[DF\]/);
    assert.match(stdout, new RegExp(`${src.node.underlayIP.replace(/\./g, '\\.')}\\.\\d+ > ${dst.node.underlayIP.replace(/\./g, '\\.')}\\.8472`));
    assert.ok(counter(src.node, TraceReason.TRACE_TO_OVERLAY, 'egress') - sent0 >= 3n, 'the sender counted its encapsulations');
    assert.ok(counter(dst.node, TraceReason.TRACE_TO_ENDPOINT, 'ingress') - got0 >= 3n, 'the receiver counted its deliveries');
  });

  test('a node whose route cannot be looked up from the pod\'s veth hands the packet to the VXLAN device', async () => {
    const src = pod(1, 1);
    const dst = pod(2, 2);
    const knob = `net.ipv4.conf.${src.hostIfName}.forwarding`;
    const before = await vxlanTx(src.node);
    await runIn(src.node.netns, ['sysctl', '-qw', `${knob}=0`]);
    try {
      await ping(src, dst);
    } finally {
      await runIn(src.node.netns, ['sysctl', '-qw', `${knob}=1`]);
    }
    assert.ok((await vxlanTx(src.node)) - before >= 3, 'the device sent the pings');
  });

  test('a node back on the device meshes with nodes that encapsulate in BPF, both ways', async () => {
    const device = pod(2, 1);
    const bpf = pod(1, 1);
    await applyNodeDatapath(topo, device.node, { tunnelEncap: 'device' });
    try {
      assert.doesNotMatch(await tcShow(device.node.netns, 'eth0', 'ingress'), /from_netdev/, 'from_netdev left the underlay');
      const [dev0, bpf0] = [await vxlanTx(device.node), await vxlanTx(bpf.node)];
      await ping(device, bpf);
      await ping(bpf, device);
      const got = await fetchFrom(bpf, `http://${device.ip}:${ECHO_PORT}/bytes?n=${1 << 20}`);
      assert.equal(got.sha256, got.announcedSha256);
      assert.ok((await vxlanTx(device.node)) - dev0 >= 6, 'the device-mode node sent through cm_vxlan');
      assert.equal((await vxlanTx(bpf.node)) - bpf0, 0, 'the BPF node did not');
    } finally {
      await applyNodeDatapath(topo, device.node, { tunnelEncap: 'bpf' });
    }
  });
});
