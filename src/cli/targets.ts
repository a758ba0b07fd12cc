// Which clusters and nodes an operator command looks at. Two ways to say it:
//
//   lab (default): `--lab NAME` (default 'default') with `--cluster` and
//   `--node` to narrow down; everything else comes from the lab's state file
//   (src/lab/state.ts).
//
//   explicit (real hosts, no lab): `--agent-config FILE` (an agent's config:
//   its socket, pin dir, cluster, etcd and remote-cluster dir), `--socket PATH`
//   (an agent's API; the rest is asked from it), `--pin-dir PATH` (a node's
//   pinned maps only), `--etcd-config FILE` (a cluster's etcd, in the
//   apiserver's etcd config format). Any of these switches the lab off.
//
//   kube contexts (observe and ui; clusters of `clustermesh install`):
//   `--context C` (repeatable) with `--kubeconfig` and `--install-namespace`:
//   each context's agent pods, dialled on their node's address where they
//   serve their read-only API with mutual TLS (src/install/agents.ts). A
//   context or node that cannot be read is a problem reported beside the
//   others, not the end. With none of the flags above and no lab named
//   `default`, the kubeconfig's current context.
import { basename } from 'node:path';
import { Command } from 'commander';
import { AgentClient, type AgentClientOptions, type RemoteAgentAddress } from '../agent/client.ts';
import { loadAgentConfig } from '../agent/config.ts';
import { loadEtcdConfig } from '../apiserver/options.ts';
import { clusterConfigPrefix } from '../clustermesh/keys.ts';
import { decodeClusterConfig } from '../clustermesh/wire.ts';
import { KvClient } from '../kvstore/client.ts';
import type { KvConnectionConfig } from '../kvstore/types.ts';
import { DEFAULT_LAB_NAME, NoSuchLabError, readLabState, type LabCluster, type LabState } from '../lab/state.ts';
import { DEFAULT_NAMESPACE } from '../install/settings.ts';
import { CliError, Closer, collect, EXIT_ERROR } from './common.ts';

export interface ClusterTarget {
  name: string;
  /** Cluster ID when known (lab, agent config, or its cluster-config in etcd). */
  id: number | undefined;
  /** How this process reaches the cluster's etcd (mutual TLS). */
  etcd: KvConnectionConfig | undefined;
  /** Where the etcd connection came from (for messages). */
  etcdSource: string | undefined;
  /** The remote-cluster config directory the cluster's agents read. */
  remoteConfigDir: string | undefined;
  /** The lab's record of the cluster (processes, certificates), when there is a lab. */
  lab: LabCluster | undefined;
}

export interface NodeTarget {
  /** 'cluster1/node1', or the socket / pin dir when the cluster is not known. */
  key: string;
  name: string;
  cluster: string | undefined;
  socket: string | undefined;
  pinDir: string | undefined;
  /** The node's network namespace (lab). */
  netns: string | undefined;
  underlayIP: string | undefined;
  /** The remote-cluster config dir the node's agent reads. */
  configDir: string | undefined;
  clusterId: number | undefined;
  /** The agent's remote API (kube context mode): address and TLS material. */
  remote?: RemoteAgentAddress | undefined;
  /** The kube context it was found through. */
  context?: string | undefined;
}

export interface Targets {
  lab: LabState | undefined;
  clusters: ClusterTarget[];
  nodes: NodeTarget[];
  /** What could not be read (kube contexts, agent pods that cannot be dialled), each naming its context or node. */
  problems?: string[];
  /** Kube context mode: contexts whose agents could not be listed ('' for the current context). */
  unreadContexts?: string[];
  /** Kube context mode: nodes whose agent pod was listed without an address to dial (not scheduled, no host IP yet). */
  pendingNodes?: string[];
}

export interface TargetFlags {
  lab?: string;
  cluster?: string[];
  node?: string[];
  socket?: string[];
  pinDir?: string[];
  agentConfig?: string[];
  etcdConfig?: string[];
  context?: string[];
  kubeconfig?: string;
  installNamespace?: string;
}

/**
 * Adds the target flags to a command. `nodes: false` for commands that only
 * look at clusters; `contexts: true` for commands that read only the agents'
 * API (observe, ui), which can then reach installed clusters by kube context.
 */
