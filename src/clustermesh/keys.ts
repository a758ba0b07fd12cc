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
/** The canary a cluster writes once the initial set under `prefix` is complete. */
export const syncedKey = (cluster: string, prefix: SyncedPrefixName): string => `${syncedPrefix}${cluster}/${prefix}`;
/** Names of the exported prefixes that carry a synced canary. */
export type SyncedPrefixName = 'nodes' | 'identities' | 'ip' | 'services';
export const SYNCED_PREFIX_NAMES: readonly SyncedPrefixName[] = ['nodes', 'identities', 'ip', 'services'];

export const heartbeatKey = 'cilium/.heartbeat';

/**
 * The prefixes a remote cluster's (read-only) user may read: exactly what an
 * importer reads. Narrower than all of cilium/state/: the identity
 * allocator's label→id and reference keys (which name nodes) stay private.
 */
export const exportedReadPrefixes: readonly string[] = [clusterConfigPrefix, nodesPrefix, identitiesPrefix, ipPrefix, servicesPrefix, syncedPrefix, heartbeatKey];

/** The cluster's own store (the "store" local source); never exported. */
export const storePrefix = 'clustermesh/store/v1/';
