// The edges of the mesh with real traffic (issue 20): more than three clusters
// (4 clusters x 1 node), cluster IDs at the top of the range (255, and 511 with
// maxConnectedClusters 511), UDP Services programmed by the agents (local and
// global), and IPv6 from a pod, which the datapath does not carry: refused
// cleanly and counted with its reason. Real etcd, apiservers, agents, BPF.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runIn, spawnIn, stopChild } from '../src/lab/exec.ts';
import type { KubeObjects } from '../src/lab/kube-objects.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import { createTopology, destroyTopology, type PodInfo, type Topology } from '../src/lab/topology.ts';
import { clusterIdOfIdentity } from '../src/model/cluster.ts';
import { datapathSkipReason } from '../src/datapath/testing.ts';

/** Cluster IDs of cluster1..cluster4: two at the top of the 511 layout's range. */
const IDS = [1, 2, 255, 511];
const TCP_PORT = 7000;
const UDP_PORT = 9999;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs in a pod: answers its pod name on TCP (then closes) and on UDP (to each datagram). */
const SERVER = `
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
const [tcp, udp, pod] = process.argv.slice(1);
createServer((c) => c.end(pod + '\\n')).listen(Number(tcp));
const s = createSocket('udp4');
s.on('message', (m, r) => s.send(pod, r.port, r.address));
s.bind(Number(udp));
`;

/** Runs in a pod: a TCP connection to each target; prints {target: answer | error}. */
const TCP_ASK = `
import { connect } from 'node:net';
const [port, ...targets] = process.argv.slice(1);
const out = {};
await Promise.all(targets.map((t) => new Promise((done) => {
  const c = connect({ host: t, port: Number(port), timeout: 3000 });
  let got = '';
  c.on('data', (d) => (got += d));
  c.on('end', () => { out[t] = got.trim(); done(); });
  c.on('timeout', () => { out[t] = 'error: timeout'; c.destroy(); done(); });
  c.on('error', (e) => { out[t] = 'error: ' + (e.code ?? e.message); done(); });
})));
console.log(JSON.stringify(out));
`;

/** Runs in a pod: N datagrams, each from a new socket (a new flow); prints {answers, errors}. */
const UDP_TALLY = `
import { createSocket } from 'node:dgram';
const [host, port, n] = process.argv.slice(1);
const out = { answers: {}, errors: 0 };
for (let i = 0; i < Number(n); i++) {
  await new Promise((done) => {
    const s = createSocket('udp4');
    const t = setTimeout(() => { out.errors++; s.close(); done(); }, 1000);
    s.on('message', (m) => { clearTimeout(t); const p = m.toString(); out.answers[p] = (out.answers[p] ?? 0) + 1; s.close(); done(); });
    s.send('hi', Number(port), host);
  });
}
console.log(JSON.stringify(out));
`;

/** Runs in a pod: `n` UDP datagrams to an IPv6 address; prints how many sends the stack accepted. */
const UDP6_SEND = `
import { createSocket } from 'node:dgram';
const [host, n] = process.argv.slice(1);
const s = createSocket('udp6');
let sent = 0, failed = 0;
for (let i = 0; i < Number(n); i++) await new Promise((done) => s.send('v6?', 9, host, (e) => { e ? failed++ : sent++; done(); }));
s.close();
console.log(JSON.stringify({ sent, failed }));
`;

interface UdpTally {
  answers: Record<string, number>;
  errors: number;
}

