// The kvstore layer: what src/kvstore/ offers.
export * from './types.ts';
export { KvClient, KvSession, classifyError, toKvError, prefixEnd, DEFAULT_TIMEOUT_MS, DEFAULT_SESSION_TTL_SECONDS, DEFAULT_PAGE_SIZE } from './client.ts';
export type { KvClientOptions, ListOptions, WatchHandle } from './client.ts';
export { startEtcd, withEtcd, freeLoopbackPort, etcdUsers } from './etcd-process.ts';
export type { EtcdOptions, EtcdServer, EtcdRoles, RolePermission } from './etcd-process.ts';
export { createCA, issueCert } from './pki.ts';
export type { CertificateAuthority, CertFiles, CertUsage, IssueCertOptions } from './pki.ts';
export { WatchStore, backoffDelay } from './watch-store.ts';
export type { WatchStoreOptions, WatchStoreStatus, BackoffOptions } from './watch-store.ts';
export { SyncStore, rfc3339 } from './sync-store.ts';
export type { SyncStoreOptions, SyncStoreStatus, RateLimit } from './sync-store.ts';
