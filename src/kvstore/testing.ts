// Test fixtures of the kvstore layer: roles and key names of its own, so that
// its tests need nothing from the layers above (the mesh's real roles and keys
// live in src/clustermesh/).
import { withEtcd, type EtcdOptions, type EtcdRoles, type EtcdServer } from './etcd-process.ts';

export const storePrefix = 'clustermesh/store/v1/';
export const nodesPrefix = 'cilium/state/nodes/v1/';
export const nodeKey = (cluster: string, node: string): string => `${nodesPrefix}${cluster}/${node}`;
export const identityKey = (id: number): string => `cilium/state/identities/v1/id/${id}`;
export const heartbeatKey = 'cilium/.heartbeat';
export const syncedPrefix = 'cilium/synced/';
export const canaryKey = (cluster: string): string => `${syncedPrefix}${cluster}/${nodesPrefix.slice(0, -1)}`;

/** apiserver writes cilium/ and the store, agent writes the store and identities, remote reads nodes only. */
export const TEST_ROLES: EtcdRoles = {
  apiserver: [
    { permission: 'Readwrite', key: 'cilium/' },
    { permission: 'Readwrite', key: storePrefix },
  ],
  agent: [
    { permission: 'Readwrite', key: storePrefix },
    { permission: 'Readwrite', key: 'cilium/state/identities/' },
    { permission: 'Read', key: 'cilium/' },
  ],
  remote: [{ permission: 'Read', key: nodesPrefix }],
};

export function withTestEtcd<T>(opts: Omit<EtcdOptions, 'dir'> & { dir?: string }, fn: (server: EtcdServer) => Promise<T>): Promise<T> {
  return withEtcd({ roles: TEST_ROLES, ...opts }, fn);
}
