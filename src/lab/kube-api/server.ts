// The HTTPS server: discovery, OpenAPI, and the REST verbs of every served
// kind, with Kubernetes semantics (see index.ts for the overview).

import { randomUUID, randomInt, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { chmodSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { parse as parseYaml } from 'yaml';

import type { KvClient } from '../../kvstore/index.ts';
import { ApiError, alreadyExists, badRequest, conflict, methodNotAllowed, notFound, qualifiedResource } from './errors.ts';
import { clone, isObject, jsonEqual, meta, rfc3339, type Json, type JsonObject } from './json.ts';
import { applyDefaults, hasGeneration, prepareForCreate, specChanged, validateObject, validateUpdate } from './kinds.ts';
import { groupVersionDocument, openapiIndex } from './openapi.ts';
import { jsonPatch, mergePatch, strategicMergePatch } from './patch.ts';
import { BUILTIN_RESOURCES, ResourceRegistry, apiVersionOf, resourcesOfCrd, type ResourceType } from './resources.ts';
import { fieldMatcher, labelMatcher } from './selectors.ts';
import { decodeProtobufBody, PROTOBUF_CONTENT_TYPE } from './protobuf.ts';
import { ObjectStore, type StoredObject } from './store.ts';
import { toTable, type IncludeObject } from './tables.ts';
import { checkFields } from './validate.ts';
import { DEFAULT_TOKEN_SECONDS, issueToken, MAX_TOKEN_SECONDS, MIN_TOKEN_SECONDS, TokenError, verifyToken } from './tokens.ts';

export interface KubeApiServerOptions {
  kv: KvClient;
  /** etcd key prefix of this server's objects (ends with '/'). */
  prefix: string;
  /** Server certificate and key; `caFile` verifies client certificates. */
  tls: { certFile: string; keyFile: string; caFile: string };
  host?: string;
  /** 0 (default): any free port. */
  port?: number;
  /** Also serve (the same TLS, the same handler) on this unix socket: the lab's node-local API endpoints forward to it. */
  socketPath?: string;
  /** Where Service cluster IPs come from (default 10.96.0.0/16). */
  serviceCidr?: string;
  /** Interval of watch bookmarks for watchers that allow them (default 30 s). */
  bookmarkIntervalMs?: number;
  /** Namespaces that exist from the start (default: default, kube-system, kube-public, kube-node-lease). */
  initialNamespaces?: string[];
  /**
   * The service-account signing key (PEM private key, see tokens.ts): with it the
   * server issues tokens (serviceaccounts/NAME/token) and accepts them as
   * `Authorization: Bearer`; without it only client certificates authenticate.
   */
  serviceAccountKeyFile?: string;
}

const MAX_BODY = 3 * 1024 * 1024;
const VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'];
const DEFAULT_WATCH_TIMEOUT_S = 1800;
/** How long an idle client connection stays open (node's default is 5 s): a client that comes back within it skips a TLS handshake. */
const KEEP_ALIVE_TIMEOUT_MS = 60_000;
/** The client certificate's CN per connection ('' without a valid one). */
const peerNames = new WeakMap<TLSSocket, string>();
export const SERVER_VERSION = { major: '1', minor: '32', gitVersion: 'v1.32.0-clustermesh-lab' };

interface Request {
  method: string;
  url: URL;
  req: IncomingMessage;
  res: ServerResponse;
  user: string;
}

interface Target {
  r: ResourceType;
  namespace: string | undefined;
  name: string | undefined;
  subresource: string | undefined;
}

const send = (res: ServerResponse, code: number, body: unknown, headers: Record<string, string> = {}): void => {
  const data = JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(data)), ...headers });
  res.end(data);
};

export class KubeApiServer {
  readonly registry = new ResourceRegistry(BUILTIN_RESOURCES);
  readonly store: ObjectStore;
  private server: Server | undefined;
  private socketServer: Server | undefined;
  private readonly opts: KubeApiServerOptions;
  /** Namespaces whose contents are being removed. */
  private readonly terminating = new Map<string, Promise<void>>();
  private readonly watches = new Set<() => void>();
  private closing = false;
  private readonly background = new Set<Promise<unknown>>();
  /** `Warning` headers of a request's response (fieldValidation=Warn). */
  private readonly pendingWarnings = new WeakMap<IncomingMessage, string[]>();
  /** The service-account signing key and its public half (serviceAccountKeyFile). */
  private saKey: { private: KeyObject; public: KeyObject } | undefined;

  constructor(opts: KubeApiServerOptions) {
    this.opts = opts;
    this.store = new ObjectStore(opts.kv, opts.prefix);
  }

  get port(): number {
    return (this.server?.address() as AddressInfo | null)?.port ?? 0;
  }

  get url(): string {
    return `https://${this.opts.host ?? '127.0.0.1'}:${this.port}`;
  }

