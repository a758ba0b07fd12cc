// Service translation with real traffic (root): the lab's two clusters of
// two nodes, the real programs on real veths and VXLAN, services written into
// every node's pinned maps the way the agent will (planFrontend -> codecs).
// What BPF_PROG_TEST_RUN cannot show: checksum offload (CHECKSUM_PARTIAL from
// the pods' TCP), GSO/GRO, replies through the tunnel, the client's own stack
// accepting the reverse-translated replies, the RST for a service without
// backends, hairpin.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { type BackendCandidate, type FrontendSpec, planFrontend } from '../src/loadbalancer/index.ts';
import { collectEvents, readNodeMetrics, startClustermeshDatapath, type LabDatapath } from '../src/lab/datapath.ts';
import { startEcho } from '../src/lab/echo.ts';
import { runIn, spawnIn, stopChild } from '../src/lab/exec.ts';
import type { ManagedProcess } from '../src/lab/process.ts';
import { createTopology, destroyTopology, type PodInfo, type Topology } from '../src/lab/topology.ts';
import * as backendSlots from '../src/datapath/maps/backend-slots.ts';
import * as backends from '../src/datapath/maps/backends.ts';
import * as ct from '../src/datapath/maps/ct.ts';
import * as maglev from '../src/datapath/maps/maglev.ts';
import { DropReason } from '../src/datapath/maps/reasons.ts';
import * as revnat from '../src/datapath/maps/revnat.ts';
import * as services from '../src/datapath/maps/services.ts';
import { datapathSkipReason, withPinnedMap } from '../src/datapath/testing.ts';

/** Runs in a pod: N HTTP GETs, each a new connection; prints who answered, errors, transfer checks. */
const HTTP_CLIENT = `
import { request } from 'node:http';
import { createHash } from 'node:crypto';
const [url, n] = process.argv.slice(1);
const out = { answers: {}, from: {}, errors: {}, bytes: 0, sha: '', announced: '', ms: [] };
for (let i = 0; i < Number(n); i++) {
  const t0 = performance.now();
  await new Promise((done) => {
    const req = request(url, { timeout: 5000, agent: false }, (res) => {
      const h = createHash('sha256'); let len = 0; const chunks = [];
      res.on('data', (c) => { h.update(c); len += c.length; if (len < 4096) chunks.push(c); });
      res.on('end', () => {
        out.bytes = len; out.sha = h.digest('hex'); out.announced = res.headers['x-sha256'] ?? '';
        if (len < 4096) { const who = JSON.parse(Buffer.concat(chunks).toString()); out.answers[who.pod] = (out.answers[who.pod] ?? 0) + 1; out.from[who.from] = (out.from[who.from] ?? 0) + 1; }
        done();
      });
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
    req.on('error', (e) => { out.errors[e.code ?? e.message] = (out.errors[e.code ?? e.message] ?? 0) + 1; done(); });
    req.end();
  });
  out.ms.push(Math.round(performance.now() - t0));
}
console.log(JSON.stringify(out));
`;

/** Runs in a pod: UDP echo on a port, answering "<pod>:<payload>". */
const UDP_SERVER = `
import { createSocket } from 'node:dgram';
const [port, name] = process.argv.slice(1);
const s = createSocket('udp4');
s.on('message', (m, r) => s.send(name + ':' + m.toString(), r.port, r.address));
s.bind(Number(port));
`;

/** Runs in a pod: a connected UDP socket (so only replies from VIP:port are accepted) sends N datagrams. */
const UDP_CLIENT = `
import { createSocket } from 'node:dgram';
const [host, port, n] = process.argv.slice(1);
const s = createSocket('udp4');
const got = [];
s.on('message', (m, r) => { got.push({ text: m.toString(), from: r.address + ':' + r.port }); if (got.length === Number(n)) { s.close(); console.log(JSON.stringify(got)); } });
s.connect(Number(port), host, () => { for (let i = 0; i < Number(n); i++) s.send('ping' + i); });
setTimeout(() => { console.log(JSON.stringify(got)); process.exit(0); }, 3000).unref();
`;

