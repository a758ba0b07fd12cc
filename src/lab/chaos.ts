// The fault rig (issue 17 §1): a mesh of clusters x nodes with steady traffic,
// a fault injected, then recovered, and what it cost measured:
//   - long-lived connections: a paced transfer (transfer.ts, checksummed) from
//     a pod of every cluster to a pod of every other cluster, spanning the
//     whole scenario; broken = the reader failed or the bytes did not match;
//   - long-lived connections through a global service: the same transfer from
//     a pod of every cluster to its cluster's ClusterIP of a global Service
//     whose backends are the server pods of every cluster;
//   - new connections: a stream (conn-stream.ts) from a pod of every cluster
//     to a pod of every other cluster and to the global service; failures
//     counted, and the longest run of failures per target (the outage a
//     client saw);
//   - time until green: every agent ready and every remote connected+ready;
//   - map entries: every node's ipcache sampled every 100 ms against the truth
//     (every registered pod: its identity, and its node as tunnel endpoint
//     unless local; no /32 in a pod CIDR for a pod that is not registered).
// Test-bed code: used by test/chaos/*.test.ts and `npm run chaos`.
import { appendFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { spawn, type ChildProcess } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { ipPrefix, nodesClusterPrefix, servicesClusterPrefix } from '../clustermesh/keys.ts';
import { pollUntil } from '../util/poll.ts';
import { startEcho, waitListening } from './echo.ts';
import { runIn } from './exec.ts';
import { startMesh, type Mesh } from './mesh.ts';
import { type ManagedProcess, childEnv } from './process.ts';
import { createTopology, destroyTopology, type NodeInfo, type PodInfo, type Topology } from './topology.ts';
import { startTransfer, type Transfer, type TransferResult } from './transfer.ts';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CONN_STREAM = resolve(ROOT, 'src', 'lab', 'conn-stream.ts');
const SERVER_PORT = 8080;
/** The global Service every cluster defines (backends: every cluster's server pod). */
const GLOBAL_SERVICE = 'chaos-glob';
const GLOBAL_LABELS = (p: PodInfo): Record<string, string> => ({ app: p.name, [GLOBAL_SERVICE]: 'y' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface ChaosRigOptions {
  clusters?: number;
  nodesPerCluster?: number;
  /** Namespace/link prefix (unique per test file). */
  prefix: string;
  log?: (line: string) => void;
  /** Agent settings merged into every agent config. */
  agent?: { fullSyncIntervalSeconds?: number; syncTimeoutSeconds?: number };
}

export interface ScenarioResult {
  name: string;
  /** What was done, in a few words (the table's second column). */
  fault: string;
  longLived: number;
  /** Of longLived, the transfers through the global service (absent from runs before it existed). */
  viaGlobalService?: number;
  broken: number;
  brokenDetail: string[];
  newConnections: number;
  newFailed: number;
  /** Longest run of failed new connections on one pair, ms (first failure to first success after it). */
  longestOutageMs: number;
  /** Failed new connections by "client cluster -> target: error". */
  newFailures: Record<string, number>;
  /** From recovery to every agent ready and every remote connected and ready, ms. */
  greenAfterMs: number;
  /** Samples (node x 100 ms) in which some ipcache entry was wrong, and the first few. */
  wrongSamples: number;
  samples: number;
  wrongExamples: string[];
  /** Seconds the scenario ran, inject to green. */
  durationS: number;
}

export interface Scenario {
  name: string;
  fault: string;
  /** Injects the fault (returns when injected). */
  inject: (rig: ChaosRig) => Promise<void>;
  /** Run before the traffic starts (e.g. a pod removed so the fault can create it); the maps must then be right again. */
  prepare?: (rig: ChaosRig) => Promise<void>;
  /** How long the fault lasts before recovery, ms. */
  holdMs: number;
  /** Undoes it (returns when the repair is issued, not when the mesh is green). */
  recover: (rig: ChaosRig) => Promise<void>;
  /** Checked once the mesh is green again (a throw fails the scenario). */
  verify?: (rig: ChaosRig) => Promise<void>;
}

interface Truth {
  ip: string;
  identity: number;
  node: NodeInfo;
}

export class ChaosRig {
  private readonly servers: ManagedProcess[] = [];
  private readonly truth = new Map<string, Truth>();
  /**
   * Pods created or deleted during a fault (createPod/deletePod): not checked
   * until the mesh is green again and every agent caught up with every remote
   * (a partitioned cluster's change cannot reach the others before the heal);
   * checked like any other after.
   */
  private readonly unsettled = new Set<string>();

  private constructor(
    readonly topo: Topology,
    readonly mesh: Mesh,
    private readonly log: (line: string) => void,
  ) {}

  static async start(o: ChaosRigOptions): Promise<ChaosRig> {
    const log = o.log ?? (() => undefined);
    const topo = await createTopology({ clusters: o.clusters ?? 3, nodesPerCluster: o.nodesPerCluster ?? 2, podsPerNode: 2, mode: 'clustermesh', prefix: o.prefix });
    let mesh: Mesh | undefined;
    try {
      const dir = await mkdtemp(join(tmpdir(), `${o.prefix}-chaos-`));
      mesh = await startMesh(topo, {
        dir,
        agent: { fullSyncIntervalSeconds: o.agent?.fullSyncIntervalSeconds ?? 5, syncTimeoutSeconds: o.agent?.syncTimeoutSeconds ?? 30 },
        readyTimeoutMs: 240_000,
        progress: (l) => log(l),
      });
      const rig = new ChaosRig(topo, mesh, log);
      const servers = new Set(rig.serverPods());
      // The global service: in every cluster, the server pod's Pod object (its labels the same as
      // its endpoint's, so no relabel follows) and the Service; the EndpointSlice controller
      // derives the backends, the apiservers export them, every agent merges all clusters'.
      for (let c = 1; c <= topo.spec.clusters; c++) {
        const srv = rig.serverPods().find((p) => p.cluster === c)!;
        await mesh.kube(c).applyAll([
          {
            kind: 'Pod',
            metadata: { name: srv.name, namespace: 'default', labels: GLOBAL_LABELS(srv) },
            spec: { nodeName: srv.node.name, containers: [{ name: 'echo', ports: [{ name: 'http', containerPort: SERVER_PORT }] }] },
            status: { phase: 'Running', podIP: srv.ip, conditions: [{ type: 'Ready', status: 'True' }] },
          },
          {
            kind: 'Service',
            metadata: { name: GLOBAL_SERVICE, namespace: 'default', annotations: { 'service.cilium.io/global': 'true' } },
            spec: { clusterIP: rig.globalVip(c), selector: { [GLOBAL_SERVICE]: 'y' }, ports: [{ name: 'http', port: SERVER_PORT, targetPort: SERVER_PORT }] },
          },
        ]);
      }
      for (const p of topo.pods) {
        const ep = await mesh.addPod(p, servers.has(p) ? { labels: GLOBAL_LABELS(p) } : {});
        rig.truth.set(p.ip, { ip: p.ip, identity: ep.identity!, node: p.node });
      }
      for (const p of rig.serverPods()) rig.servers.push(await startEcho(p, SERVER_PORT));
      await Promise.all(rig.serverPods().map((p) => waitListening(p, SERVER_PORT)));
      await rig.waitGreen(120_000);
      await rig.waitGlobalService(120_000);
      return rig;
    } catch (err) {
      await mesh?.stop().catch(() => undefined);
      await destroyTopology(topo).catch(() => undefined);
      throw err;
    }
  }

  /** Servers: pod 1 of node 2 of every cluster; clients: pod 2 of node 1. */
  serverPods(): PodInfo[] {
    return this.topo.pods.filter((p) => p.node.index === 2 && p.index === 1);
  }

  clientPods(): PodInfo[] {
    return this.topo.pods.filter((p) => p.node.index === 1 && p.index === 2);
  }

  /** The global Service's ClusterIP in cluster `c` (ClusterIPs are per cluster). */
  globalVip(c: number): string {
    return `10.96.${c}.20`;
  }

  /** Until every node's agent has the global service with every cluster's server pod as a backend. */
  async waitGlobalService(timeoutMs: number): Promise<void> {
    const want = this.serverPods().map((p) => p.ip).sort();
    const missing = async (): Promise<string[]> => {
      const out: string[] = [];
      for (const n of this.topo.nodes) {
        const svc = (await this.mesh.agent(n).api.services().catch(() => [])).find((s) => s.name === GLOBAL_SERVICE && s.namespace === 'default');
        const got = [...new Set((svc?.frontends ?? []).flatMap((f) => Object.values(f.backends).flat().map((b) => b.ip)))].sort();
        if (JSON.stringify(got) !== JSON.stringify(want)) out.push(`${n.clusterName}/${n.name}: ${got.join(',') || 'no backends'}`);
      }
      return out;
    };
    await pollUntil(
      async ({ notYet }) => {
        const m = await missing();
        return m.length === 0 || notYet(m.join('; '));
      },
      { timeoutMs, intervalMs: 200, describe: `the global service ${GLOBAL_SERVICE} to have backends ${want.join(',')} on every node` },
    );
  }

  /** Every agent ready, every remote of every agent connected and ready. Returns ms waited. */
  async waitGreen(timeoutMs: number): Promise<number> {
    const t0 = Date.now();
    let why = '';
    return pollUntil(
      async ({ notYet }) => {
        const was = why;
        why = await this.notGreen();
        // What green waits for, each time it changes: where the time after a recovery goes.
        if (why !== was && why !== '') this.log(`not green at +${Date.now() - t0} ms: ${why}`);
        return why === '' ? Date.now() - t0 : notYet(why);
      },
      { timeoutMs, intervalMs: 100, describe: 'green (every agent ready, every remote connected and ready)', errors: 'throw' },
    );
  }

  /**
   * Until every agent has seen, from every remote, a heartbeat written at or
   * after `since` (the remote apiserver rewrites it every 15 s): watch events
   * come in revision order, so it has every change made before. Returns ms waited.
   */
  async waitCaughtUp(since: number, timeoutMs: number): Promise<number> {
    const t0 = Date.now();
    return pollUntil(
      async ({ notYet }) => {
        const behind: string[] = [];
        for (const n of this.topo.nodes) {
          const st = await this.mesh.agentStatus(n).catch(() => undefined);
          for (const r of st?.remoteClusters ?? [{ name: '?', heartbeat: undefined }]) {
            const v = r.heartbeat?.value;
            if (!v || Date.parse(v) < since) behind.push(`${n.clusterName}/${n.name} <- ${r.name}: heartbeat ${v ?? 'none'}`);
          }
        }
        return behind.length === 0 ? Date.now() - t0 : notYet(`${behind.length} behind: ${behind.slice(0, 4).join('; ')}`);
      },
      { timeoutMs, intervalMs: 200, describe: `every agent to catch up with its remotes (a heartbeat written at or after ${new Date(since).toISOString()}, after green)` },
    );
  }

  private async notGreen(): Promise<string> {
    for (const n of this.topo.nodes) {
      try {
        const st = await this.mesh.agentStatus(n);
        if (!st.ready) return `${n.name} not ready (${st.phase})`;
        const remotes = this.topo.spec.clusters - 1;
        const ok = st.remoteClusters.filter((r) => r.connected && r.ready).length;
        if (ok < remotes) {
          const notOk = st.remoteClusters.filter((r) => !(r.connected && r.ready)).map((r) => `${r.name} ${r.state}${r.lastError ? ` (${r.lastError.slice(0, 80)})` : ''}`);
          return `${n.clusterName}/${n.name}: ${ok} of ${remotes} remotes connected and ready; ${notOk.join(', ') || 'some missing'}`;
        }
      } catch (err) {
        return `${n.clusterName}/${n.name}: ${(err as Error).message}`;
      }
    }
    return '';
  }

  /** What is wrong in one node's ipcache now (empty when all is right). */
  wrongEntries(n: NodeInfo): string[] {
    let map;
    try {
      map = this.mesh.readIpcache(n);
    } catch (err) {
      return [`${n.name}: ipcache unreadable: ${(err as Error).message}`];
    }
    const out: string[] = [];
    for (const t of this.truth.values()) {
      if (this.unsettled.has(t.ip)) continue;
      const e = map.get(`${t.ip}/32`);
      const wantTunnel = t.node === n ? null : t.node.underlayIP;
      if (!e) out.push(`${n.clusterName}/${n.name}: ${t.ip} missing`);
      else if (e.identity !== t.identity || e.tunnelEndpoint !== wantTunnel) out.push(`${n.clusterName}/${n.name}: ${t.ip} -> identity ${e.identity} via ${e.tunnelEndpoint ?? 'local'}, want ${t.identity} via ${wantTunnel ?? 'local'}`);
    }
    const podCidrs = this.topo.nodes.map((x) => x.podCIDR);
    for (const prefix of map.keys()) {
      if (!prefix.endsWith('/32')) continue;
      const ip = prefix.slice(0, -3);
      if (!this.truth.has(ip) && !this.unsettled.has(ip) && podCidrs.some((c) => inCidr(ip, c))) out.push(`${n.clusterName}/${n.name}: ${ip} has an entry but no pod`);
    }
    return out;
  }

  /** Creates a pod (its endpoint on its node's agent); checked once the mesh has caught up after the fault. */
  async createPod(p: PodInfo): Promise<void> {
    this.unsettled.add(p.ip);
    const ep = await this.mesh.addPod(p);
    this.truth.set(p.ip, { ip: p.ip, identity: ep.identity!, node: p.node });
  }

  /** Deletes a pod's endpoint; once the mesh has caught up after the fault, no node may have an entry for its address. */
  async deletePod(p: PodInfo): Promise<void> {
    this.unsettled.add(p.ip);
    this.truth.delete(p.ip);
    await this.mesh.deletePod(p);
  }

  /** Waits until every node's ipcache is right, unsettled pods included, then checks them like the others. */
  async waitMapsRight(timeoutMs: number): Promise<void> {
    const pending = [...this.unsettled];
    this.unsettled.clear();
    try {
      await pollUntil(
        ({ notYet }) => {
          const wrong = this.topo.nodes.flatMap((n) => this.wrongEntries(n));
          return wrong.length === 0 || notYet(`${wrong.length} wrong: ${wrong.slice(0, 5).join('; ')}`);
        },
        { timeoutMs, intervalMs: 50, describe: 'every node\'s ipcache to be right' },
      );
    } catch (err) {
      for (const ip of pending) this.unsettled.add(ip);
      throw err;
    }
  }

  /** Runs one scenario with steady traffic around it. */
  async run(s: Scenario): Promise<ScenarioResult> {
    if (s.prepare) {
      await s.prepare(this);
      await this.waitMapsRight(120_000);
    }
    const pairs: Array<[PodInfo, PodInfo]> = [];
    for (const c of this.clientPods()) for (const srv of this.serverPods()) if (srv.cluster !== c.cluster) pairs.push([c, srv]);
    // Long-lived: long enough to span the hold and the recovery; paced so every connection stays open.
    const rate = 256 << 10;
    const bytes = Math.ceil(((s.holdMs + 60_000) / 1000) * rate);
    // Idle limit past TCP's own: after a cut of H s the sender's next retransmission (exponential
    // backoff, at most 120 s apart) can come up to H s after the heal; a reader giving up before is not a broken connection.
    const transferTo = (c: PodInfo, ip: string): Transfer => startTransfer(c.netns, `http://${ip}:${SERVER_PORT}/bytes?n=${bytes}`, { rateBytesPerSec: rate, idleTimeoutSeconds: 2 * Math.ceil(s.holdMs / 1000) + 60 });
    const transfers: Array<{ pair: string; t: Transfer }> = [
      ...pairs.map(([c, srv]) => ({ pair: `${c.clusterName}->${srv.clusterName}`, t: transferTo(c, srv.ip) })),
      ...this.clientPods().map((c) => ({ pair: `${c.clusterName}->global service ${this.globalVip(c.cluster)}`, t: transferTo(c, this.globalVip(c.cluster)) })),
    ];
    const streams = this.clientPods().map((c) =>
      new ConnStream(c.clusterName, c.netns, 500, 1000, [
        ...this.serverPods().filter((x) => x.cluster !== c.cluster).map((x) => `${x.ip}:${SERVER_PORT}`),
        `${this.globalVip(c.cluster)}:${SERVER_PORT}`,
      ]),
    );
    const sampler = this.sample();
    const t0 = Date.now();
    let greenAfterMs = -1;
    try {
      await pollUntil(
        ({ notYet }) => {
          const waiting = transfers.filter(({ t }) => t.received() === 0);
          return waiting.length === 0 || notYet(`not started: ${waiting.map(({ t }) => t.describe()).join('; ')}`);
        },
        { timeoutMs: 180_000, intervalMs: 50, describe: 'every long-lived transfer to start' },
      );
      await sleep(1000);
      this.log(`${s.name}: inject (${s.fault})`);
      await s.inject(this);
      await sleep(s.holdMs);
      this.log(`${s.name}: recover`);
      await s.recover(this);
      const tRecover = Date.now();
      await this.waitGreen(180_000);
      greenAfterMs = Date.now() - tRecover;
      // A change made during the fault is checked once every agent has caught up with every remote
      // past the recovery: green alone does not prove it (a remote's stalled connection resumes at
      // the next TCP retransmission after a cut, and status stays connected through a short one).
      if (this.unsettled.size > 0) {
        const waited = await this.waitCaughtUp(tRecover, 120_000);
        this.log(`${s.name}: every agent saw every remote's heartbeat written after the recovery ${waited} ms after green`);
      }
      this.unsettled.clear();
      await s.verify?.(this);
      this.log(`${s.name}: green ${greenAfterMs} ms after recovery`);
      // Let every long transfer finish; they were sized to outlast the scenario.
    } finally {
      for (const st of streams) st.stop();
    }
    const results: Array<{ pair: string; r: TransferResult }> = [];
    for (const { pair, t } of transfers) results.push({ pair, r: await t.done });
    const samples = sampler.stop();
    const brokenDetail = results.filter(({ r }) => r.error !== '' || r.sha256 !== r.announcedSha256 || r.bytes !== bytes).map(({ pair, r }) => `${pair}: ${r.error || `${r.bytes} of ${bytes} bytes, checksum ${r.sha256 === r.announcedSha256 ? 'ok' : 'wrong'}`}`);
    const attempts = streams.flatMap((st) => st.attempts);
    return {
      name: s.name,
      fault: s.fault,
      longLived: transfers.length,
      viaGlobalService: this.clientPods().length,
      broken: brokenDetail.length,
      brokenDetail,
      newConnections: attempts.length,
      newFailed: attempts.filter((a) => !a.ok).length,
      longestOutageMs: longestOutage(attempts),
      newFailures: failureCounts(attempts),
      greenAfterMs,
      wrongSamples: samples.wrong,
      samples: samples.total,
      wrongExamples: samples.examples,
      durationS: Math.round((Date.now() - t0) / 1000),
    };
  }

  /** Samples every node's ipcache every 100 ms until stopped. */
  private sample(): { stop(): { wrong: number; total: number; examples: string[] } } {
    let wrong = 0;
    let total = 0;
    const examples: string[] = [];
    const timer = setInterval(() => {
      for (const n of this.topo.nodes) {
        total++;
        const w = this.wrongEntries(n);
        if (w.length) {
          wrong++;
          for (const e of w) if (examples.length < 10 && !examples.includes(e)) examples.push(e);
        }
      }
    }, 100);
    return {
      stop: () => {
        clearInterval(timer);
        return { wrong, total, examples };
      },
    };
  }

  // ---- faults

  /** Stops (SIGSTOP) or continues (SIGCONT) a cluster's etcd: a hang, not a crash. */
  signalEtcd(cluster: number, sig: 'SIGSTOP' | 'SIGCONT'): void {
    const pid = this.mesh.cluster(cluster).etcd.pid;
    if (pid === undefined) throw new Error(`cluster${cluster}: etcd is not running`);
    process.kill(pid, sig);
  }

  /** Takes the router's port of a cluster down (or up): the cluster is cut off from every other. */
  async partition(cluster: number, down: boolean): Promise<void> {
    await runIn(this.topo.routerNetns, ['ip', 'link', 'set', `rt${cluster}`, down ? 'down' : 'up']);
  }

  nodesOf(cluster: number): NodeInfo[] {
    return this.topo.nodes.filter((n) => n.cluster === cluster);
  }

  /** The etcd leases the keys a cluster's apiserver exports (nodes, ip, services) are attached to. */
  async exportLeases(cluster: number): Promise<Set<string>> {
    const name = this.mesh.cluster(cluster).name;
    const kv = this.mesh.kv(cluster);
    const out = new Set<string>();
    for (const prefix of [ipPrefix, nodesClusterPrefix(name), servicesClusterPrefix(name)]) for (const p of (await kv.list(prefix)).pairs) out.add(p.lease);
    return out;
  }

  /**
   * The uids of the rig's Kubernetes objects in `cluster` (its server's Pod and the global Service),
   * "kind/name=uid", "kind/name missing" when gone: the same after a fault that must leave the
   * Kubernetes objects alone (a lost mesh etcd: they are in the cluster's Kubernetes etcd).
   */
  async kubeObjectUids(cluster: number): Promise<string[]> {
    const srv = this.serverPods().find((p) => p.cluster === cluster)!;
    const out: string[] = [];
    for (const [kind, name] of [['Pod', srv.name], ['Service', GLOBAL_SERVICE]] as const) {
      const o = (await this.mesh.kube(cluster).getRaw(kind, { name, namespace: 'default' })) as { metadata?: { uid?: string } } | undefined;
      out.push(o ? `${kind}/${name}=${o.metadata?.uid ?? '?'}` : `${kind}/${name} missing`);
    }
    return out;
  }

  /** The pod of `cluster`, node `node`, index `index` (1-based). */
  pod(cluster: number, node: number, index: number): PodInfo {
    const p = this.topo.pods.find((x) => x.cluster === cluster && x.node.index === node && x.index === index);
    if (!p) throw new Error(`no pod ${index} on node ${node} of cluster${cluster}`);
    return p;
  }

  async stop(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.stop(1000)));
    try {
      await this.mesh.stop();
    } finally {
      await destroyTopology(this.topo);
    }
  }
}

interface Attempt {
  /** The client's cluster. */
  from: string;
  t: number;
  target: string;
  ok: boolean;
  ms: number;
  error?: string;
}

/** A conn-stream.ts process in a pod, its attempts collected. */
class ConnStream {
  readonly attempts: Attempt[] = [];
  private readonly child: ChildProcess;

  constructor(
    private readonly from: string,
    netns: string,
    intervalMs: number,
    timeoutMs: number,
    targets: string[],
  ) {
    this.child = spawn('ip', ['netns', 'exec', netns, process.execPath, '--import', 'tsx', CONN_STREAM, String(intervalMs), String(timeoutMs), ...targets], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'ignore'],
      env: childEnv(),
    });
    const base = Date.now();
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      try {
        const a = JSON.parse(line) as Omit<Attempt, 'from'>;
        this.attempts.push({ ...a, from: this.from, t: base + a.t });
      } catch {
        // not a result line
      }
    });
  }

  stop(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
  }
}

