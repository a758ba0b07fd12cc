// KvClient: the one way the control plane talks to etcd (mutual TLS, etcd3 over
// gRPC). Every failure leaves this module as a KvError with a kind.

import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { Etcd3, isRecoverableError, ClientClosedError, type ICompare, type IOptions, type IKeyValue, type IRequestOp, type ITxnResponse, type Lease, type Watcher } from 'etcd3';

import { KvError, type KvConnectionConfig, type KvErrorKind, type KvPair, type ListResult, type PutOptions, type WatchEvent } from './types.ts';

export const DEFAULT_TIMEOUT_MS = 5000;
export const DEFAULT_SESSION_TTL_SECONDS = 15;
export const DEFAULT_PAGE_SIZE = 1000;

export interface KvClientOptions {
  /** TTL of the session lease (`put(..., { lease: true })`); default 15 s. */
  sessionTtlSeconds?: number;
}

export interface ListOptions {
  /** Keys per range request (default 1000). All pages read the same revision. */
  pageSize?: number;
  /** Called after each page (progress; tests use it to write between pages). */
  onPage?: (page: number, pairsSoFar: number) => void | Promise<void>;
}

export interface WatchHandle {
  /** Stops the watch; no callback is called after this resolves. Idempotent. */
  cancel(): Promise<void>;
  /** True once the watch ended (cancelled or failed). */
  readonly done: boolean;
}

/** The client's session lease. Emits 'lost' (KvError) once when etcd no longer
 * holds it (expired, revoked, or unreachable for longer than twice the TTL). */
export class KvSession extends EventEmitter<{ lost: [KvError] }> {
  private isLost = false;
  constructor(
    /** etcd lease id (decimal int64). */
    readonly id: string,
    readonly ttlSeconds: number,
    private readonly lease: Lease,
  ) {
    super();
  }
  get lost(): boolean {
    return this.isLost;
  }
  /** @internal */
  markLost(err: KvError): void {
    if (this.isLost) return;
    this.isLost = true;
    this.emit('lost', err);
  }
  /** @internal */
  get inner(): Lease {
    return this.lease;
  }
}

// ---- error mapping ---------------------------------------------------------

const TLS_PATTERNS = [
  'certificate', 'ssl', 'tls', 'handshake', 'altnames', 'self signed', 'self-signed',
  'unable to verify', 'unable to get local issuer', 'alert', 'err_ssl', 'cert_',
];

const PEER_GONE = /socket disconnected|econnreset|econnrefused|socket hang up|connection reset|connection refused/;

/** TLS alerts a server sends when it does not accept the client certificate. */
const SERVER_REJECTED_CERT =
  /alert (bad certificate|unknown ca|certificate required|certificate expired|certificate revoked|unsupported certificate|certificate unknown|access denied)/;

function messageOf(err: unknown): string {
  if (err instanceof Error) {
    const details = (err as { details?: unknown }).details;
    return `${err.message}${typeof details === 'string' && !err.message.includes(details) ? ` (${details})` : ''}`;
  }
  return String(err);
}

