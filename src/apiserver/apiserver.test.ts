// Integration: the apiserver against a real etcd (TLS + auth). The "cluster"
// is filled through the store source's writer; an agent-side allocator gives
// endpoints their identities, as agents do.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import {
  clusterConfigKey,
  exportedReadPrefixes,
  heartbeatKey,
  identityKey,
  ipKey,
  ipPrefix,
  nodeKey,
  serviceKey,
  syncedKey,
  SYNCED_PREFIX_NAMES,
} from '../clustermesh/keys.ts';
import { decodeClusterConfig, decodeIdentity, decodeIpEntry, decodeNode, decodeService, type WireSource } from '../clustermesh/wire.ts';
import { IdentityAllocator } from '../identity/allocator.ts';
import { identityRefKey } from '../identity/keys.ts';
import { labelString, podIdentityLabels } from '../identity/labels.ts';
import { KvClient } from '../kvstore/client.ts';
import type { EtcdServer } from '../kvstore/etcd-process.ts';
import { startMeshEtcd as startEtcd } from '../clustermesh/etcd.ts';
import type { KvPair } from '../kvstore/types.ts';
import { parseObject } from '../model/index.ts';
import { kubeConfigFor, startControllers, type RunningControllers } from '../lab/controllers/index.ts';
import { startKubeApi, type KubeApiServer } from '../lab/kube-api/index.ts';
import { KubeObjects } from '../lab/kube-objects.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import type { KubeKind } from '../sources/kubernetes/kinds.ts';
import { EndpointWriter } from '../sources/index.ts';
import type { ObjectRef } from '../sources/types.ts';
import { APISERVER_IDENTITY_USER, startApiserver, type Apiserver } from './apiserver.ts';
import { APISERVER_DEFAULTS, type ApiserverConfig } from './options.ts';

const CLUSTER = 'c1';
const src: WireSource = { cluster: CLUSTER, clusterId: 1, maxConnectedClusters: 255 };
const GLOBAL = { 'service.cilium.io/global': 'true' };

const nsObj = { kind: 'Namespace', metadata: { name: 'default', labels: { env: 'prod' } } };
const nodeObj = (n: number) => ({
  kind: 'Node',
  metadata: { name: `node${n}`, labels: { 'kubernetes.io/hostname': `node${n}` } },
  spec: { podCIDR: `10.101.${n}.0/24` },
  status: { addresses: [{ type: 'InternalIP', address: `10.1.0.${n}` }, { type: 'Hostname', address: `node${n}` }] },
});
const podObj = (name: string, app: string, node: number, ip: string, ready = true) => ({
  kind: 'Pod',
  metadata: { name, namespace: 'default', labels: { app } },
  spec: { nodeName: `node${node}`, containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }] }] },
  status: { phase: 'Running', podIP: ip, conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }] },
});
const SVC_IPS: Record<string, string> = { echo: '10.96.0.10', legacy: '10.96.0.11', noshare: '10.96.0.12', local: '10.96.0.13' };
const svcObj = (name: string, annotations: Record<string, string>) => ({
  kind: 'Service',
  metadata: { name, namespace: 'default', annotations },
  spec: { clusterIP: SVC_IPS[name] ?? '10.96.0.20', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'http' }] },
});

/**
 * A cluster as the apiserver reads it: Kubernetes objects in its Kubernetes API
 * (the lab's server and EndpointSlice controller, in this process, over the
 * cluster's etcd), Endpoint objects (mesh state, an agent's) in the etcd.
 */
class TestClusterApi {
  private constructor(
    readonly kube: KubeObjects,
    readonly kubeconfig: string,
    private readonly endpoints: EndpointWriter,
    private readonly stopAll: () => Promise<void>,
  ) {}

  static async start(etcd: EtcdServer, dir: string, endpointsKv: KvClient): Promise<TestClusterApi> {
    const kv = new KvClient(etcd.connection('root', { timeoutMs: 5000 }));
    const { server, pki, kubeconfig } = await startKubeApi({ kv, dir, clusterName: CLUSTER });
    const controllers: RunningControllers = await startControllers(kubeConfigFor(server.url, { caFile: pki.ca.certFile, certFile: pki.admin.certFile, keyFile: pki.admin.keyFile }));
    const stop = async (s: KubeApiServer): Promise<void> => {
      await controllers.stop();
      await s.stop();
      await kv.close();
    };
    return new TestClusterApi(new KubeObjects(loadKubeConnection({ kubeconfig }).kubeConfig), kubeconfig, new EndpointWriter(endpointsKv), () => stop(server));
  }

