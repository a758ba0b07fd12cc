// bench/datapath: cross-cluster pod-to-pod TCP throughput and request/response
// latency for the limit (plain routing), a plain kernel VXLAN overlay, and the
// clustermesh eBPF overlay — each built in the same topology, measured in the
// same run, in alternating order. Usage: npm run bench -- datapath [--reps N] [--seconds S]
import { parseArgs } from 'node:util';
import { createTopology, destroyTopology, listNamespaces, type Topology, type WiringMode } from '../../src/lab/topology.ts';
import { runIn, spawnIn, stopChild } from '../../src/lab/exec.ts';
import { startClustermeshDatapath } from '../../src/lab/datapath.ts';
import { printTable, summarize, writeResults, type Sample } from '../lib/results.ts';

const { values } = parseArgs({
  options: { reps: { type: 'string', default: '3' }, seconds: { type: 'string', default: '5' }, only: { type: 'string' } },
});
const reps = Number(values.reps);
const seconds = Number(values.seconds);
if (!Number.isInteger(reps) || reps < 1) throw new Error(`--reps must be a positive integer, got ${values.reps}`);
if (!Number.isFinite(seconds) || seconds < 1) throw new Error(`--seconds must be at least 1, got ${values.seconds}`);

const ALL: Array<{ config: string; mode: WiringMode }> = [
  { config: 'limit', mode: 'routing' },
  { config: 'kernel-vxlan', mode: 'kernel-vxlan' },
  { config: 'clustermesh', mode: 'clustermesh' },
];
const CONFIGS = ALL.filter((c) => !values.only || values.only.split(',').includes(c.config));

const running = (await listNamespaces()).filter((n) => /^cm-[0-9a-f]{6}-/.test(n));
if (running.length) {
  console.error(`bench: a lab seems to be up (namespaces ${running.slice(0, 3).join(', ')}…); run 'clustermesh lab down' first`);
  process.exit(1);
}

async function measure(topo: Topology, config: string, rep: number): Promise<Sample[]> {
  const a = topo.pods.find((p) => p.cluster === 1)!;
  const b = topo.pods.find((p) => p.cluster === 2)!;
  const out: Sample[] = [];
  const iperf = spawnIn(b.netns, ['iperf3', '-s', '-B', b.ip, '-p', '5201']);
  // Client and server of the round trip share CPU 0: on this VM a cross-CPU wake-up
  // costs tens of microseconds and decides the figure more than the datapath does.
  const sockperf = spawnIn(b.netns, ['taskset', '-c', '0', 'sockperf', 'sr', '--tcp', '-i', b.ip, '-p', '11111']);
  try {
    await waitForPort(a.netns, b.ip, 5201);
    const ip = await runIn(a.netns, ['iperf3', '-c', b.ip, '-p', '5201', '-t', String(seconds), '-O', '1', '-J'], { timeoutMs: (seconds + 20) * 1000 });
    const j = JSON.parse(ip.stdout) as { end: { sum_received: { bits_per_second: number } } };
    out.push({ config, metric: 'tcp_throughput', unit: 'Gbit/s', rep, value: j.end.sum_received.bits_per_second / 1e9 });
    const sp = await runIn(a.netns, ['taskset', '-c', '0', 'sockperf', 'pp', '--tcp', '-i', b.ip, '-p', '11111', '-t', String(seconds), '--full-rtt'], { timeoutMs: (seconds + 20) * 1000 });
    const text = sp.stdout + sp.stderr;
    const valid = /\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=\d+; ReceivedMessages=(\d+)/.exec(text);
    const p50 = /percentile 50\.000 =\s*([\d.]+)/.exec(text);
    const p99 = /percentile 99\.000 =\s*([\d.]+)/.exec(text);
    if (!valid || !p50 || !p99) throw new Error(`cannot parse sockperf output:\n${text}`);
    out.push({ config, metric: 'tcp_rr_rate', unit: 'req/s', rep, value: Number(valid[2]) / Number(valid[1]) });
    out.push({ config, metric: 'tcp_rr_p50', unit: 'us', rep, value: Number(p50[1]) });
    out.push({ config, metric: 'tcp_rr_p99', unit: 'us', rep, value: Number(p99[1]) });
  } finally {
    await stopChild(iperf);
    await stopChild(sockperf);
  }
  return out;
}

async function waitForPort(netns: string, ip: string, port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    try {
      await runIn(netns, ['bash', '-c', `exec 3<>/dev/tcp/${ip}/${port}`], { timeoutMs: 2000 });
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`nothing listens on ${ip}:${port}`);
}

const samples: Sample[] = [];
for (let rep = 1; rep <= reps; rep++) {
  // Rotate the order so no configuration always runs first (or last) on a warm or busy machine.
  const order = CONFIGS.map((_, i) => CONFIGS[(i + rep - 1) % CONFIGS.length]!);
  for (const { config, mode } of order) {
    const topo = await createTopology({ clusters: 2, nodesPerCluster: 1, podsPerNode: 1, mode, prefix: 'cmb' });
    let dp: { stop(): Promise<void> } | undefined;
    try {
      if (mode === 'clustermesh') dp = await startClustermeshDatapath(topo);
      const got = await measure(topo, config, rep);
      samples.push(...got);
      console.log(`rep ${rep} ${config}: ${got.map((s) => `${s.metric}=${s.value.toFixed(2)}`).join(' ')}`);
    } finally {
      await dp?.stop();
      await destroyTopology(topo);
    }
  }
}

const rows = summarize(samples);
console.log('');
printTable(rows, 'limit');
const file = writeResults('datapath', rows, samples, 1500);
console.log(`\nwrote ${file}`);