/** The KvErrorKind of an etcd3 / gRPC / etcd failure. */
export function classifyError(err: unknown): KvErrorKind {
  if (err instanceof KvError) return err.kind;
  if (err instanceof ClientClosedError) return 'closed';
  const name = err instanceof Error ? err.constructor.name : '';
  const msg = messageOf(err).toLowerCase();
  const code = (err as { code?: unknown } | null)?.code;
  if (msg.includes('permission denied') || name === 'EtcdPermissionDeniedError' || code === 7) return 'permission';
  if (msg.includes('required revision has been compacted') || msg.includes('compacted')) return 'compacted';
  if (
    name === 'EtcdUserNotFoundError' ||
    name === 'EtcdAuthenticationFailedError' ||
    name === 'EtcdInvalidAuthTokenError' ||
    name === 'GRPCUnauthenticatedError' ||
    msg.includes('user name not found') ||
    msg.includes('user name is empty') ||
    msg.includes('authentication failed') ||
    msg.includes('invalid auth token') ||
    code === 16
  ) {
    return 'unauthenticated';
  }
  // The server refused our client certificate (e.g. issued by another CA):
  // the credentials were rejected. Our own verification of the server failing
  // (unknown CA, wrong name) is 'tls'.
  if (SERVER_REJECTED_CERT.test(msg)) return 'unauthenticated';
  // A server that dies in the middle of a handshake says "socket disconnected
  // before secure TLS connection was established": that is an unreachable
  // server, not a certificate problem.
  if (PEER_GONE.test(msg)) return 'unavailable';
  if (TLS_PATTERNS.some((p) => msg.includes(p))) return 'tls';
  if (msg.includes('client closed') || msg.includes('channel has been shut down') || msg.includes('client has been closed')) return 'closed';
  if (
    name === 'GRPCUnavailableError' ||
    name === 'GRPCDeadlineExceededError' ||
    name === 'EtcdWatchStreamEnded' ||
    name === 'BrokenCircuitError' ||
    code === 14 ||
    code === 4 ||
    /unavailable|deadline|econnrefused|econnreset|etimedout|ehostunreach|no connection established|connection dropped|timed out|socket hang up|stream ended|leader changed|no leader|stopped/.test(msg)
  ) {
    return 'unavailable';
  }
  return 'other';
}

/** Wraps any failure in a KvError (a KvError passes through unchanged). */
export function toKvError(op: string, err: unknown): KvError {
  if (err instanceof KvError) return err;
  return new KvError(classifyError(err), op, messageOf(err), err);
}

// ---- helpers ---------------------------------------------------------------

/** The exclusive end of the key range of `prefix` (etcd's "prefix end"). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.subarray(0, i + 1);
    }
  }
  // Empty prefix or all 0xff: to the end of the keyspace.
  return Buffer.from([0]);
}

function toPair(kv: IKeyValue): KvPair {
  return {
    key: kv.key.toString('utf8'),
    value: kv.value.toString('utf8'),
    modRevision: String(kv.mod_revision),
    lease: String(kv.lease ?? '0'),
  };
}

/** Host policy: pass every call straight through (no circuit breaker: callers
 * see each failure and decide). Only `execute` is used by etcd3. */
const passThrough = { execute: <T>(fn: (ctx: unknown) => T | Promise<T>): Promise<T> => Promise.resolve().then(() => fn({ signal: new AbortController().signal, attempt: 0 })) };

/** Global policy: on a connection failure try the next endpoint, each at most once per call. */
function tryEachEndpoint(endpoints: number) {
  return {
    execute: async <T>(fn: (ctx: unknown) => T | Promise<T>): Promise<T> => {
      let last: unknown;
      for (let attempt = 0; attempt < Math.max(1, endpoints); attempt++) {
        try {
          return await fn({ signal: new AbortController().signal, attempt });
        } catch (err) {
          last = err;
          if (!(err instanceof Error) || !isRecoverableError(err)) throw err;
        }
      }
      throw last;
    },
  };
}

// ---- the client ------------------------------------------------------------

export class KvClient {
  readonly config: KvConnectionConfig;
  /** Unary calls. */
  private readonly etcd: Etcd3;
  /** Watch streams, and the lease keep-alive stream, each on their own
   * connection: etcd3 closes every channel of a connection when one of its
   * streams fails or is cancelled, which would abort unrelated calls in flight. */
  private readonly watchEtcd: Etcd3;
  /** Created on first use: importers never take a lease, and each connection
   * costs a TLS context (milliseconds of CPU, once per remote cluster). */
  private leaseEtcdInstance: Etcd3 | undefined;
  private readonly options: IOptions;
  private readonly timeoutMs: number;
  private readonly sessionTtl: number;
  /** setWriteFence: writes only while this key holds this value. */
  private fence: { key: Buffer; value: Buffer } | undefined;
  private closed = false;
  private session: Promise<KvSession> | undefined;
  private readonly watches = new Set<WatchHandle>();

