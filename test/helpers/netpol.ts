// The network-policy test model of the upstream Kubernetes e2e suite
// (test/e2e/network/netpol), rebuilt for the lab: namespaces of pods that all
// serve TCP and UDP on 80 and 81, every ordered pair of pods probed at once
// after each change, the outcome compared with a truth table of what the
// policies allow, and the difference printed as a grid.
//
// Written for this project from the ideas of the upstream model (its grid
// notation: '.' reachable / matching, 'X' not reachable / mismatch); no code
// of it is copied.
//
// The lab is real: `labUp` (etcd, apiserver, the Kubernetes API, an agent and a
// kubelet per node), pods and policies written to the cluster's Kubernetes API
// (which validates them as it does for kubectl), probes sent from inside each pod's network namespace by
// the pod's own process (`clustermesh lab workload netpol`, src/lab/netpol.ts).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient } from '../../src/agent/client.ts';
import type { DatapathEvent } from '../../src/datapath/maps/events.ts';
import { BpfMap } from '../../src/datapath/libbpf/index.ts';
import * as ipcache from '../../src/datapath/maps/ipcache.ts';
import { collectAgentEvents, readNodeMetrics } from '../../src/lab/datapath.ts';
import { labDown, labUp } from '../../src/lab/lab.ts';
import { KubeObjects } from '../../src/lab/kube-objects.ts';
import { netpolHealth, probeFrom, type ProbeProtocol, type ProbeResult } from '../../src/lab/netpol.ts';
import type { LabState } from '../../src/lab/state.ts';
import { isPodReady } from '../../src/model/index.ts';
import { loadKubeConnection } from '../../src/sources/kubernetes/kubeconfig.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const sameLabels = (a: Record<string, string> | undefined, b: Record<string, string>): boolean => {
  const ka = Object.keys(a ?? {});
  return ka.length === Object.keys(b).length && ka.every((k) => a![k] === b[k]);
};

export const MODEL_PORTS = [80, 81] as const;
export const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';
const POLICY_DROPS = new Set(['DROP_POLICY', 'DROP_POLICY_DENY']);
const PROTO_NUMBER: Record<ProbeProtocol, number> = { tcp: 6, udp: 17 };

// ---------------------------------------------------------------------------
// The model and its truth tables

export interface ModelPod {
  /** Lab cluster name (cluster1, cluster2...). */
  cluster: string;
  namespace: string;
  name: string;
  /** Node of the cluster the pod is pinned to (spec.nodeName). */
  node: string;
  /** Row/column name in the grids: `x/a`, or `c2:x/a` in a model of several clusters. */
  key: string;
}

/** Which pods an expectation is about: every field given must match; {} is every pod. */
export interface PodMatch {
  cluster?: string;
  namespace?: string;
  name?: string;
}

export function podKey(p: { cluster: string; namespace: string; name: string }, clusters: number): string {
  return clusters > 1 ? `c${p.cluster.replace(/^cluster/, '')}:${p.namespace}/${p.name}` : `${p.namespace}/${p.name}`;
}

/** A podKey given as 'x/a' (single cluster) or 'c2:x/a' is a PodMatch too. */
function toMatch(m: PodMatch | string): PodMatch {
  if (typeof m !== 'string') return m;
  const r = /^(?:c(\d+):)?([^/]+)\/(.+)$/.exec(m);
  if (!r) throw new Error(`pod '${m}': expected namespace/pod or cN:namespace/pod`);
  return { ...(r[1] ? { cluster: `cluster${r[1]}` } : {}), namespace: r[2]!, name: r[3]! };
}

function matches(p: ModelPod, m: PodMatch): boolean {
  return (m.cluster === undefined || m.cluster === p.cluster) && (m.namespace === undefined || m.namespace === p.namespace) && (m.name === undefined || m.name === p.name);
}

