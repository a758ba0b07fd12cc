// bench/services: what a connection and a packet cost as the number of
// services grows, for our eBPF service translation and for kube-proxy's
// iptables DNAT rules, in the same topology and the same run.
//
// Topology: two clusters of one node and one pod each; the client pod in
// cluster 1 connects to a service VIP whose backend is the pod of cluster 2.
//   clustermesh            our datapath (overlay + from_container's service
//                          translation); N services in the client node's
//                          cm_services (with backends, slots, revnat).
//   kernel-vxlan-iptables  a plain kernel VXLAN overlay; kube-proxy's nat and
//                          filter rules for N services in the client node's
//                          namespace (iptables-restore, nft backend by default).
// The measured service sits among the N (for iptables: in the middle of
// KUBE-SERVICES, where a random service lies on average).
//
// Per point (config, N):
//   conn_setup_p50/p99  one TCP connect + 64-byte request + response + close
//                       through the VIP, timed by bench/services/crr.c,
//                       --conns of them one after another (after a warm-up)
//   tcp_rr_rate, tcp_rr_p50  sockperf ping-pong over one established
//                       connection through the VIP: the per-packet cost
//   prog_ns_per_packet  (ours only) from_container's median run time for a
//                       packet of an established connection to the VIP,
//                       BPF_PROG_TEST_RUN on the node's maps; iptables has
//                       no such figure
//   services_load_s     writing the N-1 filler services into an empty datapath (the
//                       measured service is programmed at set-up; no figure at N = 1) /
//                       replacing the tables with N services' rules (once per N)
// Both topologies are built once and stay up; N goes up; at each N the
// services are programmed once (100,000 services of iptables rules take a
// minute or more to load) and then both configurations are measured --reps
// times, alternating which goes first. Client and server run on CPU 0 (see
// bench/datapath).
//
// Usage: npm run bench -- services [--reps N] [--conns N] [--seconds S] [--services 1,1000,...]
//        [--iptables nft|legacy] [--only clustermesh|kernel-vxlan-iptables] [--quick]
// --quick (or CM_BENCH_QUICK=1): 1 and 1,000 services, 300 connections, 1 s,
// one rep, and no results file written.
import { type ChildProcess, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { runIn, spawnIn, stopChild } from '../../src/lab/exec.ts';
import { startClustermeshDatapath, type LabDatapath } from '../../src/lab/datapath.ts';
import { createTopology, destroyTopology, listNamespaces, type PodInfo, type Topology } from '../../src/lab/topology.ts';
import { percentile, summarize, writeResults, type Row, type Sample } from '../lib/results.ts';
import { writeScaleCharts } from './chart.ts';
import {
  CRR_PORT, MEASURED_VIP, RR_PORT, addFillers, kubeServicesRuleCount, loadKubeProxyRules, loadMeasuredService, openProgProbe, openServiceMaps, removeFillers,
  type IptablesBackend, type ProgProbe, type ServiceMaps,
} from './fixture.ts';

const HELP = `bench/services: connection setup latency and per-packet cost at 1..100,000 services,
clustermesh's eBPF service translation vs kube-proxy-style iptables DNAT over kernel VXLAN.

  --reps N           measurements per point (configs alternate order)  default 3
  --conns N          timed connections per point                     default 3000
  --seconds S        sockperf ping-pong seconds per point            default 3
  --services LIST    service counts                                  default 1,1000,10000,100000
  --iptables B       nft or legacy: which iptables-restore loads the baseline  default nft
                     (with legacy the baseline is named kernel-vxlan-iptables-legacy)
  --only CONFIG      clustermesh or the baseline's name
  --results NAME     write bench/results/NAME.json (and .csv)           default services
  --quick            1,1000 services, 300 connections, 1 s, 1 rep, no results file (also CM_BENCH_QUICK=1)

example: npm run bench -- services --reps 3
         npm run bench -- services --quick`;

const { values } = parseArgs({
  options: {
    reps: { type: 'string' },
    conns: { type: 'string' },
    seconds: { type: 'string' },
    services: { type: 'string' },
    iptables: { type: 'string', default: 'nft' },
    only: { type: 'string' },
    results: { type: 'string', default: 'services' },
    quick: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(HELP);
  process.exit(0);
}
const quick = values.quick || process.env.CM_BENCH_QUICK === '1';
const int = (flag: string, v: string | undefined, dflt: number, min: number): number => {
  const n = v === undefined ? dflt : Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`bench/services: --${flag} must be an integer >= ${min}, got '${v}'`);
  return n;
};
const REPS = int('reps', values.reps, quick ? 1 : 3, 1);
const CONNS = int('conns', values.conns, quick ? 300 : 3000, 10);
const SECONDS = int('seconds', values.seconds, quick ? 1 : 3, 1);
const COUNTS = (values.services ?? (quick ? '1,1000' : '1,1000,10000,100000')).split(',').map((s) => int('services', s, 0, 1));
if (COUNTS.some((n) => n > 120_000)) throw new Error('bench/services: --services above 120000 do not fit cm_services (131072 entries)');
if (values.iptables !== 'nft' && values.iptables !== 'legacy') throw new Error(`bench/services: --iptables must be nft or legacy, got '${values.iptables}'`);
const IPTABLES = values.iptables as IptablesBackend;
if (!/^[a-z0-9][a-z0-9-]*$/.test(values.results)) throw new Error(`bench/services: --results must be a file name of lowercase letters, digits and '-', got '${values.results}'`);

// BPF_PROG_TEST_RUN runs of the per-packet probe (ours only).
const PROG_RUNS = quick ? 2_000 : 20_000;

const OURS = 'clustermesh';
// The nft backend is Debian's (and current kube-proxy images') default; legacy is measured under its own name.
const BASE = IPTABLES === 'nft' ? 'kernel-vxlan-iptables' : 'kernel-vxlan-iptables-legacy';
const ALL = [
  { config: OURS, mode: 'clustermesh' as const },
  { config: BASE, mode: 'kernel-vxlan' as const },
];
const CONFIGS = ALL.filter((c) => !values.only || values.only.split(',').includes(c.config));
if (CONFIGS.length === 0) throw new Error(`bench/services: --only must name ${OURS} or ${BASE}, got '${values.only}'`);

const running = (await listNamespaces()).filter((n) => /^cm-[0-9a-f]{6}-/.test(n));
if (running.length) {
  console.error(`bench/services: a lab seems to be up (namespaces ${running.slice(0, 3).join(', ')}…); run 'clustermesh lab down' first`);
  process.exit(1);
}

// The connection probe, compiled for this run.
const work = mkdtempSync(join(tmpdir(), 'cmb-services-'));
const CRR = join(work, 'crr');
execFileSync('clang', ['-O2', '-Wall', '-o', CRR, join(import.meta.dirname, 'crr.c')], { stdio: 'inherit' });

interface Point {
  config: string;
  n: number;
  rep: number;
}

async function waitForPort(netns: string, ip: string, port: number): Promise<void> {
  for (let i = 0; i < 50; i++) {
    try {
      await runIn(netns, ['bash', '-c', `exec 3<>/dev/tcp/${ip}/${port}`], { timeoutMs: 1000 });
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`bench/services: nothing answers on ${ip}:${port} from ${netns}`);
}

/** conn_setup_* and tcp_rr_* through the VIP. */
async function measure(client: PodInfo, p: Point): Promise<Sample[]> {
  const params = { services: p.n };
  const s = (metric: string, unit: string, value: number): Sample => ({ config: p.config, metric, unit, rep: p.rep, value, params });
  const crr = async (count: number): Promise<number[]> => {
    const { stdout } = await runIn(client.netns, ['taskset', '-c', '0', CRR, 'client', MEASURED_VIP, String(CRR_PORT[0]), String(count)], { timeoutMs: 30_000 + count * 50 });
    return stdout.trim().split('\n').map((l) => Number(l) / 1000);
  };
  await crr(Math.min(200, CONNS)); // warm-up: caches, conntrack, neighbour entries
  const us = await crr(CONNS);
  if (us.length !== CONNS || us.some((x) => !Number.isFinite(x))) throw new Error(`bench/services: the probe returned ${us.length} samples, not ${CONNS}`);
  const sp = await runIn(client.netns, ['taskset', '-c', '0', 'sockperf', 'pp', '--tcp', '-i', MEASURED_VIP, '-p', String(RR_PORT[0]), '-t', String(SECONDS), '--full-rtt'], { timeoutMs: (SECONDS + 30) * 1000 });
  const text = sp.stdout + sp.stderr;
  const valid = /\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=\d+; ReceivedMessages=(\d+)/.exec(text);
  const p50 = /percentile 50\.000 =\s*([\d.]+)/.exec(text);
  if (!valid || !p50) throw new Error(`bench/services: cannot parse sockperf output:\n${text}`);
  return [
    s('conn_setup_p50', 'us', percentile(us, 50)),
    s('conn_setup_p99', 'us', percentile(us, 99)),
    s('tcp_rr_rate', 'req/s', Number(valid[2]) / Number(valid[1])),
    s('tcp_rr_p50', 'us', Number(p50[1])),
  ];
}

const samples: Sample[] = [];

/** One configuration's topology, servers and service state, kept for the whole run. */
interface Bed {
  config: string;
  topo: Topology;
  client: PodInfo;
  server: PodInfo;
  dp: LabDatapath | undefined;
  maps: ServiceMaps | undefined;
  probe: ProgProbe | undefined;
  /** Fillers in our maps now. */
  fillers: number;
  children: ChildProcess[];
}

async function setUp(config: string, mode: 'clustermesh' | 'kernel-vxlan'): Promise<Bed> {
  const topo = await createTopology({ clusters: 2, nodesPerCluster: 1, podsPerNode: 1, mode, prefix: 'cmb' });
  const bed: Bed = { config, topo, client: topo.pods.find((p) => p.cluster === 1)!, server: topo.pods.find((p) => p.cluster === 2)!, dp: undefined, maps: undefined, probe: undefined, fillers: 0, children: [] };
  try {
    const { client, server } = bed;
    // A run opens (counts x reps + warm-ups) x --conns connections from one client: room for their TIME_WAITs.
    await runIn(client.netns, ['sysctl', '-qw', 'net.ipv4.ip_local_port_range=1024 65000']);
    bed.children.push(spawnIn(server.netns, ['taskset', '-c', '0', CRR, 'server', '0.0.0.0', String(CRR_PORT[1])]));
    bed.children.push(spawnIn(server.netns, ['taskset', '-c', '0', 'sockperf', 'sr', '--tcp', '-i', server.ip, '-p', String(RR_PORT[1])]));
    if (mode === 'clustermesh') {
      bed.dp = await startClustermeshDatapath(topo);
      bed.maps = openServiceMaps(bed.dp.pinDirs[topo.nodes.indexOf(client.node)]!);
      loadMeasuredService(bed.maps, server);
      bed.probe = openProgProbe(bed.dp.pinDirs[topo.nodes.indexOf(client.node)]!, client.node);
    }
    await waitForPort(client.netns, server.ip, CRR_PORT[1]);
    await waitForPort(client.netns, server.ip, RR_PORT[1]);
    return bed;
  } catch (err) {
    await tearDown(bed);
    throw err;
  }
}

async function tearDown(bed: Bed): Promise<void> {
  bed.probe?.close();
  bed.maps?.close();
  for (const c of bed.children) await stopChild(c);
  await bed.dp?.stop();
  await destroyTopology(bed.topo);
}

/** Puts exactly N services in place, from empty; returns the seconds the writing (ours) or iptables-restore (baseline) took. */
async function program(bed: Bed, n: number): Promise<number> {
  if (bed.maps) {
    removeFillers(bed.maps, 0, bed.fillers); // untimed: from empty
    bed.fillers = 0;
    const t0 = performance.now();
    addFillers(bed.maps, 0, n - 1, bed.server.cluster);
    bed.fillers = n - 1;
    return (performance.now() - t0) / 1000;
  }
  const s = await loadKubeProxyRules(bed.client.node.netns, n, bed.server, '10.101.0.0/16', IPTABLES);
  if (n <= 10_000) {
    const rules = await kubeServicesRuleCount(bed.client.node.netns, IPTABLES);
    if (rules !== n + 2) throw new Error(`bench/services: KUBE-SERVICES has ${rules} rules after loading ${n} services, expected ${n + 2}`);
  }
  return s;
}

const beds: Bed[] = [];
try {
  console.log(`bench/services: ${COUNTS.join(', ')} services, ${REPS} reps, ${CONNS} connections and ${SECONDS} s ping-pong per point, iptables-${IPTABLES}; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  for (const { config, mode } of CONFIGS) beds.push(await setUp(config, mode));
  let round = 0;
  for (const n of COUNTS) {
    for (const bed of beds) {
      const s = await program(bed, n);
      // Ours times the N-1 filler services (the measured one is programmed at set-up):
      // at N = 1 nothing is written and there is no figure to report.
      if (!(bed.maps && n === 1)) samples.push({ config: bed.config, metric: 'services_load_s', unit: 's', rep: 1, value: s, params: { services: n } });
      console.log(`${bed.config.padEnd(21)} ${String(n).padStart(6)} services programmed in ${s.toFixed(2)} s`);
    }
    for (let rep = 1; rep <= REPS; rep++, round++) {
      // Rotate the order so neither configuration always goes first.
      for (const bed of beds.map((_, i) => beds[(i + round) % beds.length]!)) {
        const t0 = performance.now();
        const la0 = loadavg()[0]!;
        const got = await measure(bed.client, { config: bed.config, n, rep });
        if (bed.probe) got.push({ config: bed.config, metric: 'prog_ns_per_packet', unit: 'ns', rep, value: bed.probe.nsPerPacket(PROG_RUNS), params: { services: n } });
        samples.push(...got);
        console.log(`rep ${rep} ${bed.config.padEnd(21)} ${String(n).padStart(6)} services: ${got.map((x) => `${x.metric}=${x.value.toFixed(1)}`).join(' ')} (${((performance.now() - t0) / 1000).toFixed(1)} s, loadavg ${la0.toFixed(1)}→${loadavg()[0]!.toFixed(1)})`);
      }
    }
  }
} finally {
  for (const bed of beds) await tearDown(bed).catch((err: unknown) => console.error(`bench/services: cleanup of ${bed.config}: ${String(err)}`));
  rmSync(work, { recursive: true, force: true });
}

const rows = summarize(samples);
console.log('');
printServiceTable(rows);
console.log(`\nload average now ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
if (quick) {
  console.log('quick mode: no results file written');
} else {
  const file = writeResults(values.results, rows, samples, 1500);
  console.log(`wrote ${file}`);
  for (const f of writeScaleCharts(values.results, rows)) console.log(`wrote ${f}`);
}

/** Per metric and N: each config's median [min-max], its ratio to its own 1-service figure, and ours / iptables. */
function printServiceTable(rows: readonly Row[]): void {
  const metrics = [...new Set(rows.map((r) => r.metric))];
  const configs = [...new Set(rows.map((r) => r.config))];
  const ns = [...new Set(rows.map((r) => Number(r.params.services)))].sort((a, b) => a - b);
  const find = (c: string, m: string, n: number) => rows.find((r) => r.config === c && r.metric === m && r.params.services === n);
  const head = ['metric', 'unit', 'services', ...configs.flatMap((c) => [c, `/1 svc`]), ...(configs.length === 2 ? [`${OURS}/iptables`] : [])];
  const lines = [head];
  for (const m of metrics) {
    for (const n of ns) {
      const cells = [m, rows.find((r) => r.metric === m)?.unit ?? '', String(n)];
      for (const c of configs) {
        const r = find(c, m, n);
        const one = find(c, m, ns[0]!);
        cells.push(r ? `${r.median} [${r.min}-${r.max}]` : '-', r && one && one.median > 0 ? (r.median / one.median).toFixed(2) : '-');
      }
      if (configs.length === 2) {
        const a = find(OURS, m, n);
        const b = find(BASE, m, n);
        cells.push(a && b && b.median > 0 ? (a.median / b.median).toFixed(2) : '-');
      }
      lines.push(cells);
    }
  }
  const widths = head.map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length)));
  for (const l of lines) console.log(l.map((c, i) => c.padEnd(widths[i]!)).join('  '));
}
