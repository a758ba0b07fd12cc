// Child process of bench/controlplane: imports every remote cluster of a
// simulation spec (sim.ts) and prints one JSON line
// {syncSeconds, cpuSeconds, rssIdleMiB, rssMiB, counts, propagation?}.
//   mode mesh: a ClusterMesh (connect, cluster-config, canaries, list, validate,
//              ownership, caches), one connection and one user per remote
//   mode raw:  the limit: a plain KvClient per remote listing the same prefixes, nothing else
//   mode cached: a ClusterMesh reading every remote from the cache tier (bench/controlplane-scale/tier.ts)
//              through one client of the local etcd (--local-etcd FILE: its connection config, JSON)
// With --changes N (mesh only), once every remote is ready: N sequential single
// changes, each to an endpoint of another remote (round robin), timed from the
// put until the merged ipcache has it (clustermesh) and until a bare etcd watch
// on the same etcd sees it (limit).
// Usage: node --import tsx bench/controlplane/importer.ts <mesh|raw> <specFile> [--changes N]
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Registry } from 'prom-client';
import { ClusterMesh } from '../../src/clustermesh/clustermesh.ts';
import { scanConfigDir, toConnectionConfig } from '../../src/clustermesh/config.ts';
import { silentLogger } from '../../src/clustermesh/remote-cluster.ts';
import { identitiesPrefix, ipKey, ipPrefix, nodesClusterPrefix, servicesClusterPrefix } from '../../src/clustermesh/keys.ts';
import { encodeIpEntry, identityRange } from '../../src/clustermesh/wire.ts';
import { KvClient } from '../../src/kvstore/client.ts';
import type { KvConnectionConfig } from '../../src/kvstore/types.ts';
import { execFileSync } from 'node:child_process';
import { percentile } from '../lib/results.ts';
import { NamespacedKvClient, simNodeIp, simPodIp, type SimSpec } from './sim.ts';

const { positionals, values } = parseArgs({ allowPositionals: true, options: { changes: { type: 'string', default: '0' }, 'sync-concurrency': { type: 'string' }, 'local-etcd': { type: 'string' } } });
const [mode, specFile] = positionals;
if ((mode !== 'mesh' && mode !== 'raw' && mode !== 'cached') || !specFile || (mode === 'cached' && !values['local-etcd'])) {
  console.error('usage: importer.ts <mesh|raw> <specFile> [--changes N]');
  process.exit(2);
}
const CHANGES = Number(values.changes);
const spec = JSON.parse(readFileSync(specFile, 'utf8')) as SimSpec;
const configDir = spec.clusters[0]!.configFile.replace(/\/[^/]+$/, '');
const nsByCert = new Map<string, string>();
const mib = (): number => process.memoryUsage.rss() / (1 << 20);
const gc = (globalThis as { gc?: () => void }).gc;

const scan = await scanConfigDir(configDir);
for (const c of spec.clusters) {
  const cfg = scan.configs.get(c.name);
  if (!cfg) throw new Error(`no config for ${c.name} in ${configDir}`);
  nsByCert.set(cfg.certFile, c.ns);
}
const connect = (config: ReturnType<typeof toConnectionConfig>): KvClient => {
  const ns = nsByCert.get(config.certFile);
  if (ns === undefined) throw new Error(`no namespace for ${config.certFile}`);
  return new NamespacedKvClient(config, ns);
};