export function addTargetFlags(cmd: Command, o: { nodes?: boolean; clusters?: boolean; contexts?: boolean } = {}): Command {
  if (o.contexts) {
    cmd.option('--lab <name>', `the lab to look at (default: ${DEFAULT_LAB_NAME}; without one of that name and without --context/--socket/--agent-config, the kubeconfig's current context)`);
    cmd.option('--context <name>', "a kube context of a cluster where clustermesh is installed (repeatable): its agents' read-only API, dialled on each node's address with mutual TLS (the client certificate of Secret clustermesh-observer); no lab", collect);
    cmd.option('--kubeconfig <file>', 'kubeconfig file for --context (default: $KUBECONFIG, then ~/.kube/config)');
    cmd.option('--install-namespace <ns>', 'namespace of the install in those clusters', DEFAULT_NAMESPACE);
  } else {
    cmd.option('--lab <name>', `the lab to look at (when no explicit --socket/--pin-dir/--agent-config/--etcd-config is given)`, DEFAULT_LAB_NAME);
  }
  if (o.clusters !== false) cmd.option('--cluster <name>', 'only this cluster (repeatable)', collect);
  if (o.nodes !== false) {
    cmd.option('--node <name>', "only this node: 'node1' or 'cluster1/node1' (repeatable)", collect);
    cmd.option('--socket <path>', "an agent's API socket (<stateDir>/agent.sock); repeatable; no lab", collect);
    cmd.option('--pin-dir <dir>', "a node's pin directory on the clustermesh bpffs; repeatable; no lab", collect);
    cmd.option('--agent-config <file>', "an agent's config file (socket, pin dir, cluster, etcd); repeatable; no lab", collect);
  }
  cmd.option('--etcd-config <file>', "a cluster's etcd client config (endpoints, trusted-ca-file, cert-file, key-file[, server-name]); repeatable; no lab", collect);
  return cmd;
}

export function isExplicit(f: TargetFlags): boolean {
  return [f.socket, f.pinDir, f.agentConfig, f.etcdConfig].some((v) => v !== undefined && v.length > 0);
}

/** The etcd connection of a lab cluster for a process in the root namespace (the TLS unix socket when there is one). */
export function labEtcdConnection(c: LabCluster, timeoutMs = 5000): KvConnectionConfig {
  const local = c.etcd.localEndpoints && c.etcd.localEndpoints.length > 0;
  return {
    endpoints: local ? [...c.etcd.localEndpoints!] : [...c.etcd.endpoints],
    caFile: c.etcd.caFile,
    certFile: c.etcd.certFile,
    keyFile: c.etcd.keyFile,
    timeoutMs,
    ...(local ? { serverName: 'localhost' } : {}),
  };
}

function matchesNode(filter: string, n: { name: string; cluster: string | undefined; netns?: string | undefined; key: string }): boolean {
  return filter === n.name || filter === n.key || filter === n.netns || (n.cluster !== undefined && filter === `${n.cluster}/${n.name}`);
}

/** A client of the node's agent: its socket, or its remote API. */
export function agentClientFor(n: NodeTarget, opts: AgentClientOptions = {}): AgentClient {
  const where = n.remote ?? n.socket;
  if (!where) throw new CliError(`${n.key}: no agent socket or address known`);
  return new AgentClient(where, opts);
}

/** The node as messages name it: with the context and address it was reached by in kube context mode. */
export function nodeLabel(n: NodeTarget): string {
  return n.context ? `${n.key} (context ${n.context}${n.remote ? `, ${n.remote.host}:${n.remote.port}` : ''})` : n.key;
}