/** Reachable or not, for every ordered pair of the model's pods. */
export class TruthTable {
  private readonly values = new Map<string, boolean>();
  constructor(
    readonly pods: readonly ModelPod[],
    initial = true,
  ) {
    for (const f of pods) for (const t of pods) this.values.set(`${f.key}>${t.key}`, initial);
  }
  get(from: ModelPod, to: ModelPod): boolean {
    return this.values.get(`${from.key}>${to.key}`)!;
  }
  set(from: ModelPod, to: ModelPod, v: boolean): void {
    this.values.set(`${from.key}>${to.key}`, v);
  }
  /** Every pair from a pod matching `from` to a pod matching `to`. */
  expect(from: PodMatch | string, to: PodMatch | string, v: boolean): this {
    const fm = toMatch(from);
    const tm = toMatch(to);
    const fs = this.pods.filter((p) => matches(p, fm));
    const ts = this.pods.filter((p) => matches(p, tm));
    if (fs.length === 0 || ts.length === 0) throw new Error(`expectation matches no pod: ${JSON.stringify(from)} -> ${JSON.stringify(to)}`);
    for (const f of fs) for (const t of ts) this.set(f, t, v);
    return this;
  }
  /** Everything into the pods matching `to`. */
  ingress(to: PodMatch | string, v: boolean): this {
    return this.expect({}, to, v);
  }
  /** Everything out of the pods matching `from`. */
  egress(from: PodMatch | string, v: boolean): this {
    return this.expect(from, {}, v);
  }
  /** The grid: one row per source, one column per destination. */
  grid(mark: (from: ModelPod, to: ModelPod) => string): string {
    const w = Math.max(...this.pods.map((p) => p.key.length));
    const head = `${''.padEnd(w)} | ${this.pods.map((p) => p.key.padEnd(w)).join(' ')}`;
    const rows = this.pods.map((f) => `${f.key.padEnd(w)} | ${this.pods.map((t) => mark(f, t).padEnd(w)).join(' ')}`);
    return [head, '-'.repeat(head.length), ...rows].join('\n');
  }
}

// ---------------------------------------------------------------------------
// Policies as a user writes them

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: Array<{ key: string; operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist'; values?: string[] }>;
}
export interface NetpolPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: { cidr: string; except?: string[] };
}
export interface NetpolPort {
  port?: number | string;
  endPort?: number;
  protocol?: 'TCP' | 'UDP' | 'SCTP';
}
export interface NetpolSpec {
  podSelector: LabelSelector;
  policyTypes?: Array<'Ingress' | 'Egress'>;
  ingress?: Array<{ from?: NetpolPeer[]; ports?: NetpolPort[] }>;
  egress?: Array<{ to?: NetpolPeer[]; ports?: NetpolPort[] }>;
}

/**
 * A NetworkPolicy as upstream's builders make it: without explicit
 * policyTypes, the types are those whose rules the spec has (an `ingress` key:
 * Ingress, an `egress` key: Egress). Left to Kubernetes' own defaulting, a
 * policy with egress rules would isolate ingress as well.
 */
export function networkPolicy(namespace: string, name: string, spec: NetpolSpec): Record<string, unknown> {
  const policyTypes = spec.policyTypes ?? [...(spec.ingress ? ['Ingress' as const] : []), ...(spec.egress ? ['Egress' as const] : [])];
  if (policyTypes.length === 0) throw new Error(`policy ${namespace}/${name}: give ingress, egress or policyTypes`);
  return { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace }, spec: { ...spec, policyTypes } };
}

// ---------------------------------------------------------------------------
// The lab

export interface ModelLabOptions {
  /** Lab name: unique per run (cmt…). */
  name: string;
  clusters: number;
  nodes: number;
  /** Namespaces to create in every cluster. */
  namespaces: readonly string[];
  pods: ReadonlyArray<Omit<ModelPod, 'key'>>;
  log?: (line: string) => void;
}

interface RunningPod extends ModelPod {
  ip: string;
  control: string;
}

export interface ValidateOptions {
  port: number;
  protocol?: ProbeProtocol;
  /** Keep probing a mismatching table until this long after the call (default 15 s). */
  deadlineMs?: number;
}

export interface CaseStats {
  rounds: number;
  probes: number;
  deniedChecked: number;
}

export class ModelLab {
  readonly pods: RunningPod[] = [];
  private state!: LabState;
  private readonly kubes = new Map<string, KubeObjects>();
  private readonly agents = new Map<string, AgentClient>();
  private readonly events = new Map<string, ReturnType<typeof collectAgentEvents>>();
  private readonly controlDir: string;
  private readonly log: (line: string) => void;
  private root: string | undefined;
  /** Pod labels as the model has them, and what a case relabelled (reset() restores them). */
  private readonly baseLabels = new Map<string, Record<string, string>>();
  private readonly relabelledPods = new Set<string>();
  private readonly relabelledNamespaces = new Set<string>();
  stats: CaseStats = { rounds: 0, probes: 0, deniedChecked: 0 };

