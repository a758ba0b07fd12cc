// One measured process of bench/k8s-source: connects to the API server by
// kubeconfig and syncs every kind, then reports time and memory as JSON.
//   source: the KubernetesSource (objects converted to the model, cached)
//   raw:    the same lists, paginated, items kept as the API sent them (what an
//           informer's cache of full objects holds), no watch
// Run with --expose-gc: memory is measured after a full GC, before and after.
import { KubeHttp, KubernetesSource, KUBE_KINDS, KUBE_KIND_NAMES, kindPath, loadKubeConnection } from '../../src/sources/kubernetes/index.ts';

const [mode, kubeconfig] = process.argv.slice(2);
if ((mode !== 'source' && mode !== 'raw') || !kubeconfig) throw new Error('usage: child.ts source|raw <kubeconfig>');
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with --expose-gc');

const mem = (): { rss: number; heap: number } => {
  gc();
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed + m.external + m.arrayBuffers };
};

const conn = loadKubeConnection({ kubeconfig, env: {} });
const before = mem();
const t0 = performance.now();
const cpu0 = process.cpuUsage();
let keep: unknown;
let objects = 0;
if (mode === 'source') {
  const source = new KubernetesSource({ kubeConfig: conn.kubeConfig, pageSize: 500, onProblem: (p) => console.error(`problem: ${p.kind} ${p.key}: ${p.message}`) });
  await source.start();
  await source.waitSynced(AbortSignal.timeout(600_000));
  objects = Object.values(source.status()).reduce((n, s) => n + s.objects, 0);
  keep = source;
} else {
  const http = new KubeHttp(conn.kubeConfig);
  const signal = new AbortController().signal;
  const all: unknown[][] = [];
  for (const kind of KUBE_KIND_NAMES) {
    let cont: string | undefined;
    const items: unknown[] = [];
    do {
      const page = await http.list(kindPath(KUBE_KINDS[kind]), { limit: '500', ...(cont ? { continue: cont } : {}) }, signal);
      items.push(...page.items);
      cont = page.continue;
    } while (cont !== undefined);
    all.push(items);
    objects += items.length;
  }
  keep = all;
}
const syncMs = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
const after = mem();
console.log(JSON.stringify({ mode, objects, syncMs, cpuMs: (cpu.user + cpu.system) / 1000, rssMiB: after.rss / 2 ** 20, rssBeforeMiB: before.rss / 2 ** 20, heapMiB: (after.heap - before.heap) / 2 ** 20, kept: keep !== undefined }));
process.exit(0);
