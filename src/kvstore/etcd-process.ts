// A real etcd process for tests and the lab: own data dir, loopback ports,
// mutual TLS, authentication with the mesh's roles.
//
// By default etcd listens on 127.0.0.1 of this process's network namespace.
// With `netns` it runs inside another network namespace (`ip netns exec NS
// etcd …`, the lab's control-plane namespaces) and listens on `listenAddress`
// there, where that namespace's neighbours reach it; this process, which
// cannot route into that namespace, talks to it through a TLS unix socket in
// the etcd's dir (a file is reachable from every network namespace).
//
// Roles: the caller hands them over (`roles`, one user per role, of the same
// name); this layer knows no key layout. The mesh's roles are in
// src/clustermesh/etcd.ts. etcd with --client-cert-auth takes the client
// certificate's CN as the user.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync, unlinkSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer, isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { Etcd3, EtcdRoleExistsError, EtcdUserExistsError, Range } from 'etcd3';

import { createCA, issueCert, type CertFiles, type CertificateAuthority } from './pki.ts';
import type { KvConnectionConfig } from './types.ts';
import { heldArgv, recordThenRelease } from '../util/held-start.ts';

export interface RolePermission {
  permission: 'Read' | 'Write' | 'Readwrite';
  /** A key prefix (every key starting with it, with or without a trailing '/'), or an exact key when `exact` is set. */
  key: string;
  exact?: boolean;
}

/** Role name → permissions. Each role gets a user of the same name (and a client certificate). */
export type EtcdRoles = Readonly<Record<string, readonly RolePermission[]>>;

/** The users of an etcd with `roles`: root and one per role. */
export function etcdUsers(roles: EtcdRoles | undefined): string[] {
  return ['root', ...Object.keys(roles ?? {})];
}

export interface EtcdOptions {
  /** Directory of this etcd: data/, pki/, etcd.log. Created when missing. */
  dir: string;
  /** Member name (default 'etcd'). */
  name?: string;
  /** The cluster this etcd serves; names the CA and the initial-cluster-token. */
  clusterName?: string;
  /** Client port; default: a free loopback port, kept across restarts (2379 with `netns`). */
  clientPort?: number;
  /** Peer port; default: a free loopback port (2380 with `netns`). */
  peerPort?: number;
  /** Run etcd inside this network namespace (`ip netns exec NETNS etcd …`). The
   * client URL is then https://listenAddress:clientPort inside it, and this
   * process reaches etcd through a TLS unix socket `<dir>/localhost:<clientPort>`. */
  netns?: string;
  /** IPv4 address etcd listens on for clients (default 127.0.0.1). It must exist
   * in etcd's network namespace; the server certificate covers it. */
  listenAddress?: string;
  /** Names on the server certificate (default localhost, plus 127.0.0.1 or listenAddress). */
  serverDnsNames?: string[];
  serverIpAddresses?: string[];
  /** Use this CA instead of creating one in dir/pki (e.g. one CA per mesh). */
  ca?: CertificateAuthority;
  /** Turn on authentication and create `roles` (default true). */
  auth?: boolean;
  /** Roles (and users of the same name) created when auth is set up; root always exists. Default none. */
  roles?: EtcdRoles;
  /** How long to wait for etcd to serve (default 20 s). */
  startTimeoutMs?: number;
  /** Path of the etcd binary (default 'etcd' from PATH). */
  binary?: string;
  /** Let etcd outlive this process (the lab's `up`): not killed on exit; stop it
   * with the pid in `<dir>/etcd.pid`. Default false (tests: never orphaned). */
  detached?: boolean;
  /**
   * Raft heartbeat / election timeout in ms (defaults 50 / 250: a single member still elects itself
   * within about half a second of its start, and Raft ticks 20 times a second instead of 100: an idle
   * etcd took 2% of a core at 10 / 100, about 1% at 50 / 250).
   */
  heartbeatMs?: number;
  electionMs?: number;
}

