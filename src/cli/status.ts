// `clustermesh status`: per cluster, whether its etcd and apiserver answer,
// whether every node's agent is connected to every remote cluster (min / avg /
// max over the nodes), and per remote cluster configured / connected / ready,
// synced prefixes, counts, reconnections and the last error. Gathered from
// the etcds (a TLS get of the cluster's own cluster-config) and the agents'
// GET /v1/status; `summarize` turns the probes into the report and is pure.
import { Command, Option } from 'commander';
import type { AgentStatus, RemoteSummary } from '../agent/status.ts';
import { scanConfigDir } from '../clustermesh/config.ts';
import { clusterConfigKey, heartbeatKey, servicesPrefix, SYNCED_PREFIX_NAMES, type SyncedPrefixName } from '../clustermesh/keys.ts';
import { decodeClusterConfig } from '../clustermesh/wire.ts';
import { DEFAULT_NAMESPACE } from '../install/settings.ts';
import { KvClient } from '../kvstore/client.ts';
import { sameProcessAlive, type LabState } from '../lab/state.ts';
import { remoteExportsReadiness, serviceExportsSyncedKey } from '../mcs/export.ts';
import { formatMcsView, readMcsView, type McsView } from '../mcs/view.ts';
import { KubeHttp } from '../sources/kubernetes/http.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import { PollTimeoutError, pollUntil } from '../util/poll.ts';
import { action, CliError, Closer, EXIT_ERROR, EXIT_NOT_OK, EXIT_OK, example, outputOption, parseDurationFlag, printJson, type OutputFormat } from './common.ts';
import { addTargetFlags, agentClientFor, resolveTargets, type ClusterTarget, type NodeTarget, type TargetFlags, type Targets } from './targets.ts';

/** A heartbeat older than this means the apiserver is not writing (its default interval is 15 s). */
export const HEARTBEAT_STALE_MS = 60_000;

// ---- probes (what was observed) --------------------------------------------

export interface EtcdProbe {
  reachable: boolean;
  endpoint: string | null;
  /** The ID in the cluster's own cilium/cluster-config/<name>, null when missing. */
  clusterConfigId: number | null;
  /** cilium/.heartbeat, RFC3339. */
  heartbeat: string | null;
  /** '<ns>/<name>' of every service the cluster exports (global services). */
  exportedServices: string[];
  /**
   * Whether another cluster's MCS controller merges this cluster's
   * ServiceExports (remoteExportsReadiness: cluster-config advertises
   * serviceExportsEnabled and the serviceexports canary is there), and if
   * not, why. Absent when etcd was not read.
   */
  serviceExports?: { ready: true } | { ready: false; why: string };
  error: string | null;
}

export interface NodeProbe {
  node: NodeTarget;
  status: AgentStatus | null;
  error: string | null;
}

export interface ClusterProbe {
  name: string;
  id: number | undefined;
  /** null: no etcd connection known (explicit mode without --etcd-config). */
  etcd: EtcdProbe | null;
  /** Why etcd was not probed, when known (an install's etcd is a pod: the agents reach it, this host does not). */
  etcdNote?: string | undefined;
  /**
   * Without etcd: '<ns>/<name>' of the services this cluster exports as one
   * of its agents programs them (global and shared), or why it could not be
   * asked. Absent when etcd was probed or no agent was reachable.
   */
  agentExports?: { services: string[]; node: string } | { error: string; node: string };
  /** Lab only: the apiserver process is alive. null: not known. */
  apiserverProcess: boolean | null;
  /** Lab only: the cluster's Kubernetes API server (its URL, its process alive). null: not a lab or none. */
  kubeApi?: { url: string; process: boolean } | null;
  /** Names of the remote-cluster config files, null when the dir is not known. */
  configFiles: string[] | null;
  nodes: NodeProbe[];
  /** Lab only, lab-wide: the prometheus of `lab up --prometheus` (its UI's URL, its process alive). */
  prometheus?: { url: string; process: boolean } | null;
  /** Lab with a Kubernetes API: its ServiceExports and ServiceImports (null: the MCS CRDs are not served; error: not readable). */
  mcs?: McsView | null | { error: string };
}

// ---- the report (exact JSON for scripts) ------------------------------------

export interface MinAvgMax {
  min: number;
  avg: number;
  max: number;
}

export interface RemoteClusterReport {
  name: string;
  /** Nodes of this cluster whose agent has the remote configured / connected / ready, out of `nodes`. */
  nodes: number;
  configured: number;
  connected: number;
  ready: number;
  /** Per synced prefix: nodes that have had its first full list. */
  synced: Record<SyncedPrefixName, number>;
  counts: { nodes: MinAvgMax; endpoints: MinAvgMax; identities: MinAvgMax; services: MinAvgMax };
  /** Sum over the nodes. */
  reconnections: number;
  lastError: { node: string; error: string; at: string | null } | null;
  /** Nodes whose agent reports the remote's heartbeat stale (no change for longer than its limit). */
  heartbeatStale: number;
  /** Nodes reading this remote from their own cluster's etcd, where the cache tier (apiserver --kvstoremesh) writes it. */
  viaCache: number;
}