gc?.();
const rssIdleMiB = mib();
const cpu0 = process.cpuUsage();
const t0 = performance.now();
let counts: Record<string, number>;
let mesh: ClusterMesh | undefined;
let keep: unknown;
if (mode === 'mesh') {
  mesh = new ClusterMesh({ localCluster: { name: 'local', id: 255 }, configDir, logger: silentLogger, registry: new Registry(), useFsWatch: false, rescanIntervalMs: 3_600_000, connect, ...(values['sync-concurrency'] ? { syncConcurrency: Number(values['sync-concurrency']) } : {}) });
  await mesh.start();
  await mesh.waitReady({ timeoutMs: 600_000 });
} else if (mode === 'cached') {
  const local = new KvClient(JSON.parse(readFileSync(values['local-etcd']!, 'utf8')) as KvConnectionConfig);
  keep = local;
  mesh = new ClusterMesh({ localCluster: { name: 'local', id: 255 }, configDir, logger: silentLogger, registry: new Registry(), cache: { client: local }, connect: () => {
    throw new Error('cached mode dialed a remote');
  } });
  await mesh.start();
  const deadline = Date.now() + 600_000;
  while (mesh.remoteNames().length < spec.clusters.length) {
    if (Date.now() > deadline) throw new Error(`cached: ${mesh.remoteNames().length} of ${spec.clusters.length} remotes in the cache`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await mesh.waitReady({ timeoutMs: 600_000 });
} else {
  keep = await Promise.all(
    [...scan.configs.values()].map(async (cfg) => {
      const c = connect(toConnectionConfig(cfg, 120_000)); // the limit waits as long as etcd needs
      const prefixes = [nodesClusterPrefix(cfg.name), identitiesPrefix, ipPrefix, servicesClusterPrefix(cfg.name)];
      return { c, res: await Promise.all(prefixes.map((p) => c.list(p))) };
    }),
  );
}
const syncSeconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
const cpuSeconds = (cpu.user + cpu.system) / 1e6;
if (mesh) {
  const st = mesh.status();
  const errors = new Map<string, number>();
  for (const r of st.remotes) if (r.lastError) errors.set(r.lastError.replace(/[0-9.]+s/g, 'Ns').slice(0, 120), (errors.get(r.lastError.replace(/[0-9.]+s/g, 'Ns').slice(0, 120)) ?? 0) + 1);
  if (errors.size) console.error(`importer: session errors during the sync: ${JSON.stringify([...errors])}`);
  counts = { ...st.counts, remotes: st.remotes.length, reconnections: st.remotes.reduce((n, r) => n + r.reconnections, 0), failedSessions: st.remotes.filter((r) => r.lastError !== null).length, refusedIps: st.ownership.refusedIps.reduce((n, r) => n + r.count, 0), conflicts: st.ownership.conflicts.length };
} else {
  const lists = keep as Array<{ res: Array<{ pairs: unknown[] }> }>;
  counts = { remotes: lists.length, keys: lists.reduce((n, l) => n + l.res.reduce((m, r) => m + r.pairs.length, 0), 0) };
}
gc?.();
const rssMiB = mib();
// Established TCP connections to the remotes' etcds right now (every process's: in the scale
// bench only this importer and, in cached mode, the cache tier are connected to them).
const etcdPorts = new Set(spec.writers.map((w) => w.endpoints[0]!.replace(/^https:\/\//, '')));
const remoteEtcdConnections = execFileSync('ss', ['-Htn', 'state', 'established'], { encoding: 'utf8' })
  .split('\n')
  .filter((l) => { const f = l.trim().split(/\s+/); return f.length >= 4 && etcdPorts.has(f[3]!); }).length;
counts.remoteEtcdConnections = remoteEtcdConnections;
counts.remoteRequests = NamespacedKvClient.requests;
counts.remoteClients = NamespacedKvClient.clients;

let propagation: { changes: number; clustermesh: { p50: number; p99: number }; limit: { p50: number; p99: number } } | undefined;
if (mesh && CHANGES > 0) {
  const writers = spec.writers.map((w) => new KvClient(w));
  const waiting = new Map<string, { limit?: (t: number) => void; clustermesh?: (t: number) => void }>();
  const watches = await Promise.all(
    writers.map(async (w) => {
      const { revision: rev } = await w.getWithRevision('sim/');
      return w.watch('sim/', (BigInt(rev) + 1n).toString(), (ev) => {
        if (ev.kind === 'upsert') waiting.get(ev.value.slice(ev.value.indexOf('"K8sPodName"') + 14, -2))?.limit?.(performance.now());
      }, () => {});
    }),
  );
  mesh.ipcache.subscribe((ev) => {
    if (ev.kind === 'upsert') waiting.get(ev.value.podName)?.clustermesh?.(performance.now());
  }, { replay: false });
  const lat: Record<'limit' | 'clustermesh', number[]> = { limit: [], clustermesh: [] };
  for (let i = 0; i < CHANGES; i++) {
    // a different remote each time, striding so consecutive changes hit different etcds
    const c = spec.clusters[(i * 37) % spec.clusters.length]!;
    const e = i % 100;
    const ip = simPodIp(c.id, e);
    const podName = `bench-${process.pid}-${i}`; // unique per run: a value equal to the one in etcd changes nothing downstream
    const value = encodeIpEntry({ IP: ip, Mask: null, HostIP: simNodeIp(c.id, 1), ID: identityRange(c.id, 255).min + 1 + (i % 50), Key: 0, K8sNamespace: 'default', K8sPodName: podName });
    const seen = Promise.all(
      (['limit', 'clustermesh'] as const).map(
        (cfg) =>
          new Promise<number>((resolve, reject) => {
            const t = setTimeout(() => reject(new Error(`change ${i} not seen by ${cfg} within 10 s`)), 10_000);
            const slot = waiting.get(podName) ?? {};
            slot[cfg] = (at) => {
              clearTimeout(t);
              resolve(at);
            };
            waiting.set(podName, slot);
          }),
      ),
    );
    const ts = performance.now();
    await writers[c.etcd]!.put(c.ns + ipKey(ip), value);
    const [tl, tc] = await seen;
    waiting.delete(podName);
    lat.limit.push(tl! - ts);
    lat.clustermesh.push(tc! - ts);
  }
  await Promise.all(watches.map((w) => w.cancel()));
  await Promise.all(writers.map((w) => w.close()));
  const q = (xs: number[]) => ({ p50: percentile(xs, 50), p99: percentile(xs, 99) });
  propagation = { changes: CHANGES, clustermesh: q(lat.clustermesh), limit: q(lat.limit) };
}
process.stdout.write(JSON.stringify({ mode, syncSeconds, cpuSeconds, rssIdleMiB, rssMiB, counts, propagation, held: keep !== undefined || mesh !== undefined }) + '\n');
process.exit(0);
