// bench/controlplane-scale: one cluster importing 254 remotes × 1,000 endpoints
// (a 255-cluster mesh) in both modes of issue 17, against a bare etcd list of
// the same keys measured in the same run (config limit):
//   direct: each agent dials every remote (ClusterMesh, one connection and one
//           user per remote: ../controlplane/importer.ts mesh)
//   cached: the cluster's cache tier (KvstoreMesh, tier.ts) imports every remote
//           once into the cluster's etcd; agents read it there through one
//           connection (importer.ts cached)
// Per mode: an agent's sync time, CPU and RSS; the propagation p50/p99 of single
// changes while all remotes are connected (a remote's etcd → the agent's
// ipcache; limit: a bare watch on that etcd); established connections per remote
// etcd; then --agents agents of the cluster restarted at once (the reconnection
// storm of cilium#44921): time until the last is synced, the remote etcds' CPU
// and the requests they got meanwhile.
// The remotes are simulated as in ../controlplane (sim.ts: 32 clusters' keyspaces
// per etcd process); the local cluster's etcd is a process of its own.
// Usage: npm run bench -- controlplane-scale [--clusters N] [--endpoints N] [--per-etcd N] [--agents N] [--changes N] [--write]
import { execFile, execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { startMeshEtcd } from '../../src/clustermesh/etcd.ts';
import type { EtcdServer } from '../../src/kvstore/etcd-process.ts';
import { startSimulation } from '../controlplane/sim.ts';
import { printTable, summarize, writeResults, type Sample } from '../lib/results.ts';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const importer = join(here, '..', 'controlplane', 'importer.ts');
const { values } = parseArgs({
  options: {
    clusters: { type: 'string', default: '254' },
    endpoints: { type: 'string', default: '1000' },
    'per-etcd': { type: 'string', default: '32' },
    agents: { type: 'string', default: '3' },
    changes: { type: 'string', default: '300' },
    write: { type: 'boolean', default: false },
  },
});
const int = (name: string, v: string | undefined, min: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${v}`);
  return n;
};
const CLUSTERS = int('clusters', values.clusters, 1);
const ENDPOINTS = int('endpoints', values.endpoints, 1);
const PER_ETCD = int('per-etcd', values['per-etcd'], 1);
const AGENTS = int('agents', values.agents, 1);
const CHANGES = int('changes', values.changes, 1);
if (CLUSTERS > 254) throw new Error(`--clusters must be at most 254, got ${CLUSTERS}`);
const partial = CLUSTERS !== 254 || ENDPOINTS !== 1000 || PER_ETCD !== 32 || AGENTS !== 3 || CHANGES !== 300;
const resultsName = partial && !values.write ? 'controlplane-scale-partial' : 'controlplane-scale';

const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
const root = await mkdtemp(join(base, 'cm-bench-cps-'));
const servers: EtcdServer[] = [];
const samples: Sample[] = [];
const params = { remoteClusters: CLUSTERS, endpointsPerCluster: ENDPOINTS, clustersPerEtcd: PER_ETCD, agents: AGENTS };
const add = (config: string, metric: string, unit: string, value: number, extra: Record<string, unknown> = {}): void => {
  samples.push({ config, metric, unit, rep: 0, value, params: { ...params, ...extra } });
};

function cpuOf(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / 100;
}

interface ImportResult {
  syncSeconds: number;
  cpuSeconds: number;
  rssMiB: number;
  counts: Record<string, number>;
  propagation?: { clustermesh: { p50: number; p99: number }; limit: { p50: number; p99: number } };
}
async function runImporter(mode: 'raw' | 'mesh' | 'cached', specFile: string, localFile: string, changes = 0): Promise<ImportResult> {
  const args = ['--expose-gc', '--import', 'tsx', importer, mode, specFile, '--local-etcd', localFile, ...(changes ? ['--changes', String(changes)] : [])];
  const { stdout } = await run(process.execPath, args, { maxBuffer: 1 << 20, timeout: 1_200_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as ImportResult;
}

const loadAtStart = loadavg()[0]!;
try {
  const t0 = performance.now();
  const { spec, servers: sim } = await startSimulation({ root, configDir: join(root, 'config'), clusters: CLUSTERS, endpoints: ENDPOINTS, perEtcd: PER_ETCD, log: (s) => console.error(s) });
  servers.push(...sim);
  const simPids = sim.map((s) => s.pid!);
  const local = await startMeshEtcd({ dir: join(root, 'local-etcd'), name: 'local', clusterName: 'local', electionMs: 1000, heartbeatMs: 100 });
  servers.push(local);
  const specFile = join(root, 'spec.json');
  writeFileSync(specFile, JSON.stringify(spec));
  const agentConn = join(root, 'local-agent.json');
  writeFileSync(agentConn, JSON.stringify(local.connection('agent', { timeoutMs: 60_000 })));
  const apiserverConn = join(root, 'local-apiserver.json');
  writeFileSync(apiserverConn, JSON.stringify(local.connection('apiserver', { timeoutMs: 60_000 })));
  // Connections to the remote etcds before any importer: each etcd's own (its gateway's loopback client).
  const etcdPorts = new Set(spec.writers.map((w) => w.endpoints[0]!.replace(/^https:\/\//, '')));
  const baseConns = execFileSync('ss', ['-Htn', 'state', 'established'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => {
      const f = l.trim().split(/\s+/);
      return f.length >= 4 && etcdPorts.has(f[3]!);
    }).length;
  const perRemote = (conns: number): number => (conns - baseConns) / CLUSTERS;
  console.error(`scale: ${CLUSTERS} remotes × ${ENDPOINTS} endpoints on ${sim.length} etcds, written in ${((performance.now() - t0) / 1000).toFixed(1)} s; load ${loadavg()[0]!.toFixed(1)}`);

  const one = async (cfg: string, mode: 'raw' | 'mesh' | 'cached', changes = 0): Promise<ImportResult> => {
    const c0 = cpuOf(simPids);
    const r = await runImporter(mode, specFile, agentConn, changes);
    const remoteCpu = cpuOf(simPids) - c0;
    add(cfg, 'sync_seconds', 's', r.syncSeconds);
    add(cfg, 'cpu_seconds', 's', r.cpuSeconds);
    add(cfg, 'rss_mib', 'MiB', r.rssMiB);
    if (!changes) add(cfg, 'remote_etcd_cpu_seconds', 's', remoteCpu);
    if (mode !== 'raw') {
      if (r.counts.ipcache !== CLUSTERS * ENDPOINTS) throw new Error(`${cfg}: ${r.counts.ipcache} endpoints, expected ${CLUSTERS * ENDPOINTS}`);
      add(cfg, 'connections_per_remote_etcd', 'conns', perRemote(r.counts.remoteEtcdConnections!));
    }
    if (r.propagation) {
      add(cfg, 'propagation_p50', 'ms', r.propagation.clustermesh.p50, { changes });
      add(cfg, 'propagation_p99', 'ms', r.propagation.clustermesh.p99, { changes });
      add(`limit-watch-${cfg}`, 'propagation_p50', 'ms', r.propagation.limit.p50, { changes });
      add(`limit-watch-${cfg}`, 'propagation_p99', 'ms', r.propagation.limit.p99, { changes });
    }
    console.error(`${cfg}: sync ${r.syncSeconds.toFixed(2)} s, CPU ${r.cpuSeconds.toFixed(2)} s, RSS ${r.rssMiB.toFixed(0)} MiB, remote etcds' CPU ${remoteCpu.toFixed(2)} s, ${JSON.stringify(r.counts)}${r.propagation ? ` propagation p50 ${r.propagation.clustermesh.p50.toFixed(2)} p99 ${r.propagation.clustermesh.p99.toFixed(2)} ms (bare watch p99 ${r.propagation.limit.p99.toFixed(2)})` : ''}; load ${loadavg()[0]!.toFixed(1)}`);
    return r;
  };
  const storm = async (cfg: string, mode: 'mesh' | 'cached'): Promise<void> => {
    const c0 = cpuOf(simPids);
    const s0 = performance.now();
    const rs = await Promise.all(Array.from({ length: AGENTS }, () => runImporter(mode, specFile, agentConn)));
    const wall = (performance.now() - s0) / 1000;
    const remoteCpu = cpuOf(simPids) - c0;
    const requests = rs.reduce((n, r) => n + r.counts.remoteRequests!, 0);
    add(cfg, 'storm_sync_seconds', 's', wall);
    add(cfg, 'storm_remote_etcd_cpu_seconds', 's', remoteCpu);
    add(cfg, 'storm_requests_per_remote', 'requests', requests / CLUSTERS);
    add(cfg, 'storm_connections_per_remote_etcd', 'conns', perRemote(Math.max(...rs.map((r) => r.counts.remoteEtcdConnections!))));
    console.error(`${cfg} storm (${AGENTS} agents at once): all synced after ${wall.toFixed(2)} s; remote etcds' CPU ${remoteCpu.toFixed(2)} s; ${requests} requests to remote etcds; connections ${rs.map((r) => r.counts.remoteEtcdConnections).join(',')}; load ${loadavg()[0]!.toFixed(1)}`);
  };

  // the bare list and the direct mode, as ../controlplane does
  await one('limit', 'raw');
  await one('direct', 'mesh');
  await one('direct', 'mesh', CHANGES);
  await storm('direct', 'mesh');

  // the cache tier: imports every remote into the local etcd
  const c0 = cpuOf(simPids);
  const l0 = cpuOf([local.pid!]);
  const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', join(here, 'tier.ts'), specFile, apiserverConn], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const line = await new Promise<string>((resolve, reject) => {
      let buf = '';
      child.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('\n')) resolve(buf.split('\n')[0]!);
      });
      child.on('exit', (code) => reject(new Error(`tier exited with ${code}`)));
    });
    const t = JSON.parse(line) as { importSeconds: number; syncSeconds: number; cpuSeconds: number; rssMiB: number; requests: number; encodeErrors: number };
    if (t.encodeErrors) throw new Error(`tier: ${t.encodeErrors} entries did not encode`);
    add('cached', 'tier_import_seconds', 's', t.importSeconds);
    add('cached', 'tier_sync_seconds', 's', t.syncSeconds);
    add('cached', 'tier_cpu_seconds', 's', t.cpuSeconds);
    add('cached', 'tier_rss_mib', 'MiB', t.rssMiB);
    add('cached', 'tier_remote_etcd_cpu_seconds', 's', cpuOf(simPids) - c0);
    add('cached', 'tier_local_etcd_cpu_seconds', 's', cpuOf([local.pid!]) - l0);
    add('cached', 'tier_requests_per_remote', 'requests', t.requests / CLUSTERS);
    console.error(`tier: imported in ${t.importSeconds.toFixed(2)} s, cache written in ${t.syncSeconds.toFixed(2)} s, CPU ${t.cpuSeconds.toFixed(2)} s, RSS ${t.rssMiB.toFixed(0)} MiB; load ${loadavg()[0]!.toFixed(1)}`);

    await one('cached', 'cached');
    await one('cached', 'cached', CHANGES);
    await storm('cached', 'cached');
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
} finally {
  await Promise.all(servers.map((s) => s.stop(2000).catch(() => {})));
  await rm(root, { recursive: true, force: true });
}
const rows = summarize(samples);
const file = writeResults(resultsName, rows, samples, 0);
console.error(`load average: ${loadAtStart.toFixed(1)} at the start, ${loadavg()[0]!.toFixed(1)} at the end`);
printTable(rows, 'direct');
console.log(`results: ${file}`);
