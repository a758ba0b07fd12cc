// Options of `clustermesh apiserver`, compiled once into a fully-defaulted
// config. Every error names the option (or the file and field) that is wrong.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import type { KvConnectionConfig } from '../kvstore/types.ts';
import { parseListenAddress } from '../util/metrics.ts';
import { OptionError } from './option-error.ts';
import { formatPath, validateClusterId, validateClusterName, type MaxConnectedClusters } from '../model/index.ts';

export interface ApiserverConfig {
  clusterName: string;
  clusterId: number;
  maxConnectedClusters: MaxConnectedClusters;
  /** Path of the etcd client config file. */
  etcdConfigFile: string;
  /** How often `cilium/.heartbeat` is rewritten. */
  heartbeatIntervalMs: number;
  /**
   * TTL of the lease the exported keys live on. Long (default 15 min, Cilium's
   * kvstore-lease-ttl): the keys must outlive a killed apiserver until its
   * successor has rewritten them (onto its own lease; what went away meanwhile
   * it prunes at once), or every remote deletes the cluster's live pods in between.
   */
  sessionTtlSeconds: number;
  /** How often unreferenced identities are looked for, and how long they must stay unused. */
  identityGcIntervalMs: number;
  identityGcGraceMs: number;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
  /** host:port of the Prometheus endpoint (GET /metrics); '' = none. */
  metricsAddress: string;
  /** Kubeconfig of the cluster's Kubernetes API: the source of every kind but Endpoint (those stay in etcd); undefined = KUBECONFIG, the in-cluster service account or ~/.kube/config. */
  kubeconfig?: string | undefined;
  /**
   * One file per remote cluster (the agents' layout): the
   * MCS-API controller reads the other clusters' ServiceExports through these
   * (issue 18); undefined = only this cluster's own exports are merged.
   */
  clustermeshConfigDir?: string | undefined;
  /**
   * The cache tier (Cilium's KVStoreMesh): import every remote of
   * clustermeshConfigDir once and write it into this cluster's etcd under
   * cilium/cache/, for agents with clustermeshCache (src/apiserver/kvstoremesh.ts).
   */
  kvstoremesh?: boolean;
}

/** What the command line hands over (commander's camel-cased option values). */
export interface ApiserverRawOptions {
  clusterName?: unknown;
  clusterId?: unknown;
  maxConnectedClusters?: unknown;
  etcdConfig?: unknown;
  heartbeatInterval?: unknown;
  sessionTtl?: unknown;
  identityGcInterval?: unknown;
  identityGcGrace?: unknown;
  logLevel?: unknown;
  metricsAddress?: unknown;
  kubeconfig?: unknown;
  clustermeshConfigDir?: unknown;
  kvstoremesh?: unknown;
}

export { OptionError };

export const APISERVER_DEFAULTS = {
  maxConnectedClusters: 255 as MaxConnectedClusters,
  heartbeatIntervalMs: 15_000,
  /** 15 min, as Cilium's kvstore-lease-ttl: longer than any restart (see ApiserverConfig.sessionTtlSeconds). */
  sessionTtlSeconds: 900,
  identityGcIntervalMs: 60_000,
  identityGcGraceMs: 5 * 60_000,
  logLevel: 'info' as const,
  /** Next to the agent's 9962, so both fit one network namespace. */
  metricsAddress: '127.0.0.1:9963',
};

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

/** `250ms`, `15s`, `5m`, `1h`, or a plain number of milliseconds. */
export function parseDuration(option: string, value: unknown): number {
  if (typeof value === 'number' && Number.isFinite(value) && value > 0) return value;
  const s = String(value).trim();
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s);
  if (!m) throw new OptionError(option, `${JSON.stringify(s)} is not a duration (e.g. 500ms, 15s, 5m)`);
  const n = Number(m[1]) * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const)[(m[2] ?? 'ms') as 'ms' | 's' | 'm' | 'h'];
  if (!(n > 0)) throw new OptionError(option, 'must be greater than zero');
  return n;
}

