// The lab's controllers (src/lab/controllers) against the lab's Kubernetes API
// server over a real etcd, driven with real kubectl: a Deployment gets its
// Pods; pods given an IP and Ready (through the status subresource, as a
// kubelet would) become EndpointSlice endpoints with the right addresses,
// ports and conditions; rollout status, scale, a terminating pod, delete.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AppsV1Api, CoreV1Api, KubeConfig, type V1Pod } from '@kubernetes/client-node';

import { KvClient, startEtcd, type EtcdServer } from '../src/kvstore/index.ts';
import { startKubeApi, type KubeApiServer } from '../src/lab/kube-api/index.ts';
import { desiredSlices, kubeConfigFor, resolvePorts, startControllers, type RunningControllers } from '../src/lab/controllers/index.ts';
import { eventually, kubectlFor } from './helpers/kube.ts';

let dir: string;
let etcd: EtcdServer;
let kv: KvClient;
let server: KubeApiServer;
let kubeconfig: string;
let controllers: RunningControllers;
let core: CoreV1Api;
let apps: AppsV1Api;
const NS = 'cmt-ctl';

const { kubectl, kubectlOk } = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(dir, 'kube-cache'), timeoutMs: 90_000 });

const SAFE = '[bcdfghjklmnpqrstvwxz2456789]';
const livePods = async (): Promise<V1Pod[]> =>
  (await core.listNamespacedPod({ namespace: NS, labelSelector: 'app=web' })).items.filter((p) => !p.metadata?.deletionTimestamp).sort((a, b) => a.metadata!.name!.localeCompare(b.metadata!.name!));
const podsCount = (n: number) => async (): Promise<V1Pod[] | undefined> => {
  const pods = await livePods();
  return pods.length === n ? pods : undefined;
};

/** What a kubelet writes: the pod runs, has `ip`, and is Ready or not. */
async function setPodStatus(name: string, ip: string, ready: boolean): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const pod = await core.readNamespacedPod({ name, namespace: NS });
    const now = new Date();
    pod.status = {
      phase: 'Running',
      podIP: ip,
      podIPs: [{ ip }],
      conditions: [
        { type: 'Ready', status: ready ? 'True' : 'False', lastTransitionTime: now },
        { type: 'ContainersReady', status: ready ? 'True' : 'False', lastTransitionTime: now },
      ],
    };
    try {
      await core.replaceNamespacedPodStatus({ name, namespace: NS, body: pod });
      return;
    } catch (err) {
      if ((err as { code?: number }).code !== 409 || attempt > 5) throw err;
    }
  }
}

interface SliceView {
  name: string;
  ports: string[];
  endpoints: Array<{ ip: string; pod: string; ready: boolean; serving: boolean; terminating: boolean }>;
}
async function slicesOf(svc: string): Promise<SliceView[]> {
  const list = JSON.parse(await kubectlOk('get', 'endpointslices.discovery.k8s.io', '-n', NS, '-l', `kubernetes.io/service-name=${svc}`, '-o', 'json')) as {
    items: Array<{ metadata: { name: string }; ports?: Array<{ name?: string; port?: number; protocol?: string }>; endpoints?: Array<{ addresses: string[]; targetRef?: { name: string }; conditions?: { ready?: boolean; serving?: boolean; terminating?: boolean } }> }>;
  };
  return list.items.map((s) => ({
    name: s.metadata.name,
    ports: (s.ports ?? []).map((p) => `${p.name ?? ''}:${p.port}/${p.protocol}`).sort(),
    endpoints: (s.endpoints ?? [])
      .map((e) => ({ ip: e.addresses[0]!, pod: e.targetRef?.name ?? '', ready: e.conditions?.ready === true, serving: e.conditions?.serving === true, terminating: e.conditions?.terminating === true }))
      .sort((a, b) => a.ip.localeCompare(b.ip)),
  }));
}