export interface NodeReport {
  name: string;
  reachable: boolean;
  ready: boolean;
  phase: string | null;
  /** Remote clusters this node is connected to and ready with. */
  readyRemotes: number;
  endpoints: number | null;
  configErrors: string[];
  error: string | null;
}

export interface ClusterReport {
  name: string;
  id: number | null;
  ready: boolean;
  etcd: { reachable: boolean | null; endpoint: string | null; clusterConfigId: number | null; error: string | null; note?: string };
  apiserver: { reachable: boolean | null; process: boolean | null; heartbeatAgeSeconds: number | null; error: string | null };
  /** Lab only: the Kubernetes API server (kubectl's context of this cluster's name). */
  kubeApi: { url: string; process: boolean } | null;
  /** What the reachable agents read the cluster from ('store' / 'kubernetes', several when they differ); null: no agent reachable. */
  localSource: string | null;
  nodes: { total: number; reachable: number; ready: number };
  /** Remote clusters each node is ready with, over the nodes (expected: remoteClusters.length). */
  connectivity: MinAvgMax & { expected: number };
  remoteClusters: RemoteClusterReport[];
  /** Global services this cluster exports. */
  exportedServices: number | null;
  /** Where exportedServices comes from: the cluster's etcd, or (etcd not probed) an agent's programmed services; null with no count. */
  exportedServicesFrom: 'etcd' | 'agent' | null;
  /**
   * Flows the agents keep (GET /v1/flows), summed over the reachable nodes, and
   * datapath events lost because a node's ring buffer was full (since its maps
   * were created). null when no agent reports flows.
   */
  flows: { kept: number; seen: number; lostEvents: number; followerDropped: number } | null;
  nodeDetails: NodeReport[];
  /** How the reachable agents reach other nodes' pods ('tunnel' / 'native (CIDRs)', several when they differ); null: no agent reachable. */
  routing: string | null;
  /** Multi-Cluster Services: exports with their conditions, imports (lab with a Kubernetes API; absent otherwise). */
  mcs?: McsView | null | { error: string };
  /**
   * With mcs: per remote cluster whose etcd was read, why this cluster's MCS
   * controller does not merge its ServiceExports yet (null: it does). The same
   * rule the controller applies (its own status: mcs.remotes.<cluster>.waiting).
   */
  mcsRemotes?: Array<{ name: string; waiting: string | null }>;
}

/**
 * 'tunnel', 'native (10.101.0.0/16, ...)', then who writes the tunnel's
 * headers: ', VXLAN in BPF' or ', VXLAN device'; an older agent says
 * nothing: tunnel through the device.
 */
function routingOf(d: { routingMode?: string; nativeRoutingCIDRs?: string[]; tunnelEncap?: string } | undefined): string {
  const mode = d?.routingMode ?? 'tunnel';
  const encap = d?.tunnelEncap === 'bpf' ? 'VXLAN in BPF' : 'VXLAN device';
  return `${mode === 'native' ? `native (${(d?.nativeRoutingCIDRs ?? []).join(', ')})` : mode}, ${encap}`;
}

export interface StatusReport {
  ready: boolean;
  /** One sentence per thing that is not ready (empty when ready). */
  notReady: string[];
  clusters: ClusterReport[];
  /** Distinct '<ns>/<name>' exported by any cluster (null when no etcd was readable). */
  globalServices: number | null;
  /** Lab only: the prometheus of `lab up --prometheus`, null when none. */
  prometheus: { url: string; process: boolean } | null;
}

function stats(values: number[]): MinAvgMax {
  if (values.length === 0) return { min: 0, avg: 0, max: 0 };
  const sum = values.reduce((a, b) => a + b, 0);
  return { min: Math.min(...values), avg: Math.round((sum / values.length) * 100) / 100, max: Math.max(...values) };
}

function flowsOf(statuses: AgentStatus[]): ClusterReport['flows'] {
  const f = statuses.flatMap((s) => (s.flows ? [s.flows] : []));
  if (f.length === 0) return null;
  const sum = (k: (x: (typeof f)[number]) => number): number => f.reduce((a, x) => a + k(x), 0);
  return { kept: sum((x) => x.stored), seen: sum((x) => x.seen), lostEvents: sum((x) => x.lost.datapath), followerDropped: sum((x) => x.followerDropped) };
}

