// bench/controlplane: how fast remote-cluster state reaches an importer.
//   propagation: a write in cluster A's etcd → visible in B's ClusterMesh ipcache
//                (config clustermesh) vs. a bare etcd watch event on the same write
//                (config limit), p50/p99 over --changes sequential changes per rep.
//   sync:        a fresh importer process importing --clusters remote clusters ×
//                --endpoints endpoints each until every remote is ready (clustermesh)
//                vs. a process that only lists the same keys (limit): time, CPU,
//                RSS, and the CPU of the etcds meanwhile. The remotes are simulated
//                (sim.ts): --per-etcd clusters' keyspaces per etcd process, one
//                connection and one etcd user per remote. In the first rep the
//                importer then times --changes single changes (scale_propagation).
// Real etcd processes with mutual TLS and auth (data dirs on /dev/shm when present).
// Usage: npm run bench -- controlplane [--changes N] [--reps N] [--clusters N] [--endpoints N]
//          [--per-etcd N] [--sync-concurrency N] [--only propagation,sync] [--profile DIR] [--write]
//   --profile DIR: the importer processes write CPU profiles (node --cpu-prof) there.
// Defaults: 254 remotes (a 255-cluster mesh) × 1,000 endpoints, 32 per etcd, 3 reps.
// A run with --only or other sizes than the defaults writes controlplane-partial.json unless --write.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { Registry } from 'prom-client';
import { ClusterMesh } from '../../src/clustermesh/clustermesh.ts';
import { ipKey, nodeKey, identityKey, serviceKey, syncedKey, SYNCED_PREFIX_NAMES, clusterConfigKey } from '../../src/clustermesh/keys.ts';
import { silentLogger } from '../../src/clustermesh/remote-cluster.ts';
import { TestCluster } from '../../src/clustermesh/testing.ts';
import { encodeClusterConfig, encodeIdentity, encodeIpEntry, encodeNode, encodeService } from '../../src/clustermesh/wire.ts';
import { KvClient } from '../../src/kvstore/client.ts';
import type { EtcdServer } from '../../src/kvstore/etcd-process.ts';
import { startSimulation } from './sim.ts';
import { percentile, printTable, summarize, writeResults, type Sample } from '../lib/results.ts';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));

