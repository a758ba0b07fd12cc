// Socket-level load balancing (issue 15 part 3) with real sockets: two
// clusters of two nodes, a real agent per node with socketLBCgroup set to its
// node's cgroup (src/lab/cgroup.ts), pods whose processes run in that cgroup,
// Services written to each cluster's Kubernetes API. BPF_PROG_TEST_RUN cannot run
// cgroup sock_addr programs, so everything here is a real connect()/sendmsg().
//
// "Translated at connect" is told apart from the per-packet path by its
// traces: the per-packet path writes a CT_SERVICE entry (client -> VIP) into
// cm_ct of the client's node for every connection, socket LB writes none and
// counts the connection in cm_sock_stats; the application still sees the VIP
// (getpeername, recvmsg) while the backend sees the client's pod IP.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BpfMap } from '../src/datapath/libbpf/map.ts';
import { cgroupQuery } from '../src/datapath/libbpf/cgroup.ts';
import * as affinityMap from '../src/datapath/maps/affinity.ts';
import * as ctMap from '../src/datapath/maps/ct.ts';
import { datapathSkipReason } from '../src/datapath/testing.ts';
import { cgroupPids } from '../src/lab/cgroup.ts';
import { runIn, spawnIn, stopChild } from '../src/lab/exec.ts';
import type { KubeObjects } from '../src/lab/kube-objects.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import { createTopology, destroyTopology, type PodInfo, type Topology } from '../src/lab/topology.ts';
import { policyDrops, sleep } from './helpers/policy.ts';

/** Runs in a pod: HTTP on two ports answering {pod, from}; UDP echo answering "<pod>:<payload>". */
const SERVERS = `
import { createServer } from 'node:http';
import { createSocket } from 'node:dgram';
const [port, port2, udpPort, pod] = process.argv.slice(1);
for (const p of [port, port2]) createServer((req, res) => res.end(JSON.stringify({ pod, from: req.socket.remoteAddress }))).listen(Number(p), '0.0.0.0');
const u = createSocket('udp4');
u.on('message', (m, r) => u.send(pod + ':' + m.toString(), r.port, r.address));
u.bind(Number(udpPort), '0.0.0.0');
`;

/** Runs in a pod: N TCP connections, each one HTTP/1.0 GET; tallies who answered, the peer each socket reports (getpeername), errors. */
const TCP_CLIENT = `
import { connect } from 'node:net';
const [host, port, n, localPort] = process.argv.slice(1);
const out = { answers: {}, peers: {}, from: {}, errors: {} };
const inc = (o, k) => { o[k] = (o[k] ?? 0) + 1; };
for (let i = 0; i < Number(n); i++) {
  await new Promise((done) => {
    const s = connect({ host, port: Number(port), ...(localPort ? { localPort: Number(localPort) } : {}) });
    let buf = '';
    s.setTimeout(4000, () => s.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
    s.on('connect', () => { inc(out.peers, s.remoteAddress + ':' + s.remotePort); s.write('GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n'); });
    s.on('data', (d) => (buf += d));
    s.on('end', () => {
      try { const b = JSON.parse(buf.slice(buf.indexOf('\\r\\n\\r\\n') + 4)); inc(out.answers, b.pod); inc(out.from, b.from); } catch { inc(out.errors, 'BAD_REPLY'); }
      s.destroy(); done();
    });
    s.on('error', (e) => { inc(out.errors, e.code ?? e.message); done(); });
  });
}
console.log(JSON.stringify(out));
`;

/**
 * Runs in a pod: N datagrams to host:port from one UDP socket, unconnected
 * (sendmsg with an address) or connected; prints each reply with the source
 * recvmsg reported, and for a connected socket its peer (getpeername).
 */
const UDP_CLIENT = `
import { createSocket } from 'node:dgram';
const [host, port, n, mode] = process.argv.slice(1);
const s = createSocket('udp4');
const got = [];
let peer = '';
const finish = () => { console.log(JSON.stringify({ got, peer })); process.exit(0); };
s.on('message', (m, r) => { got.push({ text: m.toString(), from: r.address + ':' + r.port }); if (got.length === Number(n)) finish(); });
if (mode === 'connected') {
  s.connect(Number(port), host, () => { const a = s.remoteAddress(); peer = a.address + ':' + a.port; for (let i = 0; i < Number(n); i++) s.send('ping' + i); });
} else {
  s.bind(0, () => { for (let i = 0; i < Number(n); i++) s.send('ping' + i, Number(port), host); });
}
setTimeout(finish, 5000).unref();
`;