const isReadyRemote = (r: RemoteSummary): boolean => r.connected && r.ready;

export function summarize(probes: ClusterProbe[], now: Date = new Date()): StatusReport {
  const notReady: string[] = [];
  const clusters: ClusterReport[] = [];
  let anyEtcd = false;
  const global = new Set<string>();
  for (const p of probes) {
    const before = notReady.length;
    // etcd
    const etcd: ClusterReport['etcd'] = p.etcd
      ? { reachable: p.etcd.reachable, endpoint: p.etcd.endpoint, clusterConfigId: p.etcd.clusterConfigId, error: p.etcd.error }
      : { reachable: null, endpoint: null, clusterConfigId: null, error: null, ...(p.etcdNote ? { note: p.etcdNote } : {}) };
    if (p.etcd && !p.etcd.reachable) notReady.push(`${p.name}: etcd ${p.etcd.endpoint ?? ''} is not reachable (${p.etcd.error ?? 'no answer'})`);
    const agentExports = p.agentExports && 'services' in p.agentExports ? p.agentExports.services : null;
    if (agentExports) {
      anyEtcd = true;
      for (const s of agentExports) global.add(s);
    }
    if (p.etcd?.reachable) {
      anyEtcd = true;
      for (const s of p.etcd.exportedServices) global.add(s);
      if (p.id !== undefined && p.etcd.clusterConfigId !== null && p.etcd.clusterConfigId !== p.id) {
        notReady.push(`${p.name}: its etcd publishes cluster ID ${p.etcd.clusterConfigId}, but the cluster is configured with ID ${p.id}`);
      }
    }
    // apiserver: its leased cluster-config and a fresh heartbeat
    let heartbeatAgeSeconds: number | null = null;
    let apiserverReachable: boolean | null = null;
    let apiserverError: string | null = null;
    if (p.etcd?.reachable) {
      if (p.etcd.heartbeat) {
        const t = Date.parse(p.etcd.heartbeat);
        if (Number.isFinite(t)) heartbeatAgeSeconds = Math.max(0, Math.round((now.getTime() - t) / 1000));
      }
      if (p.etcd.clusterConfigId === null) apiserverError = `no ${clusterConfigKey(p.name)} in etcd (the apiserver writes it on a lease)`;
      else if (heartbeatAgeSeconds === null) apiserverError = 'no heartbeat in etcd';
      else if (heartbeatAgeSeconds * 1000 > HEARTBEAT_STALE_MS) apiserverError = `last heartbeat ${heartbeatAgeSeconds}s ago`;
      if (p.apiserverProcess === false) apiserverError = `process not running${apiserverError ? `; ${apiserverError}` : ''}`;
      apiserverReachable = apiserverError === null;
    } else if (p.apiserverProcess === false) {
      apiserverReachable = false;
      apiserverError = 'process not running';
    }
    if (apiserverReachable === false) notReady.push(`${p.name}: apiserver not healthy (${apiserverError})`);
    if (p.kubeApi && !p.kubeApi.process) notReady.push(`${p.name}: Kubernetes API server not running (see: clustermesh lab logs kube-apiserver --cluster ${p.name})`);

    // nodes and remote clusters
    const remoteNames = new Set<string>(p.configFiles ?? []);
    for (const n of p.nodes) for (const r of n.status?.remoteClusters ?? []) remoteNames.add(r.name);
    const statuses = p.nodes.flatMap((n) => (n.status ? [{ node: n.node, s: n.status }] : []));
    const nodeDetails: NodeReport[] = p.nodes.map((n) => {
      const s = n.status;
      const readyRemotes = s ? s.remoteClusters.filter(isReadyRemote).length : 0;
      return {
        name: n.node.key,
        reachable: s !== null,
        ready: s?.ready ?? false,
        phase: s?.phase ?? null,
        readyRemotes,
        endpoints: s ? s.endpoints.endpoints : null,
        configErrors: s ? s.clustermesh.configErrors.map((e) => `${e.file}: ${e.error}`) : [],
        error: n.error,
      };
    });
    for (const n of nodeDetails) {
      if (!n.reachable) notReady.push(`${p.name}: agent on ${n.name} is not reachable (${n.error ?? 'no answer'})`);
      else if (!n.ready) notReady.push(`${p.name}: agent on ${n.name} is not ready (phase ${n.phase})`);
      for (const e of n.configErrors) notReady.push(`${p.name}: agent on ${n.name} cannot use ${e}`);
    }
    // Endpoints refused as duplicates (endpoint ID or IP held by another endpoint of the node).
    for (const n of p.nodes) for (const e of n.status?.endpoints.problems ?? []) notReady.push(`${p.name}: agent on ${n.node.key}: ${e}`);
    // Socket-level load balancing configured but not (all) attached: connections fall back to per-packet translation.
    for (const n of p.nodes) {
      const lb = n.status?.datapath?.socketLB; // absent from an older agent
      const missing = lb && lb.cgroup !== null ? lb.programs.filter((x) => !x.attached).map((x) => x.hook) : [];
      if (missing.length) notReady.push(`${p.name}: agent on ${n.node.key}: socket LB on ${lb!.cgroup}: ${missing.join(', ')} not attached`);
    }
    // Addresses a remote claimed that are not its own (every agent judges the same; said once per cluster).
    const ownership = new Set<string>();
    for (const n of p.nodes) {
      const o = n.status?.clustermesh.ownership; // absent from an older agent
      if (!o) continue;
      for (const c of o.conflicts) {
        ownership.add(
          c.kind === 'pod-cidr'
            ? `${p.name}: remote cluster ${c.cluster} node ${c.node}: pod CIDR ${c.value} refused, it overlaps ${c.ownerValue} of ${c.ownerCluster} (node ${c.ownerNode})`
            : `${p.name}: remote cluster ${c.cluster} node ${c.node} refused: address ${c.value} belongs to ${c.ownerCluster} (node ${c.ownerNode})`,
        );
      }
      for (const r of o.refusedIps) ownership.add(`${p.name}: ${r.count} endpoint IP(s) of remote cluster ${r.cluster} refused, e.g. ${r.examples[0]?.reason ?? ''}`);
    }
    notReady.push(...ownership);
    const remoteClusters: RemoteClusterReport[] = [...remoteNames].sort().map((name) => {
      const per = statuses.map(({ node, s }) => ({ node, r: s.remoteClusters.find((x) => x.name === name) }));
      const have = per.flatMap(({ node, r }) => (r ? [{ node, r }] : []));
      const synced = Object.fromEntries(SYNCED_PREFIX_NAMES.map((k) => [k, have.filter(({ r }) => r.synced[k]).length])) as Record<SyncedPrefixName, number>;
      let lastError: RemoteClusterReport['lastError'] = null;
      for (const { node, r } of have) {
        if (r.lastError === null) continue;
        if (lastError === null || (r.lastErrorAt ?? '') > (lastError.at ?? '')) lastError = { node: node.key, error: r.lastError, at: r.lastErrorAt };
      }
      return {
        name,
        nodes: statuses.length,
        configured: have.length,
        connected: have.filter(({ r }) => r.connected).length,
        ready: have.filter(({ r }) => isReadyRemote(r)).length,
        synced,
        counts: {
          nodes: stats(have.map(({ r }) => r.counts.nodes)),
          endpoints: stats(have.map(({ r }) => r.counts.endpoints)),
          identities: stats(have.map(({ r }) => r.counts.identities)),
          services: stats(have.map(({ r }) => r.counts.services)),
        },
        reconnections: have.reduce((a, { r }) => a + r.reconnections, 0),
        lastError,
        heartbeatStale: have.filter(({ r }) => r.heartbeat?.stale === true).length,
        viaCache: have.filter(({ r }) => r.via === 'cache').length,
      };
    });
    for (const r of remoteClusters) {
      if (r.configured < r.nodes) notReady.push(`${p.name}: remote cluster ${r.name} is configured on ${r.configured} of ${r.nodes} nodes`);
      else if (r.ready < r.nodes) {
        const why = r.lastError ? ` (last error on ${r.lastError.node}: ${r.lastError.error})` : '';
        notReady.push(`${p.name}: remote cluster ${r.name} is ready on ${r.ready} of ${r.nodes} nodes${why}`);
      }
      if (r.heartbeatStale > 0) notReady.push(`${p.name}: remote cluster ${r.name}'s heartbeat is stale on ${r.heartbeatStale} of ${r.nodes} nodes`);
    }
    const connectivity = { expected: remoteClusters.length, ...stats(statuses.map(({ s }) => remoteClusters.filter((rc) => s.remoteClusters.some((r) => r.name === rc.name && isReadyRemote(r))).length)) };
    clusters.push({
      name: p.name,
      id: p.id ?? p.etcd?.clusterConfigId ?? statuses[0]?.s.node.clusterID ?? null,
      ready: notReady.length === before,
      etcd,
      apiserver: { reachable: apiserverReachable, process: p.apiserverProcess, heartbeatAgeSeconds, error: apiserverError },
      kubeApi: p.kubeApi ?? null,
      localSource: statuses.length ? [...new Set(statuses.map(({ s }) => s.local?.source ?? 'unknown'))].sort().join(', ') : null,
      nodes: { total: p.nodes.length, reachable: statuses.length, ready: statuses.filter(({ s }) => s.ready).length },
      connectivity,
      remoteClusters,
      exportedServices: p.etcd?.reachable ? p.etcd.exportedServices.length : (agentExports?.length ?? null),
      exportedServicesFrom: p.etcd?.reachable ? 'etcd' : agentExports ? 'agent' : null,
      flows: flowsOf(statuses.map(({ s }) => s)),
      nodeDetails,
      routing: statuses.length ? [...new Set(statuses.map(({ s }) => routingOf(s.datapath)))].sort().join('; ') : null,
      ...(p.mcs !== undefined ? { mcs: p.mcs } : {}),
      ...(p.mcs !== undefined
        ? {
            mcsRemotes: [...remoteNames].sort().flatMap((name) => {
              const e = probes.find((x) => x.name === name)?.etcd?.serviceExports;
              return e ? [{ name, waiting: e.ready ? null : e.why }] : [];
            }),
          }
        : {}),
    });
  }
  const prometheus = probes.find((p) => p.prometheus)?.prometheus ?? null;
  if (prometheus && !prometheus.process) notReady.push(`prometheus (${prometheus.url}) is not running (see: clustermesh lab logs prometheus)`);
  return { ready: notReady.length === 0, notReady, clusters, globalServices: anyEtcd ? global.size : null, prometheus };
}