  async start(): Promise<void> {
    const [key, cert, ca] = await Promise.all([readFile(this.opts.tls.keyFile), readFile(this.opts.tls.certFile), readFile(this.opts.tls.caFile)]);
    if (this.opts.serviceAccountKeyFile !== undefined) {
      const priv = createPrivateKey(await readFile(this.opts.serviceAccountKeyFile));
      this.saKey = { private: priv, public: createPublicKey(priv) };
    }
    await this.loadCrds();
    for (const ns of this.opts.initialNamespaces ?? ['default', 'kube-system', 'kube-public', 'kube-node-lease']) {
      const r = this.resource('', 'v1', 'namespaces');
      if ((await this.store.get(this.store.key(r, undefined, ns))) === undefined) {
        await this.create(r, undefined, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } }, new URLSearchParams()).catch((e: unknown) => {
          if (!(e instanceof ApiError && e.reason === 'AlreadyExists')) throw e;
        });
      }
    }
    // Namespaces left terminating by a previous run finish now.
    const nsr = this.resource('', 'v1', 'namespaces');
    for (const item of (await this.store.list(this.store.listPrefix(nsr, undefined))).items) {
      if (meta(item.object).deletionTimestamp !== undefined) this.finishNamespace(String(meta(item.object).name));
    }
    // Unauthenticated clients reach the server and get a 401 Status, as from a real apiserver.
    const server = createServer({ key, cert, ca, requestCert: true, rejectUnauthorized: false }, (req, res) => void this.handle(req, res));
    server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port ?? 0, this.opts.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const socketPath = this.opts.socketPath;
    if (socketPath !== undefined) {
      rmSync(socketPath, { force: true });
      const sock = createServer({ key, cert, ca, requestCert: true, rejectUnauthorized: false }, (req, res) => void this.handle(req, res));
      sock.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
      this.socketServer = sock;
      await new Promise<void>((resolve, reject) => {
        sock.once('error', reject);
        sock.listen(socketPath, () => {
          sock.off('error', reject);
          resolve();
        });
      });
      chmodSync(socketPath, 0o600);
    }
  }

  async stop(): Promise<void> {
    this.closing = true;
    for (const end of [...this.watches]) end();
    for (const server of [this.server, this.socketServer]) {
      if (server === undefined) continue;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    }
    await Promise.allSettled([...this.background]);
  }

  private track<T>(p: Promise<T>): void {
    this.background.add(p);
    void p.finally(() => this.background.delete(p)).catch(() => undefined);
  }

  private resource(group: string, version: string, plural: string): ResourceType {
    const r = this.registry.find(group, version, plural);
    if (r === undefined) throw new ApiError('NotFound', 'the server could not find the requested resource');
    return r;
  }

  // ---- request handling ----------------------------------------------------

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const user = await this.authenticate(req);
      const url = new URL(req.url ?? '/', 'https://localhost');
      await this.route({ method: req.method ?? 'GET', url, req, res, user });
    } catch (err) {
      const e = err instanceof ApiError ? err : new ApiError('InternalError', `Internal error occurred: ${(err as Error).message}`);
      if (!res.headersSent) send(res, e.code, e.toStatus());
      else res.end();
    }
  }

  /**
   * Who sends the request: the CN of a client certificate of the server's CA,
   * else the service account of a bearer token this cluster signed (checked
   * on every request: signature, issuer, audience, expiry, and that the
   * ServiceAccount -- and the pod it is bound to -- still exists with the uid
   * of the claims). No RBAC follows: every authenticated user may do everything.
   * A refusal is a 401 Status; unlike Kubernetes (which answers only
   * "Unauthorized" and logs the reason), the message names why.
   */
  private async authenticate(req: IncomingMessage): Promise<string> {
    const sock = req.socket as TLSSocket;
    // The certificate of a connection does not change: read once per connection (clients keep theirs alive).
    let cn = peerNames.get(sock);
    if (cn === undefined) {
      const c = sock.authorized ? sock.getPeerCertificate()?.subject?.CN : undefined;
      cn = c === undefined ? '' : String(c);
      peerNames.set(sock, cn);
    }
    if (cn !== '') return cn;
    const auth = req.headers.authorization ?? '';
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (!m) throw new ApiError('Unauthorized', 'Unauthorized');
    const why = (reason: string): ApiError => new ApiError('Unauthorized', `Unauthorized: ${reason}`);
    if (this.saKey === undefined) throw why('this server accepts no bearer tokens (no service-account key)');
    let claims;
    try {
      claims = verifyToken(m[1]!, this.saKey.public);
    } catch (err) {
      if (err instanceof TokenError) throw why(err.message);
      throw err;
    }
    const k = claims['kubernetes.io'];
    const sar = this.resource('', 'v1', 'serviceaccounts');
    const sa = await this.store.get(this.store.key(sar, k.namespace, k.serviceaccount.name));
    if (sa === undefined) throw why(`serviceaccounts "${k.serviceaccount.name}" not found in namespace ${k.namespace}`);
    if (meta(sa.object).uid !== k.serviceaccount.uid) throw why(`service account UID (${String(meta(sa.object).uid)}) does not match claim (${k.serviceaccount.uid})`);
    if (meta(sa.object).deletionTimestamp !== undefined) throw why(`service account ${k.namespace}/${k.serviceaccount.name} has been deleted`);
    if (k.pod !== undefined) {
      const pod = await this.store.get(this.store.key(this.resource('', 'v1', 'pods'), k.namespace, k.pod.name));
      if (pod === undefined) throw why(`pods "${k.pod.name}" not found (the token is bound to it)`);
      if (meta(pod.object).uid !== k.pod.uid) throw why(`pod UID (${String(meta(pod.object).uid)}) does not match claim (${k.pod.uid})`);
      if (meta(pod.object).deletionTimestamp !== undefined) throw why(`pod ${k.namespace}/${k.pod.name} has been deleted`);
    }
    return claims.sub;
  }

  /**
   * POST serviceaccounts/NAME/token: an authentication.k8s.io/v1 TokenRequest
   * (spec.audiences, spec.expirationSeconds: default 3600, 600..2^32,
   * spec.boundObjectRef: a Pod of the namespace) answered with status.token
   * and status.expirationTimestamp.
   */
  private async tokenRequest(q: Request, r: ResourceType, namespace: string, name: string): Promise<void> {
    if (q.method !== 'POST') throw methodNotAllowed(q.method, `serviceaccounts/token ${name}`);
    if (this.saKey === undefined) throw new ApiError('NotFound', 'the server could not find the requested resource');
    const body = await this.body(q);
    const tr = BUILTIN_TOKEN_REQUEST;
    const bad = (field: string, value: unknown, message: string): ApiError =>
      new ApiError('Invalid', `TokenRequest.authentication.k8s.io "${name}" is invalid: ${field}: Invalid value: ${JSON.stringify(value)}: ${message}`, {
        name,
        group: tr.group,
        kind: tr.kind,
        causes: [{ reason: 'FieldValueInvalid', message: `Invalid value: ${JSON.stringify(value)}: ${message}`, field }],
      });
    if (body.apiVersion !== undefined && body.apiVersion !== 'authentication.k8s.io/v1') throw badRequest(`the API version in the data (${String(body.apiVersion)}) does not match the expected API version (authentication.k8s.io/v1)`);
    if (body.kind !== undefined && body.kind !== 'TokenRequest') throw badRequest(`the kind in the data (${String(body.kind)}) does not match the expected kind (TokenRequest)`);
    const spec = isObject(body.spec) ? body.spec : {};
    const seconds = spec.expirationSeconds ?? DEFAULT_TOKEN_SECONDS;
    if (typeof seconds !== 'number' || !Number.isInteger(seconds)) throw bad('spec.expirationSeconds', seconds, 'must be an integer');
    if (seconds < MIN_TOKEN_SECONDS) throw bad('spec.expirationSeconds', seconds, 'may not specify a duration less than 10 minutes');
    if (seconds > MAX_TOKEN_SECONDS) throw bad('spec.expirationSeconds', seconds, 'may not specify a duration larger than 2^32 seconds');
    const audiences = spec.audiences === undefined || spec.audiences === null ? [] : spec.audiences;
    if (!Array.isArray(audiences) || audiences.some((a) => typeof a !== 'string' || a === '')) throw bad('spec.audiences', audiences, 'must be a list of non-empty strings');
    const ref = isObject(spec.boundObjectRef) ? spec.boundObjectRef : undefined;
    if (ref !== undefined && ref.kind !== 'Pod') throw bad('spec.boundObjectRef.kind', ref.kind, 'the lab binds tokens to Pods only');
    // The ServiceAccount and the bound Pod are read at once (two store reads, one wait).
    const [sa, p] = await Promise.all([
      this.store.get(this.store.key(r, namespace, name)),
      ref !== undefined ? this.store.get(this.store.key(this.resource('', 'v1', 'pods'), namespace, String(ref.name ?? ''))) : undefined,
    ]);
    if (sa === undefined || meta(sa.object).deletionTimestamp !== undefined) throw notFound(r.group, r.plural, name);
    let pod: { name: string; uid: string } | undefined;
    if (ref !== undefined) {
      if (p === undefined) throw notFound('', 'pods', String(ref.name ?? ''));
      if (ref.uid !== undefined && ref.uid !== '' && ref.uid !== meta(p.object).uid) throw conflict('', 'pods', String(ref.name), `the UID in the bound object reference (${String(ref.uid)}) does not match the UID in record`);
      pod = { name: String(ref.name), uid: String(meta(p.object).uid) };
    }
    const { token, claims } = issueToken(this.saKey.private, {
      namespace,
      serviceAccount: { name, uid: String(meta(sa.object).uid) },
      pod,
      audiences: audiences as string[],
      seconds,
    });
    send(q.res, 201, {
      kind: 'TokenRequest',
      apiVersion: 'authentication.k8s.io/v1',
      metadata: { name, namespace, creationTimestamp: null },
      spec: { audiences: claims.aud, expirationSeconds: seconds, boundObjectRef: ref ?? null },
      status: { token, expirationTimestamp: new Date(claims.exp * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z') },
    });
  }

  private async route(q: Request): Promise<void> {
    const path = q.url.pathname.replace(/\/+$/, '') || '/';
    const segs = path.split('/').filter((s) => s !== '').map(decodeURIComponent);
    if (path === '/version') return send(q.res, 200, { ...SERVER_VERSION, gitCommit: '', gitTreeState: 'clean', buildDate: '2026-01-01T00:00:00Z', goVersion: 'node', compiler: 'node', platform: `${process.platform}/${process.arch}` });
    if (path === '/healthz' || path === '/livez' || path === '/readyz') {
      q.res.writeHead(200, { 'Content-Type': 'text/plain' });
      q.res.end('ok');
      return;
    }
    if (path === '/api') return send(q.res, 200, { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: `${this.opts.host ?? '127.0.0.1'}:${this.port}` }] });
    if (path === '/apis') return send(q.res, 200, { kind: 'APIGroupList', apiVersion: 'v1', groups: this.registry.groups().filter((g) => g.name !== '').map((g) => this.groupInfo(g.name, g.versions)) });
    if (segs[0] === 'openapi') return this.openapi(q, segs);
    if (segs[0] === 'api' || segs[0] === 'apis') {
      const core = segs[0] === 'api';
      if (!core && segs.length === 2) {
        const g = this.registry.groups().find((x) => x.name === segs[1]);
        if (g === undefined) throw new ApiError('NotFound', 'the server could not find the requested resource');
        return send(q.res, 200, { kind: 'APIGroup', apiVersion: 'v1', ...this.groupInfo(g.name, g.versions) });
      }
      const group = core ? '' : segs[1]!;
      const version = core ? segs[1] : segs[2];
      const rest = segs.slice(core ? 2 : 3);
      if (version === undefined) throw new ApiError('NotFound', 'the server could not find the requested resource');
      if (rest.length === 0) return this.resourceList(q, group, version);
      let watchPath = false;
      if (rest[0] === 'watch') {
        watchPath = true;
        rest.shift();
      }
      const target = this.target(group, version, rest);
      return this.dispatch(q, target, watchPath);
    }
    throw new ApiError('NotFound', 'the server could not find the requested resource');
  }

  private groupInfo(name: string, versions: string[]): JsonObject {
    const gv = versions.map((v) => ({ groupVersion: `${name}/${v}`, version: v }));
    return { name, versions: gv, preferredVersion: gv[0]! };
  }

  private resourceList(q: Request, group: string, version: string): void {
    const types = this.registry.inGroupVersion(group, version);
    if (types.length === 0) throw new ApiError('NotFound', 'the server could not find the requested resource');
    const resources: JsonObject[] = [];
    for (const r of types) {
      resources.push({
        name: r.plural,
        singularName: r.singular,
        namespaced: r.namespaced,
        kind: r.kind,
        verbs: VERBS,
        ...(r.shortNames.length > 0 ? { shortNames: r.shortNames } : {}),
        ...(r.categories.length > 0 ? { categories: r.categories } : {}),
      });
      if (isCorePod(r)) resources.push({ name: 'pods/binding', singularName: '', namespaced: true, kind: 'Binding', verbs: ['create'] });
      if (isServiceAccount(r) && this.saKey !== undefined) resources.push({ name: 'serviceaccounts/token', singularName: '', namespaced: true, group: 'authentication.k8s.io', version: 'v1', kind: 'TokenRequest', verbs: ['create'] });
      if (r.statusSubresource) resources.push({ name: `${r.plural}/status`, singularName: '', namespaced: r.namespaced, kind: r.kind, verbs: ['get', 'patch', 'update'] });
      if (hasScale(r)) resources.push({ name: `${r.plural}/scale`, singularName: '', namespaced: r.namespaced, group: 'autoscaling', version: 'v1', kind: 'Scale', verbs: ['get', 'patch', 'update'] });
    }
    send(q.res, 200, { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: apiVersionOf({ group, version }), resources });
  }

  private openapi(q: Request, segs: string[]): void {
    if (segs[1] !== 'v3') throw new ApiError('NotFound', 'the server could not find the requested resource');
    if (segs.length === 2) return send(q.res, 200, openapiIndex(this.registry));
    const core = segs[2] === 'api';
    const group = core ? '' : (segs[3] ?? '');
    const version = core ? segs[3] : segs[4];
    const types = version === undefined ? [] : this.registry.inGroupVersion(group, version);
    if (types.length === 0) throw new ApiError('NotFound', 'the server could not find the requested resource');
    send(q.res, 200, groupVersionDocument(types), { 'Cache-Control': 'public, immutable' });
  }

  private target(group: string, version: string, rest: string[]): Target {
    const find = (plural: string): ResourceType => {
      const r = this.registry.find(group, version, plural);
      if (r === undefined) throw new ApiError('NotFound', 'the server could not find the requested resource');
      return r;
    };
    if (rest[0] === 'namespaces' && rest.length >= 3 && this.registry.find(group, version, rest[2]!)?.namespaced) {
      if (rest.length > 5) throw new ApiError('NotFound', 'the server could not find the requested resource');
      return { r: find(rest[2]!), namespace: rest[1], name: rest[3], subresource: rest[4] };
    }
    if (rest.length > 3) throw new ApiError('NotFound', 'the server could not find the requested resource');
    const r = find(rest[0]!);
    return { r, namespace: undefined, name: rest[1], subresource: rest[2] };
  }

  private async dispatch(q: Request, t: Target, watchPath: boolean): Promise<void> {
    const { r, namespace, name, subresource } = t;
    const p = q.url.searchParams;
    if (subresource !== undefined && !(subresource === 'status' && r.statusSubresource) && !(subresource === 'finalize' && r.kind === 'Namespace' && r.group === '') && !(subresource === 'scale' && hasScale(r)) && !(subresource === 'binding' && isCorePod(r)) && !(subresource === 'token' && isServiceAccount(r) && this.saKey !== undefined)) {
      throw new ApiError('NotFound', 'the server could not find the requested resource');
    }
    if (subresource === 'token' && name !== undefined && namespace !== undefined) return this.tokenRequest(q, r, namespace, name);
    if (subresource === 'scale' && name !== undefined) return this.scale(q, r, namespace, name);
    if (subresource === 'binding' && name !== undefined) return this.bind(q, r, namespace, name);
    const what = `${qualifiedResource(r.group, r.plural)}${name !== undefined ? ` ${name}` : ''}`;
    if (name === undefined) {
      switch (q.method) {
        case 'GET': {
          if (watchPath || p.get('watch') === 'true' || p.get('watch') === '1') return this.watch(q, r, namespace);
          return this.list(q, r, namespace);
        }
        case 'POST': {
          if (r.namespaced && namespace === undefined) throw methodNotAllowed('POST', what);
          const body = await this.body(q);
          this.checkFieldValidation(q, r, body);
          const created = await this.create(r, namespace, body, p);
          return send(q.res, 201, created, this.warnings(q));
        }
        case 'DELETE':
          return send(q.res, 200, await this.deleteCollection(r, namespace, p));
        default:
          throw methodNotAllowed(q.method, what);
      }
    }
    switch (q.method) {
      case 'GET': {
        if (watchPath) return this.watch(q, r, namespace, name);
        const cur = await this.store.get(this.store.key(r, namespace, name));
        if (cur === undefined) throw notFound(r.group, r.plural, name);
        return this.respondObject(q, r, cur.object);
      }
      case 'PUT': {
        const body = await this.body(q);
        this.checkFieldValidation(q, r, body);
        const updated = await this.update(r, namespace, name, body, p, subresource);
        return send(q.res, 200, updated, this.warnings(q));
      }
      case 'PATCH': {
        const patched = await this.patch(q, r, namespace, name, subresource);
        return send(q.res, 200, patched, this.warnings(q));
      }
      case 'DELETE': {
        if (subresource !== undefined) throw methodNotAllowed('DELETE', what);
        const raw = await this.rawBody(q);
        const opts = raw.length > 0 ? this.decodeBody(q, raw) : {};
        return send(q.res, 200, await this.delete(r, namespace, name, p, opts));
      }
      default:
        throw methodNotAllowed(q.method, what);
    }
  }

  private respondObject(q: Request, r: ResourceType, o: JsonObject): void {
    if (this.wantsTable(q)) return send(q.res, 200, toTable(r, [o], { resourceVersion: String(meta(o).resourceVersion ?? '') }, this.includeObject(q)));
    send(q.res, 200, o);
  }

  private wantsTable(q: Request): boolean {
    return /as=Table/.test(q.req.headers.accept ?? '');
  }

  private includeObject(q: Request): IncludeObject {
    const v = q.url.searchParams.get('includeObject');
    return v === 'None' || v === 'Object' ? v : 'Metadata';
  }

  /**
   * POST pods/NAME/binding (a v1 Binding naming the node in `target.name`), as
   * a scheduler binds: sets spec.nodeName of a pod that has none; a pod bound
   * to another node is a 409 Conflict.
   */
  private async bind(q: Request, r: ResourceType, namespace: string | undefined, name: string): Promise<void> {
    if (q.method !== 'POST') throw methodNotAllowed(q.method, `pods/binding ${name}`);
    const body = await this.body(q);
    const target = isObject(body.target) ? body.target : {};
    const node = typeof target.name === 'string' ? target.name : '';
    if (node === '') throw invalid422(r, name, 'target.name', 'Required value: the node to bind to');
    const key = this.store.key(r, namespace, name);
    await this.store.locked(key, async () => {
      const cur = await this.store.get(key);
      if (cur === undefined) throw notFound(r.group, r.plural, name);
      const spec = isObject(cur.object.spec) ? cur.object.spec : {};
      const bound = typeof spec.nodeName === 'string' ? spec.nodeName : '';
      if (bound !== '' && bound !== node) throw conflict(r.group, r.plural, name, `pod ${name} is already assigned to node "${bound}"`);
      if (bound === node) return;
      const next = clone(cur.object);
      next.spec = { ...spec, nodeName: node };
      await this.write(r, cur, next, q.url.searchParams, undefined);
    });
    send(q.res, 201, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', code: 201 });
  }

  /** The scale subresource (autoscaling/v1 Scale) of a Deployment. */
  private async scale(q: Request, r: ResourceType, namespace: string | undefined, name: string): Promise<void> {
    const key = this.store.key(r, namespace, name);
    const toScale = (o: JsonObject): JsonObject => {
      const m = meta(o);
      const spec = isObject(o.spec) ? o.spec : {};
      const status = isObject(o.status) ? o.status : {};
      const sel = isObject(spec.selector) && isObject(spec.selector.matchLabels) ? Object.entries(spec.selector.matchLabels).map(([k, v]) => `${k}=${String(v)}`).join(',') : '';
      return {
        kind: 'Scale',
        apiVersion: 'autoscaling/v1',
        metadata: { name: m.name ?? name, namespace: m.namespace ?? null, uid: m.uid ?? null, resourceVersion: m.resourceVersion ?? null, creationTimestamp: m.creationTimestamp ?? null },
        spec: { replicas: Number(spec.replicas ?? 0) },
        status: { replicas: Number(status.replicas ?? 0), selector: sel },
      };
    };
    if (q.method === 'GET') {
      const cur = await this.store.get(key);
      if (cur === undefined) throw notFound(r.group, r.plural, name);
      return send(q.res, 200, toScale(cur.object));
    }
    if (q.method !== 'PUT' && q.method !== 'PATCH') throw methodNotAllowed(q.method, `${qualifiedResource(r.group, r.plural)} ${name}/scale`);
    const type = (q.req.headers['content-type'] ?? 'application/json').split(';')[0]!.trim();
    const raw = await this.rawBody(q);
    const body = type === PROTOBUF_CONTENT_TYPE ? undefined : (JSON.parse(raw.toString('utf8') || '{}') as Json);
    const result = await this.store.locked(key, async () => {
      const cur = await this.store.get(key);
      if (cur === undefined) throw notFound(r.group, r.plural, name);
      const scale = toScale(cur.object);
      let next: Json;
      if (q.method === 'PUT') next = body ?? {};
      else if (type === 'application/json-patch+json') next = jsonPatch(scale, body);
      else if (type === 'application/strategic-merge-patch+json' || type === 'application/merge-patch+json') next = mergePatch(scale, body ?? {});
      else throw new ApiError('UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json`);
      const replicas = isObject(next) && isObject(next.spec) ? next.spec.replicas : undefined;
      if (!Number.isInteger(replicas) || (replicas as number) < 0) throw invalid422(r, name, 'spec.replicas', `must be a non-negative integer, got ${JSON.stringify(replicas)}`);
      const rv = isObject(next) && isObject(next.metadata) ? next.metadata.resourceVersion : undefined;
      const o = clone(cur.object);
      o.spec = { ...(isObject(o.spec) ? o.spec : {}), replicas: replicas as number };
      if (typeof rv === 'string' && rv !== '') meta(o).resourceVersion = rv;
      return await this.write(r, cur, o, q.url.searchParams, undefined);
    });
    send(q.res, 200, toScale(result));
  }

  // ---- bodies and validation -------------------------------------------------

  private async rawBody(q: Request): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of q.req) {
      size += (c as Buffer).length;
      if (size > MAX_BODY) throw new ApiError('RequestEntityTooLarge', 'Request entity too large: limit is 3145728');
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks);
  }

  private decodeBody(q: Request, raw: Buffer): JsonObject {
    const type = (q.req.headers['content-type'] ?? 'application/json').split(';')[0]!.trim();
    if (type === PROTOBUF_CONTENT_TYPE) return decodeProtobufBody(raw);
    let v: unknown;
    try {
      v = type.includes('yaml') ? parseYaml(raw.toString('utf8')) : JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw badRequest(`the body of the request could not be decoded: ${(err as Error).message}`);
    }
    if (!isObject(v)) throw badRequest('the body of the request must be a JSON object');
    return v;
  }

  private async body(q: Request): Promise<JsonObject> {
    const ct = (q.req.headers['content-type'] ?? 'application/json').split(';')[0]!.trim();
    if (ct !== 'application/json' && ct !== 'application/yaml' && ct !== PROTOBUF_CONTENT_TYPE && ct !== '*/*') {
      throw new ApiError('UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, ${PROTOBUF_CONTENT_TYPE}`);
    }
    return this.decodeBody(q, await this.rawBody(q));
  }

  private warnings(q: Request): Record<string, string> {
    const w = this.pendingWarnings.get(q.req);
    if (w === undefined || w.length === 0) return {};
    return { Warning: w.map((m) => `299 - ${JSON.stringify(m)}`).join(', ') };
  }

  /** `fieldValidation`: Strict rejects unknown or duplicate fields, Warn (default) warns, Ignore ignores. */
  private checkFieldValidation(q: Request, r: ResourceType, body: JsonObject): void {
    const mode = q.url.searchParams.get('fieldValidation') ?? 'Warn';
    if (mode === 'Ignore') return;
    if (mode !== 'Strict' && mode !== 'Warn') throw badRequest(`fieldValidation: invalid value ${JSON.stringify(mode)}: must be one of Ignore, Warn, Strict`);
    const unknown = checkFields(r, body);
    if (unknown.length === 0) return;
    if (mode === 'Strict') {
      const list = unknown.map((f) => `unknown field "${f}"`);
      throw badRequest(`${r.kind} in version "${r.version}" cannot be handled as a ${r.kind}: strict decoding error: ${list.join(', ')}`);
    }
    this.pendingWarnings.set(q.req, unknown.map((f) => `unknown field "${f}"`));
  }

  private checkTypeMeta(r: ResourceType, body: JsonObject): void {
    const av = apiVersionOf(r);
    if (body.apiVersion !== undefined && body.apiVersion !== av) {
      throw badRequest(`the API version in the data (${String(body.apiVersion)}) does not match the expected API version (${av})`);
    }
    if (body.kind !== undefined && body.kind !== r.kind) throw badRequest(`the kind in the data (${String(body.kind)}) does not match the expected kind (${r.kind})`);
    body.apiVersion = av;
    body.kind = r.kind;
    if (!isObject(body.metadata)) body.metadata = {};
  }

  private checkNamespace(r: ResourceType, namespace: string | undefined, body: JsonObject): void {
    const m = meta(body);
    if (!r.namespaced) {
      delete m.namespace;
      return;
    }
    if (m.namespace !== undefined && m.namespace !== '' && m.namespace !== namespace) {
      throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
    }
    m.namespace = namespace!;
  }

  // ---- list and watch ---------------------------------------------------------

  private matcher(q: Request, r: ResourceType): (o: JsonObject) => boolean {
    const p = q.url.searchParams;
    const lm = labelMatcher(p.get('labelSelector'));
    const fm = fieldMatcher(p.get('fieldSelector'), r.kind, qualifiedResource(r.group, r.plural));
    return (o) => lm(o) && fm(o);
  }

  private async list(q: Request, r: ResourceType, namespace: string | undefined): Promise<void> {
    const p = q.url.searchParams;
    const match = this.matcher(q, r);
    const limit = p.has('limit') ? Number(p.get('limit')) : 0;
    if (!Number.isInteger(limit) || limit < 0) throw badRequest(`limit: invalid value ${JSON.stringify(p.get('limit'))}`);
    let after: string | undefined;
    let listRevision: string | undefined;
    const cont = p.get('continue');
    if (cont !== null && cont !== '') {
      try {
        const t = JSON.parse(Buffer.from(cont, 'base64url').toString('utf8')) as { rv: string; start: string };
        after = t.start;
        listRevision = t.rv;
      } catch {
        throw badRequest('continue key is not valid: illegal base64 data');
      }
    }
    const prefix = this.store.listPrefix(r, namespace);
    const res = await this.store.list(prefix);
    const matching = res.items.filter((it) => (after === undefined || it.key > prefix + after) && match(it.object));
    const page = limit > 0 ? matching.slice(0, limit) : matching;
    const rv = listRevision ?? res.revision;
    const listMeta: JsonObject = { resourceVersion: rv };
    if (limit > 0 && matching.length > limit) {
      const last = page[page.length - 1]!;
      listMeta.continue = Buffer.from(JSON.stringify({ rv, start: last.key.slice(prefix.length) })).toString('base64url');
      listMeta.remainingItemCount = matching.length - limit;
    }
    const items = page.map((it) => it.object);
    if (this.wantsTable(q)) return send(q.res, 200, toTable(r, items, listMeta, this.includeObject(q)));
    send(q.res, 200, { kind: r.listKind, apiVersion: apiVersionOf(r), metadata: listMeta, items });
  }

  private async watch(q: Request, r: ResourceType, namespace: string | undefined, onlyName?: string): Promise<void> {
    const p = q.url.searchParams;
    const base = this.matcher(q, r);
    const name = onlyName;
    const match = name === undefined ? base : (o: JsonObject) => meta(o).name === name && base(o);
    const rvParam = p.get('resourceVersion') ?? '';
    if (rvParam !== '' && !/^\d+$/.test(rvParam)) throw badRequest(`resourceVersion: Invalid value: ${JSON.stringify(rvParam)}: must be a non-negative integer`);
    const timeoutS = p.has('timeoutSeconds') ? Number(p.get('timeoutSeconds')) : DEFAULT_WATCH_TIMEOUT_S;
    const bookmarks = p.get('allowWatchBookmarks') === 'true';
    const table = this.wantsTable(q);
    const include = this.includeObject(q);
    const prefix = this.store.listPrefix(r, namespace);
    const res = q.res;

    const initial = await this.store.list(prefix);
    const known = new Map<string, JsonObject>(initial.items.map((it) => [it.key, it.object]));
    /** Keys the client currently sees as matching. */
    const visible = new Set<string>();
    let lastRevision = rvParam === '' || rvParam === '0' ? initial.revision : rvParam;
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked', 'Cache-Control': 'no-cache' });
    res.flushHeaders();
    const emit = (type: string, object: JsonObject): void => {
      const o = table && type !== 'ERROR' && type !== 'BOOKMARK' ? toTable(r, [object], { resourceVersion: String(meta(object).resourceVersion ?? '') }, include) : object;
      res.write(`${JSON.stringify({ type, object: o })}\n`);
    };
    if (rvParam === '' || rvParam === '0') {
      for (const it of initial.items) {
        if (!match(it.object)) continue;
        visible.add(it.key);
        emit('ADDED', it.object);
      }
    } else {
      for (const it of initial.items) if (match(it.object)) visible.add(it.key);
    }
    const from = (BigInt(lastRevision) + 1n).toString();
    let ended = false;
    const timers: NodeJS.Timeout[] = [];
    const end = (): void => {
      if (ended) return;
      ended = true;
      this.watches.delete(end);
      for (const t of timers) clearTimeout(t);
      void handle.cancel();
      res.end();
    };
    this.watches.add(end);
    const handle = this.store.watch(
      prefix,
      from,
      known,
      (ev) => {
        if (ended) return;
        lastRevision = ev.revision;
        if (ev.type === 'DELETED') {
          if (!visible.delete(ev.key)) return;
          emit('DELETED', ev.object ?? this.placeholder(r, ev.key, ev.revision));
          return;
        }
        const matches = match(ev.object);
        const wasVisible = visible.has(ev.key);
        if (matches) {
          visible.add(ev.key);
          emit(wasVisible && ev.type === 'MODIFIED' ? 'MODIFIED' : 'ADDED', ev.object);
        } else if (wasVisible) {
          visible.delete(ev.key);
          emit('DELETED', ev.object);
        }
      },
      (err) => {
        if (ended) return;
        if (err.kind === 'compacted') {
          const e = new ApiError('Expired', `too old resource version: ${rvParam} (${err.message})`);
          emit('ERROR', e.toStatus() as unknown as JsonObject);
        } else {
          emit('ERROR', new ApiError('InternalError', `watch of ${qualifiedResource(r.group, r.plural)} ended: ${err.message}`).toStatus() as unknown as JsonObject);
        }
        end();
      },
    );
    // The response closes when the client goes (the request's own 'close' only means it was read).
    res.on('close', end);
    if (Number.isFinite(timeoutS) && timeoutS > 0) timers.push(setTimeout(end, timeoutS * 1000));
    if (bookmarks) {
      const tick = (): void => {
        if (ended) return;
        emit('BOOKMARK', { kind: r.kind, apiVersion: apiVersionOf(r), metadata: { resourceVersion: lastRevision, annotations: { 'k8s.io/initial-events-end': 'true' } } });
        timers.push(setTimeout(tick, this.opts.bookmarkIntervalMs ?? 30_000));
      };
      timers.push(setTimeout(tick, this.opts.bookmarkIntervalMs ?? 30_000));
    }
  }

  /** A DELETED event's object when its last state is unknown (deleted by another process). */
  private placeholder(r: ResourceType, key: string, revision: string): JsonObject {
    const parts = key.slice(this.store.resourcePrefix(r).length).split('/');
    const m: JsonObject = r.namespaced ? { namespace: parts[0] ?? '', name: parts[1] ?? '' } : { name: parts[0] ?? '' };
    m.resourceVersion = revision;
    return { apiVersion: apiVersionOf(r), kind: r.kind, metadata: m };
  }

  // ---- writes ----------------------------------------------------------------

  private dryRun(p: URLSearchParams): boolean {
    const d = p.getAll('dryRun');
    for (const v of d) if (v !== 'All') throw badRequest(`dryRun: Unsupported value: ${JSON.stringify(v)}: supported values: "All"`);
    return d.length > 0;
  }

  private async requireNamespace(namespace: string): Promise<void> {
    const nsr = this.resource('', 'v1', 'namespaces');
    const ns = await this.store.get(this.store.key(nsr, undefined, namespace));
    if (ns === undefined) throw notFound('', 'namespaces', namespace);
    if (meta(ns.object).deletionTimestamp !== undefined) {
      throw new ApiError('Forbidden', `unable to create new content in namespace ${namespace} because it is being terminated`, { name: namespace, kind: 'namespaces' });
    }
  }

  async create(r: ResourceType, namespace: string | undefined, body: JsonObject, p: URLSearchParams): Promise<JsonObject> {
    const dry = this.dryRun(p);
    const o = clone(body);
    this.checkTypeMeta(r, o);
    this.checkNamespace(r, namespace, o);
    const m = meta(o);
    if (m.resourceVersion !== undefined && m.resourceVersion !== '') throw badRequest('resourceVersion should not be set on objects to be created');
    if ((m.name === undefined || m.name === '') && typeof m.generateName === 'string' && m.generateName !== '') {
      const alphabet = 'bcdfghjklmnpqrstvwxz2456789';
      m.name = m.generateName + Array.from({ length: 5 }, () => alphabet[randomInt(alphabet.length)]).join('');
    }
    if (m.name === undefined || m.name === '') {
      throw new ApiError('Invalid', `${r.kind} "" is invalid: metadata.name: Required value: name or generateName is required`, {
        kind: r.kind,
        group: r.group,
        causes: [{ reason: 'FieldValueRequired', message: 'Required value: name or generateName is required', field: 'metadata.name' }],
      });
    }
    validateObject(r, o);
    if (r.namespaced) await this.requireNamespace(namespace!);
    if (r.group === 'apiextensions.k8s.io') this.checkCrdNames(o);
    await prepareForCreate(r, o, { allocateClusterIP: () => this.allocateClusterIP() });
    m.uid = randomUUID();
    m.creationTimestamp = rfc3339();
    if (hasGeneration(r)) m.generation = 1;
    else delete m.generation;
    delete m.deletionTimestamp;
    delete m.deletionGracePeriodSeconds;
    delete m.managedFields;
    const key = this.store.key(r, namespace, String(m.name));
    const created = await this.store.locked(key, async () => {
      if ((await this.store.get(key)) !== undefined) throw alreadyExists(r.group, r.plural, String(m.name));
      if (dry) return o;
      return (await this.store.put(key, o, 'create')).object;
    });
    if (!dry && r.group === 'apiextensions.k8s.io') await this.loadCrds();
    return created;
  }

  private async update(r: ResourceType, namespace: string | undefined, name: string, body: JsonObject, p: URLSearchParams, subresource: string | undefined): Promise<JsonObject> {
    const o = clone(body);
    this.checkTypeMeta(r, o);
    this.checkNamespace(r, namespace, o);
    if (meta(o).name !== undefined && meta(o).name !== name) throw badRequest(`the name of the object (${String(meta(o).name)}) does not match the name on the URL (${name})`);
    meta(o).name = name;
    const key = this.store.key(r, namespace, name);
    return await this.store.locked(key, async () => {
      const cur = await this.store.get(key);
      if (cur === undefined) throw notFound(r.group, r.plural, name);
      return await this.write(r, cur, o, p, subresource);
    });
  }

  /** The common end of update and patch (under the key's lock). */
  private async write(r: ResourceType, cur: StoredObject, next: JsonObject, p: URLSearchParams, subresource: string | undefined): Promise<JsonObject> {
    const dry = this.dryRun(p);
    const name = String(meta(cur.object).name);
    const rv = meta(next).resourceVersion;
    if (rv !== undefined && rv !== '' && rv !== cur.revision) {
      throw conflict(r.group, r.plural, name, 'the object has been modified; please apply your changes to the latest version and try again');
    }
    let o: JsonObject;
    if (subresource === 'status') {
      o = clone(cur.object);
      if (next.status === undefined) delete o.status;
      else o.status = next.status;
    } else if (subresource === 'finalize') {
      o = clone(cur.object);
      o.spec = { ...(isObject(o.spec) ? o.spec : {}), finalizers: isObject(next.spec) ? (next.spec.finalizers ?? []) : [] };
    } else {
      o = next;
      if (r.statusSubresource) {
        if (cur.object.status === undefined) delete o.status;
        else o.status = clone(cur.object.status);
      }
      // The namespace's finalizers change only through /finalize.
      if (r.kind === 'Namespace' && r.group === '') o.spec = clone(cur.object.spec ?? {});
    }
    const m = meta(o);
    const old = meta(cur.object);
    for (const k of ['uid', 'creationTimestamp', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'namespace', 'name', 'generation']) {
      if (old[k] === undefined) delete m[k];
      else m[k] = old[k];
    }
    if (old.deletionTimestamp !== undefined) {
      const before = Array.isArray(old.finalizers) ? old.finalizers : [];
      const added = (Array.isArray(m.finalizers) ? m.finalizers : []).filter((f) => !before.includes(f));
      if (added.length > 0) throw invalid422(r, name, 'metadata.finalizers', `no new finalizers can be added if the object is being deleted, found new finalizers ${JSON.stringify(added)}`);
    }
    applyDefaults(r, o);
    validateObject(r, o);
    validateUpdate(r, cur.object, o);
    if (hasGeneration(r) && specChanged(r, cur.object, o)) m.generation = Number(old.generation ?? 1) + 1;
    m.resourceVersion = cur.revision;
    if (jsonEqual(o, cur.object)) return cur.object;
    if (dry) return o;
    const finalizers = Array.isArray(m.finalizers) ? m.finalizers : [];
    if (m.deletionTimestamp !== undefined && finalizers.length === 0 && !(r.kind === 'Namespace' && r.group === '')) {
      await this.store.remove(cur);
      this.afterDelete(r, o);
      return o;
    }
    const written = (await this.store.put(cur.key, o, 'update')).object;
    if (r.group === 'apiextensions.k8s.io') await this.loadCrds();
    return written;
  }

  private async patch(q: Request, r: ResourceType, namespace: string | undefined, name: string, subresource: string | undefined): Promise<JsonObject> {
    const p = q.url.searchParams;
    const type = (q.req.headers['content-type'] ?? '').split(';')[0]!.trim();
    const raw = await this.rawBody(q);
    let patchBody: unknown;
    try {
      patchBody = type === 'application/apply-patch+yaml' ? parseYaml(raw.toString('utf8')) : JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw badRequest(`error decoding patch: ${(err as Error).message}`);
    }
    const smpAllowed = r.crd === undefined;
    if (type === 'application/strategic-merge-patch+json' && !smpAllowed) {
      throw new ApiError('UnsupportedMediaType', 'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml');
    }
    if (!['application/merge-patch+json', 'application/json-patch+json', 'application/strategic-merge-patch+json', 'application/apply-patch+yaml'].includes(type)) {
      throw new ApiError('UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json${smpAllowed ? ', application/strategic-merge-patch+json' : ''}, application/apply-patch+yaml`);
    }
    if (type === 'application/apply-patch+yaml' && (p.get('fieldManager') ?? '') === '') {
      throw badRequest('PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch');
    }
    const key = this.store.key(r, namespace, name);
    const result = await this.store.locked(key, async () => {
      const cur = await this.store.get(key);
      if (cur === undefined) {
        if (type !== 'application/apply-patch+yaml') throw notFound(r.group, r.plural, name);
        return undefined;
      }
      let next: Json;
      if (type === 'application/json-patch+json') next = jsonPatch(cur.object, patchBody);
      else if (type === 'application/merge-patch+json') next = mergePatch(cur.object, patchBody as Json);
      else if (type === 'application/strategic-merge-patch+json') next = strategicMergePatch(cur.object, patchBody, r.kind);
      else {
        // Server-side apply, approximated: the applied configuration merged into the
        // live object (no field ownership: fields it drops are not removed).
        if (!isObject(patchBody)) throw badRequest('apply patch must be an object');
        this.checkTypeMeta(r, patchBody);
        next = smpAllowed ? strategicMergePatch(cur.object, patchBody, r.kind) : mergePatch(cur.object, patchBody);
      }
      if (!isObject(next)) throw badRequest('the patch made the object something other than a JSON object');
      const checked = clone(next);
      this.checkTypeMeta(r, checked);
      this.checkFieldValidation(q, r, checked);
      if (meta(checked).name !== name) throw badRequest(`the name of the object (${String(meta(checked).name)}) does not match the name on the URL (${name})`);
      return await this.write(r, cur, checked, p, subresource);
    });
    if (result !== undefined) return result;
    // Apply of an object that does not exist creates it.
    const body = patchBody as JsonObject;
    this.checkFieldValidation(q, r, body);
    return await this.create(r, namespace, { ...body, metadata: { ...(isObject(body.metadata) ? body.metadata : {}), name } }, p);
  }

  async delete(r: ResourceType, namespace: string | undefined, name: string, p: URLSearchParams, opts: JsonObject): Promise<JsonObject> {
    const dry = this.dryRun(p) || (Array.isArray(opts.dryRun) && opts.dryRun.includes('All'));
    const key = this.store.key(r, namespace, name);
    const isNamespace = r.kind === 'Namespace' && r.group === '';
    let removed = false;
    const out = await this.store.locked(key, async () => {
      const cur = await this.store.get(key);
      if (cur === undefined) throw notFound(r.group, r.plural, name);
      const pre = isObject(opts.preconditions) ? opts.preconditions : {};
      const m = meta(cur.object);
      if (pre.uid !== undefined && pre.uid !== m.uid) throw conflict(r.group, r.plural, name, `Precondition failed: UID in precondition: ${String(pre.uid)}, UID in object meta: ${String(m.uid)}`);
      if (pre.resourceVersion !== undefined && pre.resourceVersion !== cur.revision) {
        throw conflict(r.group, r.plural, name, `Precondition failed: ResourceVersion in precondition: ${String(pre.resourceVersion)}, ResourceVersion in object meta: ${cur.revision}`);
      }
      if (dry) return cur.object;
      const finalizers = Array.isArray(m.finalizers) ? m.finalizers : [];
      if (isNamespace || finalizers.length > 0) {
        if (m.deletionTimestamp !== undefined) return cur.object;
        const o = clone(cur.object);
        meta(o).deletionTimestamp = rfc3339();
        meta(o).deletionGracePeriodSeconds = 0;
        if (isNamespace) o.status = { ...(isObject(o.status) ? o.status : {}), phase: 'Terminating' };
        return (await this.store.put(key, o, 'update')).object;
      }
      await this.store.remove(cur);
      removed = true;
      return cur.object;
    });
    if (dry) return out;
    if (isNamespace) this.finishNamespace(name);
    else if (removed) this.afterDelete(r, out);
    return out;
  }

  /** What follows an object's removal: its CRD's instances, its dependents (garbage collection). */
  private afterDelete(r: ResourceType, o: JsonObject): void {
    const uid = String(meta(o).uid ?? '');
    this.track(
      (async () => {
        if (r.group === 'apiextensions.k8s.io') {
          const spec = isObject(o.spec) ? o.spec : {};
          const plural = String(isObject(spec.names) ? spec.names.plural : '');
          await this.opts.kv.deletePrefix(this.store.resourcePrefix({ group: String(spec.group), plural }));
          await this.loadCrds();
          return;
        }
        if (this.closing || uid === '' || !mayOwn(r)) return;
        const ns = r.namespaced ? String(meta(o).namespace) : undefined;
        // A terminating namespace's contents all go anyway.
        if (ns !== undefined && this.terminating.has(ns)) return;
        await this.collectDependents(uid, ns);
      })().catch(() => undefined),
    );
  }

  /** Deletes objects whose ownerReferences name `uid` (background propagation). */
  private async collectDependents(uid: string, namespace: string | undefined): Promise<void> {
    for (const r of this.registry.all()) {
      if (!r.namespaced && namespace !== undefined) continue;
      const { items } = await this.store.list(this.store.listPrefix(r, r.namespaced ? namespace : undefined));
      for (const it of items) {
        const refs = meta(it.object).ownerReferences;
        if (!Array.isArray(refs) || !refs.some((x) => isObject(x) && x.uid === uid)) continue;
        await this.delete(r, r.namespaced ? String(meta(it.object).namespace) : undefined, String(meta(it.object).name), new URLSearchParams(), {}).catch(() => undefined);
      }
    }
  }

  private async deleteCollection(r: ResourceType, namespace: string | undefined, p: URLSearchParams): Promise<JsonObject> {
    const lm = labelMatcher(p.get('labelSelector'));
    const fm = fieldMatcher(p.get('fieldSelector'), r.kind, qualifiedResource(r.group, r.plural));
    const { items, revision } = await this.store.list(this.store.listPrefix(r, namespace));
    const deleted: JsonObject[] = [];
    for (const it of items) {
      if (!lm(it.object) || !fm(it.object)) continue;
      const ns = r.namespaced ? String(meta(it.object).namespace) : undefined;
      deleted.push(await this.delete(r, ns, String(meta(it.object).name), p, {}).catch((e: unknown) => {
        if (e instanceof ApiError && e.reason === 'NotFound') return it.object;
        throw e;
      }));
    }
    return { kind: r.listKind, apiVersion: apiVersionOf(r), metadata: { resourceVersion: revision }, items: deleted };
  }

  /** The namespace controller: removes what a terminating namespace holds, then the namespace. */
  private finishNamespace(name: string): void {
    if (this.terminating.has(name)) return;
    const run = (async () => {
      const nsr = this.resource('', 'v1', 'namespaces');
      for (let attempt = 0; !this.closing; attempt++) {
        let left = 0;
        for (const r of this.registry.all()) {
          if (!r.namespaced) continue;
          const { items } = await this.store.list(this.store.listPrefix(r, name));
          left += items.length;
          for (const it of items) {
            if (meta(it.object).deletionTimestamp !== undefined) continue;
            await this.delete(r, name, String(meta(it.object).name), new URLSearchParams(), {}).catch(() => undefined);
          }
        }
        if (left === 0) break;
        await new Promise((res) => setTimeout(res, Math.min(1000, 50 * 2 ** Math.min(attempt, 5))));
      }
      if (this.closing) return;
      const key = this.store.key(nsr, undefined, name);
      await this.store.locked(key, async () => {
        const cur = await this.store.get(key);
        if (cur === undefined) return;
        const fin = meta(cur.object).finalizers;
        if (Array.isArray(fin) && fin.length > 0) {
          // Other finalizers hold the namespace; ours (spec.finalizers) is done.
          const o = clone(cur.object);
          o.spec = { ...(isObject(o.spec) ? o.spec : {}), finalizers: [] };
          await this.store.put(key, o, 'update');
          return;
        }
        await this.store.remove(cur);
      });
    })()
      .catch(() => undefined)
      .finally(() => this.terminating.delete(name));
    this.terminating.set(name, run);
    this.track(run);
  }

  // ---- CRDs and cluster IPs --------------------------------------------------

  private checkCrdNames(crd: JsonObject): void {
    const spec = isObject(crd.spec) ? crd.spec : {};
    const group = String(spec.group ?? '');
    if (this.registry.isBuiltinGroup(group)) {
      throw invalid422(BUILTIN_RESOURCES.find((x) => x.kind === 'CustomResourceDefinition')!, String(meta(crd).name), 'spec.group', `"${group}": is a group of the built-in kinds`);
    }
  }

  /** Re-reads every CRD and serves the kinds they define. */
  async loadCrds(): Promise<void> {
    const crdType = BUILTIN_RESOURCES.find((x) => x.kind === 'CustomResourceDefinition')!;
    const { items } = await this.store.list(this.store.listPrefix(crdType, undefined));
    const types: ResourceType[] = [];
    for (const it of items) {
      try {
        types.push(...resourcesOfCrd(it.object));
      } catch {
        // A CRD that does not describe kinds serves none.
      }
    }
    this.registry.setCustom(types.filter((t) => t.group !== '' && t.plural !== '' && t.kind !== '' && t.version !== ''));
  }

  private async allocateClusterIP(): Promise<string> {
    const cidr = this.opts.serviceCidr ?? '10.96.0.0/16';
    const m = cidr.match(/^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/);
    if (!m) throw new ApiError('InternalError', `bad service CIDR ${cidr}`);
    const base = m.slice(1, 5).reduce((n, x) => n * 256 + Number(x), 0);
    const bits = Number(m[5]);
    const size = 2 ** (32 - bits);
    const svc = this.resource('', 'v1', 'services');
    const { items } = await this.store.list(this.store.listPrefix(svc, undefined));
    const used = new Set(items.map((it) => String(isObject(it.object.spec) ? it.object.spec.clusterIP : '')));
    for (let tries = 0; tries < 4096; tries++) {
      // .0 is the network, .1 the kubernetes Service by convention, the last is broadcast.
      const off = 2 + randomInt(Math.max(1, size - 3));
      const n = base - (base % size) + off;
      const ip = [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
      if (!used.has(ip)) return ip;
    }
    throw new ApiError('InternalError', `no free cluster IP in ${cidr}`);
  }
}

/** Kinds whose objects own others (Deployments their ReplicaSets, Services their
 * EndpointSlices, custom kinds anything): only their deletion looks for dependents. */
function mayOwn(r: ResourceType): boolean {
  return r.crd !== undefined || r.group === 'apps' || (r.group === '' && r.kind === 'Service');
}

const isCorePod = (r: ResourceType): boolean => r.group === '' && r.kind === 'Pod';
const isServiceAccount = (r: ResourceType): boolean => r.group === '' && r.kind === 'ServiceAccount';
const BUILTIN_TOKEN_REQUEST = { group: 'authentication.k8s.io', kind: 'TokenRequest' };

/** Kinds with a scale subresource: Deployments. */
function hasScale(r: ResourceType): boolean {
  return r.group === 'apps' && r.kind === 'Deployment';
}

function invalid422(r: ResourceType, name: string, field: string, message: string): ApiError {
  return new ApiError('Invalid', `${r.kind}${r.group ? `.${r.group}` : ''} "${name}" is invalid: ${field}: Forbidden: ${message}`, {
    name,
    group: r.group,
    kind: r.kind,
    causes: [{ reason: 'FieldValueForbidden', message: `Forbidden: ${message}`, field }],
  });
}
