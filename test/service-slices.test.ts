// Service backends from EndpointSlices, with real parts: a Service and
// hand-written EndpointSlices applied with kubectl to the lab's Kubernetes API
// server (real etcd, HTTPS), read by the kubernetes source; the agent's
// service layer (ServiceManager) programs a real node's pinned service maps
// from it, and a client pod's HTTP requests to the VIP show which pods answer;
// the apiserver's export (startApiserver over the same source) writes the
// global service into the cluster's etcd, read back as a remote cluster would.
//
// Shows: only ready endpoints take connections; a selectorless Service works;
// when every endpoint is terminating, the serving ones still answer (graceful
// termination) and the export offers them; a new ready endpoint in a second
// slice takes over; a slice relabelled to another Service moves its backends;
// an IPv6 slice is skipped with its reason in the source's status.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { stringify as toYaml } from 'yaml';

import { startApiserver, type Apiserver } from '../src/apiserver/apiserver.ts';
import { ServiceManager, type ServiceMaps } from '../src/agent/services.ts';
import { Cache } from '../src/clustermesh/cache.ts';
import type { GlobalService, RemoteService } from '../src/clustermesh/clustermesh.ts';
import { startMeshEtcd } from '../src/clustermesh/etcd.ts';
import { BpfMap } from '../src/datapath/libbpf/map.ts';
import * as affinityMap from '../src/datapath/maps/affinity.ts';
import * as lbHintMap from '../src/datapath/maps/lb-hint.ts';
import * as backendSlotsMap from '../src/datapath/maps/backend-slots.ts';
import * as backendsMap from '../src/datapath/maps/backends.ts';
import * as ctMap from '../src/datapath/maps/ct.ts';
import * as maglevMap from '../src/datapath/maps/maglev.ts';
import * as revnatMap from '../src/datapath/maps/revnat.ts';
import * as servicesMap from '../src/datapath/maps/services.ts';
import { datapathSkipReason, uniqueSuffix } from '../src/datapath/testing.ts';
import { KvClient, type EtcdServer } from '../src/kvstore/index.ts';
import { startKubeApi, type KubeApiServer } from '../src/lab/kube-api/index.ts';
import { startClustermeshDatapath, type LabDatapath } from '../src/lab/datapath.ts';
import { startEcho, waitListening } from '../src/lab/echo.ts';
import { runIn } from '../src/lab/exec.ts';
import type { ManagedProcess } from '../src/lab/process.ts';
import { createTopology, destroyTopology, type PodInfo, type Topology } from '../src/lab/topology.ts';
import { serviceBackendInput } from '../src/sources/index.ts';
import { KubernetesSource, loadKubeConnection } from '../src/sources/kubernetes/index.ts';
import { eventually, kubectlFor } from './helpers/kube.ts';

const CLUSTER = 'cluster1';

/** Runs in a pod: N HTTP GETs, each a new connection; prints which pod answered how often, and the errors. */
const HTTP_CLIENT = `
import { request } from 'node:http';
const [url, n] = process.argv.slice(1);
const out = { answers: {}, errors: {} };
for (let i = 0; i < Number(n); i++) {
  await new Promise((done) => {
    const req = request(url, { timeout: 3000, agent: false }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => { const who = JSON.parse(body).pod; out.answers[who] = (out.answers[who] ?? 0) + 1; done(); });
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
    req.on('error', (e) => { out.errors[e.code ?? e.message] = (out.errors[e.code ?? e.message] ?? 0) + 1; done(); });
    req.end();
  });
}
console.log(JSON.stringify(out));
`;