function parseInteger(option: string, value: unknown): number {
  const s = String(value).trim();
  if (!/^\d+$/.test(s)) throw new OptionError(option, `${JSON.stringify(s)} is not a non-negative integer`);
  return Number(s);
}

function required(option: string, value: unknown): string {
  if (value === undefined || value === null || value === '' || value === true) throw new OptionError(option, 'is required');
  return String(value);
}

/** Checks and defaults the options; throws OptionError naming the first bad option. */
export function compileApiserverOptions(raw: ApiserverRawOptions): ApiserverConfig {
  const clusterName = required('--cluster-name', raw.clusterName);
  const nameProblem = validateClusterName(clusterName);
  if (nameProblem) throw new OptionError('--cluster-name', nameProblem);

  let maxConnectedClusters = APISERVER_DEFAULTS.maxConnectedClusters;
  if (raw.maxConnectedClusters !== undefined) {
    const n = parseInteger('--max-connected-clusters', raw.maxConnectedClusters);
    if (n !== 255 && n !== 511) throw new OptionError('--max-connected-clusters', `must be 255 or 511, got ${n}`);
    maxConnectedClusters = n;
  }
  const clusterId = parseInteger('--cluster-id', required('--cluster-id', raw.clusterId));
  const idProblem = validateClusterId(clusterId, maxConnectedClusters);
  if (idProblem) throw new OptionError('--cluster-id', idProblem);
  if (clusterId === 0) throw new OptionError('--cluster-id', 'cluster ID 0 means "not meshed"; a cluster that exports to a mesh needs 1..' + maxConnectedClusters);

  const etcdConfigFile = resolve(required('--etcd-config', raw.etcdConfig));

  const sessionTtlSeconds = raw.sessionTtl === undefined ? APISERVER_DEFAULTS.sessionTtlSeconds : parseInteger('--session-ttl', raw.sessionTtl);
  if (sessionTtlSeconds < 5) throw new OptionError('--session-ttl', 'must be at least 5 seconds');
  const heartbeatIntervalMs = raw.heartbeatInterval === undefined ? APISERVER_DEFAULTS.heartbeatIntervalMs : parseDuration('--heartbeat-interval', raw.heartbeatInterval);
  const identityGcIntervalMs = raw.identityGcInterval === undefined ? APISERVER_DEFAULTS.identityGcIntervalMs : parseDuration('--identity-gc-interval', raw.identityGcInterval);
  const identityGcGraceMs = raw.identityGcGrace === undefined ? APISERVER_DEFAULTS.identityGcGraceMs : parseDuration('--identity-gc-grace', raw.identityGcGrace);

  let logLevel: ApiserverConfig['logLevel'] = APISERVER_DEFAULTS.logLevel;
  if (raw.logLevel !== undefined) {
    const l = String(raw.logLevel);
    if (!(LOG_LEVELS as readonly string[]).includes(l)) throw new OptionError('--log-level', `must be one of ${LOG_LEVELS.join(', ')}`);
    logLevel = l as ApiserverConfig['logLevel'];
  }
  let metricsAddress = APISERVER_DEFAULTS.metricsAddress;
  if (raw.metricsAddress !== undefined) {
    metricsAddress = String(raw.metricsAddress);
    if (metricsAddress !== '') {
      try {
        parseListenAddress(metricsAddress);
      } catch (err) {
        throw new OptionError('--metrics-address', `${(err as Error).message}, or '' for no metrics endpoint`);
      }
    }
  }
  let kubeconfig: string | undefined;
  if (raw.kubeconfig !== undefined) {
    kubeconfig = resolve(required('--kubeconfig', raw.kubeconfig));
    if (!existsSync(kubeconfig)) throw new OptionError('--kubeconfig', `${kubeconfig}: no such file`);
  }
  const kvstoremesh = raw.kvstoremesh === true || raw.kvstoremesh === 'true';
  if (raw.kvstoremesh !== undefined && typeof raw.kvstoremesh !== 'boolean' && raw.kvstoremesh !== 'true' && raw.kvstoremesh !== 'false') throw new OptionError('--kvstoremesh', `${JSON.stringify(raw.kvstoremesh)} is not true or false`);
  if (kvstoremesh && raw.clustermeshConfigDir === undefined) throw new OptionError('--kvstoremesh', 'needs --clustermesh-config-dir (the remotes to cache)');
  let clustermeshConfigDir: string | undefined;
  if (raw.clustermeshConfigDir !== undefined) {
    // No --kubeconfig is fine: the apiserver then reads its cluster's API through KUBECONFIG or its service account
    // (an installed apiserver), and its MCS controller reads the remotes' ServiceExports with it.
    clustermeshConfigDir = resolve(required('--clustermesh-config-dir', raw.clustermeshConfigDir));
  }
  return {
    ...(kubeconfig !== undefined ? { kubeconfig } : {}),
    ...(clustermeshConfigDir !== undefined ? { clustermeshConfigDir } : {}),
    clusterName,
    clusterId,
    maxConnectedClusters,
    etcdConfigFile,
    heartbeatIntervalMs,
    sessionTtlSeconds,
    identityGcIntervalMs,
    identityGcGraceMs,
    logLevel,
    metricsAddress,
    kvstoremesh,
  };
}

