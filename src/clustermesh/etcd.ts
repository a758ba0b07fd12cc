// The mesh kvstore's etcd roles (ARCHITECTURE §4), handed to the generic etcd
// launcher of src/kvstore/ (which knows no key layout). One user per role:
//   apiserver  readwrite cilium/ and the store prefix
//   agent      readwrite the store prefix and cilium/state/identities/, read cilium/
//   remote     read only what importers read (keys.ts exportedReadPrefixes)
// (The lab's Kubernetes API keeps its objects in an etcd of its own, as a real
// cluster does: src/lab/kube-api-procs.ts KUBE_ETCD_ROLES.)
import { startEtcd, withEtcd, type EtcdOptions, type EtcdRoles, type EtcdServer } from '../kvstore/etcd-process.ts';
import { CILIUM_PREFIX, exportedReadPrefixes, storePrefix } from './keys.ts';

/** The prefix agents allocate identities under (readwrite for `agent`). */
export const AGENT_IDENTITIES_PREFIX = 'cilium/state/identities/';

export type MeshUser = 'root' | 'apiserver' | 'agent' | 'remote';

export const MESH_ROLES: EtcdRoles = {
  apiserver: [
    { permission: 'Readwrite', key: CILIUM_PREFIX },
    { permission: 'Readwrite', key: storePrefix },
  ],
  agent: [
    { permission: 'Readwrite', key: storePrefix },
    { permission: 'Readwrite', key: AGENT_IDENTITIES_PREFIX },
    { permission: 'Read', key: CILIUM_PREFIX },
  ],
  remote: exportedReadPrefixes.map((key) => ({ permission: 'Read', key })),
};

/** startEtcd with the mesh's roles (unless `roles` is given). */
export function startMeshEtcd(opts: EtcdOptions): Promise<EtcdServer> {
  return startEtcd({ roles: MESH_ROLES, ...opts });
}

/** withEtcd with the mesh's roles (unless `roles` is given). */
export function withMeshEtcd<T>(opts: Omit<EtcdOptions, 'dir'> & { dir?: string }, fn: (server: EtcdServer) => Promise<T>): Promise<T> {
  return withEtcd({ roles: MESH_ROLES, ...opts }, fn);
}