  async apply(o: { kind: string; [k: string]: unknown }): Promise<void> {
    if (o.kind === 'Endpoint') await this.endpoints.apply(o);
    else await this.kube.apply(o);
  }

  async applyAll(objs: Array<{ kind: string; [k: string]: unknown }>): Promise<void> {
    for (const o of objs) await this.apply(o);
  }

  async delete(kind: string, ref: ObjectRef): Promise<void> {
    if (kind === 'Endpoint') await this.endpoints.delete(ref);
    else await this.kube.delete(kind, ref);
  }

  get<K extends KubeKind>(kind: K, ref: ObjectRef) {
    return this.kube.get(kind, ref);
  }

  stop(): Promise<void> {
    return this.stopAll();
  }
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, rej) => (t = setTimeout(() => rej(new Error(`timed out: ${what}`)), ms)))]);
  } finally {
    clearTimeout(t);
  }
}

describe('apiserver (real etcd, the Kubernetes API)', () => {
  let dir: string;
  let etcd: EtcdServer;
  const clients: KvClient[] = [];
  const servers: Apiserver[] = [];
  let writer: TestClusterApi;
  let reader: KvClient;
  /** The apiserver's own view, for keys a remote may not read. */
  let owner: KvClient;
  let agentAlloc: IdentityAllocator;
  const client = (user: string): KvClient => {
    const c = new KvClient(etcd.connection(user));
    clients.push(c);
    return c;
  };
  const cfg = (): ApiserverConfig => ({
    clusterName: CLUSTER,
    clusterId: 1,
    maxConnectedClusters: 255,
    etcdConfigFile: '/unused',
    kubeconfig: writer.kubeconfig,
    heartbeatIntervalMs: 200,
    sessionTtlSeconds: 5,
    identityGcIntervalMs: 3_600_000,
    identityGcGraceMs: 3_600_000,
    logLevel: 'silent',
    metricsAddress: '127.0.0.1:0',
  });
  const start = async (o: Partial<ApiserverConfig> = {}): Promise<Apiserver> => {
    const s = await startApiserver({ ...cfg(), ...o }, { connection: etcd.connection('apiserver'), logger: pino({ level: 'silent' }) });
    servers.push(s);
    await withTimeout(s.ready, 20_000, 'apiserver ready');
    return s;
  };
  /** An agent's part: allocate the pod's identity and publish its Endpoint. */
  const publishEndpoint = async (name: string, node: number): Promise<number> => {
    const pod = await writer.get('Pod', { namespace: 'default', name });
    const ns = await writer.get('Namespace', { name: 'default' });
    const { id } = await agentAlloc.allocate(podIdentityLabels(CLUSTER, pod!, ns));
    await writer.apply({
      kind: 'Endpoint',
      metadata: { name, namespace: 'default', labels: pod!.metadata.labels },
      status: { identity: { id }, networking: { podIP: pod!.status.podIP, nodeName: `node${node}`, nodeIP: `10.1.0.${node}` } },
    });
    return id;
  };
  /** Everything a remote cluster can read, key → pair. */
  const exported = async (): Promise<Map<string, KvPair>> => {
    const out = new Map<string, KvPair>();
    // Every entry is a prefix (the heartbeat and the identities' `.../v1/id` without a trailing '/').
    for (const prefix of exportedReadPrefixes) for (const p of (await reader.list(prefix)).pairs) out.set(p.key, p);
    return out;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cm-apiserver-'));
    etcd = await startEtcd({ dir, name: 'apiserver-test' });
    writer = await TestClusterApi.start(etcd, join(dir, 'kube-api'), client('apiserver'));
    reader = client('remote');
    owner = client('apiserver');
    agentAlloc = new IdentityAllocator({ kv: client('agent'), cluster: CLUSTER, clusterId: 1, user: 'node1' });
  });
  after(async () => {
    try {
      for (const s of servers) await s.stop();
      await writer?.stop();
      await agentAlloc.close();
      await Promise.all(clients.map((c) => c.close({ revokeSession: true })));
    } finally {
      await etcd.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('exports cluster-config, nodes, identities, endpoint IPs and global services in the wire format', async () => {
    await writer.applyAll([
      nsObj,
      nodeObj(1),
      nodeObj(2),
      podObj('web-1', 'web', 1, '10.101.1.5'),
      podObj('web-2', 'web', 2, '10.101.2.5'),
      podObj('web-3', 'web', 2, '10.101.2.6', false),
      podObj('db-1', 'db', 1, '10.101.1.9'),
      svcObj('echo', GLOBAL),
      svcObj('legacy', { 'io.cilium/global-service': 'true' }),
      svcObj('noshare', { ...GLOBAL, 'service.cilium.io/shared': 'false' }),
      svcObj('local', {}),
    ]);
    const webId = await publishEndpoint('web-1', 1);
    assert.equal(await publishEndpoint('web-2', 2), webId);
    const dbId = await publishEndpoint('db-1', 1);

    const server = await start();
    const kv = await exported();
    const val = (k: string) => kv.get(k)?.value;

    // From the Kubernetes API the apiserver runs the MCS controller: it advertises ServiceExports (issue 18).
    assert.equal(val(clusterConfigKey(CLUSTER)), '{"id":1,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":true}}');
    assert.ok(decodeClusterConfig(CLUSTER, clusterConfigKey(CLUSTER), val(clusterConfigKey(CLUSTER))!).ok);
    assert.equal(
      val(nodeKey(CLUSTER, 'node1')),
      '{"Name":"node1","Cluster":"c1","IPAddresses":[{"Type":"InternalIP","IP":"10.1.0.1"}],"IPv4AllocCIDR":{"IP":"10.101.1.0","Mask":"////AA=="},' +
        '"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"",' +
        '"ClusterID":1,"Source":"custom-resource","EncryptionKey":0,"Labels":{"kubernetes.io/hostname":"node1"},"Annotations":null,"WireguardPubKey":"","BootID":""}',
    );
    assert.ok(decodeNode(src, nodeKey(CLUSTER, 'node2'), val(nodeKey(CLUSTER, 'node2'))!).ok);

    // Identities: the apiserver's numbers are the agent's (same labels, same number), in c1's range.
    assert.ok(webId >= 65536 && webId < 131072);
    assert.equal(
      val(identityKey(webId)),
      'k8s:app=web;k8s:io.cilium.k8s.namespace.labels.env=prod;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.cilium.k8s.policy.serviceaccount=default;k8s:io.kubernetes.pod.namespace=default;',
    );
    assert.ok(decodeIdentity(src, identityKey(dbId), val(identityKey(dbId))!).ok);
    const ids = [...kv.keys()].filter((k) => k.startsWith('cilium/state/identities/v1/id/'));
    assert.deepEqual(ids.sort(), [identityKey(webId), identityKey(dbId)].sort(), 'one identity per label set');
    assert.ok(!kv.has(identityRefKey(webId, APISERVER_IDENTITY_USER)), 'reference keys are not exported');
    assert.ok(await owner.get(identityRefKey(webId, APISERVER_IDENTITY_USER)), 'the apiserver holds a reference');

    assert.equal(
      val(ipKey('10.101.2.5')),
      `{"IP":"10.101.2.5","HostIP":"10.1.0.2","ID":${webId},"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"web-2","K8sServiceAccount":"default",` +
        '"NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"}]}',
    );
    assert.ok(decodeIpEntry(src, ipKey('10.101.1.9'), val(ipKey('10.101.1.9'))!).ok);
    assert.equal([...kv.keys()].filter((k) => k.startsWith('cilium/state/ip/')).length, 3);

    assert.equal(
      val(serviceKey(CLUSTER, 'default', 'echo')),
      '{"cluster":"c1","namespace":"default","name":"echo","frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},' +
        '"backends":{"10.101.1.5":{"http":{"Protocol":"TCP","Port":8080}},"10.101.2.5":{"http":{"Protocol":"TCP","Port":8080}}},' +
        '"labels":{},"selector":{"app":"web"},"includeExternal":true,"shared":true,"clusterID":1}',
    );
    assert.ok(kv.has(serviceKey(CLUSTER, 'default', 'legacy')), 'legacy annotation');
    assert.equal(kv.has(serviceKey(CLUSTER, 'default', 'local')), false, 'not global, not exported');
    assert.equal(kv.has(serviceKey(CLUSTER, 'default', 'noshare')), false, 'shared "false": not exported (as Cilium)');

    for (const p of SYNCED_PREFIX_NAMES) assert.match(val(syncedKey(CLUSTER, p)) ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, `canary ${p}`);
    const beat = val(heartbeatKey);
    assert.match(beat ?? '', /^\d{4}-\d\d-\d\dT/);

    // Owned keys live on the apiserver's lease; identities do not (they are shared).
    const lease = kv.get(clusterConfigKey(CLUSTER))!.lease;
    assert.notEqual(lease, '0');
    for (const k of [nodeKey(CLUSTER, 'node1'), ipKey('10.101.1.5'), serviceKey(CLUSTER, 'default', 'echo'), syncedKey(CLUSTER, 'ip'), heartbeatKey])
      assert.equal(kv.get(k)?.lease, lease, k);
    assert.equal(kv.get(identityKey(webId))?.lease, '0');
    assert.equal(server.status().synced, true);

    // Its metrics endpoint: objects per kind, kvstore writes, synced canaries, the etcd link.
    const res = await fetch(`http://${server.metricsAddress}/metrics`);
    assert.equal(res.status, 200);
    const text = await res.text();
    for (const line of [
      'clustermesh_apiserver_exported_objects{kind="nodes"} 2',
      'clustermesh_apiserver_exported_objects{kind="ip"} 3',
      'clustermesh_apiserver_exported_objects{kind="services"} 2',
      'clustermesh_apiserver_exported_objects{kind="identities"} 2',
      'clustermesh_apiserver_synced{prefix="ip"} 1',
      'clustermesh_apiserver_kvstore_connected 1',
      'clustermesh_apiserver_export_errors_total{kind="nodes"} 0',
      'clustermesh_apiserver_phase{phase="ready"} 1',
      'clustermesh_apiserver_phase{phase="exporting"} 0',
    ])
      assert.ok(text.includes(`\n${line}\n`), `${line} in:\n${text}`);
    assert.match(text, /\nclustermesh_apiserver_kvstore_operations_total\{prefix="ip",operation="put"\} [1-9]/);
    assert.match(text, /\nclustermesh_apiserver_heartbeats_total [1-9]/);
  });

  it('follows changes: deletes remove keys, readiness and sharing change backends', async () => {
    const echo = serviceKey(CLUSTER, 'default', 'echo');
    const backends = async () => Object.keys(JSON.parse((await reader.get(echo))?.value ?? '{"backends":{}}').backends as object).sort();

    await writer.apply(podObj('web-1', 'web', 1, '10.101.1.5', false));
    await until('web-1 out of echo', async () => (await backends()).join() === '10.101.2.5');
    await writer.apply(podObj('web-3', 'web', 2, '10.101.2.6', true));
    await until('web-3 into echo', async () => (await backends()).join() === '10.101.2.5,10.101.2.6');
    await writer.apply(svcObj('echo', { ...GLOBAL, 'service.cilium.io/shared': 'false' }));
    // As Cilium: not shared means not exported (deleted), rather than exported without backends.
    await until('echo not shared', async () => (await reader.get(echo)) === undefined);

    await writer.delete('Service', { namespace: 'default', name: 'echo' });
    await until('echo key removed', async () => (await reader.get(echo)) === undefined);
    await writer.delete('Endpoint', { namespace: 'default', name: 'db-1' });
    await until('ip entry removed', async () => (await reader.get(ipKey('10.101.1.9'))) === undefined);
    await writer.delete('Node', { name: 'node2' });
    await until('node removed', async () => (await reader.get(nodeKey(CLUSTER, 'node2'))) === undefined);

    // The last pod of a label set gone: the apiserver drops its reference (gc deletes later).
    const dbLabels = labelString(podIdentityLabels(CLUSTER, parseObject('Pod', podObj('db-1', 'db', 1, '10.101.1.9')), parseObject('Namespace', nsObj)));
    const dbIdentity = await agentAlloc.lookupByLabels(dbLabels);
    assert.ok(dbIdentity);
    assert.ok(await owner.get(identityRefKey(dbIdentity, APISERVER_IDENTITY_USER)));
    await writer.delete('Pod', { namespace: 'default', name: 'db-1' });
    await until('apiserver reference dropped', async () => (await owner.get(identityRefKey(dbIdentity, APISERVER_IDENTITY_USER))) === undefined);
    assert.ok(await reader.get(identityKey(dbIdentity)), 'the identity itself stays until gc');
  });

  it('a restart neither duplicates nor loses keys, and prunes what went away meanwhile', async () => {
    await writer.apply(svcObj('echo', GLOBAL));
    // Back with its backends: the EndpointSlice controller fills them after the Service itself is exported.
    await until('echo back with its backends', async () => {
      const v = (await reader.get(serviceKey(CLUSTER, 'default', 'echo')))?.value;
      return v !== undefined && Object.keys(JSON.parse(v).backends as object).sort().join() === '10.101.2.5,10.101.2.6';
    });
    const first = servers[0]!;
    const beforeKv = await exported();
    const oldLease = beforeKv.get(clusterConfigKey(CLUSTER))!.lease;
    await first.stop();
    const stoppedAt = Date.now();

    // While it is down: one service goes, one node comes.
    await writer.delete('Service', { namespace: 'default', name: 'legacy' });
    await writer.apply(nodeObj(3));
    await start();
    const afterKv = await exported();
    assert.ok(Date.now() - stoppedAt < 5_000, 'restarted within the old lease TTL, so what went away was pruned, not expired');
    const volatile = (k: string) => k === heartbeatKey || k.startsWith('cilium/synced/') || k.startsWith('cilium/state/identities/v1/refs/');
    const keysOf = (m: Map<string, KvPair>) => [...m.keys()].filter((k) => !volatile(k)).sort();
    const expected = keysOf(beforeKv)
      .filter((k) => k !== serviceKey(CLUSTER, 'default', 'legacy'))
      .concat(nodeKey(CLUSTER, 'node3'))
      .sort();
    assert.deepEqual(keysOf(afterKv), expected, 'pruned at once (not at lease expiry), nothing duplicated');
    for (const k of keysOf(afterKv)) if (beforeKv.has(k)) assert.equal(afterKv.get(k)!.value, beforeKv.get(k)!.value, `${k} unchanged`);
    const newLease = afterKv.get(clusterConfigKey(CLUSTER))!.lease;
    assert.notEqual(newLease, oldLease);
    // The MCS controller rewrites its canary at its first round, which may end just after start() resolved
    // (were it never rewritten, the old lease's expiry would delete it: the canary check below would fail).
    await until('every key moved off the old lease', async () => {
      const stale = [...(await exported())].filter(([, p]) => p.lease === oldLease).map(([k]) => k);
      return stale.length === 0 || undefined;
    });

    // The old lease expires (TTL 5 s): nothing is lost.
    await new Promise((r) => setTimeout(r, 5_500));
    assert.deepEqual(keysOf(await exported()), expected);
    for (const p of SYNCED_PREFIX_NAMES) assert.ok(await reader.get(syncedKey(CLUSTER, p)), `canary ${p}`);
  });

  it('with the default lease, a restart slower than 15 s deletes nothing a remote sees (the keys outlive the dead apiserver)', async () => {
    // A remote deletes an entry the moment its key goes: keys that expired with a
    // killed apiserver's lease before its successor rewrote them were the live
    // pods of this cluster missing everywhere else (the fault suite's
    // "apiserver down 20 s"). The default TTL must outlast a slow restart.
    for (const s of servers) await s.stop();
    await start({ sessionTtlSeconds: APISERVER_DEFAULTS.sessionTtlSeconds });
    const volatile = (k: string) => k === heartbeatKey || k.startsWith('cilium/synced/') || k.startsWith('cilium/state/identities/v1/refs/');
    const stable = (m: Map<string, KvPair>) => [...m].filter(([k]) => !volatile(k)).map(([k, p]) => `${k}=${p.value}`).sort();
    const beforeKv = await exported();
    assert.ok([...beforeKv.keys()].some((k) => k.startsWith(ipPrefix)), 'ip entries exported');
    const deleted: string[] = [];
    const from = String(BigInt((await reader.list(ipPrefix)).revision) + 1n);
    const watches = exportedReadPrefixes.map((prefix) => reader.watch(prefix, from, (ev) => ev.kind === 'delete' && !volatile(ev.key) && deleted.push(ev.key), () => deleted.push(`watch of ${prefix} failed`)));
    try {
      await servers.at(-1)!.stop(); // like a SIGKILL: the lease is not revoked
      await new Promise((r) => setTimeout(r, 16_000)); // past the 15 s the lease once had
      assert.deepEqual(stable(await exported()), stable(beforeKv), 'every key still there while no apiserver runs');
      await start({ sessionTtlSeconds: APISERVER_DEFAULTS.sessionTtlSeconds });
      assert.deepEqual(stable(await exported()), stable(beforeKv), 'the same keys after the restart');
      assert.deepEqual(deleted, [], 'no delete a remote would act on');
    } finally {
      await Promise.all(watches.map((w) => w.cancel()));
    }
  });

  it('two apiservers at once (an upgrade overlap): only the newer writes, and nothing is left on the older one\'s lease', async () => {
    // Each writes on its own session lease: a key the older one wrote last would stay on
    // its lease after it stopped, and go when that lease expires (every remote then drops the pod).
    for (const s of servers) await s.stop();
    const older = await start();
    const newer = await start();
    const lease = (await owner.get(clusterConfigKey(CLUSTER)))!.lease;
    // A pod while both run: both see it; the older one's write is refused, not retried.
    await writer.apply(podObj('web-4', 'web', 1, '10.101.1.7'));
    await publishEndpoint('web-4', 1);
    await until('web-4 exported', async () => (await reader.get(ipKey('10.101.1.7'))) !== undefined);
    await until('the older one told it is superseded', async () => older.status().stores.ip.lastError?.kind === 'superseded');
    assert.equal(newer.status().stores.ip.lastError?.kind === 'superseded', false);
    await new Promise((r) => setTimeout(r, 500)); // heartbeats of both
    await older.stop(); // as in an upgrade: its lease is not revoked, it expires (TTL 5 s)
    const shared = (k: string) => k.startsWith('cilium/state/identities/v1/id/');
    const onOther = [...(await exported())].filter(([k, p]) => !shared(k) && p.lease !== lease).map(([k]) => k);
    assert.deepEqual(onOther, [], "every owned key on the newer one's lease");
    const stable = async () => [...(await exported())].filter(([k]) => k !== heartbeatKey).map(([k, p]) => `${k}=${p.value}`).sort();
    const beforeExpiry = await stable();
    await new Promise((r) => setTimeout(r, 5_500));
    assert.deepEqual(await stable(), beforeExpiry, "nothing went with the older one's lease");
    assert.ok(await reader.get(ipKey('10.101.1.7')));
  });
});

describe('clustermesh apiserver command (real etcd)', () => {
  it('runs from an etcd config file and a kubeconfig, exports, and stops on SIGTERM', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cm-apiserver-cli-'));
    const etcd = await startEtcd({ dir: join(dir, 'etcd'), name: 'apiserver-cli' });
    const reader = new KvClient(etcd.connection('remote'));
    let child: ChildProcess | undefined;
    let stopApi: (() => Promise<void>) | undefined;
    try {
      const conn = etcd.connection('apiserver');
      await writeFile(
        join(dir, 'etcd.yaml'),
        `endpoints:\n  - ${conn.endpoints[0]}\ntrusted-ca-file: ${conn.caFile}\ncert-file: ${conn.certFile}\nkey-file: ${conn.keyFile}\n`,
      );
      const rootKv = new KvClient(etcd.connection('root'));
      const { server, kubeconfig } = await startKubeApi({ kv: rootKv, dir: join(dir, 'kube-api'), clusterName: 'c7' });
      stopApi = async () => {
        await server.stop();
        await rootKv.close();
      };
      await new KubeObjects(loadKubeConnection({ kubeconfig }).kubeConfig).apply(nodeObj(7));
      const bin = fileURLToPath(new URL('../../bin/clustermesh.js', import.meta.url));
      child = spawn(process.execPath, [bin, 'apiserver', '--cluster-name', 'c7', '--cluster-id', '7', '--etcd-config', join(dir, 'etcd.yaml'), '--kubeconfig', kubeconfig, '--log-level', 'warn'], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      await until('canaries of c7', async () => {
        if (child?.exitCode !== null) throw new Error(`apiserver exited: ${stderr}`);
        // nodes, ip, services, identities, and (the MCS controller of a --kubeconfig apiserver) serviceexports
        return (await reader.list('cilium/synced/c7/')).pairs.length === 5;
      });
      assert.equal((await reader.get(clusterConfigKey('c7')))?.value, '{"id":7,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":true}}');
      assert.ok(await reader.get(nodeKey('c7', 'node7')));
      const exited = new Promise<number | null>((r) => child!.once('exit', (code) => r(code)));
      child.kill('SIGTERM');
      assert.equal(await withTimeout(exited, 10_000, 'apiserver exit'), 0, stderr);
    } finally {
      if (child && child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
      await stopApi?.();
      await reader.close();
      await etcd.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