export interface EtcdServer {
  readonly name: string;
  readonly dir: string;
  readonly dataDir: string;
  readonly logFile: string;
  /** `<dir>/etcd.pid` while running. */
  readonly pidFile: string;
  readonly clientPort: number;
  readonly peerPort: number;
  /** 'https://127.0.0.1:PORT', or 'https://<listenAddress>:PORT': what clients in
   * etcd's network (its namespace and the networks routed to it) connect to. */
  readonly endpoint: string;
  /** What this process connects to: `endpoint`, or with `netns` the TLS unix
   * socket 'unix:///<dir>/localhost:PORT'. */
  readonly localEndpoint: string;
  /** The network namespace etcd runs in, undefined for this process's own. */
  readonly netns: string | undefined;
  readonly caFile: string;
  readonly ca: CertificateAuthority;
  /** pid of the running etcd, undefined when stopped. */
  readonly pid: number | undefined;
  readonly running: boolean;
  /** Milliseconds the last start() took until etcd served (and auth was set up). */
  readonly lastStartMs: number;
  /** Server name to verify when the server certificate does not name 127.0.0.1. */
  readonly serverName: string | undefined;
  /** Client certificate for `user` (CN = user), issued once and cached. */
  clientCert(user: string): Promise<CertFiles>;
  /** Connection config for `user`. Certificates of the users of `roles` exist from the start;
   * others must have been issued with clientCert() first. `via: 'local'` (default)
   * is for this process (`localEndpoint`); `via: 'network'` is for processes in
   * etcd's network, e.g. an agent in a node namespace (`endpoint`). */
  connection(user: string, opts?: { timeoutMs?: number; via?: 'local' | 'network' }): KvConnectionConfig;
  /** Starts (or restarts) etcd on the same data dir and ports. No-op when running. */
  start(): Promise<void>;
  /** SIGTERM, wait, SIGKILL after `graceMs` (default 5000). No-op when stopped. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL (fault tests). */
  kill(): Promise<void>;
  /** Stops and removes all data; the next start() comes back empty (roles re-created). */
  wipe(): Promise<void>;
}

// ---- orphan protection: every etcd we spawned is killed when this process exits.
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) {
      try {
        child.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

/** A free TCP port on 127.0.0.1 (bound then released). */
export async function freeLoopbackPort(): Promise<number> {
  return await new Promise<number>((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => (port > 0 ? resolvePort(port) : reject(new Error('no port'))));
    });
  });
}

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function waitExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise<boolean>((res) => {
    const t = setTimeout(() => {
      child.off('exit', onExit);
      res(false);
    }, timeoutMs);
    const onExit = (): void => {
      clearTimeout(t);
      res(true);
    };
    child.once('exit', onExit);
  });
}

class EtcdProcess implements EtcdServer {
  readonly name: string;
  readonly dir: string;
  readonly dataDir: string;
  readonly logFile: string;
  readonly pidFile: string;
  readonly endpoint: string;
  readonly localEndpoint: string;
  readonly netns: string | undefined;
  readonly caFile: string;
  lastStartMs = 0;
  private child: ChildProcess | undefined;
  private readonly certs = new Map<string, Promise<CertFiles>>();
  private readonly pkiDir: string;
  private readonly authMarker: string;

  constructor(
    private readonly opts: EtcdOptions,
    readonly ca: CertificateAuthority,
    private readonly serverCert: CertFiles,
    readonly clientPort: number,
    readonly peerPort: number,
    readonly serverName: string | undefined,
  ) {
    this.name = opts.name ?? 'etcd';
    this.dir = resolve(opts.dir);
    this.dataDir = join(this.dir, 'data');
    this.logFile = join(this.dir, 'etcd.log');
    this.pidFile = join(this.dir, 'etcd.pid');
    this.pkiDir = join(this.dir, 'pki');
    this.authMarker = join(this.dir, 'auth-configured');
    this.netns = opts.netns;
    this.endpoint = `https://${opts.listenAddress ?? '127.0.0.1'}:${clientPort}`;
    this.localEndpoint = opts.netns === undefined ? this.endpoint : `unix://${this.socketFile}`;
    this.caFile = ca.certFile;
  }

  /** The TLS unix socket of a namespaced etcd (etcd names it host:port, relative to its cwd). */
  private get socketFile(): string {
    const file = join(this.dir, this.socketName);
    // sockaddr_un.sun_path holds 108 bytes.
    if (Buffer.byteLength(file) > 107) throw new Error(`etcd: unix socket path too long (${file}); use a shorter dir`);
    return file;
  }

