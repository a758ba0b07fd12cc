// Unit tests of the apiserver's logic: conversion to the wire format, per-prefix
// export with pruning, endpoint IP claims, pod identities. Fake sinks, no etcd.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { ManualClock } from '../util/clock.ts';
import { decodeIpEntry, decodeNode, decodeService, encodeService, type WireSource } from '../clustermesh/wire.ts';
import {
  parseObject,
  selectorBackends,
  type Endpoint,
  type EndpointSlice,
  type Namespace,
  type Node,
  type Pod,
  type Service,
} from '../model/index.ts';
import { ResourceCache } from '../sources/index.ts';
import { ipEntryValue, nodeValue, serviceValue } from './convert.ts';
import { derivedServiceName } from '../mcs/plan.ts';
import { exportIps, exportNodes, exportServices, PrefixExport, type ExportCluster, type KeySink } from './export.ts';
import { PodIdentities, type PodIdentityAllocator } from './identities.ts';
import { compileApiserverOptions, OptionError, parseDuration } from './options.ts';

const log = pino({ level: 'silent' });
const cluster: ExportCluster = { name: 'c1', id: 1, maxConnectedClusters: 255 };
/** serviceValue with the backends the service's selector picks (the store source's path). */
const valueOf = (s: Service, pods: Pod[]) => serviceValue(cluster, s, selectorBackends(s, pods));
const src: WireSource = { cluster: 'c1', clusterId: 1, maxConnectedClusters: 255 };

class FakeSink implements KeySink {
  readonly kv = new Map<string, string>();
  readonly ops: string[] = [];
  synced = false;
  constructor(initial: Record<string, string> = {}) {
    for (const [k, v] of Object.entries(initial)) this.kv.set(k, v);
  }
  upsert(key: string, value: string): void {
    this.ops.push(`put ${key}`);
    this.kv.set(key, value);
  }
  delete(key: string): void {
    this.ops.push(`del ${key}`);
    this.kv.delete(key);
  }
  markInitialSyncDone(): void {
    this.ops.push('synced');
    this.synced = true;
  }
}

const pod = (name: string, labels: Record<string, string>, ip: string | undefined, ready = true, extra: object = {}): Pod =>
  parseObject('Pod', {
    kind: 'Pod',
    metadata: { name, namespace: 'default', labels },
    spec: { nodeName: 'node1', containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }, { name: 'dns', containerPort: 5353, protocol: 'UDP' }] }] },
    status: { phase: 'Running', ...(ip ? { podIP: ip } : {}), conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }] },
    ...extra,
  });
const svc = (name: string, annotations: Record<string, string>, extra: Partial<Service['spec']> = {}): Service =>
  parseObject('Service', {
    kind: 'Service',
    metadata: { name, namespace: 'default', labels: { tier: 'front' }, annotations },
    spec: {
      clusterIP: '10.96.0.10',
      selector: { app: 'web' },
      ports: [
        { name: 'http', port: 80, targetPort: 'http' },
        { name: 'dns', port: 53, targetPort: 5353, protocol: 'UDP' },
      ],
      ...extra,
    },
  });
const endpoint = (name: string, ip: string, id: number, nodeIP = '10.1.0.1'): Endpoint =>
  parseObject('Endpoint', {
    kind: 'Endpoint',
    metadata: { name, namespace: 'default' },
    status: { identity: { id }, networking: { podIP: ip, nodeName: 'node1', nodeIP } },
  });

