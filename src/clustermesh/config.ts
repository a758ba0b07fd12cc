// The remote-cluster config directory: one file per remote cluster, the file
// name is the cluster name, the content is YAML in etcd's client config shape:
//
//   endpoints:
//     - https://10.2.0.10:2379
//   trusted-ca-file: ca.crt        # relative paths are relative to this file's directory
//   cert-file: client.crt
//   key-file: client.key
//   server-name: etcd.c2.mesh      # optional: TLS name to verify instead of the endpoint host
//
// Names with a '.' are ignored: a cluster name has none, and what sits beside
// the configs has one (Kubernetes secret mounts keep their `..data` links
// there; Cilium's Secret layout, which `clustermesh connect --context` writes,
// puts `<cluster>.etcd-client-ca.crt`, `.etcd-client.crt` and `.etcd-client.key`
// beside each config). Every other entry must be a valid cluster name.
//
// `ConfigDirWatcher` reports add / change / remove per cluster. A change is any
// change of the file or of the certificate files it names (a rotated
// certificate reconnects). A file that becomes invalid keeps its last good
// config in effect (a typo must not disconnect a cluster) and is reported as
// `invalid`; deleting the file removes the cluster.

import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import type { KvConnectionConfig } from '../kvstore/types.ts';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.ts';
import { isValidClusterName } from './wire.ts';

export interface RemoteClusterConfig {
  /** The cluster name (= the file name). */
  name: string;
  /** Absolute path of the config file. */
  file: string;
  endpoints: string[];
  /** Absolute paths. */
  caFile: string;
  certFile: string;
  keyFile: string;
  /** TLS server name to verify instead of the endpoint's host. */
  serverName?: string;
  /** sha256 over the config file and the three files it names. */
  fingerprint: string;
}

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly field: string | null,
    readonly detail: string,
  ) {
    super(`${file}${field ? `: field ${field}` : ''}: ${detail}`);
    this.name = 'ConfigError';
  }
}

const endpointSchema = z.string().refine((s) => {
  try {
    const u = new URL(s);
    return u.protocol === 'https:' && u.hostname !== '' && (u.pathname === '/' || u.pathname === '') && !u.search && !u.hash;
  } catch {
    return false;
  }
}, 'must be an https:// URL (host and port, no path); mutual TLS is required');

const fileSchema = z.strictObject({
  endpoints: z.array(endpointSchema).min(1, 'at least one endpoint is required'),
  'trusted-ca-file': z.string().min(1),
  'cert-file': z.string().min(1),
  'key-file': z.string().min(1),
  'server-name': z
    .string()
    .regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/, 'must be a DNS name')
    .optional(),
});

export function toConnectionConfig(cfg: RemoteClusterConfig, timeoutMs?: number): KvConnectionConfig {
  return {
    endpoints: [...cfg.endpoints],
    caFile: cfg.caFile,
    certFile: cfg.certFile,
    keyFile: cfg.keyFile,
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    ...(cfg.serverName !== undefined ? { serverName: cfg.serverName } : {}),
  };
}