describe('service translation with real traffic, 2 clusters x 2 nodes x 2 pods', { skip: datapathSkipReason(), timeout: 240_000 }, () => {
  let topo: Topology;
  let dp: LabDatapath | undefined;
  const servers: ManagedProcess[] = [];
  const children: ChildProcess[] = [];
  let nextId = 1;

  before(async () => {
    topo = await createTopology({ clusters: 2, nodesPerCluster: 2, podsPerNode: 2, mode: 'clustermesh', prefix: 'cmtlb' });
    try {
      dp = await startClustermeshDatapath(topo);
      for (const p of topo.pods) {
        servers.push(await startEcho(p, 8080));
        children.push(spawnIn(p.netns, [process.execPath, '--input-type=module', '-e', UDP_SERVER, '5353', p.name]));
      }
      await Promise.all(topo.pods.map((p) => waitForListen(p)));
    } catch (err) {
      await cleanup();
      throw err;
    }
  });

  async function cleanup(): Promise<void> {
    await Promise.all([...servers.map((s) => s.stop(2000)), ...children.map((c) => stopChild(c))]);
    await dp?.stop();
    await destroyTopology(topo);
  }
  after(cleanup);

  const pod = (c: number, n: number, p: number): PodInfo => topo.pods.find((x) => x.cluster === c && x.node.index === n && x.index === p)!;

  /** The same frontend on every node (services are translated on the client's node). */
  function install(vip: string, port: number, protocol: 'TCP' | 'UDP', targets: PodInfo[], targetPort: number, extra: Partial<FrontendSpec> = {}): void {
    const serviceId = nextId++;
    const candidates: BackendCandidate[] = targets.map((p) => ({
      id: 1000 + topo.pods.indexOf(p) * 10 + (protocol === 'UDP' ? 1 : 0), ip: p.ip, port: targetPort, clusterId: p.cluster, local: p.cluster === 1, ready: true, terminating: false, clusterGone: false,
    }));
    const plan = planFrontend({ vip, port, protocol, serviceId, backends: candidates, ...extra });
    for (const dir of dp!.pinDirs) {
      withPinnedMap(dir, backends.MAP_NAME, (m) => backends.updateMany(m, plan.backends));
      withPinnedMap(dir, backendSlots.MAP_NAME, (m) => backendSlots.updateMany(m, backendSlots.tableEntries(serviceId, plan.slots)));
      if (plan.maglev) withPinnedMap(dir, maglev.MAP_NAME, (m) => maglev.update(m, serviceId, plan.maglev!));
      withPinnedMap(dir, revnat.MAP_NAME, (m) => revnat.update(m, plan.revnat.key, plan.revnat.value));
      withPinnedMap(dir, services.MAP_NAME, (m) => services.update(m, plan.service.key, plan.service.value));
    }
  }

  interface HttpTally {
    answers: Record<string, number>;
    from: Record<string, number>;
    errors: Record<string, number>;
    bytes: number;
    sha: string;
    announced: string;
    ms: number[];
  }
  async function http(src: PodInfo, url: string, n: number): Promise<HttpTally> {
    const { stdout } = await runIn(src.netns, [process.execPath, '--input-type=module', '-e', HTTP_CLIENT, url, String(n)], { timeoutMs: 60_000 });
    return JSON.parse(stdout) as HttpTally;
  }

  test('ClusterIP with backends on the same node, another node and another cluster: all answer, the client IP is kept', async () => {
    const client = pod(1, 1, 1);
    const targets = [pod(1, 1, 2), pod(1, 2, 1), pod(2, 1, 1)];
    install('10.96.0.10', 80, 'TCP', targets, 8080);
    const t = await http(client, 'http://10.96.0.10/', 60);
    assert.deepEqual(t.errors, {});
    assert.deepEqual(Object.keys(t.answers).sort(), targets.map((p) => p.name).sort(), `answers: ${JSON.stringify(t.answers)}`);
    for (const n of Object.values(t.answers)) assert.ok(n >= 8, `spread: ${JSON.stringify(t.answers)}`);
    assert.deepEqual(t.from, { [client.ip]: 60 }, 'backends see the client pod IP (no SNAT)');
    const node = dp!.pinDirs[topo.nodes.indexOf(client.node)]!;
    const entries = withPinnedMap(node, ct.MAP_NAME, (m) => [...ct.entries(m)]);
    assert.ok(entries.filter(([k]) => k.dir === 'service' && k.src === client.ip && k.dst === '10.96.0.10').length >= 60, 'conntrack on the client node');
  });

  test('8 MiB through the VIP arrive intact from a backend on each kind of place (offloaded checksums, GSO/GRO, tunnel)', async () => {
    const client = pod(1, 1, 1);
    for (const [i, target] of [pod(1, 1, 2), pod(1, 2, 2), pod(2, 2, 2)].entries()) {
      const vip = `10.96.0.${11 + i}`;
      install(vip, 80, 'TCP', [target], 8080);
      const t = await http(client, `http://${vip}/bytes?n=${8 << 20}`, 1);
      assert.deepEqual(t.errors, {}, target.name);
      assert.equal(t.bytes, 8 << 20, `${target.name}: all bytes`);
      assert.equal(t.sha, t.announced, `${target.name}: content`);
    }
  });

  test('UDP through the VIP, to another cluster: the connected client socket accepts the replies, so they come from VIP:port', async () => {
    const client = pod(1, 2, 2);
    const target = pod(2, 2, 1);
    install('10.96.0.40', 53, 'UDP', [target], 5353);
    const { stdout } = await runIn(client.netns, [process.execPath, '--input-type=module', '-e', UDP_CLIENT, '10.96.0.40', '53', '5'], { timeoutMs: 15_000 });
    const got = JSON.parse(stdout) as Array<{ text: string; from: string }>;
    assert.equal(got.length, 5, stdout);
    for (const g of got) {
      assert.equal(g.from, '10.96.0.40:53');
      assert.match(g.text, new RegExp(`^${target.name}:ping\\d$`));
    }
  });

  test('Maglev and ClientIP affinity: one client sticks to one backend across many connections', async () => {
    const client = pod(2, 1, 2);
    install('10.96.0.50', 80, 'TCP', [pod(1, 1, 1), pod(1, 2, 2), pod(2, 2, 1)], 8080, { algorithm: 'maglev', sessionAffinity: { timeoutSeconds: 60 } });
    const t = await http(client, 'http://10.96.0.50/', 20);
    assert.deepEqual(t.errors, {});
    assert.equal(Object.keys(t.answers).length, 1, JSON.stringify(t.answers));
  });

  test('a service without backends refuses at once (RST), counted as DROP_NO_SERVICE_BACKEND with an event', async () => {
    const client = pod(1, 2, 1);
    install('10.96.0.20', 80, 'TCP', [], 8080);
    const pinDir = dp!.pinDirs[topo.nodes.indexOf(client.node)]!;
    const count = () => readNodeMetrics(pinDir).filter((r) => r.reason === DropReason.DROP_NO_SERVICE_BACKEND).reduce((n, r) => n + r.packets, 0n);
    const before = count();
    const ev = collectEvents(pinDir);
    try {
      const t = await http(client, 'http://10.96.0.20/', 3);
      assert.deepEqual(t.errors, { ECONNREFUSED: 3 });
      assert.ok(Math.max(...t.ms) < 1000, `refused within a second, not a timeout: ${t.ms}`);
      assert.equal(count() - before, 3n, 'one SYN each, answered by the RST');
      const drops = ev.drain().filter((e) => e.reasonName === 'DROP_NO_SERVICE_BACKEND');
      assert.equal(drops.length, 3);
      assert.deepEqual([drops[0]!.srcIp, drops[0]!.dstIp, drops[0]!.dstPort], [client.ip, '10.96.0.20', 80]);
    } finally {
      ev.stop();
    }
  });

  test('hairpin: a pod reaches itself through the VIP; it sees the connection from 169.254.42.1', async () => {
    const self = pod(2, 1, 1);
    install('10.96.0.30', 80, 'TCP', [self], 8080);
    const t = await http(self, 'http://10.96.0.30/', 3);
    assert.deepEqual(t.errors, {});
    assert.deepEqual(t.answers, { [self.name]: 3 });
    assert.deepEqual(t.from, { [ct.HAIRPIN_IP]: 3 });
  });
});

async function waitForListen(p: PodInfo): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const { stdout } = await runIn(p.netns, ['ss', '-Htuln', 'sport = :8080 or sport = :5353']);
    if (stdout.trim().split('\n').length >= 2) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${p.name}: nothing listens on :8080 and :5353`);
}