// ---- gathering -------------------------------------------------------------

export async function probeEtcd(c: ClusterTarget, closer: Closer, timeoutMs = 3000): Promise<EtcdProbe> {
  const conn = c.etcd!;
  const endpoint = c.lab?.etcd.endpoints[0] ?? conn.endpoints[0] ?? null;
  let kv: KvClient;
  try {
    kv = new KvClient({ ...conn, timeoutMs });
  } catch (err) {
    return { reachable: false, endpoint, clusterConfigId: null, heartbeat: null, exportedServices: [], error: (err as Error).message };
  }
  closer.add(() => kv.close());
  try {
    const cfg = await kv.get(clusterConfigKey(c.name));
    const hb = await kv.get(heartbeatKey);
    const svcs = await kv.list(`${servicesPrefix}${c.name}/`);
    const canary = await kv.get(serviceExportsSyncedKey(c.name));
    let clusterConfigId: number | null = null;
    if (cfg) {
      const d = decodeClusterConfig(c.name, cfg.key, cfg.value);
      if (d.ok) clusterConfigId = d.value.id;
    }
    const exportedServices = svcs.pairs.map((p) => p.key.slice(`${servicesPrefix}${c.name}/`.length)).sort();
    const serviceExports = remoteExportsReadiness(c.name, cfg?.value, canary !== undefined);
    return { reachable: true, endpoint, clusterConfigId, heartbeat: hb?.value ?? null, exportedServices, serviceExports, error: null };
  } catch (err) {
    return { reachable: false, endpoint, clusterConfigId: null, heartbeat: null, exportedServices: [], error: (err as Error).message };
  }
}