function failureCounts(attempts: readonly Attempt[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const a of attempts) if (!a.ok) out[`${a.from} -> ${a.target}: ${a.error ?? '?'}`] = (out[`${a.from} -> ${a.target}: ${a.error ?? '?'}`] ?? 0) + 1;
  return out;
}

/** Per target, the longest time from a failed attempt to the next good one. */
export function longestOutage(attempts: readonly Attempt[]): number {
  let longest = 0;
  const byTarget = new Map<string, Attempt[]>();
  for (const a of attempts) byTarget.set(a.target, [...(byTarget.get(a.target) ?? []), a]);
  for (const list of byTarget.values()) {
    list.sort((a, b) => a.t - b.t);
    let firstFail: number | undefined;
    for (const a of list) {
      if (!a.ok) firstFail ??= a.t;
      else if (firstFail !== undefined) {
        longest = Math.max(longest, a.t - firstFail);
        firstFail = undefined;
      }
    }
    if (firstFail !== undefined) longest = Math.max(longest, list[list.length - 1]!.t + list[list.length - 1]!.ms - firstFail);
  }
  return longest;
}

function inCidr(ip: string, cidr: string): boolean {
  const [base, len] = cidr.split('/') as [string, string];
  const v = (s: string): number => s.split('.').reduce((a, o) => a * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(len));
  return Math.floor(v(ip) / size) === Math.floor(v(base) / size);
}