describe('conversion to the wire format', () => {
  it('node', () => {
    const node: Node = parseObject('Node', {
      kind: 'Node',
      metadata: { name: 'node1', labels: { zone: 'a' } },
      spec: { podCIDR: '10.101.1.0/24' },
      status: { addresses: [{ type: 'Hostname', address: 'node1' }, { type: 'InternalIP', address: '10.1.0.1' }] },
    });
    assert.deepEqual(nodeValue(cluster, node), {
      Name: 'node1',
      Cluster: 'c1',
      ClusterID: 1,
      IPAddresses: [{ Type: 'InternalIP', IP: '10.1.0.1' }],
      IPv4AllocCIDR: '10.101.1.0/24',
      Labels: { zone: 'a' },
      Source: 'custom-resource',
    });
  });

  it('ip entry: HostIP is the node of the endpoint', () => {
    assert.deepEqual(ipEntryValue(endpoint('web-1', '10.101.1.5', 65600, '10.1.0.2')), {
      IP: '10.101.1.5',
      Mask: null,
      HostIP: '10.1.0.2',
      ID: 65600,
      Key: 0,
      K8sNamespace: 'default',
      K8sPodName: 'web-1',
      NamedPorts: [],
    });
  });

  it('global service: frontends, backends of ready selected pods, named and numeric target ports', () => {
    const pods = [
      pod('web-1', { app: 'web' }, '10.101.1.5'),
      pod('web-2', { app: 'web' }, '10.101.1.6', false),
      pod('web-3', { app: 'web' }, undefined),
      pod('other', { app: 'other' }, '10.101.1.7'),
    ];
    const v = valueOf(svc('echo', { 'service.cilium.io/global': 'true' }), pods);
    assert.deepEqual(v, {
      cluster: 'c1',
      namespace: 'default',
      name: 'echo',
      frontends: { '10.96.0.10': { http: { Protocol: 'TCP', Port: 80 }, dns: { Protocol: 'UDP', Port: 53 } } },
      backends: { '10.101.1.5': { http: { Protocol: 'TCP', Port: 8080 }, dns: { Protocol: 'UDP', Port: 5353 } } },
      hostnames: {},
      labels: { tier: 'front' },
      selector: { app: 'web' },
      includeExternal: true,
      shared: true,
      clusterID: 1,
    });
    assert.ok(decodeService(src, 'cilium/state/services/v1/c1/default/echo', encodeService(v!)).ok);
  });

  it('not global → not exported; legacy annotation; shared "false" → not exported (as Cilium)', () => {
    const pods = [pod('web-1', { app: 'web' }, '10.101.1.5')];
    assert.equal(valueOf(svc('local', {}), pods), undefined);
    assert.equal(valueOf(svc('local', { 'service.cilium.io/global': 'false' }), pods), undefined);
    assert.deepEqual(Object.keys(valueOf(svc('legacy', { 'io.cilium/global-service': 'true' }), pods)!.backends), ['10.101.1.5']);
    assert.equal(valueOf(svc('n', { 'service.cilium.io/global': 'true', 'service.cilium.io/shared': 'false' }), pods), undefined);
    const headless = valueOf(svc('h', { 'service.cilium.io/global': 'true' }, { clusterIP: 'None' }), pods)!;
    assert.deepEqual(headless.frontends, {});
  });
});