/** The services an agent programs as global and shared: what its cluster exports to the others. */
async function agentExportsOf(n: NodeTarget, closer: Closer): Promise<NonNullable<ClusterProbe['agentExports']>> {
  const api = agentClientFor(n, { timeoutMs: 5000 });
  closer.add(() => api.close());
  try {
    const services = (await api.services()).filter((s) => s.global && s.shared).map((s) => `${s.namespace}/${s.name}`);
    return { services: [...new Set(services)].sort(), node: n.key };
  } catch (err) {
    return { error: (err as Error).message, node: n.key };
  }
}

async function probeNode(n: NodeTarget, closer: Closer): Promise<NodeProbe> {
  if (!n.socket && !n.remote) return { node: n, status: null, error: 'no agent socket known for this node' };
  const api = agentClientFor(n, { timeoutMs: 5000 });
  closer.add(() => api.close());
  try {
    const status = await api.status();
    if (n.cluster === undefined) {
      n.cluster = status.node.cluster;
      n.name = status.node.name;
      n.key = `${status.node.cluster}/${status.node.name}`;
    }
    return { node: n, status, error: null };
  } catch (err) {
    return { node: n, status: null, error: (err as Error).message };
  }
}

function prometheusOf(lab: LabState | undefined): ClusterProbe['prometheus'] {
  if (!lab?.prometheus) return null;
  const proc = lab.processes.find((p) => p.name === 'prometheus');
  return { url: lab.prometheus.url, process: proc !== undefined && sameProcessAlive(proc) };
}

export async function gatherStatus(flags: TargetFlags, closer: Closer): Promise<ClusterProbe[]> {
  return probeTargets(await resolveTargets(flags, closer, { probeAgents: false }), closer);
}

