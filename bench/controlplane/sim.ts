// bench/controlplane: many simulated remote clusters on a few etcd processes.
//
// 254 etcd processes do not fit a 2-core machine, so (as Cilium's own scale test
// serves many clusters from one mock) each etcd here holds the keyspaces of
// several clusters, each under its own namespace `sim/<cluster>/`. What the
// importer sees per cluster is what it would see of a real remote: its own
// connection (TLS, HTTP/2), its own etcd user `remote-<cluster>` whose role
// reads only that cluster's exported prefixes, the cluster's keys under the
// usual paths (the namespace is added and removed by NamespacedKvClient, a
// thin wrapper of the agent's KvClient), its canaries and cluster-config.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { startMeshEtcd } from '../../src/clustermesh/etcd.ts';
import { clusterConfigKey, exportedReadPrefixes, identityKey, ipKey, nodeKey, serviceKey, syncedKey, SYNCED_PREFIX_NAMES } from '../../src/clustermesh/keys.ts';
import { formatRemoteClusterConfig } from '../../src/clustermesh/config.ts';
import { CLUSTER_LABEL_KEY, encodeClusterConfig, encodeIdentity, encodeIpEntry, encodeNode, encodeService, identityRange } from '../../src/clustermesh/wire.ts';
import { KvClient, type ListOptions, type WatchHandle } from '../../src/kvstore/client.ts';
import type { EtcdServer } from '../../src/kvstore/etcd-process.ts';
import type { KvConnectionConfig, KvPair, ListResult, WatchEvent } from '../../src/kvstore/types.ts';

/** The key namespace of a simulated cluster inside a shared etcd. */
export const simNamespace = (cluster: string): string => `sim/${cluster}/`;

/** The agent's KvClient, reading one cluster's keyspace inside a shared etcd. */
export class NamespacedKvClient extends KvClient {
  /** Calls made to the remotes' etcds by this process (get, list, put, watch), and clients made. */
  static requests = 0;
  static clients = 0;
  constructor(
    config: KvConnectionConfig,
    readonly ns: string,
  ) {
    super(config);
    NamespacedKvClient.clients++;
  }
  private strip(p: KvPair): KvPair {
    return { ...p, key: p.key.slice(this.ns.length) };
  }
  override async get(key: string): Promise<KvPair | undefined> {
    NamespacedKvClient.requests++;
    const p = await super.get(this.ns + key);
    return p && this.strip(p);
  }
  override async getWithRevision(key: string): Promise<{ pair: KvPair | undefined; revision: string }> {
    NamespacedKvClient.requests++;
    const r = await super.getWithRevision(this.ns + key);
    return { pair: r.pair && this.strip(r.pair), revision: r.revision };
  }
  override async list(prefix: string, opts?: ListOptions): Promise<ListResult> {
    NamespacedKvClient.requests++;
    const r = await super.list(this.ns + prefix, opts);
    return { pairs: r.pairs.map((p) => this.strip(p)), revision: r.revision };
  }
  override async put(key: string, value: string): Promise<string> {
    NamespacedKvClient.requests++;
    return await super.put(this.ns + key, value);
  }
  override watch(prefix: string, fromRevision: string, onEvent: (ev: WatchEvent) => void, onError: Parameters<KvClient['watch']>[3], opts?: { exact?: boolean }): WatchHandle {
    const n = this.ns.length;
    NamespacedKvClient.requests++;
    return super.watch(this.ns + prefix, fromRevision, (ev) => onEvent({ ...ev, key: ev.key.slice(n) }), onError, opts);
  }
}

export interface SimCluster {
  name: string;
  id: number;
  ns: string;
  /** Index into SimSpec.etcds. */
  etcd: number;
  configFile: string;
}
/** What the importer child needs: the clusters and, per etcd, a writer's connection. */
export interface SimSpec {
  clusters: SimCluster[];
  writers: KvConnectionConfig[];
}

/** Cluster c's addresses: node n at 172.16.c.n, its pods in 10.c.n.0/24 (100 per node). */
export const simNodeIp = (id: number, n: number): string => `172.${16 + (n >> 8)}.${id}.${n & 255}`;
export const simPodIp = (id: number, e: number): string => `10.${id}.${1 + Math.floor(e / 100)}.${1 + (e % 100)}`;