describe('per-prefix export', () => {
  it('nodes: keys follow the source; stale keys of a previous run are pruned before the canary', () => {
    const nodes = new ResourceCache<Node>('Node');
    const stale = 'cilium/state/nodes/v1/c1/gone';
    const kept = 'cilium/state/nodes/v1/c1/node1';
    const sink = new FakeSink({ [stale]: '{}', [kept]: '{}' });
    const out = new PrefixExport('nodes', sink, new Set([stale, kept]));
    exportNodes(cluster, nodes, out, log);
    nodes.set(parseObject('Node', { kind: 'Node', metadata: { name: 'node1' }, status: { addresses: [{ type: 'InternalIP', address: '10.1.0.1' }] } }));
    assert.equal(sink.synced, false);
    nodes.markSynced();
    assert.deepEqual(sink.ops, [`put ${kept}`, `del ${stale}`, 'synced']);
    const r = decodeNode(src, kept, sink.kv.get(kept)!);
    assert.ok(r.ok && r.value.IPv4AllocCIDR === null);
    nodes.remove({ name: 'node1' });
    assert.equal(sink.kv.has(kept), false);
  });

  it('ip: one entry per IP, latest claim wins, the other takes over; out-of-range identities are not exported', () => {
    const eps = new ResourceCache<Endpoint>('Endpoint');
    const pods = new ResourceCache<Pod>('Pod');
    const sink = new FakeSink();
    exportIps(cluster, eps, pods, new PrefixExport('ip', sink), log);
    eps.markSynced();
    pods.markSynced();
    const key = 'cilium/state/ip/v1/default/10.101.1.5';
    eps.set(endpoint('old', '10.101.1.5', 65600));
    eps.set(endpoint('new', '10.101.1.5', 65601));
    assert.equal(JSON.parse(sink.kv.get(key)!).K8sPodName, 'new');
    eps.remove({ namespace: 'default', name: 'new' });
    assert.equal(JSON.parse(sink.kv.get(key)!).K8sPodName, 'old');
    // The pod moved to another IP: the old key goes.
    eps.set(endpoint('old', '10.101.1.9', 65600));
    assert.equal(sink.kv.has(key), false);
    assert.ok(decodeIpEntry(src, 'cilium/state/ip/v1/default/10.101.1.9', sink.kv.get('cilium/state/ip/v1/default/10.101.1.9')!).ok);
    eps.set(endpoint('foreign', '10.101.1.20', 2 << 16));
    assert.equal(sink.kv.has('cilium/state/ip/v1/default/10.101.1.20'), false);
  });

  it('services: follow pods and services; canary only when both synced', () => {
    const services = new ResourceCache<Service>('Service');
    const pods = new ResourceCache<Pod>('Pod');
    const sink = new FakeSink();
    exportServices(cluster, services, { from: 'selectors', pods }, new PrefixExport('services', sink), log);
    const key = 'cilium/state/services/v1/c1/default/echo';
    services.set(svc('echo', { 'service.cilium.io/global': 'true' }));
    services.set(svc('local', {}));
    services.markSynced();
    pods.set(pod('web-1', { app: 'web' }, '10.101.1.5'));
    assert.equal(sink.synced, false);
    pods.markSynced();
    assert.equal(sink.synced, true);
    assert.deepEqual([...sink.kv.keys()], [key]);
    const backends = () => Object.keys(JSON.parse(sink.kv.get(key)!).backends as object);
    assert.deepEqual(backends(), ['10.101.1.5']);
    pods.set(pod('web-2', { app: 'web' }, '10.101.1.6'));
    assert.deepEqual(backends(), ['10.101.1.5', '10.101.1.6']);
    pods.set(pod('web-1', { app: 'web' }, '10.101.1.5', false));
    assert.deepEqual(backends(), ['10.101.1.6']);
    services.set(svc('echo', { 'service.cilium.io/global': 'true', 'service.cilium.io/shared': 'false' }));
    assert.equal(sink.kv.has(key), false, 'not shared: the export is deleted');
    services.set(svc('echo', { 'service.cilium.io/global': 'true' }));
    assert.deepEqual(backends(), ['10.101.1.6']);
    services.set(svc('echo', {}));
    assert.equal(sink.kv.has(key), false, 'no longer global');
    services.set(svc('echo', { 'service.cilium.io/global': 'true' }));
    services.remove({ namespace: 'default', name: 'echo' });
    assert.equal(sink.kv.size, 0);
  });

  it('services from EndpointSlices: the backends that take new connections, by port name; the canary waits for the slices', () => {
    const services = new ResourceCache<Service>('Service');
    const slices = new ResourceCache<EndpointSlice>('EndpointSlice');
    const sink = new FakeSink();
    exportServices(cluster, services, { from: 'endpointslices', endpointSlices: slices }, new PrefixExport('services', sink), log);
    const key = 'cilium/state/services/v1/c1/default/echo';
    const slice = (name: string, owner: string, eps: Array<[string, Record<string, boolean>]>): EndpointSlice =>
      parseObject('EndpointSlice', {
        kind: 'EndpointSlice',
        metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': owner } },
        addressType: 'IPv4',
        endpoints: eps.map(([ip, conditions]) => ({ addresses: [ip], conditions })),
        ports: [{ name: 'http', port: 8080 }, { name: 'dns', port: 5353, protocol: 'UDP' }],
      });
    services.set(svc('echo', { 'service.cilium.io/global': 'true' }));
    services.markSynced();
    slices.set(slice('echo-1', 'echo', [['10.101.1.5', { ready: true }], ['10.101.1.6', { ready: false }], ['10.101.1.7', { ready: false, serving: true, terminating: true }]]));
    assert.equal(sink.synced, false, 'services listed, slices not yet');
    slices.markSynced();
    assert.equal(sink.synced, true);
    const backends = () => JSON.parse(sink.kv.get(key)!).backends as Record<string, unknown>;
    assert.deepEqual(backends(), { '10.101.1.5': { http: { Protocol: 'TCP', Port: 8080 }, dns: { Protocol: 'UDP', Port: 5353 } } });
    // Only draining endpoints left: they are what this cluster's agents use, so they are what it offers.
    slices.set(slice('echo-1', 'echo', [['10.101.1.7', { ready: false, serving: true, terminating: true }], ['10.101.1.8', { ready: false, serving: false, terminating: true }]]));
    assert.deepEqual(Object.keys(backends()), ['10.101.1.7']);
    // The slice moves to another Service: echo has none.
    slices.set(slice('echo-1', 'other', [['10.101.1.5', { ready: true }]]));
    assert.deepEqual(backends(), {});
  });

  it("hostnames: a Service's from its slices; an MCS derived Service's also from the exported Service's slices (the ones Kubernetes names pods in)", () => {
    const services = new ResourceCache<Service>('Service');
    const slices = new ResourceCache<EndpointSlice>('EndpointSlice');
    const sink = new FakeSink();
    exportServices(cluster, services, { from: 'endpointslices', endpointSlices: slices }, new PrefixExport('services', sink), log);
    const slice = (owner: string, eps: Array<{ ip: string; hostname?: string; ready?: boolean }>): EndpointSlice =>
      parseObject('EndpointSlice', {
        kind: 'EndpointSlice',
        metadata: { name: `${owner}-1`, namespace: 'default', labels: { 'kubernetes.io/service-name': owner } },
        addressType: 'IPv4',
        endpoints: eps.map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready ?? true }, ...(e.hostname ? { hostname: e.hostname } : {}) })),
        ports: [{ name: 'http', port: 8080 }],
      });
    const derived = derivedServiceName('db');
    services.set(svc('db', { 'service.cilium.io/global': 'true' }, { clusterIP: 'None' }));
    services.set(
      parseObject('Service', {
        kind: 'Service',
        metadata: { name: derived, namespace: 'default', labels: { 'app.kubernetes.io/managed-by': 'clustermesh-mcs', 'multicluster.kubernetes.io/service-name': 'db' }, annotations: { 'service.cilium.io/global': 'true', 'service.cilium.io/shared': 'true' } },
        spec: { clusterIP: 'None', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
      }),
    );
    services.markSynced();
    slices.set(slice('db', [{ ip: '10.101.1.5', hostname: 'db-0' }, { ip: '10.101.1.6', hostname: 'db-1', ready: false }]));
    slices.set(slice(derived, [{ ip: '10.101.1.5' }, { ip: '10.101.1.6', ready: false }]));
    slices.markSynced();
    const value = (name: string) => JSON.parse(sink.kv.get(`cilium/state/services/v1/c1/default/${name}`)!) as { backends: object; hostnames?: Record<string, string> };
    assert.deepEqual(value('db').hostnames, { '10.101.1.5': 'db-0' }, 'only published (ready) backends');
    assert.deepEqual(value(derived).hostnames, { '10.101.1.5': 'db-0' });
    // The exported Service's slices change (a pod becomes ready): the derived Service's value follows, from its own slices' backends.
    slices.set(slice(derived, [{ ip: '10.101.1.5' }, { ip: '10.101.1.6' }]));
    slices.set(slice('db', [{ ip: '10.101.1.5', hostname: 'db-0' }, { ip: '10.101.1.6', hostname: 'db-1' }]));
    assert.deepEqual(value(derived).hostnames, { '10.101.1.5': 'db-0', '10.101.1.6': 'db-1' });
    assert.ok(decodeService(src, `cilium/state/services/v1/c1/default/${derived}`, sink.kv.get(`cilium/state/services/v1/c1/default/${derived}`)!).ok);
  });
});