/** Every context's agents (src/install/agents.ts); a context that cannot be read is a problem, the others go on. */
async function fromContexts(f: TargetFlags): Promise<Targets> {
  // Loaded here: the Kubernetes client is not for the commands that never use it.
  const { readInstalledAgents } = await import('../install/agents.ts');
  const wanted = f.context && f.context.length > 0 ? [...new Set(f.context)] : [undefined];
  const read = await Promise.allSettled(wanted.map((context) => readInstalledAgents({ kubeconfig: f.kubeconfig, context, namespace: f.installNamespace ?? DEFAULT_NAMESPACE })));
  const clusters: ClusterTarget[] = [];
  const nodes: NodeTarget[] = [];
  const problems: string[] = [];
  const seen = new Map<string, string>();
  const unreadContexts: string[] = [];
  const pendingNodes: string[] = [];
  for (const [i, r] of read.entries()) {
    if (r.status === 'rejected') {
      problems.push((r.reason as Error).message);
      unreadContexts.push(wanted[i] ?? '');
      continue;
    }
    const a = r.value;
    const twice = seen.get(a.cluster);
    if (twice !== undefined) {
      problems.push(`context ${a.context}: cluster ${a.cluster} was already read through context ${twice}; skipped`);
      continue;
    }
    seen.set(a.cluster, a.context);
    clusters.push({ name: a.cluster, id: a.id, etcd: undefined, etcdSource: `the install in context ${a.context} (not probed from here; see the agents)`, remoteConfigDir: undefined, lab: undefined });
    for (const g of a.agents) {
      if (!g.address) {
        problems.push(`${a.cluster}/${g.node} (context ${a.context}): ${g.problem}`);
        pendingNodes.push(`${a.cluster}/${g.node}`);
        continue;
      }
      nodes.push({ key: `${a.cluster}/${g.node}`, name: g.node, cluster: a.cluster, socket: undefined, pinDir: undefined, netns: undefined, underlayIP: g.address.host, configDir: undefined, clusterId: a.id, remote: g.address, context: a.context });
    }
  }
  return { lab: undefined, clusters, nodes, problems, unreadContexts, pendingNodes };
}

/** Whether two remote API addresses differ (another host or port: a new pod; other TLS material: a rotated Secret). */
function remoteChanged(a: RemoteAgentAddress | undefined, b: RemoteAgentAddress | undefined): boolean {
  if (!a || !b) return a !== b;
  return a.host !== b.host || a.port !== b.port || a.serverName !== b.serverName || a.ca !== b.ca || a.cert !== b.cert || a.key !== b.key;
}

export interface TargetChanges {
  /** The targets to use from now on. */
  targets: Targets;
  /** Nodes new in `fresh` (a node added, an agent pod scheduled). */
  added: NodeTarget[];
  /** Nodes gone from `fresh` (a node removed), not only unread. */
  removed: NodeTarget[];
  /** Nodes whose agent is dialled elsewhere now (a restarted pod: another address or port) or with other TLS material. */
  replaced: Array<{ old: NodeTarget; now: NodeTarget }>;
}

/**
 * The nodes of a second resolution (kube context mode) against the ones in
 * use, by node key. A node of a context that could not be read this time, or
 * whose agent pod was listed without an address, is kept as it was (a
 * Kubernetes API that does not answer for a moment is not a node removed).
 */
export function mergeTargets(current: Targets, fresh: Targets): TargetChanges {
  const unread = new Set(fresh.unreadContexts ?? []);
  const pending = new Set(fresh.pendingNodes ?? []);
  const keep = (n: NodeTarget): boolean => pending.has(n.key) || unread.has('') || (n.context !== undefined && unread.has(n.context));
  const was = new Map(current.nodes.map((n) => [n.key, n]));
  const now = new Map(fresh.nodes.map((n) => [n.key, n]));
  const added: NodeTarget[] = [];
  const removed: NodeTarget[] = [];
  const replaced: Array<{ old: NodeTarget; now: NodeTarget }> = [];
  const nodes: NodeTarget[] = [];
  for (const n of current.nodes) {
    const f = now.get(n.key);
    if (!f) {
      if (keep(n)) nodes.push(n);
      else removed.push(n);
    } else if (remoteChanged(n.remote, f.remote) || n.socket !== f.socket) {
      replaced.push({ old: n, now: f });
      nodes.push(f);
    } else {
      nodes.push(n); // the same object: its client and stream go on
    }
  }
  for (const f of fresh.nodes) {
    if (was.has(f.key)) continue;
    added.push(f);
    nodes.push(f);
  }
  const clusters = [...fresh.clusters];
  for (const c of current.clusters) if (!clusters.some((x) => x.name === c.name) && nodes.some((n) => n.cluster === c.name)) clusters.push(c);
  return { targets: { ...fresh, clusters, nodes }, added, removed, replaced };
}

