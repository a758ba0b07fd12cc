// Key paths of the mesh kvstore (ARCHITECTURE §4). STABLE API: other clusters
// read these keys, so a change of layout gets a new version segment (v2), never
// a silent reinterpretation. One function builds each key.

export const CILIUM_PREFIX = 'cilium/';

export const clusterConfigPrefix = 'cilium/cluster-config/';
export const clusterConfigKey = (cluster: string): string => `${clusterConfigPrefix}${cluster}`;

export const nodesPrefix = 'cilium/state/nodes/v1/';
export const nodesClusterPrefix = (cluster: string): string => `${nodesPrefix}${cluster}/`;
export const nodeKey = (cluster: string, node: string): string => `${nodesClusterPrefix(cluster)}${node}`;

export const identitiesPrefix = 'cilium/state/identities/v1/id/';
export const identityKey = (id: number): string => `${identitiesPrefix}${id}`;

export const ipPrefix = 'cilium/state/ip/v1/default/';
export const ipKey = (ip: string): string => `${ipPrefix}${ip}`;

export const servicesPrefix = 'cilium/state/services/v1/';
export const servicesClusterPrefix = (cluster: string): string => `${servicesPrefix}${cluster}/`;
export const serviceKey = (cluster: string, namespace: string, name: string): string =>
  `${servicesClusterPrefix(cluster)}${namespace}/${name}`;

export const syncedPrefix = 'cilium/synced/';
/** Names of the exported prefixes that carry a synced canary. */
export type SyncedPrefixName = 'nodes' | 'identities' | 'ip' | 'services';
export const SYNCED_PREFIX_NAMES: readonly SyncedPrefixName[] = ['nodes', 'identities', 'ip', 'services'];
/** The prefix each canary covers, as Cilium names it (no cluster, no trailing '/'). */
export const SYNCED_PREFIX_PATHS: Readonly<Record<SyncedPrefixName, string>> = {
  nodes: 'cilium/state/nodes/v1',
  identities: 'cilium/state/identities/v1',
  ip: 'cilium/state/ip/v1',
  services: 'cilium/state/services/v1',
};
/**
 * The canary a cluster writes once the initial set under a prefix is complete,
 * named by the full prefix it covers: `cilium/synced/<cluster>/cilium/state/nodes/v1`.
 */
export const syncedKey = (cluster: string, prefix: SyncedPrefixName): string => `${syncedPrefix}${cluster}/${SYNCED_PREFIX_PATHS[prefix]}`;

/**
 * The apiserver process that writes a cluster's keys: claimed at its start
 * (hostname/pid/random), every later write of it fenced on it; not exported.
 */
export const writerKey = (cluster: string): string => `cilium/.apiserver-writer/${cluster}`;

/** Written by the apiserver every interval (RFC3339 time); importers watch it to tell a live remote from a stale one. */
export const heartbeatKey = 'cilium/.heartbeat';

/**
 * What a remote cluster's (read-only) user may read: exactly what an importer
 * reads, ours or a Cilium agent's. Every entry is a prefix; `cilium/.heartbeat`
 * and the identities' `.../v1/id` have no trailing '/', because a Cilium client
 * lists and watches them that way (a range over the bare name). Narrower than
 * all of cilium/state/: the identity allocator's label→id and reference keys
 * (`.../identities/v1/value/`, `.../v1/refs/`, which name nodes) stay private.
 */
export const exportedReadPrefixes: readonly string[] = [
  clusterConfigPrefix,
  nodesPrefix,
  identitiesPrefix.slice(0, -1),
  ipPrefix,
  servicesPrefix,
  // MCS-API ServiceExports (src/mcs/export.ts; Cilium's layout)
  'cilium/state/serviceexports/v1/',
  syncedPrefix,
  heartbeatKey,
];

/** The cluster's own store (the "store" local source); never exported. */
export const storePrefix = 'clustermesh/store/v1/';

// ---------------------------------------------------------------------------
// The cache tier (kvstoremesh, issue 17): a cluster's apiserver imports every
// remote once and writes what it accepted into its own etcd, in Cilium's
// kvstoremesh layout, so the cluster's agents read all remotes through one
// connection to their own etcd:
//   cilium/state/nodes/v1/<c>/<node>         → cilium/cache/nodes/v1/<c>/<node>
//   cilium/state/identities/v1/id/<id>       → cilium/cache/identities/v1/<c>/id/<id>
//   cilium/state/ip/v1/default/<ip>          → cilium/cache/ip/v1/<c>/<ip>
//   cilium/state/services/v1/<c>/<ns>/<name> → cilium/cache/services/v1/<c>/<ns>/<name>
//   canaries: cilium/synced/<c>/cilium/cache/<kind>/v1
//   cluster-config of <c>: cilium/cluster-config/<c> (capability cached)

export const cachePrefix = 'cilium/cache/';

/** Where each prefix of remote `cluster` lives in the cache; the rest of a key is the same as under stateKeyPrefix. */
export function cacheKeyPrefix(kind: SyncedPrefixName, cluster: string): string {
  switch (kind) {
    case 'nodes':
      return `${cachePrefix}nodes/v1/${cluster}/`;
    case 'identities':
      return `${cachePrefix}identities/v1/${cluster}/id/`;
    case 'ip':
      return `${cachePrefix}ip/v1/${cluster}/`;
    case 'services':
      return `${cachePrefix}services/v1/${cluster}/`;
  }
}

/** The prefix a remote exports `kind` under (its own etcd). */
export function stateKeyPrefix(kind: SyncedPrefixName, cluster: string): string {
  switch (kind) {
    case 'nodes':
      return nodesClusterPrefix(cluster);
    case 'identities':
      return identitiesPrefix;
    case 'ip':
      return ipPrefix;
    case 'services':
      return servicesClusterPrefix(cluster);
  }
}

/** The canary the cache tier writes once `cluster`'s `kind` is complete in the cache. */
export const cacheSyncedKey = (cluster: string, kind: SyncedPrefixName): string => `${syncedPrefix}${cluster}/${SYNCED_PREFIX_PATHS[kind].replace(/^cilium\/state\//, cachePrefix)}`;

/** The cache tier's own view of its session to `cluster` (JSON: CachedRemoteStatus); not a Cilium key. */
export const cacheStatusKey = (cluster: string): string => `${cachePrefix}status/v1/${cluster}`;