const etcdConfigSchema = (allowUnixSocket: boolean) => z.strictObject({
  endpoints: z
    .array(
      allowUnixSocket
        ? z.string().regex(/^(https:\/\/[^/\s]+\/?|unix:\/\/\/\S+)$/, 'must be https://host:port or unix:///path/to/socket (TLS either way)')
        : z.string().regex(/^https:\/\/[^/\s]+\/?$/, 'must be https://host:port (mutual TLS is required)'),
    )
    .min(1, 'at least one endpoint is required'),
  'trusted-ca-file': z.string().min(1),
  'cert-file': z.string().min(1),
  'key-file': z.string().min(1),
  'server-name': z.string().min(1).optional(),
  'timeout-ms': z.number().int().positive().optional(),
});

/**
 * Reads the cluster's etcd client config (YAML, etcd's client config shape:
 * endpoints, trusted-ca-file, cert-file, key-file, optional server-name).
 * Relative paths resolve against the file's directory; the three files must
 * exist. `allowUnixSocket`: an endpoint may also be etcd's TLS unix socket
 * (unix:///path), which the lab's pods use to reach their cluster's etcd.
 */
export async function loadEtcdConfig(file: string, opts: { allowUnixSocket?: boolean; flag?: string } = {}): Promise<KvConnectionConfig> {
  const option = `${opts.flag ?? '--etcd-config'} ${file}`;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new OptionError(option, `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new OptionError(option, `not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const r = etcdConfigSchema(opts.allowUnixSocket === true).safeParse(doc ?? {});
  if (!r.success) {
    const i = r.error.issues[0]!;
    const field = i.code === 'unrecognized_keys' ? i.keys.join(', ') : formatPath(i.path);
    throw new OptionError(`${option}: field ${field || '(root)'}`, i.code === 'unrecognized_keys' ? 'unknown field' : i.message);
  }
  const base = dirname(resolve(file));
  const c = r.data;
  const conn: KvConnectionConfig = {
    endpoints: c.endpoints.map((e) => e.replace(/\/$/, '')),
    caFile: resolve(base, c['trusted-ca-file']),
    certFile: resolve(base, c['cert-file']),
    keyFile: resolve(base, c['key-file']),
    ...(c['server-name'] !== undefined ? { serverName: c['server-name'] } : {}),
    ...(c['timeout-ms'] !== undefined ? { timeoutMs: c['timeout-ms'] } : {}),
  };
  for (const [field, path] of [['trusted-ca-file', conn.caFile], ['cert-file', conn.certFile], ['key-file', conn.keyFile]] as const) {
    if (!existsSync(path)) throw new OptionError(`${option}: field ${field}`, `${path} does not exist`);
  }
  return conn;
}