/** A remote cluster's exported state: nodes of 100 endpoints each (with pod CIDRs), 50 identities, 10 shared services. */
export function simDataset(name: string, id: number, endpoints: number, max: 255 | 511 = 255): Array<[string, string]> {
  const ident = (i: number): number => identityRange(id, max).min + i;
  const out: Array<[string, string]> = [[clusterConfigKey(name), encodeClusterConfig({ id, capabilities: { syncedCanaries: true, maxConnectedClusters: max } })]];
  const nodes = Math.ceil(endpoints / 100);
  for (let n = 1; n <= nodes; n++) {
    out.push([nodeKey(name, `node${n}`), encodeNode({ Name: `node${n}`, Cluster: name, ClusterID: id, IPAddresses: [{ Type: 'InternalIP', IP: simNodeIp(id, n) }], IPv4AllocCIDR: `10.${id}.${n}.0/24`, Labels: { 'kubernetes.io/hostname': `node${n}` } })]);
  }
  for (let i = 1; i <= 50; i++) {
    out.push([identityKey(ident(i)), encodeIdentity([{ source: 'k8s', key: 'app', value: `app${i}` }, { source: 'k8s', key: CLUSTER_LABEL_KEY, value: name }, { source: 'k8s', key: 'io.kubernetes.pod.namespace', value: 'default' }])]);
  }
  for (let e = 0; e < endpoints; e++) {
    const ip = simPodIp(id, e);
    out.push([ipKey(ip), encodeIpEntry({ IP: ip, Mask: null, HostIP: simNodeIp(id, 1 + Math.floor(e / 100)), ID: ident(1 + (e % 50)), Key: 0, K8sNamespace: 'default', K8sPodName: `pod-${e}` })]);
  }
  for (let s = 0; s < 10; s++) {
    const backends = Object.fromEntries(Array.from({ length: 10 }, (_, b) => [simPodIp(id, s * 10 + b), { http: { Protocol: 'TCP' as const, Port: 8080 } }]));
    out.push([serviceKey(name, 'default', `svc${s}`), encodeService({ cluster: name, namespace: 'default', name: `svc${s}`, frontends: { [`10.96.0.${s + 1}`]: { http: { Protocol: 'TCP', Port: 80 } } }, backends, labels: {}, selector: { app: `svc${s}` }, shared: true, includeExternal: true, clusterID: id })]);
  }
  for (const p of SYNCED_PREFIX_NAMES) out.push([syncedKey(name, p), new Date().toISOString()]);
  return out;
}

function rawClient(conn: KvConnectionConfig, certs: { ca: Buffer; cert: Buffer; key: Buffer }): Etcd3 {
  return new Etcd3({
    hosts: conn.endpoints,
    credentials: { rootCertificate: certs.ca, certChain: certs.cert, privateKey: certs.key },
    ...(conn.serverName !== undefined ? { grpcOptions: { 'grpc.ssl_target_name_override': conn.serverName } } : {}),
    defaultCallOptions: () => ({ deadline: Date.now() + 60_000 }),
  });
}

/**
 * Starts ceil(clusters / perEtcd) etcds under `root`, writes every cluster's
 * data set (transactions of 128 puts), and one config file per cluster in
 * `configDir`. Returns the spec and the servers (stop them).
 */
export async function startSimulation(opts: { root: string; configDir: string; clusters: number; endpoints: number; perEtcd: number; log?: (s: string) => void }): Promise<{ spec: SimSpec; servers: EtcdServer[] }> {
  const { readFile } = await import('node:fs/promises');
  const servers: EtcdServer[] = [];
  const spec: SimSpec = { clusters: [], writers: [] };
  await mkdir(opts.configDir, { recursive: true });
  const etcds = Math.ceil(opts.clusters / opts.perEtcd);
  try {
    for (let k = 0; k < etcds; k++) {
      const names: Array<{ name: string; id: number }> = [];
      for (let i = k * opts.perEtcd; i < Math.min(opts.clusters, (k + 1) * opts.perEtcd); i++) names.push({ name: `sim-${i + 1}`, id: i + 1 });
      const roles: Record<string, { permission: 'Read' | 'Readwrite'; key: string }[]> = { apiserver: [{ permission: 'Readwrite', key: 'sim/' }] };
      for (const c of names) roles[`remote-${c.name}`] = exportedReadPrefixes.map((p) => ({ permission: 'Read' as const, key: simNamespace(c.name) + p }));
      const etcd = await startMeshEtcd({ dir: join(opts.root, `etcd-${k}`), name: `sim-etcd-${k}`, clusterName: `sim-etcd-${k}`, roles, electionMs: 1000, heartbeatMs: 100 });
      servers.push(etcd);
      const writer = etcd.connection('apiserver', { timeoutMs: 60_000 });
      spec.writers.push(writer);
      const client = rawClient(writer, { ca: await readFile(writer.caFile), cert: await readFile(writer.certFile), key: await readFile(writer.keyFile) });
      try {
        for (const c of names) {
          const ns = simNamespace(c.name);
          const pairs = simDataset(c.name, c.id, opts.endpoints);
          const batches: Array<Array<[string, string]>> = [];
          for (let i = 0; i < pairs.length; i += 128) batches.push(pairs.slice(i, i + 128));
          // canaries last: a remote is complete when they appear
          const canaries = batches.pop()!;
          await Promise.all(batches.map((b) => client.kv.txn({ success: b.map(([key, value]) => ({ request_put: { key: Buffer.from(ns + key), value: Buffer.from(value) } })) })));
          await client.kv.txn({ success: canaries.map(([key, value]) => ({ request_put: { key: Buffer.from(ns + key), value: Buffer.from(value) } })) });
          const conn = etcd.connection(`remote-${c.name}`);
          const configFile = join(opts.configDir, c.name);
          await writeFile(configFile, formatRemoteClusterConfig({ endpoints: conn.endpoints, caFile: conn.caFile, certFile: conn.certFile, keyFile: conn.keyFile, ...(conn.serverName !== undefined ? { serverName: conn.serverName } : {}) }));
          spec.clusters.push({ name: c.name, id: c.id, ns, etcd: k, configFile });
        }
      } finally {
        client.close();
      }
      opts.log?.(`sim: etcd ${k + 1}/${etcds} up with ${names.length} clusters`);
    }
  } catch (err) {
    await Promise.all(servers.map((s) => s.stop(2000).catch(() => {})));
    throw err;
  }
  return { spec, servers };
}
