// The operator CLI (status, inspect, observe, troubleshoot, enable, connect,
// disconnect) driven as a user would, through bin/clustermesh.js, against a
// real mesh: 2 clusters x 1 node, real etcd with mutual TLS, apiservers and
// agents (src/lab/mesh.ts). The mesh is described to the CLI by a lab state
// file in a lab root of the test's own (CLUSTERMESH_LAB_ROOT), exactly as
// `clustermesh lab up` records a lab.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runIn } from '../src/lab/exec.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import { writeLabState, type LabState } from '../src/lab/state.ts';
import { createTopology, destroyTopology, type PodInfo, type Topology } from '../src/lab/topology.ts';
import type { StatusReport } from '../src/cli/status.ts';
import type { IpcacheRow, EndpointRow } from '../src/cli/inspect.ts';
import type { Flow } from '../src/cli/observe.ts';
import { AgentClient } from '../src/agent/client.ts';
import { BpfMap } from '../src/datapath/libbpf/map.ts';
import { readNodeMetrics } from '../src/lab/datapath.ts';
import type { TroubleshootReport } from '../src/cli/troubleshoot.ts';
import { meshLabState } from './helpers/lab-state.ts';

const CLI = resolve(import.meta.dirname, '..', 'bin', 'clustermesh.js');
/** Flows each agent keeps (flowBufferSize): small, so that the limit is seen to hold. */
const FLOW_BUFFER = 1000;
/**
 * The agents' cm_events ring (eventsRingBytes): the 256 KiB of older
 * releases, not the 4 MiB default, so that the lost-events test fills it
 * with a few thousand datagrams.
 */
const EVENTS_RING = 256 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Every packet a node dropped (each is one event, or one counted as lost), and those dropped for having no endpoint. */
const drops = (pinDir: string, reason?: string): number =>
  readNodeMetrics(pinDir)
    .filter((r) => r.reasonName.startsWith('DROP_') && (reason === undefined || r.reasonName === reason))
    .reduce((a, r) => a + Number(r.packets), 0);
