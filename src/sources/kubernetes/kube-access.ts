// How a process reaches the Kubernetes API without @kubernetes/client-node
// on its start path (issue 20): the agent and the apiserver only list, watch
// and patch through KubeHttp, which needs of a KubeConfig the current cluster
// and applyToHTTPSOptions (its KubeHttpConfig: KubeAccess is one).
// client-node's config module imports its whole generated API (a 3.5 MB chunk, ~0.25 s of CPU and ~26 MB to compile at
// every start); this reader covers what those processes use:
//
//   which file   `kubeconfig`, then KUBECONFIG (a list; missing entries skipped,
//                the first file's current-context), then the in-cluster service
//                account, then ~/.kube/config (findKubeconfig)
//   cluster      server, certificate-authority(-data), insecure-skip-tls-verify,
//                tls-server-name
//   user         client-certificate(-data), client-key(-data), token, tokenFile;
//                in-cluster: the service account token, read again when it may
//                have been rotated
//
// A user with anything else (exec, auth-provider, username/password,
// impersonation) or a cluster behind a proxy-url is handed to client-node's
// KubeConfig, loaded when the first request needs it. kubeconfig.ts's
// loadKubeConnection (client-node's KubeConfig, for the lab's and install's
// clients) checks files and names with this reader first: both report the
// same errors, naming the file and what is wrong.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { Agent as HttpsAgent, type RequestOptions } from 'node:https';
import { isIPv6 } from 'node:net';
import { homedir } from 'node:os';
import { delimiter, dirname, isAbsolute, join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { Cluster, KubeConfig } from '@kubernetes/client-node';

/** The in-cluster service account files (what KubeConfig.loadFromCluster reads). */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface KubeConnectionOptions {
  /** A kubeconfig file (`--kubeconfig`); wins over KUBECONFIG. */
  kubeconfig?: string | undefined;
  /** A context of the kubeconfig (default: its current-context). */
  context?: string | undefined;
  /** Use the pod's service account; the default when no kubeconfig is found and KUBERNETES_SERVICE_HOST is set. */
  inCluster?: boolean | undefined;
  /** Where KUBECONFIG is read (default process.env). In-cluster always reads process.env, as KubeConfig.loadFromCluster does. */
  env?: NodeJS.ProcessEnv;
  /** Home directory for ~/.kube/config (default os.homedir()). */
  home?: string;
  /** Prefix of SERVICE_ACCOUNT_DIR for in-cluster (tests; default ''). */
  serviceAccountRoot?: string;
}

export function fail(msg: string): never {
  throw new Error(`kubernetes connection: ${msg}`);
}

/** Where the connection comes from: kubeconfig files (merged in order) or the service account. */
export type KubeconfigSource = { kind: 'files'; files: string[]; what: string; description: string } | { kind: 'in-cluster'; serviceAccountRoot: string; description: string };

/** Picks the source in the documented order; throws naming what is missing. */
export function findKubeconfig(opts: KubeConnectionOptions = {}): KubeconfigSource {
  const env = opts.env ?? process.env;
  const fromEnv = (env.KUBECONFIG ?? '').split(delimiter).filter((p) => p !== '');
  const saRoot = opts.serviceAccountRoot ?? '';
  const homeConfig = join(opts.home ?? homedir(), '.kube', 'config');
  const files = (list: string[], what: string): KubeconfigSource => {
    for (const f of list) if (!existsSync(f)) fail(`${what} ${f}: no such file`);
    return { kind: 'files', files: list, what, description: `kubeconfig ${list.join(delimiter)}` };
  };
  if (opts.kubeconfig !== undefined && opts.kubeconfig !== '') return files([opts.kubeconfig], 'kubeconfig');
  if (fromEnv.length > 0 && !opts.inCluster) {
    const present = fromEnv.filter((p) => existsSync(p));
    if (present.length === 0) fail(`KUBECONFIG=${env.KUBECONFIG}: no such file`);
    return files(present, 'KUBECONFIG file');
  }
  if (opts.inCluster || (process.env.KUBERNETES_SERVICE_HOST && !existsSync(homeConfig))) {
    if (!process.env.KUBERNETES_SERVICE_HOST || !process.env.KUBERNETES_SERVICE_PORT) fail('in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not running in a pod?)');
    for (const f of ['token', 'ca.crt']) {
      const file = `${saRoot}${SERVICE_ACCOUNT_DIR}/${f}`;
      if (!existsSync(file)) fail(`in-cluster: ${file}: no such file (no service account token mounted?)`);
    }
    return { kind: 'in-cluster', serviceAccountRoot: saRoot, description: 'in-cluster service account' };
  }
  if (existsSync(homeConfig)) return files([homeConfig], 'kubeconfig');
  fail('no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account');
}

/** A cluster entry of a kubeconfig, paths made absolute against its file. */
export type KubeCluster = Cluster;

/** A user entry; `other` names the fields this reader leaves to client-node. */
export interface KubeUser {
  name: string;
  certFile?: string;
  certData?: string;
  keyFile?: string;
  keyData?: string;
  token?: string;
  tokenFile?: string;
  other: string[];
}

interface Parsed {
  clusters: Map<string, KubeCluster>;
  users: Map<string, KubeUser>;
  contexts: Map<string, { cluster: string; user: string }>;
  currentContext: string;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (o: Obj, k: string): string | undefined => (typeof o[k] === 'string' && o[k] !== '' ? (o[k] as string) : undefined);

/** User fields this reader applies itself. */
const OWN_USER_FIELDS = new Set(['client-certificate', 'client-certificate-data', 'client-key', 'client-key-data', 'token', 'tokenFile', 'token-file']);

function parseFile(file: string, into: Parsed, first: boolean): void {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${(err as Error).message}`);
  }
  if (doc === null || doc === undefined) doc = {};
  if (!isObj(doc)) throw new Error('not a kubeconfig (a YAML mapping expected)');
  const abs = (p: string | undefined): string | undefined => (p === undefined || isAbsolute(p) ? p : join(dirname(file), p));
  const list = (key: string): Obj[] => {
    const v = doc[key] ?? [];
    if (!Array.isArray(v)) throw new Error(`${key}: a list expected`);
    return v.map((e, i) => {
      if (!isObj(e) || typeof e.name !== 'string' || e.name === '') throw new Error(`${key}[${i}]: an entry with a name expected`);
      return e;
    });
  };
  const put = <T>(m: Map<string, T>, kind: string, name: string, v: T): void => {
    if (m.has(name)) throw new Error(`Duplicate ${kind}: ${name}`);
    m.set(name, v);
  };
  for (const e of list('clusters')) {
    const c = isObj(e.cluster) ? e.cluster : {};
    const caFile = abs(str(c, 'certificate-authority'));
    const caData = str(c, 'certificate-authority-data');
    const tlsServerName = str(c, 'tls-server-name');
    const proxyUrl = str(c, 'proxy-url');
    const cl: KubeCluster = {
      name: e.name as string,
      server: str(c, 'server') ?? '',
      skipTLSVerify: c['insecure-skip-tls-verify'] === true,
      ...(caFile !== undefined ? { caFile } : {}),
      ...(caData !== undefined ? { caData } : {}),
      ...(tlsServerName !== undefined ? { tlsServerName } : {}),
      ...(proxyUrl !== undefined ? { proxyUrl } : {}),
    };
    put(into.clusters, 'cluster', cl.name, cl);
  }
  for (const e of list('users')) {
    const u = isObj(e.user) ? e.user : {};
    const user: KubeUser = { name: e.name as string, other: Object.keys(u).filter((k) => !OWN_USER_FIELDS.has(k) && u[k] !== null && u[k] !== '') };
    const set = (k: 'certFile' | 'certData' | 'keyFile' | 'keyData' | 'token' | 'tokenFile', v: string | undefined): void => {
      if (v !== undefined) user[k] = v;
    };
    set('certFile', abs(str(u, 'client-certificate')));
    set('certData', str(u, 'client-certificate-data'));
    set('keyFile', abs(str(u, 'client-key')));
    set('keyData', str(u, 'client-key-data'));
    set('token', str(u, 'token'));
    set('tokenFile', abs(str(u, 'tokenFile') ?? str(u, 'token-file')));
    put(into.users, 'user', user.name, user);
  }
  for (const e of list('contexts')) {
    const c = isObj(e.context) ? e.context : {};
    put(into.contexts, 'context', e.name as string, { cluster: str(c, 'cluster') ?? '', user: str(c, 'user') ?? '' });
  }
  if (first && typeof doc['current-context'] === 'string') into.currentContext = doc['current-context'];
}

/** What a request needs: the cluster and the user of the chosen context. */
export class KubeAccess {
  #token: { value: string; readAt: number; mtimeMs: number } | undefined;
  /** The CA, certificate and key files as last read, with what their stat said then. */
  readonly #files = new Map<string, { stamp: string; data: Buffer }>();
  #fallback: Promise<KubeConfig> | undefined;

  constructor(
    readonly cluster: KubeCluster,
    readonly user: KubeUser | undefined,
    /** Builds client-node's KubeConfig for what this reader does not apply itself. */
    private readonly loadFull: () => Promise<KubeConfig>,
  ) {}

  /** What KubeConfig.getCurrentCluster returns (KubeAccess is a KubeHttpConfig: KubeHttp takes it as it is). */
  getCurrentCluster(): Cluster {
    return this.cluster;
  }

  /** Whether client-node is needed for this user or cluster (exec, auth-provider, basic auth, proxy). */
  get needsClientNode(): boolean {
    return (this.user?.other.length ?? 0) > 0 || this.cluster.proxyUrl !== undefined;
  }

  /** As KubeConfig.applyToHTTPSOptions: TLS options, an https agent and the Authorization header. */
  async applyToHTTPSOptions(opts: RequestOptions): Promise<void> {
    if (this.needsClientNode) {
      const kc = await (this.#fallback ??= this.loadFull());
      await kc.applyToHTTPSOptions(opts);
      return;
    }
    const c = this.cluster;
    const u = this.user;
    if (u) {
      if (c.skipTLSVerify) opts.rejectUnauthorized = false;
      if (c.tlsServerName) opts.servername = c.tlsServerName;
      const ca = this.#fileOrData(c.caFile, c.caData);
      if (ca) opts.ca = ca;
      const cert = this.#fileOrData(u.certFile, u.certData);
      if (cert) opts.cert = cert;
      const key = this.#fileOrData(u.keyFile, u.keyData);
      if (key) opts.key = key;
      const token = u.token ?? (u.tokenFile !== undefined ? this.#readToken(u.tokenFile) : undefined);
      if (token) opts.headers = { ...(opts.headers as Record<string, string> | undefined), Authorization: `Bearer ${token}` };
    }
    if (c.server.startsWith('http:') && !c.skipTLSVerify) throw new Error('HTTP protocol is not allowed when skipTLSVerify is not set or false');
    opts.agent = new HttpsAgent({
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      ...(opts.cert !== undefined ? { cert: opts.cert } : {}),
      ...(opts.key !== undefined ? { key: opts.key } : {}),
      ...(opts.rejectUnauthorized !== undefined ? { rejectUnauthorized: opts.rejectUnauthorized } : {}),
      ...(opts.servername !== undefined ? { servername: opts.servername } : {}),
    });
  }

  /** A token file, read again after a minute or when it changed (a projected service account token rotates). */
  #readToken(file: string): string {
    const now = Date.now();
    const t = this.#token;
    if (t && now - t.readAt < 60_000 && statSync(file, { throwIfNoEntry: false })?.mtimeMs === t.mtimeMs) return t.value;
    const value = readFileSync(file, 'utf8').trim();
    this.#token = { value, readAt: now, mtimeMs: statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? 0 };
    return value;
  }

  #fileOrData(file: string | undefined, data: string | undefined): Buffer | undefined {
    if (file) return this.#readFile(file);
    if (data) return Buffer.from(data, 'base64');
    return undefined;
  }

  /**
   * A CA, certificate or key file: read again only when its stat changed (another
   * inode, size, mtime or ctime: rewritten in place, or a Secret volume's symlink
   * swapped to new files), so a rotation is picked up at the next request while
   * an unchanged file costs a stat, not a read.
   */
  #readFile(file: string): Buffer {
    const st = statSync(file);
    const stamp = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    const known = this.#files.get(file);
    if (known?.stamp === stamp) return known.data;
    const data = readFileSync(file);
    this.#files.set(file, { stamp, data });
    return data;
  }
}

/** A connection through this reader. */
export interface KubeAccessConnection {
  access: KubeAccess;
  /** `kubeconfig /path (context c)` or `in-cluster service account`. */
  description: string;
  server: string;
  /** The context used (in-cluster: 'inClusterContext'). */
  context: string;
  source: KubeconfigSource;
}

/**
 * Reads the connection (findKubeconfig's order) and checks that the context,
 * its cluster and its user exist. Throws with the file and the reason.
 */
export function readKubeAccess(opts: KubeConnectionOptions = {}): KubeAccessConnection {
  const source = findKubeconfig(opts);
  if (source.kind === 'in-cluster') {
    const host = process.env.KUBERNETES_SERVICE_HOST!;
    const port = process.env.KUBERNETES_SERVICE_PORT!;
    const scheme = port === '80' || port === '8080' || port === '8001' ? 'http' : 'https';
    const dir = `${source.serviceAccountRoot}${SERVICE_ACCOUNT_DIR}`;
    const cluster: KubeCluster = { name: 'inCluster', server: `${scheme}://${isIPv6(host) ? `[${host}]` : host}:${port}`, skipTLSVerify: false, caFile: `${dir}/ca.crt` };
    const user: KubeUser = { name: 'inClusterUser', tokenFile: `${dir}/token`, other: [] };
    const load = async (): Promise<KubeConfig> => {
      const { KubeConfig } = await import('@kubernetes/client-node');
      const kc = new KubeConfig();
      kc.loadFromCluster(source.serviceAccountRoot);
      return kc;
    };
    return { access: new KubeAccess(cluster, user, load), description: source.description, server: cluster.server, context: 'inClusterContext', source };
  }
  const parsed: Parsed = { clusters: new Map(), users: new Map(), contexts: new Map(), currentContext: '' };
  source.files.forEach((file, i) => {
    try {
      parseFile(file, parsed, i === 0);
    } catch (err) {
      fail(`${source.what} ${file}: ${(err as Error).message}`);
    }
  });
  let description = source.description;
  let current = parsed.currentContext;
  if (opts.context !== undefined && opts.context !== '') {
    const names = [...parsed.contexts.keys()];
    if (!names.includes(opts.context)) fail(`${description}: no context "${opts.context}" (it has ${names.length > 0 ? names.map((n) => `"${n}"`).join(', ') : 'none'})`);
    current = opts.context;
  }
  if (!current) fail(`${description}: no current-context; pass a context`);
  description += ` (context ${current})`;
  const ctx = parsed.contexts.get(current);
  if (!ctx) fail(`${description}: context "${current}" is not defined`);
  const cluster = parsed.clusters.get(ctx.cluster);
  if (!cluster) fail(`${description}: context "${current}" names cluster "${ctx.cluster}", which is not defined`);
  if (!cluster.server) fail(`${description}: cluster "${cluster.name}" has no server`);
  const user = ctx.user ? parsed.users.get(ctx.user) : undefined;
  if (ctx.user && !user) fail(`${description}: context "${current}" names user "${ctx.user}", which is not defined`);
  const load = async (): Promise<KubeConfig> => {
    const { KubeConfig } = await import('@kubernetes/client-node');
    return clientNodeKubeConfig(KubeConfig, source, current);
  };
  return { access: new KubeAccess(cluster, user, load), description, server: cluster.server, context: current, source };
}

/** client-node's KubeConfig for kubeconfig files (merged in order), set to `context`. */
export function clientNodeKubeConfig(Ctor: typeof KubeConfig, source: KubeconfigSource & { kind: 'files' }, context: string): KubeConfig {
  const kc = new Ctor();
  source.files.forEach((file, i) => {
    const target = i === 0 ? kc : new Ctor();
    try {
      target.loadFromFile(file);
      if (target !== kc) kc.mergeConfig(target, true);
    } catch (err) {
      fail(`${source.what} ${file}: ${(err as Error).message}`);
    }
  });
  kc.setCurrentContext(context);
  return kc;
}