describe('pod identities', () => {
  const setup = (failFirst = 0) => {
    const pods = new ResourceCache<Pod>('Pod');
    const namespaces = new ResourceCache<Namespace>('Namespace');
    const canary = new FakeSink();
    const calls: string[] = [];
    const ids = new Map<string, number>();
    const refs = new Map<number, number>();
    let failures = failFirst;
    const allocator: PodIdentityAllocator = {
      allocate: async (labels) => {
        calls.push(`alloc ${labels}`);
        if (failures > 0) {
          failures--;
          throw new Error('etcd unavailable');
        }
        let id = ids.get(labels);
        const isNew = id === undefined;
        if (id === undefined) ids.set(labels, (id = 65536 + ids.size));
        refs.set(id, (refs.get(id) ?? 0) + 1);
        return { id, labels, isNew };
      },
      release: async (id) => {
        calls.push(`release ${id}`);
        refs.set(id, refs.get(id)! - 1);
        return refs.get(id) === 0;
      },
    };
    const clock = new ManualClock();
    const pi = new PodIdentities({ cluster: 'c1', pods, namespaces, allocator, canary, log, clock, retryMs: 100 });
    pi.start();
    return { pods, namespaces, canary, calls, refs, pi, clock };
  };
  const settle = () => new Promise((r) => setImmediate(r));

  it('waits for pods and namespaces, includes namespace labels, canary after the initial set', async () => {
    const { pods, namespaces, canary, calls, pi } = setup();
    pods.set(pod('web-1', { app: 'web' }, '10.101.1.5'));
    pods.markSynced();
    await settle();
    assert.deepEqual(calls, [], 'nothing before namespaces synced');
    namespaces.set(parseObject('Namespace', { kind: 'Namespace', metadata: { name: 'default', labels: { env: 'prod' } } }));
    namespaces.markSynced();
    await pi.initialSyncDone;
    assert.equal(canary.synced, true);
    assert.deepEqual(calls, [
      'alloc k8s:app=web;k8s:io.cilium.k8s.namespace.labels.env=prod;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.cilium.k8s.policy.serviceaccount=default;k8s:io.kubernetes.pod.namespace=default;',
    ]);
  });

  it('label changes reallocate then release; deleted and finished pods release', async () => {
    const { pods, namespaces, calls, pi, refs } = setup();
    pods.markSynced();
    namespaces.markSynced();
    await pi.initialSyncDone;
    pods.set(pod('a', { app: 'web' }, '10.101.1.5'));
    pods.set(pod('b', { app: 'web' }, '10.101.1.6'));
    await settle();
    const idA = pi.identities().get('default/a')!;
    assert.equal(pi.identities().get('default/b'), idA, 'same labels, same identity');
    assert.equal(refs.get(idA), 2);
    pods.set(pod('a', { app: 'api' }, '10.101.1.5'));
    await settle();
    assert.notEqual(pi.identities().get('default/a'), idA);
    assert.equal(refs.get(idA), 1);
    pods.remove({ namespace: 'default', name: 'b' });
    await settle();
    assert.equal(refs.get(idA), 0);
    pods.set(pod('a', { app: 'api' }, '10.101.1.5', true, { status: { phase: 'Succeeded' } }));
    await settle();
    assert.equal(pi.identities().size, 0);
    assert.ok(calls.filter((c) => c.startsWith('release')).length === 3);
  });

  it('retries a failed allocation with backoff; the canary waits for it', async () => {
    const { pods, namespaces, canary, pi, clock } = setup(2);
    pods.set(pod('a', { app: 'web' }, '10.101.1.5'));
    pods.markSynced();
    namespaces.markSynced();
    await settle();
    assert.equal(canary.synced, false);
    clock.advance(100);
    await settle();
    assert.equal(canary.synced, false);
    clock.advance(200);
    await pi.initialSyncDone;
    assert.equal(canary.synced, true);
    assert.equal(pi.status().failures, 2);
  });
});