describe('lab controllers: Deployment and EndpointSlice, with kubectl', { timeout: 600_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cmt-kube-ctl-'));
    etcd = await startEtcd({ dir: join(dir, 'etcd'), clusterName: 'kctl' });
    await etcd.clientCert('root');
    kv = new KvClient(etcd.connection('root', { timeoutMs: 15_000 }));
    let pki;
    ({ server, pki, kubeconfig } = await startKubeApi({ kv, dir, clusterName: 'cluster1' }));
    controllers = await startControllers(kubeConfigFor(server.url, { caFile: pki.ca.certFile, certFile: pki.admin.certFile, keyFile: pki.admin.keyFile }), { resyncMs: 2000 });
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    core = kc.makeApiClient(CoreV1Api);
    apps = kc.makeApiClient(AppsV1Api);
    await kubectlOk('create', 'namespace', NS);
  });

  after(async () => {
    await controllers?.stop();
    await server?.stop();
    await kv?.close();
    await etcd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a Deployment gets its pods; ready pods with IPs become EndpointSlice endpoints; rollout status, scale, terminating, delete', async () => {
    const manifest = join(dir, 'web.yaml');
    await writeFile(
      manifest,
      `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: ${NS}}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: front}}
    spec:
      containers:
      - name: web
        command: [clustermesh, lab, workload, echo]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ${NS}}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 81, targetPort: 9090}
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: ${NS}}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: ${NS}}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
`,
    );
    await kubectlOk('apply', '-f', manifest);

    // Pods: named <deployment>-<template hash>-<suffix>, template labels plus pod-template-hash, owned by the Deployment.
    const pods = await eventually('3 pods of deployment web', podsCount(3));
    const dep = await apps.readNamespacedDeployment({ name: 'web', namespace: NS });
    const hash = pods[0]!.metadata!.labels!['pod-template-hash']!;
    for (const p of pods) {
      assert.match(p.metadata!.name!, new RegExp(`^web-${SAFE}{10}-${SAFE}{5}$`));
      assert.equal(p.metadata!.labels!['pod-template-hash'], hash);
      assert.equal(p.metadata!.name!.split('-')[1], hash);
      assert.equal(p.metadata!.labels!.tier, 'front');
      assert.deepEqual(
        p.metadata!.ownerReferences!.map((r) => [r.kind, r.name, r.uid, r.controller]),
        [['Deployment', 'web', dep.metadata!.uid, true]],
      );
      assert.equal(p.spec!.containers[0]!.ports![0]!.name, 'http');
    }
    // Not ready yet: rollout status waits and gives up.
    const waiting = await kubectl('rollout', 'status', `deployment/web`, '-n', NS, '--timeout=2s');
    assert.notEqual(waiting.code, 0, 'rollout status must not succeed while no pod is ready');
    assert.match(waiting.stdout + waiting.stderr, /Waiting for deployment "web" rollout to finish: 0 of 3 updated replicas are available/);

    // No pod has an IP: the Service's one slice is empty; the Service without a selector has none.
    await eventually('an empty slice for web', async () => {
      const s = await slicesOf('web');
      return s.length === 1 && s[0]!.endpoints.length === 0 ? true : undefined;
    });
    await eventually('an empty slice for nobody', async () => ((await slicesOf('nobody')).length === 1 ? true : undefined));

    // Two pods ready, one running but not ready.
    const [a, b, c] = pods.map((p) => p.metadata!.name!) as [string, string, string];
    await setPodStatus(a, '10.244.1.11', true);
    await setPodStatus(b, '10.244.1.12', true);
    await setPodStatus(c, '10.244.1.13', false);
    const want = (readyC: boolean): SliceView['endpoints'] => [
      { ip: '10.244.1.11', pod: a, ready: true, serving: true, terminating: false },
      { ip: '10.244.1.12', pod: b, ready: true, serving: true, terminating: false },
      { ip: '10.244.1.13', pod: c, ready: readyC, serving: readyC, terminating: false },
    ];
    const slices = await eventually('3 endpoints in web\'s slice', async () => {
      const s = await slicesOf('web');
      return s.length === 1 && s[0]!.endpoints.length === 3 ? s : undefined;
    });
    assert.deepEqual(slices[0]!.endpoints, want(false));
    assert.deepEqual(slices[0]!.ports, ['http:8080/TCP', 'metrics:9090/TCP'], 'targetPort http resolved to the container port, 9090 taken as is');
    const full = JSON.parse(await kubectlOk('get', 'endpointslice', slices[0]!.name, '-n', NS, '-o', 'json'));
    assert.equal(full.addressType, 'IPv4');
    assert.equal(full.metadata.labels['endpointslice.kubernetes.io/managed-by'], 'endpointslice-controller.k8s.io');
    assert.deepEqual(full.metadata.ownerReferences.map((r: { kind: string; name: string }) => `${r.kind}/${r.name}`), ['Service/web']);

    await setPodStatus(c, '10.244.1.13', true);
    await eventually('pod c ready in the slice', async () => ((await slicesOf('web'))[0]?.endpoints[2]?.ready ? true : undefined));
    assert.deepEqual((await slicesOf('web'))[0]!.endpoints, want(true));
    await kubectlOk('rollout', 'status', 'deployment/web', '-n', NS, '--timeout=60s');
    const st = (await apps.readNamespacedDeployment({ name: 'web', namespace: NS })).status!;
    assert.deepEqual([st.replicas, st.updatedReplicas, st.readyReplicas, st.availableReplicas, st.observedGeneration], [3, 3, 3, 3, dep.metadata!.generation]);
    assert.equal(st.conditions?.find((x) => x.type === 'Available')?.status, 'True');
    assert.equal(await kubectlOk('get', 'deployment', 'web', '-n', NS, '-o', 'jsonpath={.status.readyReplicas}/{.spec.replicas}'), '3/3');
    assert.deepEqual(await slicesOf('external'), [], 'a Service without a selector gets no slice');

    // A pod held by a finalizer while deleted: terminating, not ready, still serving.
    await kubectlOk('patch', 'pod', a, '-n', NS, '--type=merge', '-p', '{"metadata":{"finalizers":["cmt.test/hold"]}}');
    await kubectlOk('delete', 'pod', a, '-n', NS, '--wait=false');
    await eventually('pod a terminating in the slice', async () => {
      const e = (await slicesOf('web'))[0]?.endpoints.find((x) => x.pod === a);
      return e?.terminating ? e : undefined;
    }).then((e) => assert.deepEqual(e, { ip: '10.244.1.11', pod: a, ready: false, serving: true, terminating: true }));
    // The Deployment replaces it.
    await eventually('a replacement pod', podsCount(3));
    await kubectlOk('patch', 'pod', a, '-n', NS, '--type=merge', '-p', '{"metadata":{"finalizers":null}}');
    await eventually('pod a gone from the slice', async () => ((await slicesOf('web'))[0]?.endpoints.some((x) => x.pod === a) === false ? true : undefined));

    // Scale down: kubectl scale (the scale subresource); the not-ready replacement goes first.
    await kubectlOk('scale', 'deployment/web', '-n', NS, '--replicas=1');
    const left = await eventually('1 pod after scaling to 1', podsCount(1));
    assert.ok([b, c].includes(left[0]!.metadata!.name!), `a ready pod stays, not the new one: ${left[0]!.metadata!.name}`);
    await eventually('1 endpoint after scaling to 1', async () => ((await slicesOf('web'))[0]?.endpoints.length === 1 ? true : undefined));
    await kubectlOk('rollout', 'status', 'deployment/web', '-n', NS, '--timeout=60s');
    assert.equal(await kubectlOk('get', 'deployment', 'web', '-n', NS, '-o', 'jsonpath={.status.replicas}/{.status.readyReplicas}'), '1/1');
    // Scale up again.
    await kubectlOk('scale', 'deployment/web', '-n', NS, '--replicas=2');
    await eventually('2 pods after scaling to 2', podsCount(2));

    // Delete: the pods and the slices go with their owners.
    await kubectlOk('delete', '-f', manifest);
    await eventually('no pods after delete', podsCount(0));
    await eventually('no slices after delete', async () => ((await slicesOf('web')).length === 0 && (await slicesOf('nobody')).length === 0 ? true : undefined));
  });

  test('a changed template rolls out: new pods first, old ones go as the new ones become ready', async () => {
    const mk = (version: string): string => `apiVersion: apps/v1
kind: Deployment
metadata: {name: roll, namespace: ${NS}}
spec:
  replicas: 2
  selector: {matchLabels: {app: roll}}
  template:
    metadata: {labels: {app: roll}, annotations: {version: "${version}"}}
    spec:
      containers: [{name: c, command: [sleep, infinity]}]
`;
    const f = join(dir, 'roll.yaml');
    const rollPods = async (): Promise<V1Pod[]> => (await core.listNamespacedPod({ namespace: NS, labelSelector: 'app=roll' })).items.filter((p) => !p.metadata?.deletionTimestamp);
    await writeFile(f, mk('1'));
    await kubectlOk('apply', '-f', f);
    const v1 = await eventually('2 pods of v1', async () => ((await rollPods()).length === 2 ? await rollPods() : undefined));
    for (const [i, p] of v1.entries()) await setPodStatus(p.metadata!.name!, `10.244.2.${10 + i}`, true);
    await kubectlOk('rollout', 'status', 'deployment/roll', '-n', NS, '--timeout=60s');

    await writeFile(f, mk('2'));
    await kubectlOk('apply', '-f', f);
    const oldNames = new Set(v1.map((p) => p.metadata!.name!));
    const v2 = await eventually('2 pods of v2 beside the old ones', async () => {
      const ps = (await rollPods()).filter((p) => !oldNames.has(p.metadata!.name!));
      return ps.length === 2 ? ps : undefined;
    });
    assert.notEqual(v2[0]!.metadata!.labels!['pod-template-hash'], v1[0]!.metadata!.labels!['pod-template-hash']);
    assert.equal(v2[0]!.metadata!.annotations!.version, '2');
    // maxUnavailable 25% of 2 = 0: no old pod goes before a new one is ready.
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal((await rollPods()).filter((p) => oldNames.has(p.metadata!.name!)).length, 2, 'old pods stay while no new one is ready');
    const waiting = await kubectl('rollout', 'status', 'deployment/roll', '-n', NS, '--timeout=2s');
    assert.notEqual(waiting.code, 0);
    for (const [i, p] of v2.entries()) await setPodStatus(p.metadata!.name!, `10.244.2.${20 + i}`, true);
    await kubectlOk('rollout', 'status', 'deployment/roll', '-n', NS, '--timeout=60s');
    await eventually('only v2 pods', async () => ((await rollPods()).every((p) => !oldNames.has(p.metadata!.name!)) ? true : undefined));
    await kubectlOk('delete', '-f', f);
  });

  test('ports resolve per pod: a pod without the named port is left out of that port, in a slice of its own', () => {
    const svc = { metadata: { name: 's', namespace: 'n', uid: 'u' }, spec: { selector: { app: 'x' }, ports: [{ name: 'web', port: 80, targetPort: 'http' as unknown as object }, { name: 'raw', port: 90 }] } };
    const pod = (name: string, ip: string, named: boolean): V1Pod => ({
      metadata: { name, namespace: 'n', uid: name },
      spec: { containers: [{ name: 'c', ports: named ? [{ name: 'http', containerPort: 8080 }] : [] }] },
      status: { podIP: ip, conditions: [{ type: 'Ready', status: 'True' }] },
    });
    // @ts-expect-error targetPort is IntOrString in the API, typed as object by the client
    assert.deepEqual(resolvePorts(svc, pod('a', '10.0.0.1', true)).map((p) => `${p.name}:${p.port}`), ['web:8080', 'raw:90']);
    // @ts-expect-error as above
    const slices = desiredSlices(svc, [pod('a', '10.0.0.1', true), pod('b', '10.0.0.2', false), pod('c', '10.0.0.3', true)]);
    assert.deepEqual(
      slices.map((s) => [s.ports!.map((p) => `${p.name}:${p.port}`).join(','), s.endpoints!.map((e) => e.addresses[0]).join(',')]).sort(),
      [['raw:90', '10.0.0.2'], ['web:8080,raw:90', '10.0.0.1,10.0.0.3']],
    );
    assert.ok(slices.every((s) => s.metadata!.labels!['kubernetes.io/service-name'] === 's'));
  });
});
