// The agent's local API: HTTP/JSON over the unix socket `<stateDir>/agent.sock`
// (types.ts has the routes and bodies). Routing and encoding only; the work
// is done by the handlers the composition root passes in.
//
// The remote API (startRemoteApiServer, the agent setting remoteApi): the
// read-only routes of the same API over HTTPS on the node's address, for
// `observe --context` and `ui --context` on a user's machine (Hubble's way: a
// TLS server on every node, the client dialling each node). Mutual TLS: the
// client's certificate must chain to the install's CA, and its subject CN be
// one the setting admits (`observer`): the etcd users' certificates come from
// the same CA, and the one handed to other clusters (`remote`) must not read
// this cluster's flows. Nothing that writes (endpoints, the CNI) is served.
import { chmod, unlink } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { connect, type AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { TlsFileWatcher, type TlsFiles } from '../util/tls-files.ts';
import type { Logger } from './endpoints.ts';
import { FlowQueryError, parseFlowQuery, type Flow, type FlowFollower, type FlowQuery } from './flows.ts';
import type { AgentStatus } from './status.ts';
import { ApiError, type EndpointDeleteResult, type EndpointInfo, type HealthBody, type PolicyInspect, type ServiceInfo } from './types.ts';

export interface ApiHandlers {
  addEndpoint(containerID: string, body: unknown): Promise<EndpointInfo>;
  deleteEndpoint(containerID: string): Promise<EndpointDeleteResult>;
  listEndpoints(): EndpointInfo[];
  status(): AgentStatus;
  listServices(): ServiceInfo[];
  policy(): PolicyInspect;
  health(): HealthBody;
  /** Kept flows matching q (the ring buffer read first). */
  flows(q: FlowQuery): Flow[];
  /** Tells w about new flows matching q until the returned function is called. */
  followFlows(w: FlowFollower, q: FlowQuery): () => void;
  /** One CNI command (src/cni/plugin.ts) with the CNI_* variables and the network config the plugin executable got. */
  cni(env: Record<string, string>, stdin: string): Promise<{ stdout: string; exitCode: number }>;
}

export interface ApiServer {
  readonly socketPath: string;
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 1 << 20;

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendError(res: ServerResponse, err: unknown, log: Logger, what: string): void {
  if (err instanceof ApiError) {
    send(res, err.status, { error: err.message, code: err.code });
    return;
  }
  log.error({ err: (err as Error)?.stack ?? String(err) }, `${what}: internal error`);
  send(res, 500, { error: `${what}: ${(err as Error)?.message ?? String(err)}`, code: 'internal' });
}

/**
 * The body as text; 413 beyond MAX_BODY_BYTES: a declared content-length at
 * once, a chunked body as soon as it gets there. The rest is read and dropped
 * (not a destroyed socket), so the client gets the answer.
 */
function readText(req: IncomingMessage, what: string): Promise<string> {
  const tooLarge = (): ApiError => new ApiError('too-large', `${what}: request body larger than ${MAX_BODY_BYTES} bytes`);
  if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    let chunks: Buffer[] | undefined = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      if (!chunks) return;
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        chunks = undefined;
        reject(tooLarge());
      } else chunks.push(c);
    });
    const cut = (): void => reject(new ApiError('invalid-request', `${what}: the request body ended before its length (the client went away)`));
    req.once('end', () => chunks && resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', cut);
    req.once('close', () => chunks && !req.complete && cut());
  });
}

async function readJson(req: IncomingMessage, what: string): Promise<unknown> {
  const text = await readText(req, what);
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new ApiError('invalid-request', `request body is not JSON: ${(err as Error).message}`);
  }
}

/** True when something answers on the socket (another agent). */
function socketAlive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** What the remote API serves: GET of these paths (and nothing that changes the node). */
export const REMOTE_API_PATHS: readonly string[] = ['/healthz', '/v1/status', '/v1/endpoints', '/v1/services', '/v1/policy', '/v1/flows'];