/** Reads and validates one config file. Throws ConfigError naming the file and the field. */
export async function loadRemoteClusterConfig(file: string): Promise<RemoteClusterConfig> {
  const abs = resolve(file);
  const name = abs.slice(dirname(abs).length + 1);
  if (!isValidClusterName(name)) {
    throw new ConfigError(abs, null, 'file name is not a valid cluster name (at most 32 lowercase alphanumerics and "-", starting and ending alphanumeric)');
  }
  let text: string;
  try {
    text = await readFile(abs, 'utf8');
  } catch (e) {
    throw new ConfigError(abs, null, `cannot read: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new ConfigError(abs, null, `not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (doc === null || doc === undefined) throw new ConfigError(abs, null, 'empty file');
  const r = fileSchema.safeParse(doc);
  if (!r.success) {
    const issue = r.error.issues[0];
    let field = issue && issue.path.length ? issue.path.map(String).join('.') : null;
    let detail = issue?.message ?? 'invalid';
    if (issue?.code === 'unrecognized_keys') {
      field = issue.keys.join(', ');
      detail = 'unknown field (expected endpoints, trusted-ca-file, cert-file, key-file, server-name)';
    }
    throw new ConfigError(abs, field, detail);
  }
  const base = dirname(abs);
  const hash = createHash('sha256').update(text);
  const paths: Record<'trusted-ca-file' | 'cert-file' | 'key-file', string> = {
    'trusted-ca-file': resolve(base, r.data['trusted-ca-file']),
    'cert-file': resolve(base, r.data['cert-file']),
    'key-file': resolve(base, r.data['key-file']),
  };
  for (const [field, p] of Object.entries(paths)) {
    try {
      hash.update('\0').update(await readFile(p));
    } catch (e) {
      throw new ConfigError(abs, field, `cannot read ${p}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  return {
    name,
    file: abs,
    endpoints: r.data.endpoints,
    caFile: paths['trusted-ca-file'],
    certFile: paths['cert-file'],
    keyFile: paths['key-file'],
    ...(r.data['server-name'] !== undefined ? { serverName: r.data['server-name'] } : {}),
    fingerprint: hash.digest('hex'),
  };
}

export interface ConfigDirScan {
  configs: Map<string, RemoteClusterConfig>;
  /** Invalid files by file name. */
  errors: Map<string, ConfigError>;
}

/** Reads every config in `dir`. A missing directory is empty. */
export async function scanConfigDir(dir: string): Promise<ConfigDirScan> {
  const abs = resolve(dir);
  const configs = new Map<string, RemoteClusterConfig>();
  const errors = new Map<string, ConfigError>();
  let names: string[];
  try {
    names = await readdir(abs);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { configs, errors };
    throw e;
  }
  for (const name of names.sort()) {
    // A cluster name has no '.': dotted names are what sits beside the configs
    // (Kubernetes' ..data links of a mounted Secret, `<cluster>.etcd-client.crt`
    // and the other certificate files of Cilium's layout).
    if (name.includes('.')) continue;
    const file = join(abs, name);
    try {
      const st = await stat(file); // follows symlinks
      if (!st.isFile()) continue;
    } catch {
      continue; // dangling link or raced removal
    }
    try {
      configs.set(name, await loadRemoteClusterConfig(file));
    } catch (e) {
      errors.set(name, e instanceof ConfigError ? e : new ConfigError(file, null, String(e)));
    }
  }
  return { configs, errors };
}

export type ConfigDirEvent =
  | { kind: 'add'; cluster: string; config: RemoteClusterConfig }
  | { kind: 'change'; cluster: string; config: RemoteClusterConfig; previous: RemoteClusterConfig }
  | { kind: 'remove'; cluster: string; previous: RemoteClusterConfig }
  | { kind: 'invalid'; file: string; error: ConfigError };

export interface ConfigDirWatcherOptions {
  /** Periodic rescan, the fallback for missed fs events and certificates outside the dir. Default 10 s. */
  rescanIntervalMs?: number;
  /** Delay between an fs event and the scan it triggers. Default 50 ms. */
  debounceMs?: number;
  clock?: Clock;
  /** Use fs.watch (default true); the periodic rescan always runs. */
  useFsWatch?: boolean;
}

/**
 * Watches a config directory. Events are delivered in order, one scan at a
 * time; the listener may be async (it is awaited before the next event).
 */
export class ConfigDirWatcher {
  readonly dir: string;
  private readonly opts: Required<Omit<ConfigDirWatcherOptions, 'clock'>> & { clock: Clock };
  private readonly known = new Map<string, RemoteClusterConfig>();
  private readonly reportedErrors = new Map<string, string>();
  private fsw: FSWatcher | null = null;
  private rescanTimer: TimerHandle | null = null;
  private debounceTimer: TimerHandle | null = null;
  private scanning: Promise<void> | null = null;
  private again = false;
  private stopped = true;

  constructor(
    dir: string,
    private readonly onEvent: (ev: ConfigDirEvent) => void | Promise<void>,
    options: ConfigDirWatcherOptions = {},
  ) {
    this.dir = resolve(dir);
    this.opts = {
      rescanIntervalMs: options.rescanIntervalMs ?? 10_000,
      debounceMs: options.debounceMs ?? 50,
      useFsWatch: options.useFsWatch ?? true,
      clock: options.clock ?? systemClock,
    };
  }

  /** The configs in effect. */
  current(): ReadonlyMap<string, RemoteClusterConfig> {
    return this.known;
  }

  /** Scans once (emitting `add` for every valid file), then keeps watching. */
  async start(): Promise<void> {
    if (!this.stopped) return;
    this.stopped = false;
    this.tryWatch();
    await this.rescan();
    this.scheduleRescan();
  }

  stop(): void {
    this.stopped = true;
    this.fsw?.close();
    this.fsw = null;
    if (this.rescanTimer) this.opts.clock.clearTimeout(this.rescanTimer);
    if (this.debounceTimer) this.opts.clock.clearTimeout(this.debounceTimer);
    this.rescanTimer = this.debounceTimer = null;
  }

  /** Scans now; resolves when this scan (or the one it joins after) has delivered its events. */
  async rescan(): Promise<void> {
    if (this.scanning) {
      this.again = true;
      await this.scanning;
      if (this.scanning) await this.scanning;
      return;
    }
    this.scanning = (async () => {
      try {
        do {
          this.again = false;
          await this.scanOnce();
        } while (this.again && !this.stopped);
      } finally {
        this.scanning = null;
      }
    })();
    await this.scanning;
  }

  private tryWatch(): void {
    if (!this.opts.useFsWatch || this.fsw || this.stopped) return;
    try {
      this.fsw = watch(this.dir, { persistent: false }, () => this.kick());
      this.fsw.on('error', () => {
        this.fsw?.close();
        this.fsw = null; // the rescan re-arms it
      });
    } catch {
      this.fsw = null; // directory missing: the periodic rescan covers it
    }
  }

  private kick(): void {
    if (this.stopped || this.debounceTimer) return;
    this.debounceTimer = this.opts.clock.setTimeout(() => {
      this.debounceTimer = null;
      void this.rescan().catch(() => {});
    }, this.opts.debounceMs);
  }

  private scheduleRescan(): void {
    if (this.stopped) return;
    this.rescanTimer = this.opts.clock.setTimeout(() => {
      this.rescanTimer = null;
      this.tryWatch();
      void this.rescan()
        .catch(() => {})
        .finally(() => this.scheduleRescan());
    }, this.opts.rescanIntervalMs);
  }

  private async scanOnce(): Promise<void> {
    let scan: ConfigDirScan;
    try {
      scan = await scanConfigDir(this.dir);
    } catch (e) {
      await this.emit({ kind: 'invalid', file: this.dir, error: new ConfigError(this.dir, null, `cannot list: ${(e as Error).message}`) });
      return;
    }
    if (this.stopped) return;
    for (const [name, err] of scan.errors) {
      if (this.reportedErrors.get(name) === err.message) continue;
      this.reportedErrors.set(name, err.message);
      await this.emit({ kind: 'invalid', file: err.file, error: err });
    }
    for (const name of [...this.reportedErrors.keys()]) if (!scan.errors.has(name)) this.reportedErrors.delete(name);
    for (const [name, cfg] of scan.configs) {
      const prev = this.known.get(name);
      if (!prev) {
        this.known.set(name, cfg);
        await this.emit({ kind: 'add', cluster: name, config: cfg });
      } else if (prev.fingerprint !== cfg.fingerprint) {
        this.known.set(name, cfg);
        await this.emit({ kind: 'change', cluster: name, config: cfg, previous: prev });
      }
    }
    for (const [name, prev] of [...this.known]) {
      // an invalid file keeps its last good config; only a vanished file removes
      if (scan.configs.has(name) || scan.errors.has(name)) continue;
      this.known.delete(name);
      await this.emit({ kind: 'remove', cluster: name, previous: prev });
    }
  }

  private async emit(ev: ConfigDirEvent): Promise<void> {
    if (this.stopped) return;
    try {
      await this.onEvent(ev);
    } catch {
      // a listener's failure must not stop the watcher
    }
  }
}

/** The YAML of a config file (what `clustermesh connect` writes). */
export function formatRemoteClusterConfig(c: {
  endpoints: string[];
  caFile: string;
  certFile: string;
  keyFile: string;
  serverName?: string;
}): string {
  const lines = ['endpoints:', ...c.endpoints.map((e) => `  - ${JSON.stringify(e)}`)];
  lines.push(`trusted-ca-file: ${JSON.stringify(c.caFile)}`, `cert-file: ${JSON.stringify(c.certFile)}`, `key-file: ${JSON.stringify(c.keyFile)}`);
  if (c.serverName !== undefined) lines.push(`server-name: ${JSON.stringify(c.serverName)}`);
  return lines.join('\n') + '\n';
}