const { values } = parseArgs({
  options: {
    changes: { type: 'string', default: '1000' },
    reps: { type: 'string', default: '3' },
    clusters: { type: 'string', default: '254' },
    endpoints: { type: 'string', default: '1000' },
    'per-etcd': { type: 'string', default: '32' },
    only: { type: 'string' },
    profile: { type: 'string' },
    'sync-concurrency': { type: 'string' },
    write: { type: 'boolean', default: false },
  },
});
const int = (name: string, v: string | undefined, min: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${v}`);
  return n;
};
const CHANGES = int('changes', values.changes, 1);
const REPS = int('reps', values.reps, 1);
const CLUSTERS = int('clusters', values.clusters, 1);
const ENDPOINTS = int('endpoints', values.endpoints, 1);
const PER_ETCD = int('per-etcd', values['per-etcd'], 1);
if (CLUSTERS > 254) throw new Error(`--clusters must be at most 254 (cluster IDs 1..254, the importer is 255), got ${CLUSTERS}`);
const only = values.only ? new Set(values.only.split(',')) : null;
// A partial run (--only, fewer clusters, other sizes) must not replace the data behind
// the published comparison: it writes controlplane-partial unless --write says otherwise.
const partial = only !== null || CHANGES !== 1000 || REPS !== 3 || CLUSTERS !== 254 || ENDPOINTS !== 1000 || PER_ETCD !== 32 || values['sync-concurrency'] !== undefined;
const resultsName = partial && !values.write ? 'controlplane-partial' : 'controlplane';

const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
const root = await mkdtemp(join(base, 'cm-bench-cp-'));
const clusters: TestCluster[] = [];
const samples: Sample[] = [];
const simServers: EtcdServer[] = [];

/** Writes many keys with `concurrency` puts in flight. */
async function putAll(kv: KvClient, pairs: Array<[string, string]>, concurrency = 64): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (i < pairs.length) {
        const [k, v] = pairs[i++]!;
        await kv.put(k, v);
      }
    }),
  );
}

/** A remote cluster's exported state: nodes of 100 endpoints each, 50 identities, 10 services. */
function dataset(c: TestCluster, endpoints: number): Array<[string, string]> {
  const out: Array<[string, string]> = [[clusterConfigKey(c.name), encodeClusterConfig({ id: c.id, capabilities: { syncedCanaries: true, maxConnectedClusters: 255 } })]];
  const nodes = Math.ceil(endpoints / 100);
  for (let n = 1; n <= nodes; n++) {
    out.push([nodeKey(c.name, `node${n}`), encodeNode({ Name: `node${n}`, Cluster: c.name, ClusterID: c.id, IPAddresses: [{ Type: 'InternalIP', IP: `10.${c.id}.${n >> 8}.${n & 255}` }], IPv4AllocCIDR: null, Labels: { 'kubernetes.io/hostname': `node${n}` } })]);
  }
  for (let i = 1; i <= 50; i++) out.push([identityKey(c.identity(i)), encodeIdentity(c.labels(`app${i}`))]);
  for (let e = 0; e < endpoints; e++) {
    const ip = `10.${100 + c.id}.${e >> 8}.${e & 255}`;
    const node = 1 + Math.floor(e / 100);
    out.push([ipKey(ip), encodeIpEntry({ IP: ip, Mask: null, HostIP: `10.${c.id}.${node >> 8}.${node & 255}`, ID: c.identity(1 + (e % 50)), Key: 0, K8sNamespace: 'default', K8sPodName: `pod-${e}` })]);
  }
  for (let s = 0; s < 10; s++) {
    out.push([serviceKey(c.name, 'default', `svc${s}`), encodeService({ cluster: c.name, namespace: 'default', name: `svc${s}`, frontends: { [`10.96.0.${s + 1}`]: { http: { Protocol: 'TCP', Port: 80 } } }, backends: Object.fromEntries(Array.from({ length: 10 }, (_, b) => [`10.${100 + c.id}.0.${s * 10 + b}`, { http: { Protocol: 'TCP' as const, Port: 8080 } }])), labels: {}, selector: { app: `svc${s}` }, shared: true, includeExternal: true, clusterID: c.id })]);
  }
  return out;
}

async function propagation(): Promise<void> {
  const a = await TestCluster.start(root, 'prop-a', 2);
  clusters.push(a);
  await putAll(a.writer, dataset(a, 100));
  for (const p of SYNCED_PREFIX_NAMES) await a.writer.put(syncedKey(a.name, p), new Date().toISOString());
  const cfgDir = join(root, 'prop-config');
  await mkdir(cfgDir);
  await a.writeConfigFile(cfgDir);
  const mesh = new ClusterMesh({ localCluster: { name: 'prop-b', id: 1 }, configDir: cfgDir, logger: silentLogger, registry: new Registry(), useFsWatch: false });
  const raw = new KvClient(a.etcd.connection('remote'));
  try {
    await mesh.start();
    await mesh.waitReady();
    const rev = (await raw.list(ipKey(''), { pageSize: 1 })).revision;
    const waiting = new Map<string, { limit?: (t: number) => void; clustermesh?: (t: number) => void }>();
    const watch = raw.watch(ipKey(''), (BigInt(rev) + 1n).toString(), (ev) => {
      if (ev.kind === 'upsert') waiting.get(ev.value.slice(ev.value.indexOf('"K8sPodName"')))?.limit?.(performance.now());
    }, () => {});
    mesh.ipcache.subscribe((ev) => {
      if (ev.kind === 'upsert') waiting.get(`"K8sPodName":"${ev.value.podName}"}`)?.clustermesh?.(performance.now());
    }, { replay: false });
    let change = 0;
    for (let rep = 0; rep < REPS; rep++) {
      const lat: Record<'limit' | 'clustermesh', number[]> = { limit: [], clustermesh: [] };
      for (let i = 0; i < CHANGES; i++, change++) {
        const e = change % 100;
        const ip = `10.${100 + a.id}.${e >> 8}.${e & 255}`;
        const podName = `bench-${change}`;
        const value = encodeIpEntry({ IP: ip, Mask: null, HostIP: `10.${a.id}.0.1`, ID: a.identity(1 + (change % 50)), Key: 0, K8sNamespace: 'default', K8sPodName: podName });
        const tag = `"K8sPodName":"${podName}"}`;
        const seen = Promise.all(
          (['limit', 'clustermesh'] as const).map(
            (cfg) =>
              new Promise<number>((resolve, reject) => {
                const t = setTimeout(() => reject(new Error(`change ${change} not seen by ${cfg} within 10 s`)), 10_000);
                const slot = waiting.get(tag) ?? {};
                slot[cfg] = (at) => {
                  clearTimeout(t);
                  resolve(at);
                };
                waiting.set(tag, slot);
              }),
          ),
        );
        const t0 = performance.now();
        await a.writer.put(ipKey(ip), value);
        const [tl, tc] = await seen;
        waiting.delete(tag);
        lat.limit.push(tl! - t0);
        lat.clustermesh.push(tc! - t0);
      }
      for (const cfg of ['limit', 'clustermesh'] as const) {
        const params = { changes: CHANGES };
        samples.push({ config: cfg, metric: 'propagation_p50', unit: 'ms', rep, value: percentile(lat[cfg], 50), params });
        samples.push({ config: cfg, metric: 'propagation_p99', unit: 'ms', rep, value: percentile(lat[cfg], 99), params });
      }
      console.error(`propagation rep ${rep + 1}/${REPS}: clustermesh p50 ${percentile(lat.clustermesh, 50).toFixed(2)} ms p99 ${percentile(lat.clustermesh, 99).toFixed(2)} ms; etcd watch p50 ${percentile(lat.limit, 50).toFixed(2)} ms`);
    }
    await watch.cancel();
  } finally {
    await mesh.stop();
    await raw.close();
  }
}

/** CPU seconds (user + system) etcd processes have used so far. */
function cpuOf(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14, 15)
  }
  return ticks / 100; // USER_HZ
}

async function sync(): Promise<void> {
  const t0 = performance.now();
  const { spec, servers } = await startSimulation({ root, configDir: join(root, 'sync-config'), clusters: CLUSTERS, endpoints: ENDPOINTS, perEtcd: PER_ETCD, log: (s) => console.error(s) });
  simServers.push(...servers);
  const specFile = join(root, 'spec.json');
  writeFileSync(specFile, JSON.stringify(spec));
  const keys = CLUSTERS * (ENDPOINTS + 50 + 10 + Math.ceil(ENDPOINTS / 100) + 1 + SYNCED_PREFIX_NAMES.length);
  console.error(`sync: ${CLUSTERS} clusters × ${ENDPOINTS} endpoints (${keys} keys) on ${servers.length} etcd processes, written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const params = { remoteClusters: CLUSTERS, endpointsPerCluster: ENDPOINTS, clustersPerEtcd: PER_ETCD };
  const pids = servers.map((s) => s.pid!);
  for (let rep = 0; rep < REPS; rep++) {
    // Alternate which configuration goes first (a machine drifting over the run favours neither).
    const order = [['limit', 'raw'], ['clustermesh', 'mesh']] as const;
    for (const [cfg, mode] of rep % 2 === 0 ? order : [...order].reverse()) {
      const etcdCpu0 = cpuOf(pids);
      const changes = mode === 'mesh' && rep === 0 ? ['--changes', String(CHANGES)] : [];
      if (mode === 'mesh' && values['sync-concurrency']) changes.push('--sync-concurrency', values['sync-concurrency']);
      const { stdout } = await run(process.execPath, ['--expose-gc', ...(values.profile ? ['--cpu-prof', '--cpu-prof-dir', values.profile] : []), '--import', 'tsx', join(here, 'importer.ts'), mode, specFile, ...changes], { maxBuffer: 1 << 20, timeout: 900_000 });
      const etcdCpu = cpuOf(pids) - etcdCpu0;
      const r = JSON.parse(stdout.trim().split('\n').pop()!) as { syncSeconds: number; cpuSeconds: number; rssIdleMiB: number; rssMiB: number; counts: Record<string, number>; propagation?: { changes: number; clustermesh: { p50: number; p99: number }; limit: { p50: number; p99: number } } };
      samples.push({ config: cfg, metric: 'sync_seconds', unit: 's', rep, value: r.syncSeconds, params });
      samples.push({ config: cfg, metric: 'cpu_seconds', unit: 's', rep, value: r.cpuSeconds, params });
      samples.push({ config: cfg, metric: 'rss_mib', unit: 'MiB', rep, value: r.rssMiB, params });
      samples.push({ config: cfg, metric: 'rss_growth_mib', unit: 'MiB', rep, value: r.rssMiB - r.rssIdleMiB, params });
      if (!r.propagation) samples.push({ config: cfg, metric: 'etcd_cpu_seconds', unit: 's', rep, value: etcdCpu, params });
      console.error(`sync rep ${rep + 1}/${REPS} ${cfg}: ${r.syncSeconds.toFixed(2)} s, CPU ${r.cpuSeconds.toFixed(2)} s (etcds ${etcdCpu.toFixed(2)} s), RSS ${r.rssMiB.toFixed(0)} MiB (idle ${r.rssIdleMiB.toFixed(0)}), ${JSON.stringify(r.counts)}`);
      if (mode === 'mesh' && r.counts.ipcache !== CLUSTERS * ENDPOINTS) throw new Error(`importer saw ${r.counts.ipcache} endpoints, expected ${CLUSTERS * ENDPOINTS}`);
      if (mode === 'mesh' && (r.counts.refusedIps !== 0 || r.counts.conflicts !== 0)) throw new Error(`importer refused entries: ${JSON.stringify(r.counts)}`);
      if (r.propagation) {
        const p = r.propagation;
        const pp = { ...params, changes: p.changes };
        for (const [c, v] of [['limit', p.limit], ['clustermesh', p.clustermesh]] as const) {
          samples.push({ config: c, metric: 'scale_propagation_p50', unit: 'ms', rep, value: v.p50, params: pp });
          samples.push({ config: c, metric: 'scale_propagation_p99', unit: 'ms', rep, value: v.p99, params: pp });
        }
        console.error(`propagation with ${CLUSTERS} remotes connected: clustermesh p50 ${p.clustermesh.p50.toFixed(2)} ms p99 ${p.clustermesh.p99.toFixed(2)} ms; etcd watch p50 ${p.limit.p50.toFixed(2)} ms p99 ${p.limit.p99.toFixed(2)} ms`);
      }
    }
  }
}

try {
  if (!only || only.has('propagation')) await propagation();
  if (!only || only.has('sync')) await sync();
} finally {
  await Promise.all([...clusters.map((c) => c.close()), ...simServers.map((s) => s.stop(2000).catch(() => {}))]);
  await rm(root, { recursive: true, force: true });
}
const rows = summarize(samples);
const file = writeResults(resultsName, rows, samples, 0);
if (resultsName !== 'controlplane') console.error(`partial run: wrote ${resultsName}, not controlplane (pass --write to replace it)`);
printTable(rows, 'limit');
console.log(`results: ${file}`);