function narrow(t: Targets, f: TargetFlags): Targets {
  let clusters = t.clusters;
  let nodes = t.nodes;
  if (f.cluster && f.cluster.length > 0) {
    for (const c of f.cluster) {
      if (!t.clusters.some((x) => x.name === c) && !t.nodes.some((n) => n.cluster === c)) {
        const known = [...new Set([...t.clusters.map((x) => x.name), ...t.nodes.flatMap((n) => (n.cluster ? [n.cluster] : []))])];
        throw new CliError(`--cluster ${c}: no such cluster${t.lab ? ` in lab ${t.lab.name}` : ''}; known: ${known.join(', ') || 'none'}`);
      }
    }
    clusters = clusters.filter((c) => f.cluster!.includes(c.name));
    nodes = nodes.filter((n) => n.cluster !== undefined && f.cluster!.includes(n.cluster));
  }
  if (f.node && f.node.length > 0) {
    for (const want of f.node) {
      if (!nodes.some((n) => matchesNode(want, n))) {
        throw new CliError(`--node ${want}: no such node${t.lab ? ` in lab ${t.lab.name}` : ''}${f.cluster ? ` in cluster ${f.cluster.join(', ')}` : ''}; known: ${nodes.map((n) => n.key).join(', ') || 'none'}`);
      }
    }
    nodes = nodes.filter((n) => f.node!.some((want) => matchesNode(want, n)));
    clusters = clusters.filter((c) => nodes.some((n) => n.cluster === c.name));
  }
  return { ...t, clusters, nodes };
}

function fromLab(lab: LabState): Targets {
  const clusters: ClusterTarget[] = lab.clusters.map((c) => ({
    name: c.name,
    id: c.id,
    // An installed lab (lab up's default): the lab's etcd only stores the Kubernetes API; the mesh's is the install's pod, on the
    // cluster's underlay (not reachable from here): its agents report on it.
    etcd: lab.install ? undefined : labEtcdConnection(c),
    etcdSource: lab.install ? `the install in namespace ${lab.install.namespace} (not probed from this host; see the agents)` : `lab ${lab.name}`,
    remoteConfigDir: lab.install ? undefined : c.remoteConfigDir,
    lab: c,
  }));
  const nodes: NodeTarget[] = lab.nodes.map((n) => ({
    key: `${n.cluster}/${n.name}`,
    name: n.name,
    cluster: n.cluster,
    socket: n.socket,
    pinDir: n.pinDir,
    netns: n.netns,
    underlayIP: n.underlayIP,
    configDir: lab.install ? undefined : lab.clusters.find((c) => c.name === n.cluster)?.remoteConfigDir,
    clusterId: lab.clusters.find((c) => c.name === n.cluster)?.id,
  }));
  return { lab, clusters, nodes };
}

/** Reads `cilium/cluster-config/*` of an etcd: the clusters it publishes, by name. */
export async function publishedClusters(kv: KvClient): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const list = await kv.list(clusterConfigPrefix);
  for (const p of list.pairs) {
    const name = p.key.slice(clusterConfigPrefix.length);
    const d = decodeClusterConfig(name, p.key, p.value);
    if (d.ok) out.set(name, d.value.id);
  }
  return out;
}