/** Probes resolved targets: every agent's status and, unless `etcd: false`, every cluster's etcd. */
export async function probeTargets(t: Targets, closer: Closer, o: { etcd?: boolean } = {}): Promise<ClusterProbe[]> {
  const nodes = await Promise.all(t.nodes.map((n) => probeNode(n, closer)));
  const names = [...new Set([...t.clusters.map((c) => c.name), ...nodes.flatMap((n) => (n.node.cluster ? [n.node.cluster] : []))])];
  return await Promise.all(
    names.map(async (name): Promise<ClusterProbe> => {
      const c = t.clusters.find((x) => x.name === name);
      const mine = nodes.filter((n) => n.node.cluster === name);
      const configDir = c?.remoteConfigDir ?? mine.find((n) => n.status)?.status?.clustermesh.configDir;
      let configFiles: string[] | null = null;
      if (configDir) {
        const scan = await scanConfigDir(configDir).catch(() => undefined);
        if (scan) configFiles = [...scan.configs.keys(), ...scan.errors.keys()];
      }
      const probeItsEtcd = c?.etcd !== undefined && o.etcd !== false;
      // No etcd to read (an install's is a pod): what the cluster exports, as an agent programs it.
      const asked = c && !c.etcd ? mine.find((n) => n.status) : undefined;
      return {
        name,
        id: c?.id,
        etcd: probeItsEtcd ? await probeEtcd(c!, closer) : null,
        ...(c && !c.etcd && c.etcdSource ? { etcdNote: c.etcdSource } : {}),
        ...(asked ? { agentExports: await agentExportsOf(asked.node, closer) } : {}),
        // An installed lab's apiserver is a pod of the install (kubectl -n clustermesh-system get pods), not a lab process.
        apiserverProcess: c?.lab && !t.lab?.install ? sameProcessAlive(c.lab.apiserver) : null,
        kubeApi: c?.lab?.kubeApi ? { url: c.lab.kubeApi.url, process: sameProcessAlive(c.lab.kubeApi) } : null,
        configFiles,
        nodes: mine,
        prometheus: prometheusOf(t.lab),
        // ServiceExports/ServiceImports: where the Kubernetes API is the source (every lab).
        ...(t.lab?.source === 'kubernetes' && t.lab.kubeconfig && c?.lab?.kubeApi ? { mcs: await probeMcs(t.lab.kubeconfig, name) } : {}),
      };
    }),
  );
}

/** The ServiceExports and ServiceImports of a lab cluster (its kubeconfig context). */
export async function probeMcs(kubeconfig: string, cluster: string): Promise<McsView | null | { error: string }> {
  try {
    return await readMcsView(new KubeHttp(loadKubeConnection({ kubeconfig, context: cluster }).kubeConfig));
  } catch (err) {
    return { error: (err as Error).message };
  }
}

// ---- text ------------------------------------------------------------------

const mark = (ok: boolean | null): string => (ok === null ? '-' : ok ? 'ok' : 'FAIL');
const fmtStats = (s: MinAvgMax): string => (s.min === s.max ? String(s.max) : `${s.min}..${s.max}`);