describe('apiserver options', () => {
  const base = { clusterName: 'c1', clusterId: '1', etcdConfig: '/etc/etcd.yaml' };
  it('compiles fully-defaulted options', () => {
    const c = compileApiserverOptions(base);
    assert.equal(c.clusterId, 1);
    assert.equal(c.maxConnectedClusters, 255);
    assert.equal(c.heartbeatIntervalMs, 15_000);
    assert.equal(c.identityGcGraceMs, 300_000);
    assert.equal(c.metricsAddress, '127.0.0.1:9963');
    assert.equal(compileApiserverOptions({ ...base, metricsAddress: '' }).metricsAddress, '', "'' turns the endpoint off");
    assert.equal(compileApiserverOptions({ ...base, clusterId: '400', maxConnectedClusters: '511' }).clusterId, 400);
    assert.equal(c.kubeconfig, undefined, 'no --kubeconfig: the store in etcd');
    assert.equal(parseDuration('--x', '250ms'), 250);
    assert.equal(parseDuration('--x', '1.5s'), 1500);
  });
  it('errors name the bad option', () => {
    const cases: [object, string][] = [
      [{ ...base, clusterName: 'Bad' }, '--cluster-name'],
      [{ ...base, clusterName: undefined }, '--cluster-name'],
      [{ ...base, clusterId: '256' }, '--cluster-id'],
      [{ ...base, clusterId: '0' }, '--cluster-id'],
      [{ ...base, clusterId: 'x' }, '--cluster-id'],
      [{ ...base, maxConnectedClusters: '300' }, '--max-connected-clusters'],
      [{ ...base, etcdConfig: undefined }, '--etcd-config'],
      [{ ...base, heartbeatInterval: '0s' }, '--heartbeat-interval'],
      [{ ...base, sessionTtl: '1' }, '--session-ttl'],
      [{ ...base, identityGcGrace: 'soon' }, '--identity-gc-grace'],
      [{ ...base, logLevel: 'loud' }, '--log-level'],
      [{ ...base, metricsAddress: '9963' }, '--metrics-address'],
      [{ ...base, kubeconfig: '/nonexistent/kubeconfig' }, '--kubeconfig'],
    ];
    for (const [raw, option] of cases) {
      assert.throws(
        () => compileApiserverOptions(raw),
        (e: unknown) => e instanceof OptionError && e.option === option && e.message.startsWith(`${option}: `),
        option,
      );
    }
  });
});