/** The table of RELIABILITY.md from results (goal column: 0 broken, 0 wrong). */
export function reliabilityTable(results: readonly ScenarioResult[]): string {
  const rows = results.map(
    (r) =>
      `| ${r.name} | ${r.fault} | ${r.broken} of ${r.longLived} | ${r.newFailed} of ${r.newConnections}, longest ${(r.longestOutageMs / 1000).toFixed(1)} s | ${r.greenAfterMs < 0 ? 'never' : `${(r.greenAfterMs / 1000).toFixed(1)} s`} | ${r.wrongSamples} of ${r.samples} |`,
  );
  return [
    '| scenario | fault | long-lived connections broken (goal 0) | new connections failed | green after recovery | samples with a wrong map entry (goal 0) |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows,
  ].join('\n');
}

/**
 * Appends a result to the file named by CHAOS_RESULTS (what `npm run chaos`
 * collects into bench/results/reliability.json); nothing without it, so the
 * default test run writes no results file.
 */
export function recordResult(r: ScenarioResult): void {
  const file = process.env.CHAOS_RESULTS;
  if (!file) return;
  appendFileSync(file, `${JSON.stringify(r)}\n`);
}

export interface ReliabilityDoc {
  date: string;
  loadAverage1m: number;
  results: ScenarioResult[];
}