describe('Service backends from EndpointSlices (lab Kubernetes API, real maps and traffic)', { skip: datapathSkipReason(), timeout: 600_000 }, () => {
  const sfx = uniqueSuffix(3);
  const NS = `cmt-sl-${sfx}`;
  const VIP = `10.96.${100 + (parseInt(sfx.slice(0, 2), 16) % 100)}.${1 + (parseInt(sfx.slice(2, 4), 16) % 250)}`;
  let dir: string;
  let etcd: EtcdServer;
  let kubeKv: KvClient;
  let reader: KvClient;
  let server: KubeApiServer;
  let kubeconfig: string;
  let source: KubernetesSource;
  let topo: Topology | undefined;
  let dp: LabDatapath | undefined;
  let manager: ServiceManager | undefined;
  let apiserver: Apiserver | undefined;
  const unsubs: Array<() => void> = [];
  const opened: BpfMap[] = [];
  const servers: ManagedProcess[] = [];
  const { kubectlIn, kubectlOk } = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(dir, 'kube-cache') });

  let client: PodInfo;
  let backendA: PodInfo;
  let backendB: PodInfo;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cmt-service-slices-'));
    etcd = await startMeshEtcd({ dir: join(dir, 'etcd'), name: `slices-${sfx}` });
    for (const user of ['apiserver', 'remote']) await etcd.clientCert(user);
    kubeKv = new KvClient(etcd.connection('root', { timeoutMs: 15_000 }));
    reader = new KvClient(etcd.connection('remote'));
    ({ server, kubeconfig } = await startKubeApi({ kv: kubeKv, dir, clusterName: CLUSTER }));
    source = new KubernetesSource({ kubeConfig: loadKubeConnection({ kubeconfig, env: {} }).kubeConfig, backoff: { initialMs: 50, maxMs: 500 } });
    await source.start();
    await source.waitSynced();

    topo = await createTopology({ clusters: 1, nodesPerCluster: 1, podsPerNode: 3, mode: 'clustermesh', prefix: 'cmtsl' });
    dp = await startClustermeshDatapath(topo);
    [client, backendA, backendB] = topo.pods as [PodInfo, PodInfo, PodInfo];
    for (const p of [backendA, backendB]) servers.push(await startEcho(p, 8080));
    for (const p of [backendA, backendB]) await waitListening(p, 8080, 30_000);

    // The agent's service layer on the node's pinned maps, reading backends as the agent does.
    const pin = dp.pinDirs[0]!;
    const open = (name: string): BpfMap => {
      const m = BpfMap.openPinned(join(pin, name));
      opened.push(m);
      return m;
    };
    const maps: ServiceMaps = {
      services: open(servicesMap.MAP_NAME),
      backends: open(backendsMap.MAP_NAME),
      backendSlots: open(backendSlotsMap.MAP_NAME),
      maglev: open(maglevMap.MAP_NAME),
      revnat: open(revnatMap.MAP_NAME),
      ct: open(ctMap.MAP_NAME),
      affinity: open(affinityMap.MAP_NAME),
      lbHint: open(lbHintMap.MAP_NAME),
    };
    manager = new ServiceManager({
      clusterName: CLUSTER,
      clusterId: 1,
      services: source.services,
      backends: serviceBackendInput(source),
      mesh: { globalServices: new Cache<string, GlobalService>(), services: new Cache<string, RemoteService>(), status: () => ({ remotes: [] }) },
      maps: () => maps,
      canProgram: () => source.services.synced,
      pruneBlocker: () => null,
      gcIntervalMs: 0,
      log: pino({ level: 'silent' }),
    });
    unsubs.push(...manager.subscribe());
    await manager.start();

    apiserver = await startApiserver(
      { clusterName: CLUSTER, clusterId: 1, maxConnectedClusters: 255, etcdConfigFile: '/unused', heartbeatIntervalMs: 1000, sessionTtlSeconds: 10, identityGcIntervalMs: 3_600_000, identityGcGraceMs: 3_600_000, logLevel: 'silent', metricsAddress: '' },
      { connection: etcd.connection('apiserver'), source, logger: pino({ level: 'silent' }) },
    );
    await apiserver.ready;
    await kubectlOk('create', 'namespace', NS);
  });

  after(async () => {
    unsubs.forEach((u) => u());
    await manager?.stop();
    await apiserver?.stop();
    for (const m of opened) m.close();
    await Promise.all(servers.map((s) => s.stop(2000)));
    await dp?.stop();
    if (topo) await destroyTopology(topo);
    await source?.stop();
    await server?.stop();
    await reader?.close();
    await kubeKv?.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const apply = async (...objects: unknown[]): Promise<void> => {
    const r = await kubectlIn(objects.map((o) => toYaml(o)).join('---\n'), 'apply', '-f', '-');
    assert.equal(r.code, 0, `kubectl apply: ${r.stderr}${r.stdout}`);
  };
  const service = (name: string, vip: string) => ({
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name, namespace: NS, annotations: { 'service.cilium.io/global': 'true' } },
    // No selector: its backends are the slices below, written by hand.
    spec: { clusterIP: vip, ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
  });
  type Conditions = { ready?: boolean; serving?: boolean; terminating?: boolean };
  const slice = (name: string, serviceName: string, endpoints: Array<[PodInfo, Conditions]>, addressType = 'IPv4') => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name, namespace: NS, labels: { 'kubernetes.io/service-name': serviceName } },
    addressType,
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    endpoints: endpoints.map(([p, conditions]) => ({ addresses: [p.ip], conditions, nodeName: p.node.name })),
  });

  /** The backends the agent's service layer programmed: ip → [takes new connections, terminating]. */
  const programmed = (name: string): Record<string, [boolean, boolean]> => {
    const info = manager!.list().find((s) => s.namespace === NS && s.name === name);
    return Object.fromEntries((info?.frontends[0]?.backends[CLUSTER] ?? []).map((b) => [b.ip, [b.active, b.terminating]]));
  };
  /** The backend IPs the apiserver exported for the service, read from etcd as a remote cluster does. */
  const exported = async (name: string): Promise<string[] | undefined> => {
    const kv = await reader.get(`cilium/state/services/v1/${CLUSTER}/${NS}/${name}`);
    return kv ? Object.keys((JSON.parse(kv.value) as { backends: object }).backends).sort() : undefined;
  };
  const http = async (vip: string, n: number): Promise<{ answers: Record<string, number>; errors: Record<string, number> }> => {
    const { stdout } = await runIn(client.netns, [process.execPath, '--input-type=module', '-e', HTTP_CLIENT, `http://${vip}/`, String(n)], { timeoutMs: 60_000 });
    return JSON.parse(stdout);
  };
  const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

  test('a selectorless Service: only the ready endpoint of its slice answers, and only it is exported', async () => {
    await apply(service('echo', VIP), slice('echo-1', 'echo', [[backendA, { ready: true }], [backendB, { ready: false }]]));
    const want = { [backendA.ip]: [true, false], [backendB.ip]: [false, false] };
    await eventually('the agent programs the slice', () => same(programmed('echo'), want), 30_000);
    await eventually('the export', async () => same(await exported('echo'), [backendA.ip]), 30_000);
    const t = await http(VIP, 12);
    assert.deepEqual(t.errors, {});
    assert.deepEqual(t.answers, { [backendA.name]: 12 }, 'the not-ready endpoint takes no new connections');
  });

  test('graceful termination: all endpoints terminating, the serving one answers; a ready one in a second slice takes over', async () => {
    await apply(slice('echo-1', 'echo', [[backendA, { ready: false, serving: false, terminating: true }], [backendB, { ready: false, serving: true, terminating: true }]]));
    await eventually('the fallback programmed', () => same(programmed('echo'), { [backendA.ip]: [false, true], [backendB.ip]: [true, false] }), 30_000);
    await eventually('the export offers the serving one', async () => same(await exported('echo'), [backendB.ip]), 30_000);
    let t = await http(VIP, 12);
    assert.deepEqual(t.errors, {});
    assert.deepEqual(t.answers, { [backendB.name]: 12 }, 'the terminating but serving endpoint answers');

    // backendA comes back ready in a slice of its own: the terminating one stops taking new connections.
    await apply(slice('echo-2', 'echo', [[backendA, { ready: true }]]));
    await eventually('the ready endpoint takes over', () => same(programmed('echo'), { [backendA.ip]: [true, false], [backendB.ip]: [false, true] }), 30_000);
    await eventually('the export follows', async () => same(await exported('echo'), [backendA.ip]), 30_000);
    t = await http(VIP, 12);
    assert.deepEqual(t.errors, {});
    assert.deepEqual(t.answers, { [backendA.name]: 12 });
  });

  test('a slice relabelled to another Service moves its backends; an IPv6 slice is skipped with the reason', async () => {
    const VIP2 = VIP.replace(/\.\d+$/, (m) => `.${(Number(m.slice(1)) % 250) + 2}`);
    await apply(service('other', VIP2), slice('echo-1', 'other', [[backendB, { ready: true }]]));
    await eventually('echo-1 now backs other', () => same(programmed('other'), { [backendB.ip]: [true, false] }) && same(programmed('echo'), { [backendA.ip]: [true, false] }), 30_000);
    await eventually('both exports follow', async () => same(await exported('other'), [backendB.ip]) && same(await exported('echo'), [backendA.ip]), 30_000);
    const t = await http(VIP2, 6);
    assert.deepEqual(t.answers, { [backendB.name]: 6 });

    await kubectlOk('delete', 'endpointslice', '-n', NS, 'echo-2');
    await eventually('echo has no backends', () => same(programmed('echo'), {}), 30_000);
    const dropped = await http(VIP, 2);
    assert.deepEqual(dropped.errors, { ECONNREFUSED: 2 }, 'a frontend without backends refuses');

    const v6 = { ...slice('echo-v6', 'echo', []), addressType: 'IPv6', endpoints: [{ addresses: ['fd00::1'], conditions: { ready: true } }] };
    await apply(v6);
    const skipped = await eventually('the IPv6 slice reported as skipped', () => source.status().EndpointSlice.skipped[`${NS}/echo-v6`], 30_000);
    assert.match(skipped, /addressType IPv6/);
    assert.deepEqual(programmed('echo'), {});
  });
});