  constructor(config: KvConnectionConfig, opts: KvClientOptions = {}) {
    this.config = config;
    this.timeoutMs = config.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.sessionTtl = opts.sessionTtlSeconds ?? DEFAULT_SESSION_TTL_SECONDS;
    if (config.endpoints.length === 0) throw new KvError('other', 'connect', 'no endpoints configured');
    let credentials: NonNullable<IOptions['credentials']>;
    try {
      credentials = {
        rootCertificate: readFileSync(config.caFile),
        certChain: readFileSync(config.certFile),
        privateKey: readFileSync(config.keyFile),
      };
    } catch (err) {
      throw new KvError('tls', 'connect', `cannot read TLS files: ${messageOf(err)}`, err);
    }
    const timeoutMs = this.timeoutMs;
    const options: IOptions = {
      hosts: config.endpoints,
      credentials,
      dialTimeout: timeoutMs,
      grpcOptions: {
        ...(config.serverName !== undefined ? { 'grpc.ssl_target_name_override': config.serverName, 'grpc.default_authority': config.serverName } : {}),
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': 5_000,
        'grpc.initial_reconnect_backoff_ms': 200,
        'grpc.max_reconnect_backoff_ms': 5_000,
        'grpc.max_receive_message_length': 64 << 20,
        // Each etcd3 client makes its own TLS credentials, so grpc's process-wide
        // subchannel pool never shares a connection between them; it only costs a
        // scan of every pooled subchannel to the same address per new channel
        // (quadratic when many clients reach one etcd: the control-plane bench).
        'grpc.use_local_subchannel_pool': 1,
      },
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
      faultHandling: {
        host: () => passThrough as unknown as ReturnType<NonNullable<NonNullable<IOptions['faultHandling']>['host']>>,
        global: tryEachEndpoint(config.endpoints.length) as unknown as NonNullable<NonNullable<IOptions['faultHandling']>['global']>,
      },
    };
    this.etcd = new Etcd3(options);
    this.watchEtcd = new Etcd3(options);
    this.options = options;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private check(op: string): void {
    if (this.closed) throw new KvError('closed', op, 'client is closed');
  }

  private async call<T>(op: string, fn: () => Promise<T>): Promise<T> {
    this.check(op);
    try {
      return await fn();
    } catch (err) {
      if (messageOf(err).includes('requested lease not found')) await this.sessionGone(err);
      throw toKvError(op, this.closed ? new KvError('closed', op, 'client is closed', err) : err);
    }
  }

  private async sessionLeaseId(): Promise<string> {
    return (await this.lease()).id;
  }

  /** etcd no longer knows our session lease (e.g. it came back without data):
   * report the loss now rather than at the next keep-alive, so owners rewrite
   * their keys on a new session. */
  private async sessionGone(err: unknown): Promise<void> {
    const current = this.session;
    if (current === undefined) return;
    const s = await current.catch(() => undefined);
    if (this.session === current) this.session = undefined;
    if (s === undefined) return;
    s.inner.release();
    s.markLost(new KvError('other', 'lease', messageOf(err), err));
  }

  /** The value of `key` with its revision, or undefined. */
  async get(key: string): Promise<KvPair | undefined> {
    return await this.call('get', async () => {
      const res = await this.etcd.kv.range({ key: Buffer.from(key) });
      const kv = res.kvs[0];
      return kv === undefined ? undefined : toPair(kv);
    });
  }

  /** The value of exactly `key` (no prefix range: a role granted only that key may read it)
   * and the store's revision at the read (where a watch of the key continues). */
  async getWithRevision(key: string): Promise<{ pair: KvPair | undefined; revision: string }> {
    return await this.call('get', async () => {
      const res = await this.etcd.kv.range({ key: Buffer.from(key) });
      const kv = res.kvs[0];
      return { pair: kv === undefined ? undefined : toPair(kv), revision: String(res.header.revision) };
    });
  }

  /** The store's current revision. */
  async currentRevision(): Promise<string> {
    return await this.call('revision', async () => {
      const res = await this.etcd.kv.range({ key: Buffer.from([0]), count_only: true });
      return String(res.header.revision);
    });
  }

  /** Every pair under `prefix` as one consistent snapshot: pages of `pageSize`
   * keys, all read at the revision of the first page. */
  async list(prefix: string, opts: ListOptions = {}): Promise<ListResult> {
    const pageSize = opts.pageSize ?? DEFAULT_PAGE_SIZE;
    if (!Number.isInteger(pageSize) || pageSize < 1) throw new KvError('other', 'list', `bad page size ${pageSize}`);
    return await this.call('list', async () => {
      const p = Buffer.from(prefix);
      const end = prefixEnd(p);
      let start = p.length === 0 ? Buffer.from([0]) : p;
      let revision: string | undefined;
      const pairs: KvPair[] = [];
      let page = 0;
      for (;;) {
        const res = await this.etcd.kv.range({
          key: start,
          range_end: end,
          limit: pageSize,
          ...(revision !== undefined ? { revision } : {}),
        });
        revision ??= String(res.header.revision);
        for (const kv of res.kvs) pairs.push(toPair(kv));
        page++;
        await opts.onPage?.(page, pairs.length);
        const last = res.kvs[res.kvs.length - 1];
        if (!res.more || last === undefined) break;
        start = Buffer.concat([last.key, Buffer.from([0])]);
      }
      return { pairs, revision };
    });
  }

  /**
   * From now on every write of this client (put, delete, the conditional
   * writes) is done only while `key` holds `value`, checked in the same etcd
   * transaction: once another writer has replaced the value (a newer process
   * of the same role took over), each write changes nothing and fails with a
   * KvError of kind 'superseded'. A `key` that is gone (an etcd restored
   * empty) is claimed again by the next write. Writes of `key` itself are not
   * fenced.
   */
  setWriteFence(key: string, value: string): void {
    this.fence = { key: Buffer.from(key), value: Buffer.from(value) };
  }

  /**
   * `success` in one transaction, if `compare` holds and the write fence (if
   * any) still names us; a fence naming another writer is a 'superseded'
   * KvError. A fence key that is gone (an etcd that lost its data, or the key
   * deleted) is claimed again, unless another writer claims it first, and the
   * transaction retried once.
   */
  private async txn(op: string, key: Buffer, compare: ICompare[], success: IRequestOp[], reclaimed = false): Promise<ITxnResponse> {
    const fence = this.fence !== undefined && !this.fence.key.equals(key) ? this.fence : undefined;
    const res = await this.etcd.kv.txn({
      compare: [...compare, ...(fence ? [{ key: fence.key, target: 'Value' as const, result: 'Equal' as const, value: fence.value }] : [])],
      success,
      failure: fence ? [{ request_range: { key: fence.key } }] : [],
    });
    if (!res.succeeded && fence) {
      let held = res.responses[0]?.response_range?.kvs[0]?.value;
      if (held === undefined && !reclaimed) {
        const claim = await this.etcd.kv.txn({
          compare: [{ key: fence.key, target: 'Create', result: 'Equal', create_revision: 0 }],
          success: [{ request_put: { key: fence.key, value: fence.value } }],
          failure: [{ request_range: { key: fence.key } }],
        });
        held = claim.succeeded ? fence.value : claim.responses[0]?.response_range?.kvs[0]?.value;
        if (held?.equals(fence.value)) return await this.txn(op, key, compare, success, true);
      }
      if (held === undefined || !held.equals(fence.value)) {
        throw new KvError('superseded', op, `${fence.key.toString()} names another writer (${held?.toString() ?? 'absent'}), not ${fence.value.toString()}: nothing written`);
      }
    }
    return res;
  }

  /** Writes `key`; returns the revision of the write. */
  async put(key: string, value: string, opts: PutOptions = {}): Promise<string> {
    return await this.call('put', async () => {
      const lease = opts.lease ? await this.sessionLeaseId() : undefined;
      const k = Buffer.from(key);
      const put = { key: k, value: Buffer.from(value), ...(lease !== undefined ? { lease } : {}) };
      const res = this.fence ? await this.txn('put', k, [], [{ request_put: put }]) : await this.etcd.kv.put(put);
      return String(res.header.revision);
    });
  }

  /**
   * Puts and deletes in one etcd transaction (all or none; fenced like every
   * write). etcd refuses more than its --max-txn-ops (128 by default) and a
   * key twice in one transaction: callers keep batches within both.
   */
  async writeMany(ops: ReadonlyArray<{ key: string; value: string } | { key: string; delete: true }>, opts: PutOptions = {}): Promise<string> {
    if (ops.length === 0) throw new KvError('other', 'writeMany', 'no operations');
    return await this.call('writeMany', async () => {
      const lease = opts.lease && ops.some((o) => !('delete' in o)) ? await this.sessionLeaseId() : undefined;
      const success: IRequestOp[] = ops.map((o) =>
        'delete' in o ? { request_delete_range: { key: Buffer.from(o.key) } } : { request_put: { key: Buffer.from(o.key), value: Buffer.from(o.value), ...(lease !== undefined ? { lease } : {}) } },
      );
      const res = await this.txn('writeMany', Buffer.alloc(0), [], success);
      return String(res.header.revision);
    });
  }

  /** Deletes `key`; true when it existed. */
  async delete(key: string): Promise<boolean> {
    return await this.call('delete', async () => {
      const k = Buffer.from(key);
      if (!this.fence) return Number((await this.etcd.kv.deleteRange({ key: k })).deleted) > 0;
      const res = await this.txn('delete', k, [], [{ request_delete_range: { key: k } }]);
      return Number(res.responses[0]?.response_delete_range?.deleted ?? 0) > 0;
    });
  }

  /** Deletes every key under `prefix` (which must not be empty); returns how many. */
  async deletePrefix(prefix: string): Promise<number> {
    if (prefix.length === 0) throw new KvError('other', 'deletePrefix', 'refusing to delete the whole keyspace');
    return await this.call('deletePrefix', async () => {
      const p = Buffer.from(prefix);
      if (!this.fence) return Number((await this.etcd.kv.deleteRange({ key: p, range_end: prefixEnd(p) })).deleted);
      const res = await this.txn('deletePrefix', Buffer.alloc(0), [], [{ request_delete_range: { key: p, range_end: prefixEnd(p) } }]);
      return Number(res.responses[0]?.response_delete_range?.deleted ?? 0);
    });
  }

  /** Writes `key` only if it does not exist; false when it does. */
  async createOnly(key: string, value: string, opts: PutOptions = {}): Promise<boolean> {
    return await this.call('createOnly', async () => {
      const lease = opts.lease ? await this.sessionLeaseId() : undefined;
      const k = Buffer.from(key);
      const res = await this.txn('createOnly', k, [{ key: k, target: 'Create', result: 'Equal', create_revision: 0 }], [{ request_put: { key: k, value: Buffer.from(value), ...(lease !== undefined ? { lease } : {}) } }]);
      return res.succeeded;
    });
  }

  /** Like createOnly, but a present key is a KvError of kind 'conflict'. */
  async create(key: string, value: string, opts: PutOptions = {}): Promise<void> {
    if (!(await this.createOnly(key, value, opts))) throw new KvError('conflict', 'create', `key ${key} already exists`);
  }

  /** Writes `key` only if its mod revision is `expectedModRevision` ('0': absent). */
  async compareAndSwap(key: string, expectedModRevision: string, value: string, opts: PutOptions = {}): Promise<boolean> {
    return await this.call('compareAndSwap', async () => {
      const lease = opts.lease ? await this.sessionLeaseId() : undefined;
      const k = Buffer.from(key);
      const res = await this.txn('compareAndSwap', k, [{ key: k, target: 'Mod', result: 'Equal', mod_revision: expectedModRevision }], [{ request_put: { key: k, value: Buffer.from(value), ...(lease !== undefined ? { lease } : {}) } }]);
      return res.succeeded;
    });
  }

  /** Deletes `key` only if its mod revision is `expectedModRevision`. */
  async compareAndDelete(key: string, expectedModRevision: string): Promise<boolean> {
    return await this.call('compareAndDelete', async () => {
      const k = Buffer.from(key);
      const res = await this.txn('compareAndDelete', k, [{ key: k, target: 'Mod', result: 'Equal', mod_revision: expectedModRevision }], [{ request_delete_range: { key: k } }]);
      return res.succeeded;
    });
  }

  /** Compacts the history up to `revision` (tests, maintenance). */
  async compact(revision: string): Promise<void> {
    await this.call('compact', async () => {
      await this.etcd.kv.compact({ revision, physical: true });
    });
  }

  /**
   * The session lease, granted on first use with `ttlSeconds` (default: the
   * client's session TTL) and kept alive. After it is lost, the next call
   * grants a new one (keys of the old lease are gone: the owner rewrites them).
   */
  async lease(ttlSeconds: number = this.sessionTtl): Promise<KvSession> {
    this.check('lease');
    const current = this.session;
    if (current !== undefined) {
      const s = await current.catch(() => undefined);
      if (s !== undefined && !s.lost) return s;
      if (this.session === current) this.session = undefined;
      if (this.session !== undefined) return await this.lease(ttlSeconds);
    }
    const p = (async () => {
      this.leaseEtcdInstance ??= new Etcd3(this.options);
      const lease = this.leaseEtcdInstance.lease(ttlSeconds);
      let session: KvSession | undefined;
      let early: KvError | undefined;
      lease.on('lost', (err) => {
        const e = toKvError('lease', err);
        if (session) session.markLost(e);
        else early = e;
        if (this.session === p) this.session = undefined;
      });
      try {
        const id = await lease.grant();
        session = new KvSession(String(id), ttlSeconds, lease);
        if (early) session.markLost(early);
        return session;
      } catch (err) {
        lease.release();
        throw toKvError('lease', err);
      }
    })();
    this.session = p;
    p.catch(() => {
      if (this.session === p) this.session = undefined;
    });
    return await p;
  }

  /** Revokes the session lease (its keys are deleted at once). */
  async revokeSession(): Promise<void> {
    const current = this.session;
    this.session = undefined;
    if (current === undefined) return;
    const s = await current.catch(() => undefined);
    if (s === undefined) return;
    try {
      await s.inner.revoke({ deadline: Date.now() + this.timeoutMs });
    } catch (err) {
      throw toKvError('revoke', err);
    } finally {
      s.markLost(new KvError('closed', 'lease', 'session revoked'));
    }
  }

  /**
   * Watches every key under `prefix` from `fromRevision` (inclusive). Events are
   * delivered in revision order. The watch never resumes on its own: on the
   * first failure (etcd unreachable, compaction, permission) `onError` is called
   * once and the watch is over — the caller re-lists and watches again.
   * With `exact`, only the key `prefix` itself is watched (no range).
   */
  watch(prefix: string, fromRevision: string, onEvent: (ev: WatchEvent) => void, onError: (err: KvError) => void, opts: { exact?: boolean } = {}): WatchHandle {
    this.check('watch');
    let watcher: Watcher | undefined;
    let done = false;
    let failed = false;
    let cancelled = false;
    /** The first revision not yet delivered: where a resumed watch would start. */
    let nextRevision = BigInt(fromRevision);
    const handle: WatchHandle = {
      get done() {
        return done;
      },
      cancel: async () => {
        cancelled = true;
        if (done) return;
        done = true;
        this.watches.delete(handle);
        const w = watcher;
        if (w === undefined || failed) return;
        w.removeAllListeners();
        w.on('error', () => undefined);
        // The cancel round trip waits for etcd; don't hang when it is gone.
        await Promise.race([w.cancel().catch(() => undefined), new Promise((r) => setTimeout(r, 1000).unref())]);
      },
    };
    const fail = (err: unknown, removedByEtcd3: boolean): void => {
      if (done) return;
      failed = true;
      const e = toKvError('watch', err);
      const w = watcher;
      done = true;
      this.watches.delete(handle);
      if (w !== undefined) {
        w.removeAllListeners();
        w.on('error', () => undefined);
        // A disconnected watcher is detached at once (no resume); one cancelled
        // by etcd was already removed by etcd3 (cancelling it again would write
        // to a closed stream).
        if (!removedByEtcd3) void w.cancel().catch(() => undefined);
      }
      if (e.kind !== 'other' || !e.message.includes('Watcher canceled')) {
        onError(e);
        return;
      }
      // etcd cancels a watch on a compacted revision with an empty reason (etcd3
      // does not pass compact_revision on): ask a range at that revision.
      void this.probeCompacted(prefix, nextRevision, opts.exact === true).then((compacted) => {
        if (!cancelled) onError(compacted ?? e);
      });
    };
    try {
      const p = Buffer.from(prefix);
      const builder = this.watchEtcd.watch();
      if (opts.exact) builder.key(p);
      else if (p.length === 0) builder.inRange({ start: Buffer.from([0]), end: Buffer.from([0]) });
      else builder.inRange({ start: p, end: prefixEnd(p) });
      builder.startRevision(fromRevision);
      watcher = builder.watcher();
    } catch (err) {
      done = true;
      throw toKvError('watch', err);
    }
    this.watches.add(handle);
    watcher.on('data', (res) => {
      if (done) return;
      for (const ev of res.events) {
        if (done) return;
        const key = ev.kv.key.toString('utf8');
        const modRevision = String(ev.kv.mod_revision);
        const next = BigInt(modRevision) + 1n;
        if (next > nextRevision) nextRevision = next;
        if (ev.type === 'Delete') onEvent({ kind: 'delete', key, modRevision });
        else onEvent({ kind: 'upsert', key, value: ev.kv.value.toString('utf8'), modRevision });
      }
    });
    watcher.on('disconnected', (err) => fail(err, false));
    watcher.on('error', (err) => fail(err, true));
    return handle;
  }

  private async probeCompacted(prefix: string, revision: bigint, exact: boolean): Promise<KvError | undefined> {
    if (this.closed || revision <= 0n) return undefined;
    try {
      const p = Buffer.from(prefix);
      if (exact) await this.etcd.kv.range({ key: p, limit: 1, revision: revision.toString() });
      else await this.etcd.kv.range({ key: p.length === 0 ? Buffer.from([0]) : p, range_end: prefixEnd(p), limit: 1, revision: revision.toString() });
      return undefined;
    } catch (err) {
      const e = toKvError('watch', err);
      return e.kind === 'compacted' ? e : undefined;
    }
  }

  /** Cancels watches, releases the session lease (its keys expire after the TTL
   * unless `revokeSession`), and closes the connection. Idempotent. */
  async close(opts: { revokeSession?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    if (opts.revokeSession) await this.revokeSession().catch(() => undefined);
    this.closed = true;
    await Promise.all([...this.watches].map((w) => w.cancel()));
    const s = this.session;
    this.session = undefined;
    if (s !== undefined) {
      const session = await s.catch(() => undefined);
      if (session) {
        session.inner.release();
        session.markLost(new KvError('closed', 'lease', 'client closed'));
      }
    }
    this.etcd.close();
    this.watchEtcd.close();
    this.leaseEtcdInstance?.close();
  }
}