async function fromFlags(f: TargetFlags, closer: Closer, probeAgents: boolean): Promise<Targets> {
  const clusters = new Map<string, ClusterTarget>();
  const nodes: NodeTarget[] = [];
  for (const file of f.agentConfig ?? []) {
    let cfg;
    try {
      cfg = await loadAgentConfig(file);
    } catch (err) {
      throw new CliError(`--agent-config ${file}: ${(err as Error).message}`);
    }
    nodes.push({
      key: `${cfg.clusterName}/${cfg.nodeName}`,
      name: cfg.nodeName,
      cluster: cfg.clusterName,
      socket: cfg.socketPath,
      pinDir: cfg.pinDir,
      netns: undefined,
      underlayIP: cfg.nodeIP,
      configDir: cfg.clustermeshConfigDir,
      clusterId: cfg.clusterID,
    });
    if (!clusters.has(cfg.clusterName)) {
      clusters.set(cfg.clusterName, { name: cfg.clusterName, id: cfg.clusterID, etcd: cfg.etcd, etcdSource: file, remoteConfigDir: cfg.clustermeshConfigDir, lab: undefined });
    }
  }
  for (const socket of f.socket ?? []) {
    const node: NodeTarget = { key: socket, name: socket, cluster: undefined, socket, pinDir: undefined, netns: undefined, underlayIP: undefined, configDir: undefined, clusterId: undefined };
    if (probeAgents) {
      const api = new AgentClient(socket, { timeoutMs: 5000 });
      closer.add(() => api.close());
      try {
        const st = await api.status();
        node.name = st.node.name;
        node.cluster = st.node.cluster;
        node.key = `${st.node.cluster}/${st.node.name}`;
        node.pinDir = st.datapath.pinDir;
        node.underlayIP = st.node.nodeIP;
        node.configDir = st.clustermesh.configDir;
        node.clusterId = st.node.clusterID;
      } catch (err) {
        throw new CliError(`--socket ${socket}: ${(err as Error).message}; is the agent running? (or give its --pin-dir instead)`);
      }
    }
    nodes.push(node);
  }
  for (const pinDir of f.pinDir ?? []) {
    nodes.push({ key: pinDir, name: basename(pinDir), cluster: undefined, socket: undefined, pinDir, netns: undefined, underlayIP: undefined, configDir: undefined, clusterId: undefined });
  }
  for (const file of f.etcdConfig ?? []) {
    let conn: KvConnectionConfig;
    try {
      conn = await loadEtcdConfig(file);
    } catch (err) {
      throw new CliError((err as Error).message);
    }
    // The cluster is the one whose cluster-config this etcd publishes.
    const kv = new KvClient({ ...conn, timeoutMs: conn.timeoutMs ?? 5000 });
    closer.add(() => kv.close());
    let published: Map<string, number>;
    try {
      published = await publishedClusters(kv);
    } catch (err) {
      throw new CliError(`--etcd-config ${file}: cannot list ${clusterConfigPrefix} (${(err as Error).message}); run 'clustermesh troubleshoot' for the failing step`);
    }
    if (published.size !== 1) {
      throw new CliError(`--etcd-config ${file}: the etcd publishes ${published.size === 0 ? 'no cluster-config (is the cluster\'s apiserver running?)' : `${published.size} cluster-configs (${[...published.keys()].join(', ')})`}; expected exactly one`);
    }
    const [[name, id]] = [...published] as [[string, number]];
    const existing = clusters.get(name);
    clusters.set(name, { name, id, etcd: conn, etcdSource: file, remoteConfigDir: existing?.remoteConfigDir, lab: undefined });
  }
  return { lab: undefined, clusters: [...clusters.values()], nodes };
}

/**
 * What `ui --context` and `observe --follow --context` call to find the agents
 * again while they run: resolveTargets by kube context, with its own Closer,
 * closed once the targets are read.
 */
export function targetsAgain(f: TargetFlags): () => Promise<Targets> {
  return async () => {
    const c = new Closer();
    try {
      return await resolveTargets(f, c, { contexts: true });
    } finally {
      await c.closeAll();
    }
  };
}

/**
 * The clusters and nodes the flags name. `probeAgents`: ask explicit
 * `--socket` agents for their node name, cluster and pin dir. `contexts`: the
 * command took addTargetFlags' `contexts` (no lab given and none named
 * default: the current kube context).
 */
export async function resolveTargets(f: TargetFlags, closer: Closer, o: { probeAgents?: boolean; contexts?: boolean } = {}): Promise<Targets> {
  let t: Targets;
  const contexts = f.context !== undefined && f.context.length > 0;
  if (contexts && (isExplicit(f) || f.lab !== undefined)) {
    throw new CliError(`--context reads installed clusters through their Kubernetes API; it does not combine with ${f.lab !== undefined ? '--lab' : '--socket/--pin-dir/--agent-config/--etcd-config'}`);
  }
  if (contexts) {
    t = await fromContexts(f);
  } else if (isExplicit(f)) {
    t = await fromFlags(f, closer, o.probeAgents ?? true);
  } else {
    try {
      t = fromLab(readLabState(f.lab ?? DEFAULT_LAB_NAME));
    } catch (err) {
      if (err instanceof NoSuchLabError) {
        // Commands with --context and no --lab given: the current kube context, as kubectl would.
        if (f.lab === undefined && o.contexts) {
          t = await fromContexts(f);
          if (t.nodes.length === 0) throw new CliError(`no lab named ${DEFAULT_LAB_NAME} here, and the current kube context gives no agent to read: ${t.problems?.join('; ') || 'no nodes'} (name a lab with --lab, clusters with --context, or agents with --socket/--agent-config)`, EXIT_ERROR);
          return narrow(t, f);
        }
        throw new CliError(`${err.message} (on a host without a lab, name the agents and etcds: --agent-config FILE, --socket PATH, --pin-dir DIR, --etcd-config FILE)`, EXIT_ERROR);
      }
      throw new CliError((err as Error).message);
    }
  }
  return narrow(t, f);
}
