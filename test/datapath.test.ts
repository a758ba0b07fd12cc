// The eBPF overlay forwards real packets between pods of different nodes and
// clusters: two clusters of two nodes with two pods each, real namespaces,
// real VXLAN, real BPF programs attached by the per-node datapath command.
// With CLUSTERMESH_TEST_ROUTING=native the same mesh routes natively: the
// assertions about the wire (TTL, encapsulation, MTU) follow the mode.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { PodInfo, Topology } from '../src/lab/topology.ts';
import { runIn } from '../src/lab/exec.ts';
import { collectEvents, labPodIdentity, readNodeMetrics, type LabDatapath } from '../src/lab/datapath.ts';
import { DropReason } from '../src/datapath/maps/index.ts';
import { fetchFrom, startEchoBed, type EchoBed } from './helpers/echo-bed.ts';

describe('eBPF overlay datapath, 2 clusters x 2 nodes x 2 pods', { timeout: 240_000 }, () => {
  let bed: EchoBed | undefined;
  let topo: Topology;
  let dp: LabDatapath;
  let native = false;

  before(async () => {
    bed = await startEchoBed({ clusters: 2, nodesPerCluster: 2, podsPerNode: 2, mode: 'clustermesh', prefix: 'cmt' });
    ({ topo, dp } = bed);
    native = topo.spec.routing.every((r) => r === 'native');
  });
  after(() => bed?.stop());

  const pod = (c: number, n: number, p: number): PodInfo => topo.pods.find((x) => x.cluster === c && x.node.index === n && x.index === p)!;
  const pairs = (): Array<[string, PodInfo, PodInfo]> => [
    ['same node', pod(1, 1, 1), pod(1, 1, 2)],
    ['other node, same cluster', pod(1, 1, 1), pod(1, 2, 1)],
    ['other cluster', pod(1, 1, 1), pod(2, 2, 2)],
    ['other cluster, the other way', pod(2, 1, 2), pod(1, 2, 2)],
  ];

  test('ICMP: every pair answers, both ways', async () => {
    for (const [what, a, b] of pairs()) {
      for (const [src, dst] of [[a, b], [b, a]] as const) {
        const { stdout } = await runIn(src.netns, ['ping', '-c', '2', '-i', '0.2', '-W', '2', dst.ip]);
        assert.match(stdout, /2 received/, `${what}: ${src.ip} -> ${dst.ip}`);
        // Each node forwards like a router: one hop on the same node, two across the tunnel;
        // natively routed between clusters the underlay's router is a third.
        const ttl = src.node === dst.node ? 63 : native && src.cluster !== dst.cluster ? 61 : 62;
        assert.match(stdout, new RegExp(`ttl=${ttl} `), `${what}: TTL decremented once per node`);
      }
    }
  });

  test('TCP: HTTP answers from the right pod, and an 8 MiB transfer arrives intact, both ways', async () => {
    for (const [what, a, b] of pairs()) {
      for (const [src, dst] of [[a, b], [b, a]] as const) {
        const hello = await fetchFrom(src, `http://${dst.ip}:8080/`);
        assert.equal(hello.status, 200);
        const who = JSON.parse(hello.text!) as { cluster: string; pod: string; from: string };
        assert.equal(who.pod, dst.name, `${what}: answered by ${dst.name}`);
        assert.equal(who.from, src.ip, `${what}: the server saw the client's own pod IP (no NAT)`);
        const big = await fetchFrom(src, `http://${dst.ip}:8080/bytes?n=${8 << 20}`);
        assert.equal(big.bytes, 8 << 20, `${what}: all bytes arrived`);
        assert.equal(big.sha256, big.announcedSha256, `${what}: checksum of the transfer`);
      }
    }
  });

  test('the underlay carries VXLAN on UDP 8472 whose VNI is the sending pod\'s identity', async (t) => {
    if (native) return t.skip('native routing: no VXLAN (test/native-routing.test.ts checks the wire)');
    const src = pod(1, 1, 2);
    const dst = pod(2, 1, 1);
    const capture = runIn(src.node.netns, ['timeout', '10', 'tcpdump', '-l', '-nn', '-i', 'eth0', '-c', '2', '-T', 'vxlan', `udp dst port 8472 and src host ${src.node.underlayIP}`], { timeoutMs: 15_000 });
    await new Promise((r) => setTimeout(r, 700));
    await runIn(src.netns, ['ping', '-c', '3', '-i', '0.2', '-W', '2', dst.ip]);
    const { stdout } = await capture;
    const vnis = [...stdout.matchAll(/vni (\d+)/g)].map((m) => Number(m[1]));
    assert.ok(vnis.length >= 1, `captured VXLAN packets:\n${stdout}`);
    for (const v of vnis) assert.equal(v, labPodIdentity(topo, src));
    assert.match(stdout, new RegExp(`${src.node.underlayIP.replace(/\./g, '\\.')}\\.\\d+ > ${dst.node.underlayIP.replace(/\./g, '\\.')}\\.8472`));
  });

  test('a full-size packet with DF crosses whole (pod MTU 1450 on a 1500 underlay in the tunnel, 1500 natively routed)', async () => {
    const src = pod(1, 2, 1);
    const dst = pod(2, 2, 1);
    // payload + 8 ICMP + 20 IP = the pod MTU; through the tunnel the outer packet is 1500.
    const mtu = native ? 1500 : 1450;
    const { stdout } = await runIn(src.netns, ['ping', '-c', '2', '-i', '0.2', '-W', '2', '-M', 'do', '-s', String(mtu - 28), dst.ip]);
    assert.match(stdout, /2 received/);
    assert.match(stdout, new RegExp(`${mtu - 20} bytes from`));
    // One byte more does not fit: the pod's own stack refuses it (EMSGSIZE), nothing is fragmented.
    await assert.rejects(runIn(src.netns, ['ping', '-c', '1', '-W', '1', '-M', 'do', '-s', String(mtu - 27), dst.ip]), new RegExp(`message too long|mtu=${mtu}`, 'i'));
  });

  test('a packet to an address in a node\'s pod range that is no pod is dropped there, counted, and its event reaches TypeScript', async () => {
    const src = pod(1, 1, 1);
    const target = pod(2, 1, 1).node;
    const unknown = target.podCIDR.replace(/0\/24$/, '99');
    const pinDir = dp.pinDirs[topo.nodes.indexOf(target)]!;
    const count = () => readNodeMetrics(pinDir).filter((r) => r.reason === DropReason.DROP_UNKNOWN_ENDPOINT && r.direction === 'ingress').reduce((n, r) => n + r.packets, 0n);
    const before = count();
    const ev = collectEvents(pinDir);
    try {
      await assert.rejects(runIn(src.netns, ['ping', '-c', '2', '-i', '0.2', '-W', '1', unknown]));
      assert.equal(count() - before, 2n, 'two pings, two drops counted');
      const drops = ev.drain().filter((e) => e.type === 'drop' && e.dstIp === unknown);
      assert.equal(drops.length, 2);
      assert.equal(drops[0]!.reasonName, 'DROP_UNKNOWN_ENDPOINT');
      assert.equal(drops[0]!.srcIp, src.ip);
      assert.equal(drops[0]!.srcIdentity, labPodIdentity(topo, src), native ? 'the source identity from the ipcache' : 'the source identity came through the VNI');
      assert.equal(drops[0]!.tunnelEndpoint, native ? null : src.node.underlayIP);
    } finally {
      ev.stop();
    }
  });
});
