// bench/k8s-source: the kubernetes cluster source at 10,000 pods and 2,000
// Services (with one EndpointSlice each) in one cluster, served by the lab's
// Kubernetes API server over HTTPS from a real etcd.
//   sync:   start → every kind synced (list of every page, then watches open),
//           and the CPU time the client process spent on it
//   memory: the process's RSS, its growth from before start, and the heap the
//           cache holds (heap + external after GC, minus the same before start)
// Each rep is a fresh process (child.ts). Baseline `raw`: the same paginated
// lists with the items kept as the API sent them (an informer's cache of full
// objects), no conversion, no watch.
// Usage: npm run bench -- k8s-source [--pods N] [--services N] [--reps N] [--write]
// Writes bench/results/k8s-source-partial.json unless --write (k8s-source.json).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { KvClient, startEtcd } from '../../src/kvstore/index.ts';
import { startKubeApi } from '../../src/lab/kube-api/index.ts';
import { printTable, summarize, writeResults, type Sample } from '../lib/results.ts';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));

const { values } = parseArgs({
  options: {
    pods: { type: 'string', default: '10000' },
    services: { type: 'string', default: '2000' },
    reps: { type: 'string', default: '3' },
    write: { type: 'boolean', default: false },
  },
});
const int = (name: string, v: string | undefined, min: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${v}`);
  return n;
};
const PODS = int('pods', values.pods, 1);
const SERVICES = int('services', values.services, 1);
const REPS = int('reps', values.reps, 1);
const NAMESPACES = 20;
const NODES = 100;
const resultsName = values.write ? 'k8s-source' : 'k8s-source-partial';
const params = { pods: PODS, services: SERVICES, endpointSlices: SERVICES, nodes: NODES, namespaces: NAMESPACES };

const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
const root = await mkdtemp(join(base, 'cm-bench-k8s-'));
const samples: Sample[] = [];
const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const ip = (n: number, off: number): string => `10.${100 + (n >> 16)}.${(n >> 8) & 255}.${n & 255 || off}`;

const etcd = await startEtcd({ dir: join(root, 'etcd'), clusterName: 'bench' });
let kv: KvClient | undefined;
let stopServer: (() => Promise<void>) | undefined;
try {
  await etcd.clientCert('root');
  kv = new KvClient(etcd.connection('root', { timeoutMs: 30_000 }));
  const { server, kubeconfig } = await startKubeApi({ kv, dir: root, clusterName: 'bench' });
  stopServer = () => server.stop();
  const type = (group: string, version: string, plural: string) => {
    const r = server.registry.find(group, version, plural);
    if (!r) throw new Error(`not served: ${plural}`);
    return r;
  };
  // The Cilium policy CRDs, as on a cluster running Cilium (their kinds are watched too).
  for (const doc of parseAllDocuments(await readFile(join(here, '../../deploy/crds/cilium-policies.yaml'), 'utf8'))) {
    const crd = doc.toJS() as Record<string, unknown> | null;
    if (crd) await server.create(type('apiextensions.k8s.io', 'v1', 'customresourcedefinitions'), undefined, crd as never, new URLSearchParams());
  }
  const meta = (name: string, namespace: string | undefined, labels: Record<string, string>) => ({ name, ...(namespace ? { namespace } : {}), uid: randomUUID(), creationTimestamp: now, labels });
  const writes: Array<() => Promise<unknown>> = [];
  const put = (r: ReturnType<typeof type>, namespace: string | undefined, object: Record<string, unknown>): void => {
    const name = (object.metadata as { name: string }).name;
    writes.push(() => server.store.put(server.store.key(r, namespace, name), object as Parameters<typeof server.store.put>[1], 'create'));
  };
  const nsOf = (i: number): string => `bench-${i % NAMESPACES}`;
  for (let i = 0; i < NAMESPACES; i++) put(type('', 'v1', 'namespaces'), undefined, { apiVersion: 'v1', kind: 'Namespace', metadata: meta(nsOf(i), undefined, { 'kubernetes.io/metadata.name': nsOf(i) }), spec: { finalizers: ['kubernetes'] }, status: { phase: 'Active' } });
  for (let n = 1; n <= NODES; n++) {
    put(type('', 'v1', 'nodes'), undefined, {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: meta(`node${n}`, undefined, { 'kubernetes.io/hostname': `node${n}`, 'kubernetes.io/os': 'linux' }),
      spec: { podCIDR: `10.${100 + (n >> 8)}.${n & 255}.0/24`, podCIDRs: [`10.${100 + (n >> 8)}.${n & 255}.0/24`] },
      status: { addresses: [{ type: 'InternalIP', address: `10.1.${n >> 8}.${n & 255}` }, { type: 'Hostname', address: `node${n}` }], conditions: [{ type: 'Ready', status: 'True', lastHeartbeatTime: now }] },
    });
  }
  const perService = Math.max(1, Math.floor(PODS / SERVICES));
  for (let i = 0; i < PODS; i++) {
    const ns = nsOf(Math.floor(i / perService) % SERVICES);
    const app = `app-${Math.floor(i / perService) % SERVICES}`;
    put(type('', 'v1', 'pods'), ns, {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { ...meta(`${app}-${i}`, ns, { app, 'pod-template-hash': '5d9f8c7b6' }), ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${app}-5d9f8c7b6`, uid: randomUUID(), controller: true }] },
      spec: {
        nodeName: `node${(i % NODES) + 1}`,
        serviceAccountName: 'default',
        containers: [{ name: 'app', image: 'registry.example/app:1.2.3', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }], resources: { requests: { cpu: '100m', memory: '64Mi' } }, env: [{ name: 'MODE', value: 'bench' }] }],
        restartPolicy: 'Always',
        dnsPolicy: 'ClusterFirst',
      },
      status: {
        phase: 'Running',
        podIP: ip(i + 1, 1),
        podIPs: [{ ip: ip(i + 1, 1) }],
        hostIP: `10.1.0.${(i % NODES) + 1}`,
        conditions: ['Initialized', 'Ready', 'ContainersReady', 'PodScheduled'].map((type) => ({ type, status: 'True', lastTransitionTime: now })),
        containerStatuses: [{ name: 'app', ready: true, restartCount: 0, image: 'registry.example/app:1.2.3', imageID: 'sha256:0123456789abcdef', containerID: 'containerd://0123456789abcdef', started: true, state: { running: { startedAt: now } } }],
        startTime: now,
      },
    });
  }
  for (let s = 0; s < SERVICES; s++) {
    const ns = nsOf(s);
    const app = `app-${s}`;
    put(type('', 'v1', 'services'), ns, {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: meta(app, ns, { app }),
      spec: { type: 'ClusterIP', clusterIP: `10.96.${s >> 8}.${(s & 255) || 1}`, clusterIPs: [`10.96.${s >> 8}.${(s & 255) || 1}`], ipFamilies: ['IPv4'], ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }], selector: { app }, sessionAffinity: 'None' },
      status: { loadBalancer: {} },
    });
    const eps = [];
    for (let k = 0; k < perService; k++) {
      const i = s * perService + k;
      if (i >= PODS) break;
      eps.push({ addresses: [ip(i + 1, 1)], conditions: { ready: true, serving: true, terminating: false }, nodeName: `node${(i % NODES) + 1}`, targetRef: { kind: 'Pod', namespace: ns, name: `${app}-${i}`, uid: randomUUID() } });
    }
    put(type('discovery.k8s.io', 'v1', 'endpointslices'), ns, {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { ...meta(`${app}-x7k2p`, ns, { 'kubernetes.io/service-name': app, 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' }) },
      addressType: 'IPv4',
      endpoints: eps,
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    });
  }
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (next < writes.length) await writes[next++]!();
    }),
  );
  console.log(`wrote ${writes.length} objects in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  for (let rep = 0; rep < REPS; rep++) {
    for (const mode of ['raw', 'source'] as const) {
      const { stdout } = await run(process.execPath, ['--expose-gc', '--import', 'tsx', join(here, 'child.ts'), mode, kubeconfig], { maxBuffer: 1 << 20, timeout: 900_000 });
      const r = JSON.parse(stdout.trim().split('\n').pop()!) as { objects: number; syncMs: number; cpuMs: number; rssMiB: number; rssBeforeMiB: number; heapMiB: number };
      console.log(`rep ${rep} ${mode}: ${r.objects} objects, sync ${r.syncMs.toFixed(0)} ms (cpu ${r.cpuMs.toFixed(0)} ms), rss ${r.rssMiB.toFixed(1)} MiB, heap held ${r.heapMiB.toFixed(1)} MiB`);
      const config = mode === 'source' ? 'kubernetes-source' : 'raw-list';
      samples.push({ config, metric: 'sync_time', unit: 'ms', rep, value: r.syncMs, params: { ...params, objects: r.objects } });
      samples.push({ config, metric: 'sync_cpu', unit: 'ms', rep, value: r.cpuMs, params: { ...params, objects: r.objects } });
      samples.push({ config, metric: 'rss', unit: 'MiB', rep, value: r.rssMiB, params: { ...params, objects: r.objects } });
      samples.push({ config, metric: 'rss_growth', unit: 'MiB', rep, value: r.rssMiB - r.rssBeforeMiB, params: { ...params, objects: r.objects } });
      samples.push({ config, metric: 'heap_held', unit: 'MiB', rep, value: r.heapMiB, params: { ...params, objects: r.objects } });
    }
  }
} finally {
  await stopServer?.();
  await kv?.close();
  await etcd.stop();
  await rm(root, { recursive: true, force: true });
}

const rows = summarize(samples);
const file = writeResults(resultsName, rows, samples, 0);
printTable(rows, 'raw-list');
console.log(`results: ${file}`);