  private get socketName(): string {
    return `localhost:${this.clientPort}`;
  }

  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined;
  }

  get running(): boolean {
    const c = this.child;
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  }

  private certPaths(user: string): CertFiles {
    return {
      certFile: join(this.pkiDir, 'users', `${user}.crt`),
      keyFile: join(this.pkiDir, 'users', `${user}.key`),
      caFile: this.ca.certFile,
    };
  }

  clientCert(user: string): Promise<CertFiles> {
    if (!/^[A-Za-z0-9._-]+$/.test(user)) return Promise.reject(new Error(`etcd: bad user name ${JSON.stringify(user)}`));
    let p = this.certs.get(user);
    if (p === undefined) {
      const paths = this.certPaths(user);
      p = (async () => {
        if (existsSync(paths.certFile) && existsSync(paths.keyFile)) return paths;
        return await issueCert(this.ca, { commonName: user, usage: 'client', outDir: join(this.pkiDir, 'users'), name: user });
      })();
      p.catch(() => this.certs.delete(user));
      this.certs.set(user, p);
    }
    return p;
  }

  connection(user: string, o: { timeoutMs?: number; via?: 'local' | 'network' } = {}): KvConnectionConfig {
    const paths = this.certPaths(user);
    if (!existsSync(paths.certFile)) {
      throw new Error(`etcd: no client certificate for user ${JSON.stringify(user)}; await server.clientCert(user) first`);
    }
    const local = (o.via ?? 'local') === 'local';
    // Over the unix socket the certificate's DNS name 'localhost' is what is verified.
    const serverName = local && this.netns !== undefined ? 'localhost' : this.serverName;
    return {
      endpoints: [local ? this.localEndpoint : this.endpoint],
      caFile: paths.caFile,
      certFile: paths.certFile,
      keyFile: paths.keyFile,
      ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}),
      ...(serverName !== undefined ? { serverName } : {}),
    };
  }

  async start(): Promise<void> {
    if (this.running) return;
    const t0 = performance.now();
    await mkdir(this.dataDir, { recursive: true, mode: 0o700 });
    const peerUrl = `https://127.0.0.1:${this.peerPort}`;
    const s = this.serverCert;
    // A namespaced etcd also serves on a unix socket for this process; a socket
    // file left by a killed etcd would make its bind fail.
    if (this.netns !== undefined) await rm(this.socketFile, { force: true });
    const listenClientUrls = this.netns === undefined ? this.endpoint : `${this.endpoint},unixs://${this.socketName}`;
    const args = [
      '--name', this.name,
      '--data-dir', this.dataDir,
      '--listen-client-urls', listenClientUrls,
      '--advertise-client-urls', this.endpoint,
      '--listen-peer-urls', peerUrl,
      '--initial-advertise-peer-urls', peerUrl,
      '--initial-cluster', `${this.name}=${peerUrl}`,
      '--initial-cluster-state', 'new',
      '--initial-cluster-token', `clustermesh-${this.opts.clusterName ?? this.name}`,
      '--cert-file', s.certFile, '--key-file', s.keyFile,
      '--client-cert-auth', '--trusted-ca-file', this.ca.certFile,
      '--peer-cert-file', s.certFile, '--peer-key-file', s.keyFile,
      '--peer-client-cert-auth', '--peer-trusted-ca-file', this.ca.certFile,
      '--heartbeat-interval', String(this.opts.heartbeatMs ?? 50),
      '--election-timeout', String(this.opts.electionMs ?? 250),
      '--logger', 'zap', '--log-outputs', 'stderr',
    ];
    // ETCD_* variables would override flags; start from a clean slate.
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCD')) env[k] = v;
    // Where this start's log begins, taken before etcd exists: measured after the
    // spawn, it could already include "serving client traffic" (etcd up before a
    // busy event loop came back to us) and the wait would skip the very line it needs.
    const logStart = await stat(this.logFile).then((st) => st.size).catch(() => 0);
    const logFd = openSync(this.logFile, 'a');
    const binary = this.opts.binary ?? 'etcd';
    // `ip netns exec` (and setpriv) exec etcd: the pid is etcd's own. A namespaced
    // etcd that is not detached dies with this process even when it is SIGKILLed.
    // A detached etcd outlives this process: it starts held until its pid file is
    // written (src/util/held-start.ts), so a starter killed in between leaves no
    // etcd that nobody can find.
    const detached = this.opts.detached === true;
    const pdeath = detached ? [] : ['setpriv', '--pdeathsig', 'KILL'];
    const plain = this.netns === undefined ? [binary, ...args] : ['ip', 'netns', 'exec', this.netns, ...pdeath, binary, ...args];
    const [cmd, ...argv] = detached ? heldArgv(plain) : plain;
    let child: ChildProcess;
    try {
      child = spawn(cmd!, argv, { ...(this.netns !== undefined ? { cwd: this.dir } : {}), stdio: [detached ? 'pipe' : 'ignore', logFd, logFd], env, detached });
    } finally {
      closeSync(logFd);
    }
    if (this.opts.detached) {
      child.unref();
    } else {
      installExitHook();
      live.add(child);
    }
    child.once('exit', () => {
      live.delete(child);
      try {
        unlinkSync(this.pidFile);
      } catch {
        /* not written yet, or gone */
      }
    });
    let spawnError: Error | undefined;
    child.once('error', (e) => {
      spawnError = e;
      live.delete(child);
    });
    this.child = child;
    if (detached) {
      await new Promise<void>((resolve) => {
        child.once('spawn', resolve);
        child.once('error', () => resolve());
      });
      if (spawnError === undefined) await recordThenRelease(child, (pid) => writeFileSync(this.pidFile, `${pid}\n`));
    } else if (child.pid !== undefined) await writeFile(this.pidFile, `${child.pid}\n`);

    try {
      await this.waitReady(child, () => spawnError, logStart);
      if (this.opts.auth !== false && !existsSync(this.authMarker)) {
        await this.setupAuth();
        await writeFile(this.authMarker, new Date().toISOString() + '\n');
      }
    } catch (err) {
      await this.stop(1000).catch(() => undefined);
      throw err;
    }
    this.lastStartMs = performance.now() - t0;
  }

  /** Waits for "serving client traffic" in the log (written once the member has
   * a leader and serves clients), failing fast when etcd exits. */
  private async waitReady(child: ChildProcess, spawnError: () => Error | undefined, logOffset: number): Promise<void> {
    const deadline = Date.now() + (this.opts.startTimeoutMs ?? 20_000);
    for (;;) {
      const e = spawnError();
      if (e) throw new Error(`etcd: cannot start ${this.opts.binary ?? 'etcd'}: ${e.message}`);
      // A byte offset: cut the bytes, then decode.
      const log = (await readFile(this.logFile).catch(() => Buffer.alloc(0))).subarray(logOffset).toString('utf8');
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`etcd exited during start (code ${child.exitCode}, signal ${child.signalCode}); log ${this.logFile}:\n${log.split('\n').slice(-15).join('\n')}`);
      }
      if (this.netns !== undefined) {
        // Both listeners: the network one (for the namespace's neighbours) and the socket (for us).
        const served = [...log.matchAll(/serving client traffic[^\n]*"address":"([^"]+)"/g)].map((m) => m[1]);
        if (served.includes(this.socketName) && served.some((a) => a !== this.socketName)) return;
      } else if (log.includes('serving client traffic') || log.includes('ready to serve client requests')) return;
      if (Date.now() > deadline) throw new Error(`etcd: not ready after ${this.opts.startTimeoutMs ?? 20_000} ms; log ${this.logFile}`);
      await delay(15);
    }
  }

  private async setupAuth(): Promise<void> {
    await this.clientCert('root');
    await configureEtcdAuth(this.connection('root'), this.opts.roles);
  }

  async stop(graceMs = 5000): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return;
    child.kill('SIGTERM');
    if (!(await waitExit(child, graceMs))) {
      child.kill('SIGKILL');
      await waitExit(child, 5000);
    }
  }

  async kill(): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return;
    child.kill('SIGKILL');
    await waitExit(child, 5000);
  }

  async wipe(): Promise<void> {
    await this.stop();
    await rm(this.dataDir, { recursive: true, force: true });
    await rm(this.authMarker, { force: true });
  }
}

