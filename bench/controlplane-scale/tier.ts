// Child process of bench/controlplane-scale: the cache tier of the importing
// cluster (KvstoreMesh, as `clustermesh apiserver --kvstoremesh` runs it),
// importing every remote of a simulation spec (../controlplane/sim.ts) and
// writing it into the local etcd. Prints one JSON line once every remote is
// cached (entries and canaries written), then runs until SIGTERM.
// Usage: node --import tsx bench/controlplane-scale/tier.ts <specFile> <localEtcdConnectionJson>
import { readFileSync } from 'node:fs';
import { Registry } from 'prom-client';
import { KvstoreMesh } from '../../src/apiserver/kvstoremesh.ts';
import { scanConfigDir, type toConnectionConfig } from '../../src/clustermesh/config.ts';
import { silentLogger } from '../../src/clustermesh/remote-cluster.ts';
import { KvClient } from '../../src/kvstore/client.ts';
import type { KvConnectionConfig } from '../../src/kvstore/types.ts';
import { NamespacedKvClient, type SimSpec } from '../controlplane/sim.ts';

const [specFile, localFile] = process.argv.slice(2);
if (!specFile || !localFile) {
  console.error('usage: tier.ts <specFile> <localEtcdConnectionJson>');
  process.exit(2);
}
const spec = JSON.parse(readFileSync(specFile, 'utf8')) as SimSpec;
const configDir = spec.clusters[0]!.configFile.replace(/\/[^/]+$/, '');
const nsByCert = new Map<string, string>();
const scan = await scanConfigDir(configDir);
for (const c of spec.clusters) nsByCert.set(scan.configs.get(c.name)!.certFile, c.ns);
const connect = (config: ReturnType<typeof toConnectionConfig>): KvClient => new NamespacedKvClient(config, nsByCert.get(config.certFile)!);

const kv = new KvClient(JSON.parse(readFileSync(localFile, 'utf8')) as KvConnectionConfig);
const cpu0 = process.cpuUsage();
const t0 = performance.now();
const tier = new KvstoreMesh({ kv, local: { name: 'local', id: 255, maxConnectedClusters: 255 }, configDir, logger: silentLogger, registry: new Registry(), connect, useFsWatch: false, rescanIntervalMs: 3_600_000 });
await tier.start();
await tier.mesh.waitReady({ timeoutMs: 600_000 });
const importSeconds = (performance.now() - t0) / 1000;
await tier.waitSynced(900_000);
const syncSeconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
(globalThis as { gc?: () => void }).gc?.();
process.stdout.write(
  JSON.stringify({ importSeconds, syncSeconds, cpuSeconds: (cpu.user + cpu.system) / 1e6, rssMiB: process.memoryUsage.rss() / (1 << 20), requests: NamespacedKvClient.requests, clients: NamespacedKvClient.clients, encodeErrors: tier.status().encodeErrors }) + '\n',
);
process.on('SIGTERM', () => {
  void tier.stop().finally(() => process.exit(0));
});
setInterval(() => {}, 1 << 30);
