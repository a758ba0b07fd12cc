// Native routing (routingMode native, issue 15 §2) in a mixed mesh: clusters 1
// and 2 native, cluster 3 in tunnel mode, two nodes each, real namespaces and
// BPF programs attached by the per-node datapath command. Between native
// clusters nothing is encapsulated: the VXLAN devices send nothing and the
// pods' own packets are on the underlay; to and from the tunnel cluster the
// tunnel is used. Services and policy work across the native path.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { nativeRoutingCIDRs, type PodInfo, type Topology } from '../src/lab/topology.ts';
import { run, runIn } from '../src/lab/exec.ts';
import { readNodeMetrics, type LabDatapath } from '../src/lab/datapath.ts';
import { type BackendCandidate, planFrontend } from '../src/loadbalancer/index.ts';
import * as backendSlots from '../src/datapath/maps/backend-slots.ts';
import * as backends from '../src/datapath/maps/backends.ts';
import * as policy from '../src/datapath/maps/policy.ts';
import * as revnat from '../src/datapath/maps/revnat.ts';
import * as services from '../src/datapath/maps/services.ts';
import { DropReason, TraceReason } from '../src/datapath/maps/reasons.ts';
import { datapathSkipReason, withPinnedMap } from '../src/datapath/testing.ts';
import { fetchFrom, startEchoBed, type EchoBed } from './helpers/echo-bed.ts';

test('lab: the native clusters\' pod ranges, aggregated; too many prefixes is refused with the reason', () => {
  assert.deepEqual(nativeRoutingCIDRs({ routing: ['native', 'native', 'tunnel'] }), ['10.101.0.0/16', '10.102.0.0/16']);
  assert.deepEqual(nativeRoutingCIDRs({ routing: ['tunnel', 'native', 'native', 'tunnel'] }), ['10.102.0.0/15']);
  assert.deepEqual(nativeRoutingCIDRs({ routing: ['tunnel', 'tunnel'] }), []);
  assert.equal(nativeRoutingCIDRs({ routing: Array.from({ length: 100 }, () => 'native' as const) }).length, 7);
  const alternate = Array.from({ length: 20 }, (_, i) => (i % 2 ? 'tunnel' : 'native') as 'tunnel' | 'native');
  assert.throws(() => nativeRoutingCIDRs({ routing: alternate }), /need 10 prefixes .* at most 8: make a contiguous run of clusters native/);
});