/**
 * Creates the PKI (CA, server certificate, client certificates of the mesh
 * users) in `opts.dir` and starts etcd. Always `await server.stop()` in a
 * `finally`; etcds still running when the process exits are SIGKILLed.
 */
export async function startEtcd(opts: EtcdOptions): Promise<EtcdServer> {
  const dir = resolve(opts.dir);
  const pkiDir = join(dir, 'pki');
  await mkdir(pkiDir, { recursive: true, mode: 0o700 });
  const clusterName = opts.clusterName ?? opts.name ?? 'etcd';
  const caReady = existsSync(join(pkiDir, 'ca.crt')) && existsSync(join(pkiDir, 'ca.key'));
  const ca = opts.ca ?? (caReady
    ? { commonName: `clustermesh-${clusterName}-ca`, certFile: join(pkiDir, 'ca.crt'), keyFile: join(pkiDir, 'ca.key') }
    : await createCA(pkiDir, `clustermesh-${clusterName}-ca`));
  if (opts.listenAddress !== undefined && isIP(opts.listenAddress) !== 4) throw new Error(`etcd: listenAddress must be an IPv4 address, got ${JSON.stringify(opts.listenAddress)}`);
  if (opts.netns !== undefined && !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(opts.netns)) throw new Error(`etcd: bad network namespace name ${JSON.stringify(opts.netns)}`);
  const listenAddress = opts.listenAddress ?? '127.0.0.1';
  const dnsNames = [...(opts.serverDnsNames ?? ['localhost'])];
  // The unix socket of a namespaced etcd is verified by the name 'localhost'.
  if (opts.netns !== undefined && !dnsNames.includes('localhost')) dnsNames.push('localhost');
  // An explicit list is taken as given (a test may leave the address out on purpose).
  const ipAddresses = [...(opts.serverIpAddresses ?? [listenAddress])];
  const userDir = join(pkiDir, 'users');
  // A fresh namespace has its ports free; the root namespace's loopback needs free ones found.
  const portIn = (given: number | undefined, nsDefault: number): number | Promise<number> =>
    given ?? (opts.netns !== undefined ? nsDefault : freeLoopbackPort());
  const [serverCert, clientPort, peerPort] = await Promise.all([
    issueCert(ca, { commonName: `etcd-${opts.name ?? 'etcd'}`, dnsNames, ipAddresses, usage: 'both', outDir: pkiDir, name: 'server' }),
    portIn(opts.clientPort, 2379),
    portIn(opts.peerPort, 2380),
    // The users' client certificates (CN = user), unless issued before.
    ...etcdUsers(opts.roles).map((user) =>
      existsSync(join(userDir, `${user}.crt`)) && existsSync(join(userDir, `${user}.key`))
        ? undefined
        : issueCert(ca, { commonName: user, usage: 'client', outDir: userDir, name: user }),
    ),
  ]);
  // Connect by IP; verify a DNS name when the certificate does not carry the address.
  const serverName = ipAddresses.includes(listenAddress) ? undefined : dnsNames[0];
  if (clientPort === peerPort) throw new Error('etcd: client and peer port collide');
  const server = new EtcdProcess(opts, ca, serverCert, clientPort, peerPort, serverName);
  await server.start();
  return server;
}

