// bench/socklb: connection rate to a ClusterIP with the service translated
// once per connection (socket-level load balancing, bpf/sock.bpf.c) against
// translated per packet (from_container), same topology, same run.
//
// Topology: two clusters of one node and one pod each (bench/services'
// fixture): the client pod in cluster 1 connects to a VIP whose backend is the
// pod of cluster 2, through our overlay. The node's datapath has the sock
// programs attached to its node cgroup; the two configurations differ only in
// where the probe process runs:
//   socket-lb   in the node cgroup: connect() goes to the backend directly,
//               from_container does no service lookup, conntrack or rewrite
//   per-packet  the same pod, outside the cgroup: every packet of the
//               connection is translated by from_container (and the replies
//               by from_overlay)
// The probe is bench/services/crr.c: connect, 64-byte request and response,
// close, --conns times one after another, on CPU 0 with the server.
//   conn_rate       connections per second (--conns / the probe's total time)
//   conn_setup_p50  median microseconds of one transaction
// Each rep measures both, alternating which goes first; the run checks that
// the socket-lb rows were translated at connect (cm_sock_stats counted them).
//
// Usage: npm run bench -- socklb [--reps N] [--conns N] [--write]
// Writes bench/results/socklb-partial.json; --write writes socklb.json (the
// file a BENCHMARKS.md table may name).
import { type ChildProcess, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BpfMap } from '../../src/datapath/libbpf/map.ts';
import * as sockMap from '../../src/datapath/maps/sock.ts';
import { runIn, spawnIn, stopChild } from '../../src/lab/exec.ts';
import { startClustermeshDatapath, type LabDatapath } from '../../src/lab/datapath.ts';
import { createTopology, destroyTopology, type Topology } from '../../src/lab/topology.ts';
import { percentile, printTable, summarize, writeResults, type Sample } from '../lib/results.ts';
import { CRR_PORT, MEASURED_VIP, loadMeasuredService, openServiceMaps } from '../services/fixture.ts';

const { values } = parseArgs({
  options: { reps: { type: 'string', default: '5' }, conns: { type: 'string', default: '2000' }, write: { type: 'boolean', default: false }, help: { type: 'boolean', default: false } },
});
if (values.help) {
  console.log('bench/socklb: connection rate to a ClusterIP, socket-level vs per-packet service translation\n  --reps N    alternating repetitions   default 5\n  --conns N   connections per measurement   default 2000\n  --write     write socklb.json instead of socklb-partial.json');
  process.exit(0);
}
const REPS = Number(values.reps);
const CONNS = Number(values.conns);
if (!Number.isInteger(REPS) || REPS < 1 || !Number.isInteger(CONNS) || CONNS < 10) throw new Error('bench/socklb: --reps must be >= 1 and --conns >= 10');
const resultsName = values.write ? 'socklb' : 'socklb-partial';

const work = mkdtempSync(join(tmpdir(), 'cmb-socklb-'));
const CRR = join(work, 'crr');
execFileSync('clang', ['-O2', '-Wall', '-o', CRR, join(import.meta.dirname, '..', 'services', 'crr.c')], { stdio: 'inherit' });