  private constructor(readonly o: ModelLabOptions) {
    this.controlDir = mkdtempSync(join(tmpdir(), 'cmtnp-'));
    this.log = o.log ?? ((l) => console.log(`# ${l}`));
  }

  /** Brings up the lab, its namespaces and pods, and waits until every pod reaches every other. */
  static async start(o: ModelLabOptions): Promise<ModelLab> {
    const m = new ModelLab(o);
    try {
      await m.init();
    } catch (err) {
      await m.stop().catch((e: unknown) => m.log(`cleanup after a failed start: ${(e as Error).message}`));
      throw err;
    }
    return m;
  }

  private async init(): Promise<void> {
    // A lab root of our own: nothing another lab or test has is visible to this one.
    this.root = mkdtempSync(join(tmpdir(), 'cmtnp-root-'));
    process.env.CLUSTERMESH_LAB_ROOT = this.root;
    const t0 = Date.now();
    const up = await labUp({ name: this.o.name, clusters: this.o.clusters, nodes: this.o.nodes, readyTimeoutMs: 240_000 });
    this.state = up.state;
    this.log(`lab ${this.o.name} up (${this.o.clusters} cluster(s) x ${this.o.nodes} node(s)) in ${(up.totalMs / 1000).toFixed(1)} s`);
    for (const n of this.state.nodes) {
      this.agents.set(`${n.cluster}/${n.name}`, new AgentClient(n.socket));
      this.events.set(`${n.cluster}/${n.name}`, collectAgentEvents(n.socket));
    }
    for (const c of this.state.clusters) this.kubes.set(c.name, new KubeObjects(loadKubeConnection({ kubeconfig: this.state.kubeconfig!, context: c.name }).kubeConfig));

    const t1 = Date.now();
    for (const c of this.state.clusters) {
      const docs: unknown[] = this.o.namespaces.map((ns) => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: this.namespaceLabels(ns) } }));
      for (const p of this.o.pods.filter((x) => x.cluster === c.name)) {
        const key = podKey(p, this.o.clusters);
        const control = join(this.controlDir, `${key.replace(/[:/]/g, '-')}.sock`);
        this.pods.push({ ...p, key, ip: '', control });
        docs.push(this.podManifest(p, control, { pod: p.name }));
      }
      await this.applyDocs(c.name, docs);
    }
    // Rows and columns in the order the caller listed the pods.
    this.pods.sort((a, b) => this.o.pods.findIndex((p) => p.cluster === a.cluster && p.namespace === a.namespace && p.name === a.name) - this.o.pods.findIndex((p) => p.cluster === b.cluster && p.namespace === b.namespace && p.name === b.name));
    for (const p of this.pods) this.baseLabels.set(p.key, { pod: p.name });

    // Generous: on a machine shared with other test runs, nine node processes may take minutes to start.
    const end = Date.now() + 300_000;
    for (;;) {
      const missing: string[] = [];
      for (const c of this.state.clusters) {
        const stored = await this.kube(c.name).list('Pod');
        for (const p of this.pods.filter((x) => x.cluster === c.name)) {
          const s = stored.find((x) => x.metadata.namespace === p.namespace && x.metadata.name === p.name);
          if (s?.status.podIP && isPodReady(s)) p.ip = s.status.podIP;
          else missing.push(`${p.key} (${s ? `${s.status.phase ?? 'no phase'}, ip ${s.status.podIP ?? 'none'}` : 'not in the API'})`);
        }
      }
      if (missing.length === 0) break;
      if (Date.now() > end) {
        const logs = this.state.nodes.map((n) => `${n.cluster}/${n.name} kubelet.log (last lines):\n${tail(join(n.dir ?? '', 'kubelet.log'), 8)}`).join('\n');
        throw new Error(`pods not ready after 300 s: ${missing.join(', ')}\n${logs}`);
      }
      await sleep(500);
    }
    for (const p of this.pods) {
      const h = await netpolHealth(p.control);
      assert.equal(h.who, `${p.cluster}/${p.namespace}/${p.name}`, `the pod behind ${p.control} is ${p.key}`);
    }
    // A precondition of every case: a policy is written per endpoint ID, so two pods of a node sharing
    // one would share (or lose) their policy. Known to happen when pods are added at once (issue 19 part 1).
    const dups = await this.duplicateEndpointIds();
    if (dups.length) throw new Error(`endpoint IDs are not unique per node, so policies would land on the wrong pods (issue 19 part 1): ${dups.join('; ')}`);
    this.log(`${this.pods.length} pods running in ${((Date.now() - t1) / 1000).toFixed(1)} s: ${this.pods.map((p) => `${p.key}@${p.node}=${p.ip}`).join(' ')}`);
    // Every pair reaches every other before the first case (ipcache filled everywhere, servers listening).
    for (const protocol of ['tcp', 'udp'] as const) {
      for (const port of MODEL_PORTS) await this.validate(new TruthTable(this.pods), { port, protocol, deadlineMs: 60_000 });
    }
    this.log(`model ready ${((Date.now() - t0) / 1000).toFixed(1)} s after start: every pair reaches every other on TCP and UDP 80 and 81`);
  }

  namespaceLabels(ns: string, extra: Record<string, string> = {}): Record<string, string> {
    return { ns, [NAMESPACE_NAME_LABEL]: ns, ...extra };
  }

  private podManifest(p: Omit<ModelPod, 'key'>, control: string, labels: Record<string, string>): Record<string, unknown> {
    return {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: p.name, namespace: p.namespace, labels },
      spec: {
        nodeName: p.node,
        containers: [
          {
            name: 'netpol',
            command: ['clustermesh', 'lab', 'workload', 'netpol', '--tcp', MODEL_PORTS.join(','), '--udp', MODEL_PORTS.join(','), '--control', control],
            // Named as upstream names them: serve-<port>-<protocol>.
            ports: MODEL_PORTS.flatMap((port) => (['TCP', 'UDP'] as const).map((protocol) => ({ name: `serve-${port}-${protocol.toLowerCase()}`, containerPort: port, protocol }))),
          },
        ],
      },
    };
  }

  /** A client of the cluster's Kubernetes API. */
  kube(cluster: string): KubeObjects {
    const k = this.kubes.get(cluster);
    if (!k) throw new Error(`no cluster ${cluster} in lab ${this.o.name}`);
    return k;
  }

  pod(key: string): RunningPod {
    const p = this.pods.find((x) => x.key === key);
    if (!p) throw new Error(`no pod ${key} in the model (${this.pods.map((x) => x.key).join(' ')})`);
    return p;
  }

  get clusterNames(): string[] {
    return this.state.clusters.map((c) => c.name);
  }

  /** Writes documents to the cluster's Kubernetes API (created, or replaced whole), in order; the API validates each. */
  async applyDocs(cluster: string, docs: readonly unknown[]): Promise<void> {
    await this.kube(cluster).applyAll(docs, `model objects for ${cluster}`);
  }

  /** Creates or updates policies in a cluster, then waits until every agent of that cluster has applied all of its policies. */
  async applyPolicies(cluster: string, ...policies: Array<Record<string, unknown>>): Promise<void> {
    await this.applyDocs(cluster, policies);
    await this.waitPolicies();
  }

  /** Deletes every policy of every cluster and waits until no agent enforces one. */
  async deleteAllPolicies(): Promise<void> {
    for (const c of this.clusterNames) {
      const k = this.kube(c);
      for (const kind of ['NetworkPolicy', 'CiliumNetworkPolicy'] as const) for (const p of await k.list(kind)) await k.deleteObject(p);
    }
    await this.waitPolicies();
  }

  /** Every agent holds as many applied policies as its cluster's API, with nothing pending. */
  async waitPolicies(timeoutMs = 30_000): Promise<void> {
    const want = new Map<string, number>();
    for (const c of this.clusterNames) {
      const k = this.kube(c);
      want.set(c, (await k.list('NetworkPolicy')).length + (await k.list('CiliumNetworkPolicy')).length);
    }
    const end = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      const off: string[] = [];
      for (const n of this.state.nodes) {
        const st = (await this.agents.get(`${n.cluster}/${n.name}`)!.status()).policy;
        if (st.parseErrors.length) throw new Error(`${n.cluster}/${n.name} refused a policy: ${JSON.stringify(st.parseErrors)}`);
        const w = want.get(n.cluster)!;
        if (st.policies.objects !== w || st.policies.applied !== w || st.pending !== 0) off.push(`${n.cluster}/${n.name}: ${st.policies.applied}/${st.policies.objects} applied of ${w}, ${st.pending} pending`);
      }
      if (off.length === 0) return;
      last = off.join('; ');
      if (Date.now() > end) throw new Error(`agents did not apply the policies within ${timeoutMs} ms: ${last}`);
      await sleep(50);
    }
  }

  /** Rewrites a pod's labels (what `kubectl label pod` does): same pod, same uid and address. */
  async setPodLabels(key: string, labels: Record<string, string>): Promise<void> {
    const p = this.pod(key);
    const k = this.kube(p.cluster);
    const ref = { namespace: p.namespace, name: p.name };
    const stored = await k.get('Pod', ref);
    if (!stored) throw new Error(`pod ${key} is not in the API of ${p.cluster}`);
    this.relabelledPods.add(key);
    const before = await this.identityOf(key);
    await k.setLabels('Pod', ref, labels);
    const after = (await k.get('Pod', ref))!;
    assert.equal(after.metadata.uid, stored.metadata.uid, 'a relabel keeps the pod (same uid)');
    await this.settleRelabel(key, sameLabels(stored.metadata.labels, labels) ? undefined : before);
  }

  /**
   * Waits until a relabelled pod's identity has settled everywhere: its own
   * agent gives it a new identity (when the labels changed), every node's
   * ipcache maps its address to that identity, and no agent has policy work
   * pending. Without this, the next case's probes race the propagation: a
   * packet carrying the new identity reaches a node whose policy does not
   * know it yet, and is dropped while the pair is allowed.
   */
  private async settleRelabel(key: string, before: number | undefined, timeoutMs = 30_000): Promise<void> {
    const p = this.pod(key);
    const end = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      const id = await this.identityOf(key);
      const off: string[] = [];
      if (id === undefined || id === before) off.push(`${p.cluster}/${p.node}: identity ${id ?? 'none'}${id === before ? ' (not changed yet)' : ''}`);
      else {
        for (const n of this.state.nodes) {
          const map = BpfMap.openPinned(join(n.pinDir, ipcache.MAP_NAME));
          let got: number | undefined;
          try {
            got = ipcache.match(map, p.ip)?.identity;
          } finally {
            map.close();
          }
          if (got !== id) off.push(`${n.cluster}/${n.name}: ipcache ${p.ip} -> ${got ?? 'none'}, want ${id}`);
        }
      }
      if (off.length === 0) break;
      last = off.join('; ');
      if (Date.now() > end) throw new Error(`relabel of ${key} did not settle in ${timeoutMs} ms: ${last}`);
      await sleep(50);
    }
    await this.waitPolicies();
  }

  /** Rewrites a namespace's labels in one cluster (or all). */
  async setNamespaceLabels(ns: string, labels: Record<string, string>, clusters: readonly string[] = this.clusterNames): Promise<void> {
    for (const c of clusters) {
      this.relabelledNamespaces.add(`${c}/${ns}`);
      await this.applyNamespaceLabels(c, ns, labels);
    }
  }

  /** Writes a namespace's labels and waits until its pods' identities have settled (see settleRelabel). */
  private async applyNamespaceLabels(cluster: string, ns: string, labels: Record<string, string>): Promise<void> {
    const stored = await this.kube(cluster).get('Namespace', { name: ns });
    const changed = !sameLabels(stored?.metadata.labels, labels);
    const pods = this.pods.filter((p) => p.cluster === cluster && p.namespace === ns);
    const before = new Map<string, number | undefined>();
    for (const p of pods) before.set(p.key, changed ? await this.identityOf(p.key) : undefined);
    await this.applyDocs(cluster, [{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels } }]);
    // Identities derive from namespace labels too: every pod of the namespace moves to a new one.
    for (const p of pods) await this.settleRelabel(p.key, before.get(p.key));
  }

  /** After a case: no policy anywhere, every pod and namespace labelled as the model has it. */
  async reset(): Promise<void> {
    await this.deleteAllPolicies();
    for (const key of this.relabelledPods) await this.setPodLabels(key, this.baseLabels.get(key)!);
    this.relabelledPods.clear();
    for (const cns of this.relabelledNamespaces) {
      const [c, ns] = cns.split('/') as [string, string];
      await this.applyNamespaceLabels(c, ns, this.namespaceLabels(ns));
    }
    this.relabelledNamespaces.clear();
  }

  /** The identity each agent gives the pod now (for reports). */
  async identityOf(key: string): Promise<number | undefined> {
    const p = this.pod(key);
    const eps = await this.agents.get(`${p.cluster}/${p.node}`)!.listEndpoints();
    return eps.find((e) => e.namespace === p.namespace && e.podName === p.name)?.identity ?? undefined;
  }

  /** `cluster/node: endpoint ID n held by ns/a, ns/b` for every ID two endpoints of a node share. */
  async duplicateEndpointIds(): Promise<string[]> {
    const out: string[] = [];
    for (const n of this.state.nodes) {
      const byId = new Map<number, string[]>();
      for (const e of await this.agents.get(`${n.cluster}/${n.name}`)!.listEndpoints()) byId.set(e.endpointID, [...(byId.get(e.endpointID) ?? []), `${e.namespace}/${e.podName}`]);
      for (const [id, pods] of byId) if (pods.length > 1) out.push(`${n.cluster}/${n.name}: endpoint ID ${id} held by ${pods.join(', ')}`);
    }
    return out;
  }

  private policyDrops(): number {
    let n = 0;
    for (const node of this.state.nodes) for (const r of readNodeMetrics(node.pinDir)) if (POLICY_DROPS.has(r.reasonName)) n += Number(r.packets);
    return n;
  }

  private async drainEvents(): Promise<DatapathEvent[]> {
    const out: DatapathEvent[] = [];
    for (const c of this.events.values()) out.push(...(await c.drain()).splice(0));
    return out;
  }

  /** One round: every ordered pair probed at once. */
  private async probeAll(port: number, protocol: ProbeProtocol): Promise<Map<string, ProbeResult>> {
    const out = new Map<string, ProbeResult>();
    await Promise.all(
      this.pods.map(async (from) => {
        const results = await probeFrom(from.control, this.pods.map((to) => ({ ip: to.ip, port, protocol, timeoutMs: 1000 })));
        this.pods.forEach((to, i) => out.set(`${from.key}>${to.key}`, results[i]!));
      }),
    );
    this.stats.probes += out.size;
    this.stats.rounds++;
    return out;
  }

  /**
   * Probes every pair until the outcome matches `expected` (loopback pairs do
   * not count, as upstream), then checks that every refused pair was refused by
   * policy: a policy drop event for its flow on a node, the nodes' policy drop
   * counters grown by at least the number of refused pairs, and no policy drop
   * for a pair that is allowed. Fails with the expected, observed and
   * comparison grids.
   */
  async validate(expected: TruthTable, o: ValidateOptions): Promise<void> {
    const protocol = o.protocol ?? 'tcp';
    const end = Date.now() + (o.deadlineMs ?? 15_000);
    const what = `${protocol.toUpperCase()} ${o.port}`;
    for (let attempt = 1; ; attempt++) {
      await this.drainEvents();
      const dropsBefore = this.policyDrops();
      const seen = await this.probeAll(o.port, protocol);
      const ok = (f: ModelPod, t: ModelPod): boolean => {
        const r = seen.get(`${f.key}>${t.key}`)!;
        return r.ok && r.answeredBy === `${t.cluster}/${t.namespace}/${t.name}`;
      };
      const wrong = this.pods.flatMap((f) => this.pods.filter((t) => f !== t && ok(f, t) !== expected.get(f, t)).map((t) => ({ f, t })));
      if (wrong.length === 0) {
        await sleep(100);
        this.checkDrops(expected, o.port, protocol, await this.drainEvents(), this.policyDrops() - dropsBefore, what);
        return;
      }
      if (Date.now() < end) {
        await sleep(500);
        continue;
      }
      const detail = wrong
        .slice(0, 12)
        .map(({ f, t }) => {
          const r = seen.get(`${f.key}>${t.key}`)!;
          return `  ${f.key} -> ${t.key}: expected ${expected.get(f, t) ? 'reachable' : 'refused'}, got ${r.ok ? `answered by ${r.answeredBy}` : r.error} (${r.ms} ms)`;
        })
        .join('\n');
      assert.fail(
        `${what}: ${wrong.length} of ${this.pods.length * (this.pods.length - 1)} pairs wrong after ${attempt} rounds (loopback ignored)\n` +
          `expected:\n${expected.grid((f, t) => (expected.get(f, t) ? '.' : 'X'))}\n\n` +
          `observed:\n${expected.grid((f, t) => (ok(f, t) ? '.' : 'X'))}\n\n` +
          `comparison ('X' = wrong):\n${expected.grid((f, t) => (f === t ? '-' : ok(f, t) === expected.get(f, t) ? '.' : 'X'))}\n\n${detail}`,
      );
    }
  }

  private checkDrops(expected: TruthTable, port: number, protocol: ProbeProtocol, events: DatapathEvent[], counted: number, what: string): void {
    const drops = events.filter((e) => e.type === 'drop' && POLICY_DROPS.has(e.reasonName) && e.dstPort === port && e.protocol === PROTO_NUMBER[protocol]);
    const flow = (f: RunningPod, t: RunningPod): boolean => drops.some((e) => e.srcIp === f.ip && e.dstIp === t.ip);
    const refused = this.pods.flatMap((f) => this.pods.filter((t) => f !== t && !expected.get(f, t)).map((t) => ({ f, t })));
    const silent = refused.filter(({ f, t }) => !flow(f, t)).map(({ f, t }) => `${f.key}->${t.key}`);
    assert.deepEqual(silent, [], `${what}: refused pairs without a policy drop event (refused by something else?)`);
    const allowedDropped = this.pods.flatMap((f) => this.pods.filter((t) => f !== t && expected.get(f, t) && flow(f, t)).map((t) => `${f.key}->${t.key}`));
    assert.deepEqual(allowedDropped, [], `${what}: allowed pairs with policy drops`);
    assert.ok(counted >= refused.length, `${what}: the nodes' policy drop counters grew by ${counted}, less than the ${refused.length} refused pairs`);
    this.stats.deniedChecked += refused.length;
  }

  /** Stops the lab and removes everything (also after a failed start). */
  async stop(): Promise<void> {
    for (const e of this.events.values()) e.stop();
    this.events.clear();
    for (const a of this.agents.values()) a.close();
    this.agents.clear();
    this.kubes.clear();
    try {
      // A failed labUp removed its lab already.
      if (this.root && existsSync(join(this.root, this.o.name))) await labDown(this.o.name, { progress: (l) => this.log(l) });
    } finally {
      rmSync(this.controlDir, { recursive: true, force: true });
      if (this.root) rmSync(this.root, { recursive: true, force: true });
    }
  }
}