describe('etcd config file', () => {
  it('resolves relative paths; errors name the file and the field', async () => {
    const { mkdtemp, rm, writeFile } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { loadEtcdConfig } = await import('./options.ts');
    const dir = await mkdtemp(join(tmpdir(), 'cm-etcdcfg-'));
    try {
      const f = join(dir, 'etcd.yaml');
      for (const n of ['ca.crt', 'c.crt', 'k.key']) await writeFile(join(dir, n), 'x');
      await writeFile(f, `endpoints: ["https://127.0.0.1:2379"]\ntrusted-ca-file: ca.crt\ncert-file: ${join(dir, 'c.crt')}\nkey-file: k.key\n`);
      const c = await loadEtcdConfig(f);
      assert.deepEqual(c, { endpoints: ['https://127.0.0.1:2379'], caFile: join(dir, 'ca.crt'), certFile: join(dir, 'c.crt'), keyFile: join(dir, 'k.key') });
      await writeFile(f, 'endpoints: ["unix:///run/etcd.sock"]\ntrusted-ca-file: ca.crt\ncert-file: c.crt\nkey-file: k.key\n');
      await assert.rejects(loadEtcdConfig(f), /field endpoints\[0\]: must be https/, 'a unix socket only where the caller allows it');
      assert.deepEqual((await loadEtcdConfig(f, { allowUnixSocket: true })).endpoints, ['unix:///run/etcd.sock']);
      await writeFile(f, 'endpoints: ["https://127.0.0.1:2379"]\ntrusted-ca-file: nope.crt\ncert-file: c.crt\nkey-file: k.key\n');
      await assert.rejects(loadEtcdConfig(f), /field trusted-ca-file: .*nope\.crt does not exist/);
      await writeFile(f, 'endpoints: ["http://127.0.0.1:2379"]\ntrusted-ca-file: a\ncert-file: b\nkey-file: c\n');
      await assert.rejects(loadEtcdConfig(f), (e: unknown) => e instanceof OptionError && e.message.startsWith(`--etcd-config ${f}: field endpoints[0]: must be https`));
      await writeFile(f, 'endpoints: ["https://x:1"]\ntrusted-ca-file: a\ncert-file: b\nkey-file: c\ncolor: red\n');
      await assert.rejects(loadEtcdConfig(f), /field color: unknown field/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