export function formatStatus(r: StatusReport): string {
  const out: string[] = [];
  for (const c of r.clusters) {
    out.push(`${c.name}${c.id !== null ? ` (id ${c.id})` : ''}: ${c.ready ? 'ready' : 'NOT READY'}`);
    out.push(
      `  etcd:        ${mark(c.etcd.reachable)}${c.etcd.endpoint ? `  ${c.etcd.endpoint}` : ''}${c.etcd.clusterConfigId !== null ? `  cluster-config id ${c.etcd.clusterConfigId}` : ''}${c.etcd.error ? `  (${c.etcd.error})` : ''}${c.etcd.reachable === null ? `  (${c.etcd.note ?? 'no etcd config given'})` : ''}`,
    );
    out.push(`  apiserver:   ${mark(c.apiserver.reachable)}${c.apiserver.heartbeatAgeSeconds !== null ? `  heartbeat ${c.apiserver.heartbeatAgeSeconds}s ago` : ''}${c.apiserver.error ? `  (${c.apiserver.error})` : ''}`);
    if (c.kubeApi) out.push(`  kube-api:    ${mark(c.kubeApi.process)}  ${c.kubeApi.url}${c.kubeApi.process ? '' : '  (process not running)'}  (kubectl --context ${c.name})`);
    if (c.localSource !== null) out.push(`  source:      ${c.localSource === 'kubernetes' ? 'kubernetes (the agents read the Kubernetes API)' : c.localSource}`);
    if (c.routing !== null) out.push(`  routing:     ${c.routing}`);
    out.push(`  nodes:       ${c.nodes.ready}/${c.nodes.total} ready${c.nodes.reachable < c.nodes.total ? `, ${c.nodes.total - c.nodes.reachable} unreachable` : ''}`);
    const k = c.connectivity;
    const all = c.nodes.reachable > 0 && k.min === k.expected;
    if (k.expected === 0) out.push('  clustermesh: no remote clusters configured (connect one with: clustermesh connect)');
    else {
      out.push(
        `  clustermesh: ${all ? `all ${c.nodes.reachable} nodes are connected to all ${k.expected} remote clusters` : `${k.expected} remote clusters configured; nodes connected to`} [min ${k.min} / avg ${k.avg} / max ${k.max}]`,
      );
    }
    for (const rc of c.remoteClusters) {
      const synced = SYNCED_PREFIX_NAMES.map((p) => `${p} ${rc.synced[p]}/${rc.nodes}`).join(', ');
      const via = rc.viaCache === 0 ? '' : rc.viaCache === rc.configured ? ' (through the cache tier)' : ` (${rc.viaCache}/${rc.nodes} through the cache tier)`;
      out.push(`  remote ${rc.name}${via}: configured ${rc.configured}/${rc.nodes}, connected ${rc.connected}/${rc.nodes}, ready ${rc.ready}/${rc.nodes}; synced ${synced}`);
      out.push(
        `    nodes ${fmtStats(rc.counts.nodes)}, endpoints ${fmtStats(rc.counts.endpoints)}, identities ${fmtStats(rc.counts.identities)}, services ${fmtStats(rc.counts.services)}, reconnections ${rc.reconnections}, last error: ${rc.lastError ? `${rc.lastError.error} (${rc.lastError.node}${rc.lastError.at ? ` at ${rc.lastError.at}` : ''})` : 'none'}`,
      );
    }
    for (const n of c.nodeDetails) if (!n.reachable || !n.ready || n.configErrors.length) out.push(`  node ${n.name}: ${!n.reachable ? `unreachable (${n.error})` : !n.ready ? `phase ${n.phase}` : 'ready'}${n.configErrors.length ? `; config errors: ${n.configErrors.join('; ')}` : ''}`);
    if (c.flows)
      out.push(
        `  flows:       ${c.flows.kept} kept (${c.flows.seen} seen); ${c.flows.lostEvents} events lost${c.flows.lostEvents > 0 ? ' (a ring buffer was full: the agent read too slowly or was down)' : ''}${c.flows.followerDropped > 0 ? `; ${c.flows.followerDropped} not delivered to slow followers` : ''}`,
      );
    if (c.exportedServices !== null) out.push(`  exports:     ${c.exportedServices} global service${c.exportedServices === 1 ? '' : 's'}${c.exportedServicesFrom === 'agent' ? " (as an agent programs them; etcd not read)" : ''}`);
    if (c.mcs !== undefined) {
      if (c.mcs === null) out.push('  mcs:         the MCS API CRDs are not installed (kubectl apply -f deploy/crds/mcs-api.yaml)');
      else if ('error' in c.mcs) out.push(`  mcs:         could not read ServiceExports/ServiceImports (${c.mcs.error})`);
      else out.push(`  mcs:         ${c.mcs.exports.length} ServiceExport${c.mcs.exports.length === 1 ? '' : 's'}, ${c.mcs.imports.length} ServiceImport${c.mcs.imports.length === 1 ? '' : 's'}`, ...formatMcsView(c.mcs, '    '));
      for (const r of c.mcsRemotes ?? []) if (r.waiting !== null) out.push(`    remote ${r.name}: its exports are not merged yet: ${r.waiting}`);
    }
  }
  if (r.globalServices !== null) out.push(`global services: ${r.globalServices}`);
  if (r.prometheus) out.push(`prometheus: ${mark(r.prometheus.process)}  ${r.prometheus.url}/  (scrapes every agent and apiserver; e.g. ${r.prometheus.url}/graph?g0.expr=clustermesh_drop_count_total)`);
  if (r.clusters.length === 0) out.push('no clusters or nodes to look at');
  out.push(r.ready ? 'ready: yes' : `ready: no\n${r.notReady.map((s) => `  - ${s}`).join('\n')}`);
  return out.join('\n');
}

// ---- the command -----------------------------------------------------------

interface StatusFlags extends Omit<TargetFlags, 'context' | 'kubeconfig'> {
  output: OutputFormat;
  wait?: boolean;
  waitDuration: number;
  timeout?: number;
  context?: string;
  kubeconfig?: string;
  namespace?: string;
  installNamespace?: string;
}

