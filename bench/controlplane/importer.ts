// Child process of bench/controlplane: imports every remote cluster of a config
// dir and prints one JSON line {syncSeconds, rssIdleMiB, rssMiB, counts}.
//   mode mesh: a ClusterMesh (connect, cluster-config, canaries, list, validate, caches)
//   mode raw:  the limit: a plain KvClient list of the same prefixes, nothing else
// Usage: node --import tsx bench/controlplane/importer.ts <mesh|raw> <configDir>
import { Registry } from 'prom-client';
import { ClusterMesh } from '../../src/clustermesh/clustermesh.ts';
import { scanConfigDir, toConnectionConfig } from '../../src/clustermesh/config.ts';
import { silentLogger } from '../../src/clustermesh/remote-cluster.ts';
import { identitiesPrefix, ipPrefix, nodesClusterPrefix, servicesClusterPrefix } from '../../src/clustermesh/keys.ts';
import { KvClient } from '../../src/kvstore/client.ts';

const [mode, configDir] = process.argv.slice(2);
if ((mode !== 'mesh' && mode !== 'raw') || !configDir) {
  console.error('usage: importer.ts <mesh|raw> <configDir>');
  process.exit(2);
}
const mib = (): number => process.memoryUsage.rss() / (1 << 20);
const gc = (globalThis as { gc?: () => void }).gc;

gc?.();
const rssIdleMiB = mib();
const t0 = performance.now();
let counts: Record<string, number>;
let keep: unknown;
if (mode === 'mesh') {
  const mesh = new ClusterMesh({ localCluster: { name: 'local', id: 250 }, configDir, logger: silentLogger, registry: new Registry(), useFsWatch: false, rescanIntervalMs: 3_600_000 });
  await mesh.start();
  await mesh.waitReady({ timeoutMs: 600_000 });
  const st = mesh.status();
  counts = { ...st.counts, remotes: st.remotes.length };
  keep = mesh;
} else {
  const scan = await scanConfigDir(configDir);
  const lists = await Promise.all(
    [...scan.configs.values()].map(async (cfg) => {
      const c = new KvClient(toConnectionConfig(cfg));
      const prefixes = [nodesClusterPrefix(cfg.name), identitiesPrefix, ipPrefix, servicesClusterPrefix(cfg.name)];
      const res = await Promise.all(prefixes.map((p) => c.list(p)));
      return { c, res };
    }),
  );
  counts = { remotes: lists.length, keys: lists.reduce((n, l) => n + l.res.reduce((m, r) => m + r.pairs.length, 0), 0) };
  keep = lists;
}
const syncSeconds = (performance.now() - t0) / 1000;
gc?.();
const rssMiB = mib();
process.stdout.write(JSON.stringify({ mode, syncSeconds, rssIdleMiB, rssMiB, counts, held: keep !== undefined }) + '\n');
process.exit(0);