async function route(req: IncomingMessage, res: ServerResponse, h: ApiHandlers, log: Logger, readOnly = false): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://agent');
  const path = url.pathname;
  const method = req.method ?? 'GET';
  const what = `${method} ${path}`;
  try {
    if (readOnly && (method !== 'GET' || !REMOTE_API_PATHS.includes(path.replace(/(.)\/$/, '$1')))) {
      throw new ApiError('forbidden', `${what}: the remote API is read-only (GET ${REMOTE_API_PATHS.join(', ')}); the rest is served on the node's unix socket only`);
    }
    if (path === '/healthz') {
      if (method !== 'GET') throw new ApiError('method-not-allowed', `${what}: use GET`);
      const body = h.health();
      return send(res, body.ready ? 200 : 503, body);
    }
    if (path === '/v1/status') {
      if (method !== 'GET') throw new ApiError('method-not-allowed', `${what}: use GET`);
      return send(res, 200, h.status());
    }
    if (path === '/v1/services' || path === '/v1/services/') {
      if (method !== 'GET') throw new ApiError('method-not-allowed', `${what}: use GET`);
      return send(res, 200, h.listServices());
    }
    if (path === '/v1/policy' || path === '/v1/policy/') {
      if (method !== 'GET') throw new ApiError('method-not-allowed', `${what}: use GET`);
      return send(res, 200, h.policy());
    }
    if (path === '/v1/endpoints' || path === '/v1/endpoints/') {
      if (method !== 'GET') throw new ApiError('method-not-allowed', `${what}: use GET (PUT and DELETE take /v1/endpoints/<containerID>)`);
      return send(res, 200, h.listEndpoints());
    }
    if (path === '/v1/flows' || path === '/v1/flows/') {
      if (method !== 'GET') throw new ApiError('method-not-allowed', `${what}: use GET`);
      let q: ReturnType<typeof parseFlowQuery>;
      try {
        q = parseFlowQuery(url.searchParams);
      } catch (err) {
        if (err instanceof FlowQueryError) throw new ApiError('invalid-request', `${what}: ${err.message}`);
        throw err;
      }
      if (!q.follow) return send(res, 200, h.flows(q));
      return followFlows(req, res, h, q);
    }
    if (path === '/v1/cni') {
      if (method !== 'POST') throw new ApiError('method-not-allowed', `${what}: use POST`);
      const t0 = performance.now();
      const stdin = await readText(req, what);
      const out = await h.cni(Object.fromEntries([...url.searchParams].filter(([k]) => k.startsWith('CNI_'))), stdin);
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(out.stdout),
        'x-cni-exit-code': String(out.exitCode),
        'x-cni-agent-ms': (performance.now() - t0).toFixed(3),
      });
      res.end(out.stdout);
      return;
    }
    const m = /^\/v1\/endpoints\/([^/]+)$/.exec(path);
    if (m) {
      let id: string;
      try {
        id = decodeURIComponent(m[1]!);
      } catch {
        throw new ApiError('invalid-request', `${what}: malformed container ID`);
      }
      if (method === 'PUT') return send(res, 200, await h.addEndpoint(id, await readJson(req, what)));
      if (method === 'DELETE') return send(res, 200, await h.deleteEndpoint(id));
      throw new ApiError('method-not-allowed', `${what}: use PUT or DELETE`);
    }
    throw new ApiError('not-found', `${what}: no such route (try /v1/endpoints, /v1/services, /v1/policy, /v1/flows, /v1/status, /v1/cni, /healthz)`);
  } catch (err) {
    sendError(res, err, log, what);
  }
}

/** Bytes a follower may have unsent before new flows are dropped for it (counted, and told in the stream). */
const FOLLOW_HIGH_WATER = 1 << 20;

/**
 * GET /v1/flows?follow=1: newline-delimited JSON, first the kept flows that
 * match (since/limit apply to them), a line {"backlogEnd": true}, then every
 * new one until the client goes. A client that does not read is not buffered for without bound: flows
 * beyond FOLLOW_HIGH_WATER are dropped and a line {"lost": n} says how many.
 */
