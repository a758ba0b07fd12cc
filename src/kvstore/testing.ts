// Test fixtures of the kvstore layer: roles and key names of its own, so that
// its tests need nothing from the layers above (the mesh's real roles and keys
// live in src/clustermesh/).
import assert from 'node:assert/strict';
import { KvClient } from './client.ts';
import { withEtcd, type EtcdOptions, type EtcdRoles, type EtcdServer } from './etcd-process.ts';
import { KvError, type KvErrorKind } from './types.ts';

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

/** Awaits `p` and asserts it rejects with a KvError of `kind`; returns that error. */
export async function rejectsKind(p: Promise<unknown>, kind: KvErrorKind): Promise<KvError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof KvError, `expected KvError, got ${String(err)}`);
    assert.equal(err.kind, kind, `expected kind ${kind}: ${err.message}`);
    return err;
  }
  assert.fail(`expected a KvError of kind ${kind}, but it resolved`);
}

/** One KvClient per user name, closed after `fn`. */
export async function withClients<T>(server: EtcdServer, users: string[], fn: (...clients: KvClient[]) => Promise<T>): Promise<T> {
  const clients = users.map((u) => new KvClient(server.connection(u, { timeoutMs: 3000 })));
  try {
    return await fn(...clients);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}
