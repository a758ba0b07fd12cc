// Test helpers for clustermesh: a "remote cluster" = a real etcd with mutual TLS
// and auth, written in wire format with the `apiserver` user, plus the config
// file an importer uses to reach it with the read-only `remote` user.

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KvClient } from '../kvstore/client.ts';
import type { EtcdOptions, EtcdServer } from '../kvstore/etcd-process.ts';
import { startMeshEtcd as startEtcd } from './etcd.ts';
import type { CertFiles } from '../kvstore/pki.ts';
import { formatRemoteClusterConfig } from './config.ts';
import { clusterConfigKey, identityKey, ipKey, nodeKey, serviceKey, syncedKey, SYNCED_PREFIX_NAMES } from './keys.ts';
import type { Logger } from './remote-cluster.ts';
import {
  CLUSTER_LABEL_KEY,
  encodeClusterConfig,
  encodeIdentity,
  encodeIpEntry,
  encodeNode,
  encodeService,
  identityRange,
  type Label,
  type MaxConnectedClusters,
} from './wire.ts';

export async function tempDir(tag: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `cm-${tag}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A remote cluster's mesh etcd and a writer for it. */
export class TestCluster {
  writer: KvClient;
  private constructor(
    readonly name: string,
    public id: number,
    readonly etcd: EtcdServer,
    readonly max: MaxConnectedClusters,
  ) {
    this.writer = new KvClient(etcd.connection('apiserver', { timeoutMs: 3000 }));
  }

  static async start(root: string, name: string, id: number, opts: Partial<EtcdOptions> & { max?: MaxConnectedClusters } = {}): Promise<TestCluster> {
    const { max, ...etcdOpts } = opts;
    const etcd = await startEtcd({ dir: join(root, `etcd-${name}`), name, clusterName: name, ...etcdOpts });
    return new TestCluster(name, id, etcd, max ?? 255);
  }

  /** A fresh writer (after etcd restarts). */
  async reconnectWriter(): Promise<void> {
    await this.writer.close().catch(() => {});
    this.writer = new KvClient(this.etcd.connection('apiserver', { timeoutMs: 3000 }));
  }

  identity(n: number): number {
    return identityRange(this.id, this.max).min + n;
  }

  labels(app: string, cluster = this.name): Label[] {
    return [
      { source: 'k8s', key: 'app', value: app },
      { source: 'k8s', key: CLUSTER_LABEL_KEY, value: cluster },
      { source: 'k8s', key: 'io.kubernetes.pod.namespace', value: 'default' },
    ];
  }

  nodeIp(n: number): string {
    return `10.${this.id}.0.${n}`;
  }
  podIp(node: number, n: number): string {
    return `10.${100 + this.id}.${node}.${n}`;
  }

  async publishConfig(id = this.id, max = this.max): Promise<void> {
    await this.writer.put(clusterConfigKey(this.name), encodeClusterConfig({ id, capabilities: { syncedCanaries: true, maxConnectedClusters: max } }));
  }
  async canaries(): Promise<void> {
    for (const p of SYNCED_PREFIX_NAMES) await this.writer.put(syncedKey(this.name, p), new Date().toISOString());
  }
  async putNode(n: number, labels: Record<string, string> = {}): Promise<void> {
    const name = `node${n}`;
    await this.writer.put(
      nodeKey(this.name, name),
      encodeNode({
        Name: name,
        Cluster: this.name,
        ClusterID: this.id,
        IPAddresses: [{ Type: 'InternalIP', IP: this.nodeIp(n) }],
        IPv4AllocCIDR: `10.${100 + this.id}.${n}.0/24`,
        Labels: labels,
      }),
    );
  }
  /** A node with any address and pod CIDR (a remote that lies, or overlaps). */
  async putNodeAs(name: string, ip: string, cidr: string | null): Promise<void> {
    await this.writer.put(nodeKey(this.name, name), encodeNode({ Name: name, Cluster: this.name, ClusterID: this.id, IPAddresses: [{ Type: 'InternalIP', IP: ip }], IPv4AllocCIDR: cidr, Labels: {} }));
  }
  /** An endpoint entry for any IP, reached through `hostIP`. */
  async putIpAs(ip: string, hostIP: string, identity: number): Promise<void> {
    await this.writer.put(ipKey(ip), encodeIpEntry({ IP: ip, Mask: null, HostIP: hostIP, ID: this.identity(identity), Key: 0, K8sNamespace: 'default', K8sPodName: `pod-${ip}` }));
  }
  async putIdentity(n: number, app = `app${n}`): Promise<void> {
    await this.writer.put(identityKey(this.identity(n)), encodeIdentity(this.labels(app)));
  }
  async putIp(node: number, n: number, identity: number): Promise<void> {
    const ip = this.podIp(node, n);
    await this.writer.put(
      ipKey(ip),
      encodeIpEntry({ IP: ip, Mask: null, HostIP: this.nodeIp(node), ID: this.identity(identity), Key: 0, K8sNamespace: 'default', K8sPodName: `pod-${node}-${n}` }),
    );
  }
  async putService(name: string, backends: string[], shared = true): Promise<void> {
    await this.writer.put(
      serviceKey(this.name, 'default', name),
      encodeService({
        cluster: this.name,
        namespace: 'default',
        name,
        frontends: { '10.96.0.10': { http: { Protocol: 'TCP', Port: 80 } } },
        backends: Object.fromEntries(backends.map((b) => [b, { http: { Protocol: 'TCP' as const, Port: 8080 } }])),
        labels: {},
        selector: { app: name },
        shared,
        includeExternal: true,
        clusterID: this.id,
      }),
    );
  }

  /** A small standard data set: 2 nodes, 2 identities, 3 endpoints, 1 service; then canaries. */
  async seed(): Promise<void> {
    await this.publishConfig();
    await this.putNode(1);
    await this.putNode(2);
    await this.putIdentity(1);
    await this.putIdentity(2);
    await this.putIp(1, 1, 1);
    await this.putIp(1, 2, 2);
    await this.putIp(2, 1, 1);
    await this.putService('echo', [this.podIp(1, 1), this.podIp(2, 1)]);
    await this.canaries();
  }

  /** Writes `<dir>/<name>` so an importer reaches this cluster as `user` (default `remote`). */
  async writeConfigFile(dir: string, opts: { user?: string; certs?: CertFiles; serverName?: string; fileName?: string } = {}): Promise<string> {
    const user = opts.user ?? 'remote';
    const certs = opts.certs ?? (await this.etcd.clientCert(user));
    const file = join(dir, opts.fileName ?? this.name);
    await writeFile(
      file,
      formatRemoteClusterConfig({
        endpoints: [this.etcd.endpoint],
        caFile: this.etcd.caFile,
        certFile: certs.certFile,
        keyFile: certs.keyFile,
        ...(opts.serverName !== undefined ? { serverName: opts.serverName } : {}),
      }),
    );
    return file;
  }

  async close(): Promise<void> {
    await this.writer.close().catch(() => {});
    await this.etcd.stop(2000).catch(() => {});
  }
}

/** Logger that records warnings and errors. */
export function recordingLogger(): Logger & { records: { level: string; obj: Record<string, unknown>; msg: string | undefined }[] } {
  const records: { level: string; obj: Record<string, unknown>; msg: string | undefined }[] = [];
  const rec = (level: string) => (obj: object, msg?: string) => void records.push({ level, obj: obj as Record<string, unknown>, msg });
  return { records, debug: () => {}, info: () => {}, warn: rec('warn'), error: rec('error') };
}

/** Polls `cond` until true (real time). */
export async function eventually(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