function followFlows(req: IncomingMessage, res: ServerResponse, h: ApiHandlers, q: FlowQuery): void {
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  res.flushHeaders();
  let lost = 0;
  const follower: FlowFollower = {
    write(f) {
      if (res.writableLength > FOLLOW_HIGH_WATER) {
        lost++;
        return false;
      }
      if (lost > 0) {
        res.write(JSON.stringify({ lost, time: new Date().toISOString() }) + '\n');
        lost = 0;
      }
      res.write(JSON.stringify(f) + '\n');
      return true;
    },
  };
  for (const f of h.flows(q)) follower.write(f);
  res.write('{"backlogEnd":true}\n');
  const stop = h.followFlows(follower, q);
  const end = (): void => stop();
  req.socket.once('close', end);
  res.once('close', end);
}

/**
 * Serves the API on socketPath. A stale socket file (no one answering) is
 * replaced; a live one means another agent serves this state dir: refused.
 */
export async function startApiServer(socketPath: string, handlers: ApiHandlers, log: Logger): Promise<ApiServer> {
  if (await socketAlive(socketPath)) throw new Error(`another agent is serving ${socketPath}; stop it first (or use another stateDir)`);
  await unlink(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  const server: Server = createServer((req, res) => {
    void route(req, res, handlers, log);
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await chmod(socketPath, 0o660);
  let closed: Promise<void> | undefined;
  return {
    socketPath,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }).then(() => unlink(socketPath).catch(() => undefined))),
  };
}

export interface RemoteApiOptions {
  host: string;
  port: number;
  /** PEM: the CA client certificates must chain to, the server's certificate and key. */
  ca: string;
  cert: string;
  key: string;
  /** Subject CNs of the client certificates admitted. */
  clients: readonly string[];
  /**
   * The files ca, cert and key were read from (a mounted Secret): read again
   * every intervalMs (default 10 s) and, when they changed and check, used for
   * the connections made from then on; files that do not check are logged
   * (naming the file) and the previous certificate is kept.
   */
  reload?: { files: TlsFiles; intervalMs?: number };
}

export interface RemoteApiServer {
  /** host:port it listens on. */
  readonly address: string;
  /** The watcher of the certificate files (with RemoteApiOptions.reload): check() reads them now. */
  readonly certificates: TlsFileWatcher | undefined;
  close(): Promise<void>;
}

/**
 * Serves the read-only routes over HTTPS with mutual TLS (see the header).
 * A client without a certificate of the CA is refused in the handshake; one
 * with another CN of the CA gets 403 `forbidden`. Rejects when the address
 * cannot be bound.
 */
export async function startRemoteApiServer(o: RemoteApiOptions, handlers: ApiHandlers, log: Logger): Promise<RemoteApiServer> {
  const server = createTlsServer({ ca: o.ca, cert: o.cert, key: o.key, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, (req, res) => {
    const cn = (req.socket as TLSSocket).getPeerCertificate()?.subject?.CN;
    const name = Array.isArray(cn) ? cn.join(',') : cn;
    if (!name || !o.clients.includes(name)) {
      log.warn({ client: name ?? null, from: req.socket.remoteAddress }, 'remote API: client certificate not admitted');
      return send(res, 403, { error: `the client certificate's subject CN ${name ?? '(none)'} is not admitted (only ${o.clients.join(', ')})`, code: 'forbidden' });
    }
    void route(req, res, handlers, log, true);
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // A rotated Secret: new connections get the new certificate (and CA); open ones keep theirs.
  const certificates = o.reload
    ? new TlsFileWatcher(o.reload.files, { ca: o.ca, cert: o.cert, key: o.key }, (p) => server.setSecureContext({ ca: p.ca, cert: p.cert, key: p.key }), log)
    : undefined;
  certificates?.start(o.reload?.intervalMs ?? 10_000);
  let closed: Promise<void> | undefined;
  const bound = server.address() as AddressInfo;
  return {
    address: `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`,
    certificates,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        certificates?.stop();
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}