describe('mesh edges: 4 clusters, IDs 255 and 511, UDP services, IPv6 from a pod', { skip: datapathSkipReason(), timeout: 900_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  const children: ChildProcess[] = [];
  const m = (): Mesh => mesh!;
  const pod = (c: number, p: number): PodInfo => topo!.pods.find((x) => x.cluster === c && x.index === p)!;
  const writer = (c: number): KubeObjects => m().kube(c);
  const vip = (c: number, x: number): string => `10.96.${c}.${x}`;
  const GLOBAL = { 'service.cilium.io/global': 'true' };

  /** p2 of every cluster backs 'udp-local'; p2 of cluster3 (ID 255) and cluster4 (ID 511) back 'udp-glob'. */
  const labelsOf = (p: PodInfo): Record<string, string> =>
    p.index !== 2 ? {} : { 'udp-local': 'y', ...(p.cluster >= 3 ? { 'udp-glob': 'y' } : {}) };

  const udpService = (name: string, clusterIP: string, annotations: Record<string, string> = {}): unknown => ({
    kind: 'Service',
    metadata: { name, namespace: 'default', annotations },
    spec: { clusterIP, selector: { [name]: 'y' }, ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: UDP_PORT }] },
  });

  async function udpTally(src: PodInfo, host: string, n: number): Promise<UdpTally> {
    const { stdout } = await runIn(src.netns, [process.execPath, '--input-type=module', '-e', UDP_TALLY, host, '53', String(n)], { timeoutMs: 60_000 });
    return JSON.parse(stdout) as UdpTally;
  }

  /** Repeats a tally until exactly `expected` answer with no loss, or fails after timeoutMs. */
  async function waitUdpAnswers(src: PodInfo, host: string, expected: PodInfo[], timeoutMs = 90_000): Promise<UdpTally> {
    const want = expected.map((p) => p.name).sort();
    const t0 = Date.now();
    for (;;) {
      const t = await udpTally(src, host, 6 * expected.length + 6);
      if (t.errors === 0 && JSON.stringify(Object.keys(t.answers).sort()) === JSON.stringify(want)) return t;
      if (Date.now() - t0 > timeoutMs) assert.fail(`${src.name} -> udp ${host}:53: wanted answers from ${want.join(', ')}, last tally ${JSON.stringify(t)}`);
      await sleep(500);
    }
  }

  async function tcpAsk(src: PodInfo, targets: PodInfo[]): Promise<Record<string, string>> {
    const { stdout } = await runIn(src.netns, [process.execPath, '--input-type=module', '-e', TCP_ASK, String(TCP_PORT), ...targets.map((t) => t.ip)], { timeoutMs: 30_000 });
    return JSON.parse(stdout) as Record<string, string>;
  }

  before(async () => {
    topo = await createTopology({ clusters: 4, nodesPerCluster: 1, podsPerNode: 2, mode: 'clustermesh', prefix: 'cmte' });
    const dir = await mkdtemp(join(tmpdir(), 'cmte-mesh-'));
    mesh = await startMesh(topo, {
      dir,
     
      clusterIds: IDS,
      readyTimeoutMs: 180_000,
      agent: { maxConnectedClusters: 511, fullSyncIntervalSeconds: 5, syncTimeoutSeconds: 15 },
      progress: (l) => console.log(`# ${l}`),
    });
    for (const p of topo.pods) {
      children.push(spawnIn(p.netns, [process.execPath, '--input-type=module', '-e', SERVER, String(TCP_PORT), String(UDP_PORT), p.name]));
      await m().addPod(p, { labels: { app: p.name } });
    }
    for (const p of topo.pods) {
      await writer(p.cluster).apply({
        kind: 'Pod',
        metadata: { name: p.name, namespace: 'default', labels: labelsOf(p) },
        spec: { nodeName: p.node.name, containers: [{ name: 'echo', ports: [{ name: 'dns', containerPort: UDP_PORT, protocol: 'UDP' }] }] },
        status: { phase: 'Running', podIP: p.ip, conditions: [{ type: 'Ready', status: 'True' }] },
      });
    }
    await writer(4).apply(udpService('udp-local', vip(4, 10)));
    for (const c of [1, 3, 4]) await writer(c).apply(udpService('udp-glob', vip(c, 20), GLOBAL));
    for (const p of topo.pods) {
      for (let i = 0; ; i++) {
        const { stdout } = await runIn(p.netns, ['ss', '-Hltn', `sport = :${TCP_PORT}`]);
        if (stdout.trim()) break;
        if (i > 300) throw new Error(`${p.name}: nothing listens on :${TCP_PORT}`);
        await sleep(100);
      }
    }
  });

  after(async () => {
    await Promise.all(children.map((c) => stopChild(c, 1000)));
    try {
      await mesh?.stop();
    } finally {
      if (topo) await destroyTopology(topo);
    }
  });

  test('four clusters with IDs 1, 2, 255, 511 (maxConnectedClusters 511): every pod reaches a pod in every other cluster; identities carry the cluster ID', async () => {
    for (let c = 1; c <= 4; c++) {
      const src = pod(c, 1);
      const targets = [1, 2, 3, 4].filter((d) => d !== c).map((d) => pod(d, 2));
      const want = Object.fromEntries(targets.map((t) => [t.ip, t.name]));
      let got: Record<string, string> = {};
      const t0 = Date.now();
      while (JSON.stringify(got) !== JSON.stringify(want)) {
        if (Date.now() - t0 > 90_000) assert.fail(`${src.name} (cluster ID ${IDS[c - 1]}) to the other clusters: ${JSON.stringify(got)}`);
        got = Object.fromEntries(Object.entries(await tcpAsk(src, targets)).sort(([a], [b]) => targets.findIndex((t) => t.ip === a) - targets.findIndex((t) => t.ip === b)));
        if (JSON.stringify(got) !== JSON.stringify(want)) await sleep(500);
      }
      // The ipcache of the source's node: each remote pod under an identity of its cluster's ID.
      const ipc = m().readIpcache(src.node);
      for (const t of targets) {
        const e = ipc.get(`${t.ip}/32`);
        assert.ok(e, `${src.node.netns} has ${t.ip}`);
        assert.equal(clusterIdOfIdentity(e.identity, 511), IDS[t.cluster - 1], `${t.name}: identity ${e.identity} belongs to cluster ID ${IDS[t.cluster - 1]}`);
      }
    }
    const st = await m().agentStatus(pod(4, 1).node);
    assert.equal(st.node.clusterID, 511);
    assert.deepEqual(st.remoteClusters.map((r) => [r.name, r.ready]).sort(), [['cluster1', true], ['cluster2', true], ['cluster3', true]]);
  });

  test('a UDP Service programmed by the agent: cluster4 (ID 511) reaches its local backend through the ClusterIP', async () => {
    const t = await waitUdpAnswers(pod(4, 1), vip(4, 10), [pod(4, 2)]);
    console.log(`# udp-local: ${JSON.stringify(t)}`);
    const svc = (await m().agent(pod(4, 1).node).api.services()).find((s) => s.name === 'udp-local');
    assert.ok(svc, 'the agent lists udp-local');
    assert.deepEqual(svc.frontends.map((f) => [f.port, f.protocol]), [[53, 'UDP']]);
  });

  test('a global UDP Service: cluster1 reaches backends in cluster3 (ID 255) and cluster4 (ID 511), each datagram flow answered', async () => {
    const expected = [pod(3, 2), pod(4, 2)];
    await waitUdpAnswers(pod(1, 1), vip(1, 20), expected);
    const t = await udpTally(pod(1, 1), vip(1, 20), 40);
    console.log(`# udp-glob from cluster1: ${JSON.stringify(t)}`);
    assert.equal(t.errors, 0, `every datagram answered: ${JSON.stringify(t)}`);
    for (const p of expected) assert.ok((t.answers[p.name] ?? 0) >= 5, `flows land on ${p.name}: ${JSON.stringify(t.answers)}`);
  });

  test('IPv6 from a pod is dropped at the pod, counted as DROP_UNSUPPORTED_L3; IPv4 from the same pod still flows', async () => {
    const src = pod(2, 1);
    const before = m().readDrops(src.node).get('DROP_UNSUPPORTED_L3') ?? 0;
    await runIn(src.netns, ['sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=0', 'net.ipv6.conf.eth0.disable_ipv6=0']);
    await runIn(src.netns, ['ip', '-6', 'addr', 'add', 'fd00:20::1/64', 'dev', 'eth0', 'nodad']);
    // A static neighbour: the datagrams themselves leave eth0, not only neighbour solicitations.
    await runIn(src.netns, ['ip', '-6', 'neigh', 'replace', 'fd00:20::2', 'lladdr', '02:00:00:00:00:02', 'dev', 'eth0', 'nud', 'permanent']);
    const { stdout } = await runIn(src.netns, [process.execPath, '--input-type=module', '-e', UDP6_SEND, 'fd00:20::2', '20'], { timeoutMs: 30_000 });
    const sent = JSON.parse(stdout) as { sent: number; failed: number };
    assert.equal(sent.sent, 20, `the pod's stack sent the datagrams: ${stdout}`);
    let after = before;
    for (let i = 0; i < 100 && after < before + 20; i++) {
      after = m().readDrops(src.node).get('DROP_UNSUPPORTED_L3') ?? 0;
      if (after < before + 20) await sleep(100);
    }
    assert.ok(after >= before + 20, `DROP_UNSUPPORTED_L3 on ${src.node.netns}: ${before} -> ${after}, 20 datagrams sent`);
    // Refused cleanly: the pod's IPv4 still works, the agent reports no datapath error.
    const got = await tcpAsk(src, [pod(2, 2), pod(1, 2)]);
    assert.deepEqual(got, { [pod(2, 2).ip]: pod(2, 2).name, [pod(1, 2).ip]: pod(1, 2).name });
    const st = await m().agentStatus(src.node);
    assert.equal(st.ready, true);
  });
});