let topo: Topology | undefined;
let dp: LabDatapath | undefined;
const children: ChildProcess[] = [];
const samples: Sample[] = [];
try {
  console.log(`bench/socklb: ${REPS} reps of ${CONNS} connections per configuration; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  topo = await createTopology({ clusters: 2, nodesPerCluster: 1, podsPerNode: 1, mode: 'clustermesh', prefix: 'cmb' });
  const client = topo.pods.find((p) => p.cluster === 1)!;
  const server = topo.pods.find((p) => p.cluster === 2)!;
  if (client.node.cgroup === undefined) throw new Error('bench/socklb: this machine has no cgroup v2 hierarchy');
  await runIn(client.netns, ['sysctl', '-qw', 'net.ipv4.ip_local_port_range=1024 65000']);
  children.push(spawnIn(server.netns, ['taskset', '-c', '0', CRR, 'server', '0.0.0.0', String(CRR_PORT[1])]));
  dp = await startClustermeshDatapath(topo, { socketLB: true });
  const pinDir = dp.pinDirs[topo.nodes.indexOf(client.node)]!;
  const maps = openServiceMaps(pinDir);
  loadMeasuredService(maps, server);
  maps.close();
  const stats = (): sockMap.SockStats => {
    const m = BpfMap.openPinned(join(pinDir, sockMap.STATS_MAP_NAME));
    try {
      return sockMap.readStats(m);
    } finally {
      m.close();
    }
  };

  const crr = async (count: number, inCgroup: boolean): Promise<{ us: number[]; seconds: number }> => {
    const { stdout } = await runIn(client.netns, ['taskset', '-c', '0', CRR, 'client', MEASURED_VIP, String(CRR_PORT[0]), String(count)], {
      timeoutMs: 30_000 + count * 50,
      ...(inCgroup ? { cgroup: client.node.cgroup } : {}),
    });
    const us = stdout.trim().split('\n').map((l) => Number(l) / 1000);
    if (us.length !== count || us.some((x) => !Number.isFinite(x))) throw new Error(`bench/socklb: the probe returned ${us.length} samples, not ${count}`);
    return { us, seconds: us.reduce((a, b) => a + b, 0) / 1e6 };
  };
  const configs = [
    { config: 'socket-lb', inCgroup: true },
    { config: 'per-packet', inCgroup: false },
  ];
  for (const c of configs) await crr(200, c.inCgroup); // warm-up
  for (let rep = 0; rep < REPS; rep++) {
    for (const c of rep % 2 ? [...configs].reverse() : configs) {
      const before = stats().connect;
      const r = await crr(CONNS, c.inCgroup);
      const translated = stats().connect - before;
      if (c.inCgroup && translated < CONNS) throw new Error(`bench/socklb: only ${translated} of ${CONNS} connections were translated at connect`);
      if (!c.inCgroup && translated !== 0) throw new Error(`bench/socklb: ${translated} per-packet connections were translated at connect`);
      const s = (metric: string, unit: string, value: number): Sample => ({ config: c.config, metric, unit, rep, value, params: { conns: CONNS } });
      samples.push(s('conn_rate', 'conn/s', CONNS / r.seconds), s('conn_setup_p50', 'us', percentile(r.us, 50)));
      console.log(`  rep ${rep + 1} ${c.config}: ${(CONNS / r.seconds).toFixed(0)} conn/s, p50 ${percentile(r.us, 50).toFixed(1)} us`);
    }
  }
  const rows = summarize(samples);
  printTable(rows, 'per-packet');
  const on = rows.find((r) => r.config === 'socket-lb' && r.metric === 'conn_rate')!;
  const off = rows.find((r) => r.config === 'per-packet' && r.metric === 'conn_rate')!;
  const onP50 = rows.find((r) => r.config === 'socket-lb' && r.metric === 'conn_setup_p50')!;
  const offP50 = rows.find((r) => r.config === 'per-packet' && r.metric === 'conn_setup_p50')!;
  console.log(`connection rate, socket LB / per-packet: ${(on.median / off.median).toFixed(3)} (medians of ${REPS}; socket-lb ${on.min}-${on.max}, per-packet ${off.min}-${off.max} conn/s)`);
  // The rate sums every transaction, stalls of a loaded machine included; the median transaction does not.
  console.log(`median transaction, per-packet / socket LB (a rate ratio without the stalls): ${(offP50.median / onP50.median).toFixed(3)}`);
  const file = writeResults(resultsName, rows, samples, topo.spec.underlayMtu);
  console.log(`wrote ${file}${resultsName !== 'socklb' ? ' (--write to write socklb.json)' : ''}`);
} finally {
  for (const c of children) await stopChild(c);
  await dp?.stop();
  if (topo) await destroyTopology(topo);
  rmSync(work, { recursive: true, force: true });
}
