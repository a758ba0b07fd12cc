// The node's status as `clustermesh status` shows it (GET /v1/status): local
// sync, per remote cluster, per reconciler, the datapath. Built from the
// parts' own status() outputs; no logic of its own beyond summarising.
import type { ClusterMeshStatus } from '../clustermesh/clustermesh.ts';
import type { RemoteClusterStatus } from '../clustermesh/remote-cluster.ts';
import type { DatapathStatus } from './datapath.ts';
import type { ReconcilerStatus } from './reconciler.ts';
import type { ServicesStatus } from './services.ts';
import type { PolicyStatus } from './policy.ts';
import type { FlowsStatus } from './flow-reader.ts';

export type AgentPhase =
  /** Loading the datapath, restoring endpoints. */
  | 'starting'
  /** Waiting for the local store and the remote clusters to sync (bounded by syncTimeoutSeconds). */
  | 'syncing'
  /** Initial sync (or its timeout) and the first full reconcile are done. */
  | 'ready'
  | 'stopping';

export interface LocalSyncStatus {
  /** Which implementation backs the local source ('store' / 'kubernetes'). */
  source: string;
  /** Every kind the agent uses has been listed. */
  synced: boolean;
  kinds: Record<string, boolean>;
  counts: { nodes: number; endpoints: number; namespaces: number };
}

export interface RemoteSummary {
  name: string;
  state: RemoteClusterStatus['state'];
  connected: boolean;
  ready: boolean;
  /** Sticky per prefix: its first full list has been applied. */
  synced: RemoteClusterStatus['synced'];
  counts: RemoteClusterStatus['counts'];
  reconnections: number;
  lastError: string | null;
  lastErrorAt: string | null;
  /** cilium/.heartbeat of the remote: last change seen, and whether it is stale. Absent from older agents. */
  heartbeat?: RemoteClusterStatus['heartbeat'];
  /** The remote's cluster-config capabilities (cached, serviceExportsEnabled, syncedCanaries). */
  config?: RemoteClusterStatus['config'];
  /** Remote values refused, per reason. */
  rejected?: RemoteClusterStatus['rejected'];
  /** Backoffs cut short because the remote became reachable again. Absent from older agents. */
  reachableAgain?: number;
  /** direct: this agent dials the remote's etcd; cache: it reads the remote from its own cluster's etcd (the cache tier). Absent from older agents. */
  via?: RemoteClusterStatus['via'];
}

export interface AgentStatus {
  node: { name: string; cluster: string; clusterID: number; nodeIP: string; podCIDR: string };
  phase: AgentPhase;
  ready: boolean;
  startedAt: string;
  readyAt: string | null;
  /** The initial wait for sources: how it ended. */
  initialSync: { done: boolean; timedOut: boolean; waitedMs: number | null; waitingFor: string[] };
  local: LocalSyncStatus;
  remoteClusters: RemoteSummary[];
  clustermesh: {
    ready: boolean;
    configDir: string;
    configErrors: ClusterMeshStatus['configErrors'];
    counts: ClusterMeshStatus['counts'];
    ipConflicts: number;
    /** Address ownership between clusters: refused pod CIDRs, nodes and endpoint IPs (absent from older agents). */
    ownership?: ClusterMeshStatus['ownership'];
    /** Withdrawals of remote state held back while a remote resyncs: held so far, pending now, dropped because re-claimed. */
    resyncGrace: { held: number; pending: number; cancelled: number; settling: string[] };
  };
  reconcilers: ReconcilerStatus[];
  /** problems: duplicates refused (endpoint ID or IP held by another endpoint), one sentence each. */
  endpoints: { endpoints: number; ready: number; restoring: number; waitingForIdentity: number; identities: number; problems: string[] };
  /** Services programmed into the datapath (services.ts); GET /v1/services lists them. */
  services: ServicesStatus;
  /** Network policy (policy.ts): objects applied, parse errors, enforced endpoints; GET /v1/policy shows the entries. */
  policy: PolicyStatus;
  datapath: DatapathStatus;
  /** Flows kept from the datapath's events (GET /v1/flows) and events lost. Absent from older agents. */
  flows?: FlowsStatus;
  /** The Prometheus endpoint (metricsAddress): where it listens, or why not. Absent from older agents. */
  metrics?: { address: string | null; error: string | null };
  /** The read-only API over mutual TLS (remoteApi): where it listens, or why not. Absent when off, and from older agents. */
  remoteApi?: {
    address: string | null;
    error: string | null;
    /** Rotated certificate files that were not used (the previous certificate still served), naming the file; null when the files in use are those on disk. */
    certificateError?: string | null;
  };
}

export function remoteSummary(r: RemoteClusterStatus): RemoteSummary {
  return {
    name: r.name,
    state: r.state,
    connected: r.connected,
    ready: r.ready,
    synced: { ...r.synced },
    counts: { ...r.counts },
    reconnections: r.reconnections,
    heartbeat: { ...r.heartbeat },
    config: r.config ? { ...r.config } : null,
    rejected: { ...r.rejected },
    reachableAgain: r.reachableAgain ?? 0,
    via: r.via,
    lastError: r.lastError,
    lastErrorAt: r.lastErrorAt,
  };
}

/**
 * What the initial sync still waits for: local kinds not listed yet, remote
 * clusters whose prefixes have not all synced. Empty = synced.
 */
export function waitingFor(localKinds: Readonly<Record<string, boolean>>, unsyncedRemotes: readonly string[]): string[] {
  const out: string[] = [];
  for (const [kind, ok] of Object.entries(localKinds)) if (!ok) out.push(`local ${kind}`);
  for (const name of unsyncedRemotes) out.push(`remote cluster ${name}`);
  return out;
}