/** `status --context`'s install namespace: --install-namespace (as observe and ui take it) or --namespace, the same flag twice; both and different is a usage error. */
export function installNamespaceOf(o: { namespace?: string; installNamespace?: string }): string {
  if (o.namespace !== undefined && o.installNamespace !== undefined && o.namespace !== o.installNamespace) {
    throw new CliError(`--namespace ${o.namespace} and --install-namespace ${o.installNamespace} disagree: they name the same thing (the namespace of the install); give one`, EXIT_ERROR);
  }
  return o.installNamespace ?? o.namespace ?? DEFAULT_NAMESPACE;
}

/** `status --context`: an installed cluster, read through its Kubernetes API (src/install/status.ts). */
async function statusByContext(o: StatusFlags, deadline: number): Promise<number> {
  const { loadKubeConfig } = await import('../install/apply.ts');
  const { formatInstalled, probeInstalled, summarizeInstalled } = await import('../install/status.ts');
  const namespace = installNamespaceOf(o);
  const kc = loadKubeConfig({ kubeconfig: o.kubeconfig, context: o.context });
  return await reportStatus(o, deadline, async () => summarizeInstalled(await probeInstalled(kc, namespace)), formatInstalled);
}

/**
 * Probes once, or with --wait every second until ready or `deadline`; prints
 * the last report (text or JSON) and returns the exit code. The probe's errors
 * end the command (exit 2), as without --wait.
 */
async function reportStatus<R extends { ready: boolean; notReady: string[] }>(o: StatusFlags, deadline: number, probe: () => Promise<R>, format: (r: R) => string): Promise<number> {
  let report: R | undefined;
  try {
    await pollUntil(
      async ({ round, notYet }) => {
        report = await probe();
        if (report.ready || !o.wait) return true;
        if (o.output === 'text' && round % 10 === 0 && Date.now() < deadline) process.stderr.write(`waiting: ${report.notReady.length} not ready (${report.notReady[0]})\n`);
        return notYet(report.notReady.join('; '));
      },
      { timeoutMs: Math.max(0, deadline - Date.now()), intervalMs: 1000, describe: 'status ready', errors: 'throw' },
    );
  } catch (err) {
    if (!(err instanceof PollTimeoutError)) throw err;
  }
  const last = report!;
  if (o.output === 'json') printJson(last);
  else console.log(format(last));
  if (!last.ready && o.wait) process.stderr.write(`clustermesh status: not ready after ${Math.round((o.timeout ?? o.waitDuration) / 1000)}s: ${last.notReady.join('; ')}\n`);
  return last.ready ? EXIT_OK : EXIT_NOT_OK;
}

export function statusCommand(): Command {
  const cmd = new Command('status').description(
    "per cluster: etcd and apiserver reachable, every node's agent connected to every remote cluster, per remote cluster configured / connected / ready, synced prefixes and counts; exit 0 when all is ready, 1 when not, 2 when it could not look",
  );
  addTargetFlags(cmd);
  cmd
    .addOption(outputOption())
    .option('--wait', 'poll until everything is ready (exit 1 with what is not ready when --wait-duration passes)')
    .addOption(new Option('--wait-duration <duration>', 'how long --wait waits (e.g. 30s, 5m)').argParser(parseDurationFlag).default(5 * 60_000, '5m'))
    .addOption(new Option('--timeout <duration>', 'the same as --wait-duration').argParser(parseDurationFlag))
    .option(
      '--context <name>',
      "a cluster installed with clustermesh install, read through its Kubernetes API only: the agent DaemonSet's and apiserver Deployment's readiness, " +
        "the remote clusters of its Secret clustermesh-remotes, and each agent's connection to each of them (the summary every agent keeps in its Pod's annotation clustermesh.io/agent-status); " +
        'with --wait: until every agent is connected to every configured remote cluster',
    )
    .option('--kubeconfig <file>', 'with --context: kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
    .option('--install-namespace <ns>', `with --context: namespace of the install (default: ${DEFAULT_NAMESPACE}), as observe and ui take it`)
    .option('--namespace <ns>', 'with --context: the same as --install-namespace')
    .action(
      action('status', async (closer, o: StatusFlags) => {
        const deadline = Date.now() + (o.timeout ?? o.waitDuration);
        if (o.context !== undefined) return await statusByContext(o, deadline);
        return await reportStatus(
          o,
          deadline,
          async (): Promise<StatusReport> => {
            const inner = new Closer();
            try {
              return summarize(await gatherStatus({ ...o, context: undefined }, inner));
            } finally {
              await inner.closeAll();
            }
          },
          formatStatus,
        );
      }),
    );
  return example(cmd, 'clustermesh status                          # the lab named default', 'clustermesh status --lab demo --wait --wait-duration 2m -o json', 'clustermesh status --agent-config /etc/clustermesh/agent.yaml --etcd-config /etc/clustermesh/etcd.yaml', 'clustermesh status --context kind-c1 --wait --timeout 2m   # an install, through its Kubernetes API');
}
