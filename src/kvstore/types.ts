// The contract of the kvstore layer. Everything above src/kvstore/ talks to
// etcd only through these types; the implementation lives beside this file.

/** One key with its value and the revision that last modified it. */
export interface KvPair {
  key: string;
  value: string;
  /** etcd mod_revision of this key, as a decimal string (etcd revisions are int64). */
  modRevision: string;
  /** etcd lease id the key is attached to, '0' when none. */
  lease: string;
}

export interface ListResult {
  pairs: KvPair[];
  /** The store revision the list was taken at; watch from revision + 1 to continue. */
  revision: string;
}

export type WatchEvent =
  | { kind: 'upsert'; key: string; value: string; modRevision: string }
  | { kind: 'delete'; key: string; modRevision: string };

export interface PutOptions {
  /** Attach the key to this client's session lease, so it disappears when the session ends. */
  lease?: boolean;
}

/** Failure classes a caller may want to react to differently. */
export type KvErrorKind =
  | 'unavailable' // cannot reach etcd (connection refused, timeout)
  | 'permission' // authenticated, but the user's role does not allow this
  | 'unauthenticated' // certificate or credentials rejected
  | 'compacted' // the requested revision was compacted; re-list needed
  | 'tls' // TLS handshake failed (unknown CA, wrong server name)
  | 'conflict' // create-only transaction found the key present
  | 'closed' // the client was closed
  | 'superseded' // a write fence (KvClient.setWriteFence) names another writer: nothing was written
  | 'other';

export class KvError extends Error {
  constructor(
    readonly kind: KvErrorKind,
    readonly op: string,
    message: string,
    override readonly cause?: unknown,
  ) {
    super(`kvstore ${op}: ${message}`);
    this.name = 'KvError';
  }
}

/** How to reach one etcd (mutual TLS). */
export interface KvConnectionConfig {
  endpoints: string[];
  caFile: string;
  certFile: string;
  keyFile: string;
  /** Per-request deadline; defaults to 5000 ms. */
  timeoutMs?: number;
  /** TLS server name to verify instead of the endpoint's host (e.g. connect by IP
   * to a server whose certificate names only a DNS name). */
  serverName?: string;
}