async function waitUntil(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

describe('operator CLI against a 2-cluster mesh', { timeout: 300_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  let root = '';
  let labName = '';
  let scratch = '';

  const cli = (args: string[], o: { netns?: string; timeoutMs?: number } = {}): Promise<CliResult> =>
    new Promise((resolveP) => {
      const argv = o.netns ? ['ip', ['netns', 'exec', o.netns, process.execPath, CLI, ...args]] as const : [process.execPath, [CLI, ...args]] as const;
      execFile(argv[0], [...argv[1]], { env: { ...process.env, CLUSTERMESH_LAB_ROOT: root }, timeout: o.timeoutMs ?? 120_000, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as unknown as { code: unknown }).code === 'number' ? (err as unknown as { code: number }).code : -1) : 0;
        resolveP({ code, stdout, stderr });
      });
    });
  const lab = (args: string[]): string[] => [...args, '--lab', labName];
  const json = <T>(r: CliResult): T => {
    try {
      return JSON.parse(r.stdout) as T;
    } catch {
      assert.fail(`not JSON (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
    }
  };
  const pod = (c: number): PodInfo => topo!.pods.find((p) => p.cluster === c && p.index === 1)!;

  const labState = (): LabState => meshLabState(labName, mesh!, topo!);

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'cmtc-labs-'));
    scratch = await mkdtemp(join(tmpdir(), 'cmtc-scratch-'));
    process.env.CLUSTERMESH_LAB_ROOT = root;
    labName = `cmtc-${Math.random().toString(16).slice(2, 8)}`;
    topo = await createTopology({ clusters: 2, nodesPerCluster: 1, podsPerNode: 2, mode: 'clustermesh', prefix: 'cmtc' });
    mesh = await startMesh(topo, {
      dir: await mkdtemp(join(tmpdir(), 'cmtc-mesh-')),
     
      agent: { syncTimeoutSeconds: 10, extra: { flowBufferSize: FLOW_BUFFER, eventsRingBytes: EVENTS_RING } },
      progress: (l) => console.log(`# ${l}`),
    });
    for (const p of topo.pods) await mesh.addPod(p, { labels: { app: p.index === 1 ? 'frontend' : 'backend' } });
    writeLabState(labState());
  });

  after(async () => {
    await mesh?.stop().catch((e: unknown) => console.log(`# mesh stop: ${(e as Error).message}`));
    if (topo) await destroyTopology(topo);
    await rm(root, { recursive: true, force: true });
    await rm(scratch, { recursive: true, force: true });
    delete process.env.CLUSTERMESH_LAB_ROOT;
  });

  test('status -o json: both clusters ready, each node connected to the other cluster; exit 0', async () => {
    // The pods were added just now: wait until each cluster sees the other's two endpoints.
    let report: StatusReport | undefined;
    for (let i = 0; i < 100; i++) {
      const r = await cli(lab(['status', '-o', 'json']));
      report = json<StatusReport>(r);
      if (r.code === 0 && report.clusters.every((c) => c.remoteClusters[0]?.counts.endpoints.min === 2)) break;
      await sleep(200);
    }
    const r = await cli(lab(['status', '-o', 'json']));
    assert.equal(r.code, 0, r.stdout + r.stderr);
    report = json<StatusReport>(r);
    assert.equal(report.ready, true);
    assert.deepEqual(report.notReady, []);
    assert.deepEqual(report.clusters.map((c) => c.name), ['cluster1', 'cluster2']);
    for (const c of report.clusters) {
      const other = c.name === 'cluster1' ? 'cluster2' : 'cluster1';
      assert.equal(c.etcd.reachable, true);
      assert.equal(c.etcd.clusterConfigId, c.id);
      assert.equal(c.apiserver.reachable, true);
      assert.deepEqual(c.nodes, { total: 1, reachable: 1, ready: 1 });
      assert.deepEqual(c.connectivity, { expected: 1, min: 1, avg: 1, max: 1 });
      assert.equal(c.remoteClusters.length, 1);
      const rc = c.remoteClusters[0]!;
      assert.equal(rc.name, other);
      assert.deepEqual([rc.configured, rc.connected, rc.ready], [1, 1, 1]);
      assert.deepEqual(rc.synced, { nodes: 1, identities: 1, ip: 1, services: 1 });
      assert.equal(rc.counts.endpoints.max, 2, 'two pods of the other cluster');
      assert.equal(rc.counts.nodes.max, 1);
    }
    // The text form says the same for a human.
    const text = await cli(lab(['status']));
    assert.equal(text.code, 0);
    assert.match(text.stdout, /all 1 nodes are connected to all 1 remote clusters \[min 1 \/ avg 1 \/ max 1\]/);
    assert.match(text.stdout, /ready: yes/);
    // Without a lab, as on a real host: on the node, from the agent's own config file (its socket, pin dir, cluster and etcd).
    const onNode = await cli(['status', '--agent-config', mesh!.agents[0]!.configFile, '-o', 'json'], { netns: topo!.nodes[0]!.netns });
    assert.equal(onNode.code, 0, onNode.stdout + onNode.stderr);
    const nr = json<StatusReport>(onNode);
    assert.deepEqual(nr.clusters.map((c) => [c.name, c.etcd.reachable, c.nodes.ready, c.remoteClusters.map((x) => x.ready)]), [['cluster1', true, 1, [1]]]);
  });

  test('inspect ipcache -o json names the remote pods, their identity labels, cluster and node', async () => {
    const remote = pod(2);
    const r = await cli(lab(['inspect', 'ipcache', '--node', 'cluster1/node1', '-o', 'json']));
    assert.equal(r.code, 0, r.stderr);
    const out = json<{ map: string; nodes: Array<{ node: string; entries: IpcacheRow[] }>; warnings: string[] }>(r);
    assert.equal(out.map, 'ipcache');
    assert.deepEqual(out.warnings, []);
    assert.equal(out.nodes.length, 1);
    const row = out.nodes[0]!.entries.find((e) => e.prefix === `${remote.ip}/32`);
    assert.ok(row, `no ipcache row for ${remote.ip}: ${JSON.stringify(out.nodes[0]!.entries.map((e) => e.prefix))}`);
    assert.equal(row.cluster, 'cluster2');
    assert.equal(row.pod, `default/${remote.name}`);
    assert.equal(row.tunnelEndpoint, remote.node.underlayIP);
    assert.equal(row.tunnelNode, 'cluster2/node1');
    assert.ok(row.identity >> 16 === 2, `identity ${row.identity} in cluster 2's range`);
    assert.ok(row.labels.includes('k8s:app=frontend'), JSON.stringify(row.labels));
    assert.ok(row.labels.includes('k8s:io.cilium.k8s.policy.cluster=cluster2'));
    // Text: a table with the labels in short form.
    const text = await cli(lab(['inspect', 'ipcache', '--node', 'cluster1/node1']));
    assert.equal(text.code, 0);
    assert.match(text.stdout, new RegExp(`${remote.ip.replace(/\./g, '\\.')}/32 +${row.identity} \\(app=frontend,ns=default\\) +cluster2 +default/${remote.name}`));
    // Without a lab: a pin dir and an etcd config, run where that etcd is reachable (the control-plane namespace).
    const c1 = mesh!.cluster('cluster1');
    const conn = c1.etcd.connection('root', { via: 'network' });
    const etcdConfig = join(scratch, 'c1-etcd.yaml');
    await writeFile(etcdConfig, `endpoints: [${conn.endpoints[0]}]\ntrusted-ca-file: ${conn.caFile}\ncert-file: ${conn.certFile}\nkey-file: ${conn.keyFile}\n`);
    const explicit = await cli(['inspect', 'ipcache', '--pin-dir', mesh!.agents[0]!.pinDir, '--etcd-config', etcdConfig, '-o', 'json'], { netns: c1.netns });
    assert.equal(explicit.code, 0, explicit.stderr);
    const er = json<{ nodes: Array<{ entries: IpcacheRow[] }>; warnings: string[] }>(explicit).nodes[0]!.entries.find((e) => e.prefix === `${remote.ip}/32`)!;
    // Only cluster1's etcd was given: cluster2's identity is named by its ID range, its pod is unknown.
    assert.equal(er.identity, row.identity);
    assert.equal(er.cluster, 'cluster-id-2');
  });

  test('inspect endpoints through an explicit --socket (no lab) names the local pods', async () => {
    const a = mesh!.agent(topo!.nodes[0]!);
    const r = await cli(['inspect', 'endpoints', '--socket', a.socket, '-o', 'json']);
    assert.equal(r.code, 0, r.stderr);
    const out = json<{ nodes: Array<{ node: string; entries: EndpointRow[] }> }>(r);
    assert.equal(out.nodes[0]!.node, 'cluster1/node1');
    const pods = out.nodes[0]!.entries.map((e) => e.pod).sort();
    assert.deepEqual(pods, topo!.pods.filter((p) => p.cluster === 1).map((p) => `default/${p.name}`).sort());
  });

  test('observe --verdict DROPPED shows a packet to an address no pod has, dropped by the remote node with its reason; the agent keeps it for the next reader', async () => {
    const client = pod(1);
    const nobody = pod(2).node.podCIDR.replace(/0\/24$/, '99');
    const since = new Date().toISOString();
    await runIn(client.netns, ['ping', '-c', '1', '-W', '1', nobody]).catch(() => undefined);
    const r = await cli(lab(['observe', '--verdict', 'DROPPED', '--cluster', 'cluster2', '--since', since, '-o', 'json']));
    assert.equal(r.code, 0, r.stderr);
    const flows = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Flow);
    const f = flows.find((x) => x.destination.ip === nobody);
    assert.ok(f, `no flow to ${nobody}: ${r.stdout}`);
    assert.equal(f.verdict, 'DROPPED');
    assert.equal(f.reason, 'DROP_UNKNOWN_ENDPOINT');
    assert.equal(f.node, 'cluster2/node1');
    assert.equal(f.source.ip, client.ip);
    assert.equal(f.source.pod, `default/${client.name}`);
    assert.equal(f.source.cluster, 'cluster1');
    assert.equal(f.tunnelNode, 'cluster1/node1', 'came through the tunnel from the client\'s node');
    assert.ok(f.source.labels.includes('k8s:app=frontend'), JSON.stringify(f.source));
    assert.equal(f.protocol, 'ICMP');
    assert.ok(flows.every((x) => x.verdict === 'DROPPED'));
    // The agent is the reader and keeps the flows: a second reader sees the same.
    const again = await cli(lab(['observe', '--verdict', 'DROPPED', '--cluster', 'cluster2', '--since', since, '-o', 'json']));
    assert.ok(again.stdout.split('\n').some((l) => l.includes(`"ip":"${nobody}"`)), again.stdout);
  });

  test('a policy drop across clusters is a flow with identities, labels, verdict, reason and the deciding side, through GET /v1/flows, observe and a follow stream', async () => {
    const frontend1 = pod(1);
    const backend2 = topo!.pods.find((p) => p.cluster === 2 && p.index === 2)!;
    const agent2 = new AgentClient(mesh!.agent(backend2.node).socket);
    const writer = mesh!.kube(2);
    const policy = {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'cmtc-backend-tcp-only', namespace: 'default' },
      spec: { endpointSelector: { matchLabels: { app: 'backend' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'frontend' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] },
    };
    const follow: Flow[] = [];
    let stream: ReturnType<AgentClient['followFlows']> | undefined;
    try {
      await writer.apply(policy);
      const since = new Date();
      const pings = async (): Promise<boolean> =>
        runIn(frontend1.netns, ['ping', '-c', '1', '-W', '1', backend2.ip]).then(
          () => true,
          () => false,
        );
      // Enforced once the agent wrote the policy: pings (ICMP) are not allowed, only TCP 8080.
      for (let i = 0; i < 100 && (await pings()); i++) await sleep(200);
      const q = { verdict: 'DROPPED' as const, fromPod: frontend1.name, toPod: `default/${backend2.name}`, since };
      const flows = await agent2.flows(q);
      const f = flows.at(-1);
      assert.ok(f, `no policy drop flow: ${JSON.stringify(await agent2.flows({ since }))}`);
      const ids = new Map((await agent2.listEndpoints()).map((e) => [e.podName, e]));
      assert.deepEqual([f.verdict, f.reason, f.direction, f.protocol, f.node], ['DROPPED', 'DROP_POLICY', 'ingress', 'ICMP', 'cluster2/node1']);
      assert.equal(f.policy, `default deny: ingress of default/${backend2.name} is enforced and no allow entry matched`);
      assert.deepEqual([f.source.cluster, f.source.namespace, f.source.pod], ['cluster1', 'default', `default/${frontend1.name}`]);
      assert.ok(f.source.identity >> 16 === 1, `source identity ${f.source.identity} from cluster1's range`);
      assert.ok(f.source.labels.includes('k8s:app=frontend') && f.source.labels.includes('k8s:io.cilium.k8s.policy.cluster=cluster1'), JSON.stringify(f.source.labels));
      assert.deepEqual([f.destination.cluster, f.destination.pod, f.destination.identity, f.destination.node], ['cluster2', `default/${backend2.name}`, ids.get(backend2.name)!.identity, 'cluster2/node1']);
      assert.ok(f.destination.labels.includes('k8s:app=backend'), JSON.stringify(f.destination.labels));
      assert.equal(f.tunnelNode, 'cluster1/node1');

      // The CLI, over every node of both clusters, with flow filters.
      const r = await cli(lab(['observe', '--verdict', 'DROPPED', '--from-cluster', 'cluster1', '--to-pod', backend2.name, '--protocol', 'icmp', '--since', since.toISOString(), '-o', 'json']));
      assert.equal(r.code, 0, r.stderr);
      const viaCli = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Flow);
      assert.ok(viaCli.length >= 1 && viaCli.every((x) => x.reason === 'DROP_POLICY' && x.destination.pod === `default/${backend2.name}` && x.source.cluster === 'cluster1'), r.stdout);
      assert.deepEqual(viaCli.at(-1), flows.at(-1), 'observe prints what the agent serves');
      const none = await cli(lab(['observe', '--verdict', 'DROPPED', '--to-pod', backend2.name, '--port', '8080', '--since', since.toISOString(), '-o', 'json']));
      assert.equal(none.stdout.trim(), '', 'ICMP has no port 8080');
      const compact = await cli(lab(['observe', '--to-pod', backend2.name, '--since', since.toISOString(), '--last', '1']));
      assert.match(compact.stdout, new RegExp(`cluster2/node1 DROPPED +DROP_POLICY .* ingress cluster1:default/${frontend1.name} ${frontend1.ip.replace(/\./g, '\\.')} \\(id \\d+ app=frontend,ns=default\\) -> cluster2:default/${backend2.name}`));
      assert.equal(compact.stdout.trim().split('\n').length, 1, '--last 1');
      const bad = await cli(lab(['observe', '--protocol', 'gopher']));
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /--protocol.*must be TCP, UDP, ICMP or SCTP/);

      // Follow: a new drop arrives on the stream.
      const followed = new Date();
      let caughtUp = false;
      stream = agent2.followFlows({ verdict: 'DROPPED', toPod: backend2.name, since: followed }, (x) => follow.push(x), { onBacklogEnd: () => (caughtUp = true) });
      for (let i = 0; i < 50 && !caughtUp; i++) await sleep(100);
      assert.ok(caughtUp, 'the stream sent its backlog marker');
      await pings();
      for (let i = 0; i < 100 && follow.length === 0; i++) await sleep(100);
      assert.ok(follow.length >= 1, 'the follow stream received the new drop');
      assert.equal(follow[0]!.reason, 'DROP_POLICY');
      assert.equal(follow[0]!.source.pod, `default/${frontend1.name}`);
      assert.ok(Date.parse(follow[0]!.time) >= followed.getTime() - 5);
    } finally {
      stream?.stop();
      await writer.delete('CiliumNetworkPolicy', { namespace: 'default', name: policy.metadata.name }).catch(() => undefined);
      agent2.close();
    }
  });

  test('a connection to a global service with no backend in any cluster is a drop flow (DROP_NO_SERVICE_BACKEND, the frontend named) through GET /v1/flows and observe', async () => {
    const client = pod(1);
    const agent1 = new AgentClient(mesh!.agent(client.node).socket);
    const vip = (c: number): string => `10.96.${c}.77`;
    const service = (c: number): { kind: string; metadata: object; spec: object } => ({
      kind: 'Service',
      metadata: { name: 'cmtc-nobackend', namespace: 'default', annotations: { 'service.cilium.io/global': 'true' } },
      spec: { clusterIP: vip(c), selector: { app: 'cmtc-nobody' }, ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }] },
    });
    const writers = [1, 2].map((c) => mesh!.kube(c));
    try {
      for (const [i, w] of writers.entries()) await w.apply(service(i + 1));
      const since = new Date();
      const q = { verdict: 'DROPPED' as const, fromPod: client.name, since };
      const noBackend = (fs: Flow[]): Flow[] => fs.filter((f) => f.reason === 'DROP_NO_SERVICE_BACKEND' && f.destination.ip === vip(1));
      // Until the agent programmed the service the VIP is no address at all: connect until the datapath
      // refuses it (a RST from the VIP) and the agent has the drop.
      let flows: Flow[] = [];
      for (let i = 0; i < 60 && flows.length === 0; i++) {
        const out = await runIn(client.netns, [process.execPath, '-e', `const s = require('node:net').connect(80, '${vip(1)}'); s.setTimeout(1000, () => { console.log('timeout'); s.destroy(); }); s.on('error', (e) => console.log(e.code)).on('connect', () => console.log('connected'))`], { timeoutMs: 20_000 });
        flows = noBackend(await agent1.flows(q));
        if (flows.length === 0) await sleep(250);
        else assert.equal(out.stdout.trim(), 'ECONNREFUSED', 'the datapath answers the SYN with a RST from the VIP: refused at once, no timeout');
      }
      const f = flows.at(-1);
      assert.ok(f, `no DROP_NO_SERVICE_BACKEND flow to ${vip(1)}: ${JSON.stringify(await agent1.flows({ since }))}`);
      const ids = new Map((await agent1.listEndpoints()).map((e) => [e.podName, e]));
      assert.deepEqual([f.verdict, f.reason, f.description, f.direction, f.protocol, f.node, f.tcpFlags], ['DROPPED', 'DROP_NO_SERVICE_BACKEND', 'service has no backend', 'egress', 'TCP', 'cluster1/node1', ['SYN']]);
      assert.deepEqual(f.service, { ip: vip(1), port: 80 }, 'the frontend the client addressed');
      assert.deepEqual([f.source.cluster, f.source.namespace, f.source.pod, f.source.ip, f.source.identity, f.source.node], ['cluster1', 'default', `default/${client.name}`, client.ip, ids.get(client.name)!.identity, 'cluster1/node1']);
      assert.ok(f.source.identity >> 16 === 1, `source identity ${f.source.identity} from cluster1's range`);
      assert.ok(f.source.labels.includes('k8s:app=frontend') && f.source.labels.includes('k8s:io.cilium.k8s.policy.cluster=cluster1'), JSON.stringify(f.source.labels));
      // No backend was chosen: the destination is the frontend itself, no pod, no identity (0: reserved:unknown).
      assert.deepEqual(
        [f.destination.ip, f.destination.port, f.destination.pod, f.destination.cluster, f.destination.identity, f.destination.labels],
        [vip(1), 80, null, null, 0, ['reserved:unknown']],
      );
      // A drop increments its reason's counter on the client's node.
      assert.ok(drops(mesh!.agent(client.node).pinDir, 'DROP_NO_SERVICE_BACKEND') >= 1);

      const r = await cli(lab(['observe', '--verdict', 'DROPPED', '--from-cluster', 'cluster1', '--from-pod', client.name, '--protocol', 'tcp', '--port', '80', '--since', since.toISOString(), '-o', 'json']));
      assert.equal(r.code, 0, r.stderr);
      const viaCli = noBackend(r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Flow));
      assert.deepEqual(viaCli.at(-1), f, 'observe prints what the agent serves');
      const other = await cli(lab(['observe', '--verdict', 'DROPPED', '--from-cluster', 'cluster2', '--port', '80', '--since', since.toISOString(), '-o', 'json']));
      assert.equal(noBackend(other.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Flow)).length, 0, '--from-cluster cluster2 excludes it');
    } finally {
      for (const w of writers) await w.delete('Service', { namespace: 'default', name: 'cmtc-nobackend' }).catch(() => undefined);
      agent1.close();
    }
  });

  test('events the ring buffer had no room for (agent stopped) are counted and shown; the agent keeps only its last flowBufferSize flows', async () => {
    const client = pod(1);
    const a2 = mesh!.agent(pod(2).node);
    const api = new AgentClient(a2.socket);
    const nobody = pod(2).node.podCIDR.replace(/0\/24$/, '98');
    const before = (await api.status()).flows!;
    const dropsBefore = drops(a2.pinDir);
    const unknownBefore = drops(a2.pinDir, 'DROP_UNKNOWN_ENDPOINT');
    // While the agent does not read (SIGSTOP), 7000 datagrams to an address no pod has are dropped on
    // cluster2's node; the ring (EVENTS_RING, 256 KiB) holds about 4,000 events, the rest can only be counted.
    const SENT = 7000;
    process.kill(a2.process.pid!, 'SIGSTOP');
    try {
      await runIn(client.netns, [
        process.execPath,
        '-e',
        `const s = require('node:dgram').createSocket('udp4'); let n = 0;
         const next = () => { if (n >= ${SENT}) return s.close(); s.send('x', 9, '${nobody}', () => { n++; next(); }); };
         next();`,
      ], { timeoutMs: 60_000 });
      // Every datagram dropped on cluster2 (or the count settled: a few may be lost on the way).
      let last = -1;
      let stableSince = Date.now();
      await waitUntil(
        'the datagrams counted as dropped on cluster2',
        () => {
          const n = drops(a2.pinDir, 'DROP_UNKNOWN_ENDPOINT') - unknownBefore;
          if (n !== last) [last, stableSince] = [n, Date.now()];
          return n >= SENT || (n > 0 && Date.now() - stableSince > 2000);
        },
        60_000,
      );
      assert.ok(last > SENT * 0.9, `${last} of ${SENT} datagrams dropped on cluster2`);
    } finally {
      process.kill(a2.process.pid!, 'SIGCONT');
    }
    const dropped = drops(a2.pinDir) - dropsBefore;
    let st = (await api.status()).flows!;
    for (let i = 0; i < 50 && st.seen - before.seen + (st.lost.datapath - before.lost.datapath) < dropped; i++) {
      await sleep(100);
      st = (await api.status()).flows!;
    }
    const read = st.seen - before.seen;
    const lost = st.lost.datapath - before.lost.datapath;
    console.log(`# ${dropped} drops while the agent was stopped: ${read} flows read, ${lost} events lost (ring buffer full)`);
    assert.ok(lost > 0, 'some events were lost, and counted');
    assert.equal(read + lost, dropped, 'every drop is either a flow or counted as lost');
    assert.equal(st.lost.sinceStart, st.lost.datapath, 'the agent has been reading since the maps were created');
    assert.equal(st.capacity, FLOW_BUFFER);
    assert.equal(st.stored, FLOW_BUFFER, 'the limit holds');
    assert.equal((await api.flows()).length, FLOW_BUFFER);
    const r = await cli(lab(['observe', '--cluster', 'cluster2', '--verdict', 'DROPPED', '--last', '3', '-o', 'json']));
    assert.equal(r.stdout.trim().split('\n').length, 3);
    assert.match(r.stderr, new RegExp(`cluster2/node1: ${st.lost.datapath} events could not be reported`));
    const text = await cli(lab(['status']));
    assert.match(text.stdout, new RegExp(`flows: +${FLOW_BUFFER} kept \\(\\d+ seen\\); ${st.lost.datapath} events lost`));
    api.close();
  });

  test('forwarded TCP connection openings are flows by default (traceNewConnections): the SYN across clusters, with its flags, on both nodes', async () => {
    const client = pod(1);
    const server = pod(2);
    const since = new Date().toISOString();
    // Nothing listens: the SYN is forwarded to the pod, which answers with a RST.
    await runIn(client.netns, [process.execPath, '-e', `require('node:net').connect(4321, '${server.ip}').on('error', () => process.exit(0))`], { timeoutMs: 20_000 });
    let flows: Flow[] = [];
    for (let i = 0; i < 50; i++) {
      const r = await cli(lab(['observe', '--verdict', 'FORWARDED', '--port', '4321', '--protocol', 'TCP', '--since', since, '-o', 'json']));
      flows = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Flow);
      if (flows.length >= 2) break;
      await sleep(200);
    }
    const out = flows.find((f) => f.node === 'cluster1/node1');
    const into = flows.find((f) => f.node === 'cluster2/node1');
    assert.ok(out && into, JSON.stringify(flows));
    assert.deepEqual([out.reason, out.direction, out.tcpFlags, out.tunnelNode], ['TRACE_TO_OVERLAY', 'egress', ['SYN'], 'cluster2/node1']);
    assert.deepEqual([into.reason, into.direction, into.tcpFlags, into.destination.pod, into.source.pod], ['TRACE_TO_ENDPOINT', 'ingress', ['SYN'], `default/${server.name}`, `default/${client.name}`]);
    assert.equal(flows.length, 2, 'one event per node for the connection, not one per packet (the RST back is not sampled)');
  });

  test('each agent serves Prometheus metrics on its node IP:9962 (the lab\'s choice): a drop increments exactly its reason\'s counter; remote clusters, maps and lost flows are there', async () => {
    const n2 = pod(2).node;
    const scrape = async (): Promise<Map<string, number>> => {
      const { stdout } = await runIn(n2.netns, ['curl', '-sf', `http://${n2.underlayIP}:9962/metrics`], { timeoutMs: 10_000 });
      const out = new Map<string, number>();
      for (const l of stdout.split('\n')) {
        const m = /^(clustermesh_[a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(l);
        if (m) out.set(m[1]!, Number(m[2]));
      }
      return out;
    };
    const st = await new AgentClient(mesh!.agent(n2).socket).status();
    assert.deepEqual(st.metrics, { address: `${n2.underlayIP}:9962`, error: null });
    const before = await scrape();
    const unknown = 'clustermesh_drop_count_total{reason="DROP_UNKNOWN_ENDPOINT",direction="ingress"}';
    const policy = 'clustermesh_drop_count_total{reason="DROP_POLICY",direction="ingress"}';
    const nobody = n2.podCIDR.replace(/0\/24$/, '97');
    await runIn(pod(1).netns, ['ping', '-c', '5', '-i', '0.2', '-W', '1', nobody]).catch(() => undefined);
    await runIn(pod(1).netns, ['ping', '-c', '2', '-i', '0.2', '-W', '2', pod(2).ip]); // forwarded both ways
    await sleep(300); // scrapes read at most every 250 ms
    const after = await scrape();
    assert.equal((after.get(unknown) ?? 0) - (before.get(unknown) ?? 0), 5, 'five pings, five drops of that reason');
    assert.equal(after.get(policy) ?? 0, before.get(policy) ?? 0, 'no other reason moved for them');
    const fwd = (k: string): number => (after.get(`clustermesh_forward_count_total{${k}}`) ?? 0) - (before.get(`clustermesh_forward_count_total{${k}}`) ?? 0);
    assert.ok(fwd('reason="TRACE_TO_ENDPOINT",direction="ingress"') >= 2, `the pings in: ${[...after].filter(([k]) => k.includes('forward_count')).join(' ')}`);
    assert.ok(fwd('reason="TRACE_TO_OVERLAY",direction="egress"') >= 2, 'the replies out');
    assert.ok((after.get('clustermesh_policy_verdicts_total{direction="ingress",match="default-deny"}') ?? 0) > 0, 'the policy drops of the test above');
    assert.ok((after.get('clustermesh_map_entries{map="cm_ipcache"}') ?? 0) > 0);
    assert.equal(after.get('clustermesh_remote_cluster_connected{source_cluster="cluster1"}'), 1);
    assert.equal(after.get('clustermesh_remote_cluster_ready{source_cluster="cluster1"}'), 1);
    assert.equal(after.get('clustermesh_remote_cluster_entries{source_cluster="cluster1",kind="endpoints"}'), 2);
    assert.ok((after.get('clustermesh_remote_cluster_heartbeat_age_seconds{source_cluster="cluster1"}') ?? -1) >= 0);
    assert.equal(after.get('clustermesh_flows_lost_total{cause="ring_buffer_full"}'), st.flows!.lost.datapath);
    assert.ok((after.get('clustermesh_flows_lost_total{cause="ring_buffer_full"}') ?? 0) > 0, 'the events lost in the test above');
  });

  test('observe --follow --trace-forwards prints forwarded flows as they happen and switches tracing back off on Ctrl-C', async () => {
    const client = pod(1);
    const server = topo!.pods.find((p) => p.cluster === 2 && p.index === 2)!;
    const child = spawn(process.execPath, [CLI, 'observe', '--lab', labName, '--node', 'cluster2/node1', '--verdict', 'FORWARDED', '--trace-forwards', '--follow', '-o', 'json'], {
      env: { ...process.env, CLUSTERMESH_LAB_ROOT: root },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const want = (): boolean => out.split('\n').some((l) => l.includes(`"ip":"${server.ip}"`) && l.includes('"TRACE_TO_ENDPOINT"'));
      for (let i = 0; i < 150 && !want(); i++) {
        await runIn(client.netns, ['ping', '-c', '1', '-W', '1', server.ip]).catch(() => undefined);
        await sleep(200);
      }
      assert.ok(want(), `no forwarded flow to ${server.ip} seen:\n${out.slice(-2000)}\n${err}`);
      const f = out.split('\n').filter((l) => l.includes('TRACE_TO_ENDPOINT') && l.includes(server.ip)).map((l) => JSON.parse(l) as Flow)[0]!;
      assert.equal(f.verdict, 'FORWARDED');
      assert.equal(f.destination.pod, `default/${server.name}`);
      assert.equal(f.source.cluster, 'cluster1');
    } finally {
      child.kill('SIGINT');
    }
    assert.equal(await exited, 0, err);
    // Tracing is off again: a plain observe says so.
    const after = await cli(lab(['observe', '--node', 'cluster2/node1']));
    assert.match(after.stderr, /forward tracing is off on cluster2\/node1/);
  });

  test('an upgrade to a bigger ring: the agent restarted with another eventsRingBytes replaces the pinned cm_events and still reports what the old ring got while it was down', async () => {
    const client = pod(1);
    const a2 = mesh!.agent(pod(2).node);
    const nobody = pod(2).node.podCIDR.replace(/0\/24$/, '97');
    const ringSize = (): number => {
      const m = BpfMap.openPinned(join(a2.pinDir, 'cm_events'));
      try {
        return m.maxEntries;
      } finally {
        m.close();
      }
    };
    assert.equal(ringSize(), EVENTS_RING);
    const config = await readFile(a2.configFile, 'utf8');
    assert.match(config, new RegExp(`eventsRingBytes: ${EVENTS_RING}\\b`));
    await mesh!.stopAgent(a2.node);
    try {
      await writeFile(a2.configFile, config.replace(`eventsRingBytes: ${EVENTS_RING}`, `eventsRingBytes: ${4 * EVENTS_RING}`));
      // dropped on cluster2's node while no agent reads: the events wait in the old ring
      const since = new Date();
      const unknownBefore = drops(a2.pinDir, 'DROP_UNKNOWN_ENDPOINT');
      await runIn(client.netns, ['ping', '-c', '3', '-i', '0.2', '-W', '1', nobody]).catch(() => undefined);
      await waitUntil('the pings dropped on cluster2', () => drops(a2.pinDir, 'DROP_UNKNOWN_ENDPOINT') - unknownBefore >= 3, 20_000);
      await mesh!.restartAgent(a2.node);
      assert.equal(ringSize(), 4 * EVENTS_RING, 'the pinned ring has the new size');
      const api = new AgentClient(a2.socket);
      try {
        let got: Flow[] = [];
        for (let i = 0; i < 50 && got.length < 3; i++) {
          got = (await api.flows({ verdict: 'DROPPED', since })).filter((f) => f.destination.ip === nobody);
          if (got.length < 3) await sleep(100);
        }
        assert.equal(got.length, 3, 'the three drops from while the agent was down, read from the replaced ring');
        // (named with what the agent knows when it reads them: right after its start, maybe not yet the remote pod)
        assert.ok(got.every((f) => f.reason === 'DROP_UNKNOWN_ENDPOINT' && f.source.ip === client.ip && f.node === 'cluster2/node1'), JSON.stringify(got));
      } finally {
        api.close();
      }
      assert.match(await readFile(a2.logFile, 'utf8'), /"map":"cm_events".*pinned map had another definition/);
      // the other maps kept their entries: traffic across clusters still flows
      await runIn(client.netns, ['ping', '-c', '1', '-W', '2', pod(2).ip]);
    } finally {
      await writeFile(a2.configFile, config);
      await mesh!.restartAgent(a2.node).catch(() => undefined);
    }
  });

  test('troubleshoot: every step passes from inside each node; a wrong CA fails at the TLS step with a fix', async () => {
    const r = await cli(lab(['troubleshoot', '-o', 'json']));
    const report = json<TroubleshootReport>(r);
    assert.equal(r.code, 0, r.stdout);
    assert.equal(report.checks.length, 2);
    for (const c of report.checks) assert.deepEqual(c.steps.map((s) => [s.step, s.ok]), [['config', true], ['dns', true], ['tcp', true], ['tls', true], ['etcd-read', true], ['cluster-id', true]]);
    // A copy of cluster1's dir whose CA is cluster1's own (not cluster2's): TLS must fail, and say why.
    const c1 = mesh!.cluster('cluster1');
    const dir = join(scratch, 'bad-ca');
    await cp(c1.remoteConfigDir, dir, { recursive: true });
    const text = (await readFile(join(dir, 'cluster2'), 'utf8')).replace(/trusted-ca-file: .*/, `trusted-ca-file: ${JSON.stringify(c1.etcd.caFile)}`);
    await writeFile(join(dir, 'cluster2'), text);
    const bad = await cli(['troubleshoot', '--config-dir', dir, '--cluster-name', 'cluster1', '--cluster-id', '1', '-o', 'json'], { netns: topo!.nodes[0]!.netns });
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    const br = json<TroubleshootReport>(bad);
    const steps = br.checks[0]!.steps;
    assert.deepEqual(steps.map((s) => s.ok), [true, true, true, false, null, null]);
    assert.equal(steps[3]!.step, 'tls');
    assert.match(steps[3]!.detail, /not signed by trusted-ca-file/);
    assert.match(steps[3]!.fix ?? '', /CA certificate of cluster2's etcd/);
  });

  test('disconnect removes both directions and the agents drain; connect brings them back; status --wait sees it', async () => {
    const d = await cli(lab(['disconnect', '--cluster', 'cluster1', '--destination-cluster', 'cluster2']));
    assert.equal(d.code, 0, d.stderr);
    assert.match(d.stdout, /disconnected cluster1 -> cluster2/);
    assert.match(d.stdout, /disconnected cluster2 -> cluster1/);
    for (const c of mesh!.clusters) assert.equal(existsSync(join(c.remoteConfigDir, c.name === 'cluster1' ? 'cluster2' : 'cluster1')), false);
    // The agents drop the remote cluster by themselves (config dir watch).
    for (let i = 0; ; i++) {
      const st = await Promise.all(mesh!.agents.map((a) => a.api.status()));
      if (st.every((s) => s.remoteClusters.length === 0)) break;
      if (i > 150) assert.fail(`agents still import a remote cluster: ${JSON.stringify(st.map((s) => s.remoteClusters.map((r) => r.name)))}`);
      await sleep(200);
    }
    const s0 = json<StatusReport>(await cli(lab(['status', '-o', 'json'])));
    assert.deepEqual(s0.clusters.map((c) => c.connectivity.expected), [0, 0]);

    const c = await cli(lab(['connect', '--cluster', 'cluster1', '--destination-cluster', 'cluster2', '-o', 'json']));
    assert.equal(c.code, 0, c.stderr);
    assert.deepEqual(json<{ connected: Array<{ source: string; destination: string }> }>(c).connected.map((x) => `${x.source}->${x.destination}`), ['cluster1->cluster2', 'cluster2->cluster1']);
    const cfg = await readFile(join(mesh!.cluster('cluster1').remoteConfigDir, 'cluster2'), 'utf8');
    assert.match(cfg, /cert-file: "\.certs\/cluster2\/client\.crt"/);
    const w = await cli(lab(['status', '--wait', '--wait-duration', '90s', '-o', 'json']));
    assert.equal(w.code, 0, w.stdout + w.stderr);
    const s1 = json<StatusReport>(w);
    for (const cl of s1.clusters) assert.deepEqual([cl.connectivity.expected, cl.connectivity.min], [1, 1]);
  });

  test('connect refuses a cluster to itself and a recorded ID its apiserver contradicts; flag errors exit 2', async () => {
    const self = await cli(lab(['connect', '--cluster', 'cluster1', '--destination-cluster', 'cluster1']));
    assert.equal(self.code, 2);
    assert.match(self.stderr, /cannot connect cluster cluster1 to itself/);
    // A second lab record that says cluster2 has ID 7: its apiserver publishes 2.
    const wrong = labState();
    wrong.name = `${labName}x`;
    wrong.clusters[1]!.id = 7;
    writeLabState(wrong);
    const r = await cli(['connect', '--lab', wrong.name, '--cluster', 'cluster1', '--destination-cluster', 'cluster2']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /recorded with ID 7, but its apiserver publishes ID 2/);
    const none = await cli(['status', '--lab', 'cmtc-nosuchlab']);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /no lab named cmtc-nosuchlab/);
    const badNode = await cli(lab(['inspect', 'ipcache', '--node', 'cluster9/node1']));
    assert.equal(badNode.code, 2);
    assert.match(badNode.stderr, /--node cluster9\/node1: no such node/);
  });

  test('status exits 1 and names the agent when one is down', async () => {
    const node = topo!.nodes[1]!;
    await mesh!.stopAgent(node);
    try {
      const r = await cli(lab(['status', '-o', 'json']));
      assert.equal(r.code, 1);
      const s = json<StatusReport>(r);
      assert.equal(s.ready, false);
      assert.ok(s.notReady.some((x) => x.includes('agent on cluster2/node1 is not reachable')), JSON.stringify(s.notReady));
      const w = await cli(lab(['status', '--wait', '--wait-duration', '2s']));
      assert.equal(w.code, 1);
      assert.match(w.stderr, /not ready after 2s/);
    } finally {
      await mesh!.restartAgent(node);
    }
  });
});