function tail(file: string, lines: number): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).map((l) => `  ${l}`).join('\n');
  } catch (err) {
    return `  (${(err as Error).message})`;
  }
}

export function uniqueLabName(prefix: string): string {
  return `${prefix}${randomBytes(3).toString('hex')}`;
}

/** One case of a suite: policies and probes against the running model; the suite resets the model after it. */
export interface ModelCase {
  name: string;
  /** Expected to fail until the named work lands (node:test todo: run and reported, not a failure). */
  todo?: string;
  /** Not run here, and why (reported as skipped). */
  skip?: string;
  run: (m: ModelLab, expect: () => TruthTable) => Promise<void>;
}

/** A describe() that starts the model once, runs every case as its own test (model reset after each), and prints a summary with timings. */
export function modelSuite(title: string, start: () => ModelLabOptions, cases: readonly ModelCase[]): void {
  describe(title, { timeout: 1_800_000 }, () => {
    let m: ModelLab | undefined;
    const t0 = Date.now();
    const outcomes: string[] = [];
    before(async () => {
      m = await ModelLab.start(start());
    });
    after(async () => {
      try {
        await m?.stop();
      } finally {
        console.log(`# ${outcomes.length} cases in ${((Date.now() - t0) / 1000).toFixed(0)} s (lab up and down included):\n# ${outcomes.join('\n# ')}`);
      }
    });
    for (const c of cases) {
      if (c.skip) {
        test(c.name, { skip: c.skip }, () => undefined);
        continue;
      }
      test(c.name, c.todo ? { todo: c.todo } : {}, async () => {
        const lab = m!;
        const c0 = Date.now();
        lab.stats = { rounds: 0, probes: 0, deniedChecked: 0 };
        let outcome = 'failed';
        try {
          await c.run(lab, () => new TruthTable(lab.pods));
          outcome = 'passed';
        } finally {
          await lab.reset();
          const st = lab.stats;
          outcomes.push(
            `${outcome.padEnd(6)} ${((Date.now() - c0) / 1000).toFixed(1).padStart(5)} s  ${st.rounds} rounds, ${st.probes} probes, ${st.deniedChecked} refusals matched to drop events${c.todo ? ` [todo: ${c.todo}]` : ''}  ${c.name}`,
          );
        }
      });
    }
  });
}