describe('native routing, mixed mesh: clusters 1, 2 native, 3 tunnel; 2 nodes x 1 pod each', { skip: datapathSkipReason(), timeout: 300_000 }, () => {
  let bed: EchoBed | undefined;
  let topo: Topology;
  let dp: LabDatapath;

  before(async () => {
    bed = await startEchoBed({ clusters: 3, nodesPerCluster: 2, podsPerNode: 1, mode: 'clustermesh', prefix: 'cmtnat', routing: ['native', 'native', 'tunnel'] });
    ({ topo, dp } = bed);
  });
  after(() => bed?.stop());

  const pod = (c: number, n: number): PodInfo => topo.pods.find((x) => x.cluster === c && x.node.index === n)!;
  const pinDir = (p: PodInfo): string => dp.pinDirs[topo.nodes.indexOf(p.node)]!;
  const counter = (p: PodInfo, reason: number, direction: 'ingress' | 'egress'): bigint =>
    readNodeMetrics(pinDir(p)).filter((r) => r.reason === reason && r.direction === direction).reduce((n, r) => n + r.packets, 0n);
  /** Packets the node's VXLAN device sent (the kernel's counter). */
  async function vxlanTx(p: PodInfo): Promise<number> {
    const { stdout } = await runIn(p.node.netns, ['ip', '-s', '-j', 'link', 'show', 'dev', 'cm_vxlan']);
    return (JSON.parse(stdout) as Array<{ stats64: { tx: { packets: number } } }>)[0]!.stats64.tx.packets;
  }
  async function ping(src: PodInfo, dst: string, n = 3): Promise<string> {
    const { stdout } = await runIn(src.netns, ['ping', '-c', String(n), '-i', '0.2', '-W', '2', dst]);
    return stdout;
  }

  test('the lab routes the native clusters\' pod CIDRs on the router and between their nodes, not the tunnel cluster\'s', async () => {
    const { stdout } = await run(['ip', '-n', topo.routerNetns, '-j', 'route', 'show']);
    const routes = new Set((JSON.parse(stdout) as Array<{ dst: string; gateway?: string }>).map((r) => `${r.dst} via ${r.gateway ?? '-'}`));
    for (const n of topo.nodes) assert.equal(routes.has(`${n.podCIDR} via ${n.underlayIP}`), n.cluster !== 3, `${n.podCIDR} on the router`);
    assert.equal(pod(1, 1).node.podCIDR, '10.101.1.0/24');
  });

  test('native -> native, other cluster and same cluster: answers, nothing through the VXLAN device, the pod packets are on the underlay', async () => {
    for (const [src, dst] of [[pod(1, 1), pod(2, 2)], [pod(2, 1), pod(1, 2)], [pod(1, 1), pod(1, 2)]] as const) {
      const tx0 = await vxlanTx(src);
      const enc0 = counter(src, TraceReason.TRACE_TO_OVERLAY, 'egress');
      const fwd0 = counter(src, TraceReason.TRACE_TO_NETWORK, 'egress');
      // The pod's own ICMP packets (not encapsulated) on the sending node's underlay device.
      const capture = runIn(src.node.netns, ['timeout', '15', 'tcpdump', '-l', '-nn', '-i', 'eth0', '-c', '3', `icmp and src host ${src.ip} and dst host ${dst.ip}`], { timeoutMs: 20_000 });
      await new Promise((r) => setTimeout(r, 700));
      const out = await ping(src, dst.ip, 5);
      assert.match(out, /5 received/, `${src.name} -> ${dst.name}`);
      const { stdout } = await capture;
      assert.equal([...stdout.matchAll(/ICMP echo request/g)].length, 3, `unencapsulated pod packets on eth0:\n${stdout}`);
      assert.equal(await vxlanTx(src), tx0, `${src.name} -> ${dst.name}: the VXLAN device sent nothing`);
      assert.equal(counter(src, TraceReason.TRACE_TO_OVERLAY, 'egress'), enc0, `${src.name} -> ${dst.name}: the programs encapsulated nothing`);
      assert.ok(counter(src, TraceReason.TRACE_TO_NETWORK, 'egress') - fwd0 >= 5n, 'counted as TRACE_TO_NETWORK on the sending node');
      const hello = await fetchFrom(src, `http://${dst.ip}:8080/`);
      const who = JSON.parse(hello.text!) as { pod: string; from: string };
      assert.deepEqual([who.pod, who.from], [dst.name, src.ip], 'TCP answered by the destination, which saw the client\'s pod IP');
    }
  });

  test('native <-> tunnel cluster: through the tunnel both ways (a native node keeps its tunnel)', async () => {
    for (const [src, dst] of [[pod(1, 1), pod(3, 1)], [pod(3, 2), pod(2, 1)]] as const) {
      const enc0 = counter(src, TraceReason.TRACE_TO_OVERLAY, 'egress');
      const got0 = counter(dst, TraceReason.TRACE_TO_ENDPOINT, 'ingress');
      assert.match(await ping(src, dst.ip), /3 received/, `${src.name} -> ${dst.name}`);
      // Counted by the programs either way the tunnel is written (tunnelEncap bpf or device).
      assert.ok(counter(src, TraceReason.TRACE_TO_OVERLAY, 'egress') - enc0 >= 3n, `${src.name} -> ${dst.name}: sent into the tunnel`);
      assert.ok(counter(dst, TraceReason.TRACE_TO_ENDPOINT, 'ingress') - got0 >= 3n, `${src.name} -> ${dst.name}: delivered from the tunnel`);
    }
  });

  test('a ClusterIP with backends in the other native cluster: translated on the client node, answered, no encapsulation', async () => {
    const client = pod(1, 1);
    const targets = [pod(2, 1), pod(2, 2)];
    const vip = '10.96.0.77';
    const candidates: BackendCandidate[] = targets.map((p, i) => ({ id: 7700 + i, ip: p.ip, port: 8080, clusterId: p.cluster, local: false, ready: true, terminating: false, clusterGone: false }));
    const plan = planFrontend({ vip, port: 80, protocol: 'TCP', serviceId: 77, backends: candidates });
    for (const dir of dp.pinDirs) {
      withPinnedMap(dir, backends.MAP_NAME, (m) => backends.updateMany(m, plan.backends));
      withPinnedMap(dir, backendSlots.MAP_NAME, (m) => backendSlots.updateMany(m, backendSlots.tableEntries(77, plan.slots)));
      withPinnedMap(dir, revnat.MAP_NAME, (m) => revnat.update(m, plan.revnat.key, plan.revnat.value));
      withPinnedMap(dir, services.MAP_NAME, (m) => services.update(m, plan.service.key, plan.service.value));
    }
    const tx0 = await vxlanTx(client);
    const enc0 = counter(client, TraceReason.TRACE_TO_OVERLAY, 'egress');
    const answered = new Set<string>();
    for (let i = 0; i < 12 && answered.size < 2; i++) {
      const r = await fetchFrom(client, `http://${vip}/`);
      assert.equal(r.status, 200);
      const who = JSON.parse(r.text!) as { pod: string; from: string };
      assert.equal(who.from, client.ip, 'the backend saw the client pod IP');
      answered.add(who.pod);
    }
    assert.deepEqual([...answered].sort(), targets.map((p) => p.name).sort(), 'both backends answered (the reply got its VIP back on the client node: the connection worked)');
    assert.equal(await vxlanTx(client), tx0, 'nothing through the VXLAN device');
    assert.equal(counter(client, TraceReason.TRACE_TO_OVERLAY, 'egress'), enc0, 'nothing encapsulated by the programs');
    assert.ok(counter(client, TraceReason.TRACE_SERVICE_XLATE, 'egress') >= 2n);
  });

  test('policy: default deny on the destination pod drops what arrives natively, counted as DROP_POLICY ingress on its node', async () => {
    const src = pod(1, 2);
    const dst = pod(2, 2);
    const endpointId = dst.index; // the lab's plans number endpoints by pod index
    const before = counter(dst, DropReason.DROP_POLICY, 'ingress');
    // Written here as the agent would: the write, then the policy revision (bpf/lib/policy.h).
    const bump = (): number => withPinnedMap(pinDir(dst), policy.REV_MAP_NAME, (m) => policy.bumpRevision(m));
    withPinnedMap(pinDir(dst), policy.ENFORCE_MAP_NAME, (m) => policy.enforce.update(m, { endpointId }, { active: true, ingress: true, egress: false }));
    bump();
    try {
      await assert.rejects(ping(src, dst.ip, 3), /exit 1|0 received/, 'no answer under default deny');
      assert.equal(counter(dst, DropReason.DROP_POLICY, 'ingress') - before, 3n, 'three pings, three drops on the destination node');
    } finally {
      withPinnedMap(pinDir(dst), policy.ENFORCE_MAP_NAME, (m) => policy.clearEnforce(m, [endpointId]));
      bump();
    }
    assert.match(await ping(src, dst.ip, 2), /2 received/, 'allowed again once the policy is gone');
  });
});