interface Tally {
  answers: Record<string, number>;
  peers: Record<string, number>;
  from: Record<string, number>;
  errors: Record<string, number>;
}

describe('socket-level load balancing with real sockets, 2 clusters x 2 nodes x 2 pods', { skip: datapathSkipReason(), timeout: 600_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  const children: ChildProcess[] = [];
  const m = (): Mesh => mesh!;
  const pod = (c: number, n: number, p: number): PodInfo => topo!.pods.find((x) => x.cluster === c && x.node.index === n && x.index === p)!;
  const writer = (c: number): KubeObjects => m().kube(c);

  /** Labels: p2 pods back `web`; cluster2's p2 pods back `glob`; pod(1,2,2) alone backs `guarded`; pod(1,1,1) is a friend of it. */
  function labelsOf(p: PodInfo): Record<string, string> {
    const l: Record<string, string> = { app: p.name };
    if (p.index === 2) l.be = 'y';
    if (p.index === 2 && p.cluster === 2) l.remote = 'y';
    if (p.cluster === 1 && p.node.index === 2 && p.index === 2) l.guarded = 'y';
    if (p.cluster === 1 && p.node.index === 1 && p.index === 1) l.role = 'friend';
    return l;
  }
  const podObject = (p: PodInfo): unknown => ({
    kind: 'Pod',
    metadata: { name: p.name, namespace: 'default', labels: labelsOf(p) },
    spec: { nodeName: p.node.name, containers: [{ name: 'echo', ports: [{ name: 'http', containerPort: 8080 }, { name: 'dns', containerPort: 5353, protocol: 'UDP' }] }] },
    status: { phase: 'Running', podIP: p.ip, conditions: [{ type: 'Ready', status: 'True' }] },
  });
  const service = (name: string, vip: string, selector: Record<string, string>, o: { annotations?: Record<string, string>; affinity?: boolean; targetPort?: number } = {}): unknown => ({
    kind: 'Service',
    metadata: { name, namespace: 'default', annotations: o.annotations ?? {} },
    spec: {
      clusterIP: vip,
      selector,
      ...(o.affinity ? { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 600 } } } : {}),
      ports: [
        { name: 'http', port: 80, targetPort: o.targetPort ?? 8080 },
        { name: 'dns', port: 53, targetPort: 5353, protocol: 'UDP' },
      ],
    },
  });
  const GLOBAL = { 'service.cilium.io/global': 'true' };
  const WEB = '10.96.1.10';
  const GLOB1 = '10.96.1.20';
  const AFF = '10.96.1.30';
  const GUARDED = '10.96.1.40';

  /** In the pod's node cgroup (its sockets get socket LB) unless outside is set. */
  async function tcp(src: PodInfo, host: string, n: number, o: { outside?: boolean; localPort?: number } = {}): Promise<Tally> {
    const { stdout } = await runIn(src.netns, [process.execPath, '--input-type=module', '-e', TCP_CLIENT, host, '80', String(n), ...(o.localPort ? [String(o.localPort)] : [])], {
      timeoutMs: 90_000,
      ...(o.outside ? {} : { cgroup: src.node.cgroup }),
    });
    return JSON.parse(stdout) as Tally;
  }
  async function udp(src: PodInfo, host: string, n: number, mode: 'connected' | 'unconnected'): Promise<{ got: Array<{ text: string; from: string }>; peer: string }> {
    const { stdout } = await runIn(src.netns, [process.execPath, '--input-type=module', '-e', UDP_CLIENT, host, '53', String(n), mode], { timeoutMs: 30_000, cgroup: src.node.cgroup });
    return JSON.parse(stdout) as { got: Array<{ text: string; from: string }>; peer: string };
  }
  async function waitAnswers(src: PodInfo, host: string, expected: PodInfo[], timeoutMs = 60_000): Promise<void> {
    const want = expected.map((p) => p.name).sort();
    const t0 = Date.now();
    for (;;) {
      const t = await tcp(src, host, 4 * expected.length + 4);
      if (Object.keys(t.errors).length === 0 && JSON.stringify(Object.keys(t.answers).sort()) === JSON.stringify(want)) return;
      if (Date.now() - t0 > timeoutMs) assert.fail(`${src.name} -> ${host}: wanted ${want.join(', ')}, last ${JSON.stringify(t)}`);
      await sleep(300);
    }
  }
  async function waitServed(src: PodInfo, host: string, timeoutMs = 60_000): Promise<void> {
    const t0 = Date.now();
    for (;;) {
      const t = await tcp(src, host, 1);
      if (Object.keys(t.answers).length === 1) return;
      if (Date.now() - t0 > timeoutMs) assert.fail(`${src.name} -> ${host}: no answer, last ${JSON.stringify(t)}`);
      await sleep(300);
    }
  }
  /** CT_SERVICE entries of the client's node from client to vip: what the per-packet path leaves per connection. */
  function perPacketEntries(client: PodInfo, vip: string): number {
    const map = BpfMap.openPinned(join(m().agent(client.node).pinDir, ctMap.MAP_NAME));
    try {
      return [...ctMap.entries(map)].filter(([k]) => k.dir === 'service' && k.src === client.ip && k.dst === vip).length;
    } finally {
      map.close();
    }
  }
  const sockStats = async (p: PodInfo) => (await m().agentStatus(p.node)).datapath.socketLB.stats!;

  before(async () => {
    topo = await createTopology({ clusters: 2, nodesPerCluster: 2, podsPerNode: 2, mode: 'clustermesh', prefix: 'cmtsock' });
    const dir = await mkdtemp(join(tmpdir(), 'cmtsock-mesh-'));
    mesh = await startMesh(topo, { dir, readyTimeoutMs: 120_000, agent: { fullSyncIntervalSeconds: 5, syncTimeoutSeconds: 15, socketLB: true }, progress: (l) => console.log(`# ${l}`) });
    for (const p of topo.pods) {
      children.push(spawnIn(p.netns, [process.execPath, '--input-type=module', '-e', SERVERS, '8080', '8081', '5353', p.name], { cgroup: p.node.cgroup }));
      await m().addPod(p, { labels: labelsOf(p) });
    }
    await Promise.all(topo.pods.map((p) => waitListen(p)));
    for (const p of topo.pods) await writer(p.cluster).apply(podObject(p));
    await writer(1).applyAll([
      service('web', WEB, { be: 'y' }),
      service('glob', GLOB1, { remote: 'y' }, { annotations: GLOBAL }),
      service('aff', AFF, { be: 'y' }, { affinity: true }),
      service('guarded', GUARDED, { guarded: 'y' }, { targetPort: 8081 }),
      {
        // 8080 and 5353 (web, aff) from anyone; 8081 (guarded) from the friend only
        kind: 'NetworkPolicy',
        metadata: { name: 'guarded-friends-only', namespace: 'default' },
        spec: {
          podSelector: { matchLabels: { guarded: 'y' } },
          policyTypes: ['Ingress'],
          ingress: [
            { ports: [{ protocol: 'TCP', port: 8080 }, { protocol: 'UDP', port: 5353 }] },
            { from: [{ podSelector: { matchLabels: { role: 'friend' } } }], ports: [{ protocol: 'TCP', port: 8081 }] },
          ],
        },
      },
    ]);
    await writer(2).applyAll([service('glob', '10.96.2.20', { remote: 'y' }, { annotations: GLOBAL })]);
  });

  after(async () => {
    await Promise.all(children.map((c) => stopChild(c, 1000)));
    try {
      await mesh?.stop();
    } finally {
      if (topo) await destroyTopology(topo);
    }
  });

  test('the agents attach the four programs to their node cgroup and report it; the pods run in it', async () => {
    for (const a of m().agents) {
      const st = (await m().agentStatus(a.node)).datapath.socketLB;
      assert.equal(st.enabled, true, JSON.stringify(st));
      assert.equal(st.cgroup, a.node.cgroup);
      for (const p of st.programs) {
        assert.equal(p.attached, true, `${a.node.netns} ${p.hook}: ${JSON.stringify(st)}`);
        assert.deepEqual(cgroupQuery(a.node.cgroup!, p.hook), [p.progId], `${a.node.netns} ${p.hook}: only ours, on this node's cgroup`);
      }
      assert.ok(a.node.cgroup!.includes(a.node.netns), 'a cgroup of its own per node');
    }
    const servers = cgroupPids(pod(1, 1, 1).node.cgroup!);
    assert.ok(servers.length >= 2, `the node's pod processes are in its cgroup: ${servers.join(',')}`);
  });

  test('ClusterIP over TCP: translated at connect (no per-packet conntrack entry), getpeername shows VIP:port, the backend sees the pod IP', async () => {
    const client = pod(1, 1, 1);
    const backends = [pod(1, 1, 2), pod(1, 2, 2)];
    await waitAnswers(client, WEB, backends);
    const before = await sockStats(client);
    const ctBefore = perPacketEntries(client, WEB);
    const t = await tcp(client, WEB, 30);
    assert.deepEqual(t.errors, {});
    assert.deepEqual(Object.keys(t.answers).sort(), backends.map((p) => p.name).sort(), JSON.stringify(t.answers));
    assert.deepEqual(t.peers, { [`${WEB}:80`]: 30 }, 'getpeername() shows the VIP, not the backend');
    assert.deepEqual(t.from, { [client.ip]: 30 }, 'the backend sees the client pod IP');
    const after = await sockStats(client);
    assert.ok(after.connect - before.connect >= 30, `cm_sock_stats counted the connects: ${JSON.stringify({ before, after })}`);
    assert.ok(after.getpeername - before.getpeername >= 30, `and the getpeername calls: ${JSON.stringify({ before, after })}`);
    assert.equal(perPacketEntries(client, WEB), ctBefore, 'from_container translated none of them (no CT_SERVICE entry)');

    // The same pod's process outside the node cgroup keeps the per-packet path, which still works.
    const outside = await tcp(client, WEB, 10, { outside: true });
    assert.deepEqual(outside.errors, {});
    assert.deepEqual(outside.peers, { [`${WEB}:80`]: 10 });
    assert.ok(perPacketEntries(client, WEB) >= ctBefore + 10, 'outside the cgroup every connection went through from_container');
  });

  test('UDP via the VIP: per datagram (sendmsg) and connected (connect), replies come from VIP:53 (recvmsg), no per-packet translation', async () => {
    const client = pod(1, 2, 1);
    const backendNames = new Set([pod(1, 1, 2).name, pod(1, 2, 2).name]);
    const before = await sockStats(client);
    const ctBefore = perPacketEntries(client, WEB);
    const un = await udp(client, WEB, 5, 'unconnected');
    assert.equal(un.got.length, 5, JSON.stringify(un));
    const conn = await udp(client, WEB, 5, 'connected');
    assert.equal(conn.got.length, 5, JSON.stringify(conn));
    assert.equal(conn.peer, `${WEB}:53`, 'a connected UDP socket reports the VIP as its peer');
    for (const g of [...un.got, ...conn.got]) {
      assert.equal(g.from, `${WEB}:53`);
      assert.ok(backendNames.has(g.text.split(':')[0]!), g.text);
    }
    // one unconnected socket keeps one backend while the table is unchanged
    assert.equal(new Set(un.got.map((g) => g.text.split(':')[0])).size, 1, JSON.stringify(un.got));
    const after = await sockStats(client);
    assert.ok(after.sendmsg - before.sendmsg >= 5, JSON.stringify({ before, after }));
    assert.ok(after.connect - before.connect >= 1, JSON.stringify({ before, after }));
    assert.ok(after.recvmsg - before.recvmsg >= 10, JSON.stringify({ before, after }));
    assert.equal(perPacketEntries(client, WEB), ctBefore, 'no CT_SERVICE entry for the datagrams');
  });

  test('ClientIP session affinity holds per pod across connections (client key: the pod netns, 0.x.y.z in cm_affinity)', async () => {
    for (const client of [pod(1, 1, 1), pod(1, 2, 1)]) await waitServed(client, AFF);
    for (const client of [pod(1, 1, 1), pod(1, 2, 1)]) {
      const t = await tcp(client, AFF, 20);
      assert.deepEqual(t.errors, {});
      assert.equal(Object.keys(t.answers).length, 1, `${client.name} sticks to one backend: ${JSON.stringify(t.answers)}`);
      assert.deepEqual(t.peers, { [`${AFF}:80`]: 20 });
      const map = BpfMap.openPinned(join(m().agent(client.node).pinDir, affinityMap.MAP_NAME));
      try {
        const sockClients = [...affinityMap.entries(map)].filter(([k]) => k.client.startsWith('0.'));
        assert.ok(sockClients.length >= 1, `a socket-LB affinity entry: ${JSON.stringify([...affinityMap.entries(map)])}`);
      } finally {
        map.close();
      }
    }
  });

  test('a global service with only remote backends: answered from the other cluster, translated at connect', async () => {
    const client = pod(1, 1, 1);
    const remote = [pod(2, 1, 2), pod(2, 2, 2)];
    await waitAnswers(client, GLOB1, remote);
    const ctBefore = perPacketEntries(client, GLOB1);
    const t = await tcp(client, GLOB1, 20);
    assert.deepEqual(t.errors, {});
    assert.deepEqual(Object.keys(t.answers).sort(), remote.map((p) => p.name).sort(), JSON.stringify(t.answers));
    assert.deepEqual(t.peers, { [`${GLOB1}:80`]: 20 });
    assert.deepEqual(t.from, { [client.ip]: 20 });
    assert.equal(perPacketEntries(client, GLOB1), ctBefore);
  });

  test('policy by backend identity still applies: the friend reaches the guarded backend through the VIP, another pod is dropped (counted)', async () => {
    const friend = pod(1, 1, 1);
    const stranger = pod(1, 2, 1);
    const guarded = pod(1, 2, 2);
    await waitAnswers(friend, GUARDED, [guarded]);
    // the policy may be programmed a moment after the service
    for (let t0 = Date.now(); Object.keys((await tcp(stranger, GUARDED, 1)).answers).length > 0; ) {
      if (Date.now() - t0 > 60_000) assert.fail('the guarded pod\'s ingress policy never took effect');
      await sleep(300);
    }
    const dropsBefore = policyDrops(m().readDrops(guarded.node));
    const sBefore = await sockStats(stranger);
    const t = await tcp(stranger, GUARDED, 2);
    assert.deepEqual(t.answers, {}, JSON.stringify(t));
    assert.equal(t.errors.TIMEOUT, 2, JSON.stringify(t));
    const sAfter = await sockStats(stranger);
    assert.ok(sAfter.connect - sBefore.connect >= 2, 'the stranger was translated at connect too');
    assert.ok(policyDrops(m().readDrops(guarded.node)) > dropsBefore, 'dropped by the guarded pod\'s ingress policy, counted');
    const ok = await tcp(friend, GUARDED, 3);
    assert.deepEqual(ok.answers, { [guarded.name]: 3 }, JSON.stringify(ok));
  });

  test('a connection translated at connect may reuse the tuple of a per-packet one that just closed (its reply entry does not capture the new replies)', async () => {
    const client = pod(1, 1, 1);
    const guarded = pod(1, 2, 2); // the only backend: both connections have the same tuple towards it
    const perPacket = await tcp(client, GUARDED, 1, { outside: true, localPort: 41234 });
    assert.deepEqual(perPacket.answers, { [guarded.name]: 1 }, JSON.stringify(perPacket));
    const t0 = Date.now();
    const direct = await tcp(client, GUARDED, 1, { localPort: 41234 });
    assert.deepEqual(direct.answers, { [guarded.name]: 1 }, JSON.stringify(direct));
    assert.deepEqual(direct.peers, { [`${GUARDED}:80`]: 1 });
    assert.ok(Date.now() - t0 < 900 + 3000, 'no SYN retransmission needed');
  });
});

async function waitListen(p: PodInfo): Promise<void> {
  for (let i = 0; i < 300; i++) {
    const { stdout } = await runIn(p.netns, ['ss', '-Htln', 'sport = :8080']);
    if (stdout.trim()) return;
    await sleep(100);
  }
  throw new Error(`${p.name}: nothing listens on :8080`);
}