/**
 * Test helper: starts an etcd in a fresh temp dir, runs `fn`, and always stops
 * it and removes the dir (keeps the dir when `fn` fails and KEEP_ETCD_DIR is set).
 */
export async function withEtcd<T>(opts: Omit<EtcdOptions, 'dir'> & { dir?: string }, fn: (server: EtcdServer) => Promise<T>): Promise<T> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), `etcd-${opts.name ?? 'test'}-`)));
  let server: EtcdServer | undefined;
  let ok = false;
  try {
    server = await startEtcd({ ...opts, dir });
    const result = await fn(server);
    ok = true;
    return result;
  } finally {
    await server?.stop();
    if (opts.dir === undefined && (ok || process.env.KEEP_ETCD_DIR === undefined)) await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Creates `roles` (and a user of the same name for each, plus root) and turns
 * authentication on, through `conn` (root's client certificate). Idempotent:
 * roles and users that exist are kept and granted again, so it also runs
 * against an etcd set up before (the installed apiserver calls it at every
 * start with --etcd-bootstrap-config).
 */
export async function configureEtcdAuth(conn: KvConnectionConfig, roles: EtcdRoles | undefined): Promise<void> {
  const client = new Etcd3({
    hosts: conn.endpoints,
    credentials: {
      rootCertificate: await readFile(conn.caFile),
      certChain: await readFile(conn.certFile),
      privateKey: await readFile(conn.keyFile),
    },
    ...(conn.serverName !== undefined ? { grpcOptions: { 'grpc.ssl_target_name_override': conn.serverName } } : {}),
    defaultCallOptions: () => ({ deadline: Date.now() + (conn.timeoutMs ?? 10_000) }),
  });
  const exists = (err: unknown): void => {
    if (!(err instanceof EtcdRoleExistsError || err instanceof EtcdUserExistsError)) throw err;
  };
  try {
    const auth = client.auth;
    await Promise.all(
      etcdUsers(roles).map(async (user) => {
        await auth.roleAdd({ name: user }).catch(exists);
        await auth.userAdd({ name: user, options: { no_password: true } }).catch(exists);
        await auth.userGrantRole({ user, role: user });
      }),
    );
    for (const [role, perms] of Object.entries(roles ?? {})) {
      for (const p of perms) {
        const range = p.exact ? { start: Buffer.from(p.key), end: Buffer.alloc(0) } : Range.prefix(p.key);
        await auth.roleGrantPermission({ name: role, perm: { permType: p.permission, key: range.start, range_end: range.end } });
      }
    }
    await auth.authEnable();
  } finally {
    client.close();
  }
}