/** RELIABILITY.md: how the figures were made, the table, and what each row failed on. */
export function reliabilityMarkdown(doc: ReliabilityDoc): string {
  const notes = doc.results.flatMap((r) => [
    ...r.brokenDetail.map((b) => `- ${r.name}: broken: ${b}`),
    ...r.wrongExamples.map((w) => `- ${r.name}: wrong entry: ${w}`),
  ]);
  // Runs recorded before the global service was part of the traffic say so (the text follows the data).
  const global = doc.results.length > 0 && doc.results.every((r) => (r.viaGlobalService ?? 0) > 0);
  return [
    '# Reliability: the fault suite',
    '',
    'Produced by `npm run chaos` (scripts/chaos.sh): each family of test/chaos/*.test.ts starts a',
    'mesh of 3 clusters x 2 nodes (src/lab/chaos.ts) with steady traffic: a paced, checksummed',
    ...(global
      ? [
          'transfer from a pod of every cluster to a pod of every other cluster and one to its',
          "cluster's ClusterIP of a global Service backed by a pod of every cluster, spanning the scenario,",
          'and a stream of new connections to the same targets (every 500 ms to each in turn per client, 1 s',
        ]
      : [
          'transfer from a pod of every cluster to a pod of every other cluster, spanning the scenario,',
          'and a stream of new connections between the same pods (every 500 ms to each in turn per client, 1 s',
        ]),
    'timeout). Every node\'s ipcache is compared with the truth every 100 ms (every pod: its',
    'identity and its node; no entry for an address without a pod). A fault is injected, held,',
    'recovered; "green" is every agent ready with every remote connected and synced. Each',
    'scenario fails on a broken connection or a wrong entry (a tier of its own, not in ./scripts/test.sh).',
    '',
    `Run of ${doc.date} (1-minute load average ${doc.loadAverage1m} at the end: new-connection`,
    'timeouts on a loaded 2-core machine include scheduling delays, not only the fault).',
    '',
    '<!-- results: bench/results/reliability.json -->',
    reliabilityTable(doc.results),
    '',
    ...(notes.length ? ['What failed:', '', ...notes, ''] : ['No long-lived connection broke and no sampled map entry was wrong.', '']),
    'The 2-minute partition runs only with `CHAOS_LONG=1 npm run chaos` (about 4 minutes more);',
    'without it the table has no row for it. A pod created or deleted during a fault is checked',
    "once every agent has seen each remote's heartbeat written after the recovery (a partitioned",
    'cluster cannot tell the others before the heal; green alone does not prove the catch-up).',
    ...(global ? [] : ['This run predates the global service in the traffic (src/lab/chaos.ts has it now): rerun `npm run chaos`.']),
    '',
  ].join('\n');
}
