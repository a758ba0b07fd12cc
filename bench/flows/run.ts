// bench/flows: can the agent keep up with its node's event ring at 10,000
// events/s, and what does that cost it? One node, two pods; a sender in pod A
// paces UDP datagrams to pod B at --rate for --seconds, in three configs:
//   trace-off:   forwarded datagrams, forward tracing off: no events (the baseline)
//   trace-on:    the same datagrams with forward tracing on: one event per datagram
//   policy-drop: datagrams refused by a CiliumNetworkPolicy on B: one drop event each
// Per run: the sender's achieved rate, the events the agent decoded per second
// (flows seen, from its status), events lost (ring full: cm_metrics
// TRACE_EVENT_LOST), the agent's CPU (utime + stime of /proc/<pid>/stat) as a
// share of one core and per 1,000 events, and per 1,000 events above the
// trace-off baseline of the same rep (marginal).
// Usage: npm run bench -- flows [--rate 10000] [--seconds 8] [--reps 3]
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AgentClient } from '../../src/agent/client.ts';
import { BpfMap } from '../../src/datapath/libbpf/index.ts';
import * as settings from '../../src/datapath/maps/settings.ts';
import { runIn } from '../../src/lab/exec.ts';
import { startMesh, type Mesh } from '../../src/lab/mesh.ts';
import { createTopology, destroyTopology, type Topology } from '../../src/lab/topology.ts';
import { printTable, summarize, writeResults, type Sample } from '../lib/results.ts';

const { values } = parseArgs({
  options: {
    rate: { type: 'string', default: '10000' },
    seconds: { type: 'string', default: '8' },
    reps: { type: 'string', default: '3' },
  },
});
const int = (name: string, v: string | undefined, min: number, max: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer in ${min}..${max}, got ${v}`);
  return n;
};
const RATE = int('rate', values.rate, 100, 200_000);
const SECONDS = int('seconds', values.seconds, 1, 600);
const REPS = int('reps', values.reps, 1, 50);
const TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()); // /proc/<pid>/stat's unit
const PORT = 7777;

/** Sender: paces `rate` datagrams/s for `seconds` in 5 ms slices; prints how many it sent. */
const SENDER = `
const s = require('node:dgram').createSocket('udp4');
const [ip, rate, seconds, port] = process.argv.slice(1);
const buf = Buffer.alloc(64);
const t0 = performance.now(); let sent = 0;
const tick = () => {
  const el = (performance.now() - t0) / 1000;
  if (el >= +seconds) return s.close(() => console.log(JSON.stringify({ sent, seconds: el })));
  const due = Math.floor(el * +rate);
  while (sent < due) { s.send(buf, +port, ip); sent++; }
  setTimeout(tick, 5);
};
tick();`;

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / TICKS;
}

type Config = 'trace-off' | 'trace-on' | 'policy-drop';
const samples: Sample[] = [];
const params = { rate: RATE, seconds: SECONDS };
let topo: Topology | undefined;
let mesh: Mesh | undefined;
try {
  topo = await createTopology({ clusters: 1, nodesPerCluster: 1, podsPerNode: 2, mode: 'clustermesh', prefix: 'cmbf' });
  mesh = await startMesh(topo, { dir: await mkdtemp(join(tmpdir(), 'cmbf-mesh-')), agent: { extra: { traceForwards: false } }, progress: (l) => console.error(`mesh: ${l}`) });
  const [a, b] = topo.pods;
  await mesh.addPod(a!, { labels: { app: 'sender' } });
  await mesh.addPod(b!, { labels: { app: 'target' } });
  const agent = mesh.agent(a!.node);
  const api = new AgentClient(agent.socket);
  const pid = agent.process.pid!;
  const settingsMap = BpfMap.openPinned(join(agent.pinDir, settings.MAP_NAME));
  const writer = mesh.kube(1);
  const policy = {
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'cmbf-target-tcp-only', namespace: 'default' },
    spec: { endpointSelector: { matchLabels: { app: 'target' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'sender' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] },
  };
  const send = async (): Promise<{ sent: number; seconds: number }> => {
    const { stdout } = await runIn(a!.netns, [process.execPath, '-e', SENDER, b!.ip, String(RATE), String(SECONDS), String(PORT)], { timeoutMs: (SECONDS + 60) * 1000 });
    return JSON.parse(stdout.trim()) as { sent: number; seconds: number };
  };
  const flowsNow = async (): Promise<{ seen: number; lost: number }> => {
    const f = (await api.status()).flows!;
    return { seen: f.seen, lost: f.lost.datapath };
  };
  const policyOn = async (on: boolean): Promise<void> => {
    if (on) await writer.apply(policy);
    else await writer.delete('CiliumNetworkPolicy', { namespace: 'default', name: policy.metadata.name }).catch(() => undefined);
    // Enforced (or lifted) once a probe datagram is (is no longer) a drop.
    for (let i = 0; i < 100; i++) {
      const since = new Date();
      await runIn(a!.netns, [process.execPath, '-e', `const s=require('node:dgram').createSocket('udp4');s.send(Buffer.alloc(8),${PORT},'${b!.ip}',()=>s.close())`]);
      await new Promise((r) => setTimeout(r, 200));
      if ((await api.flows({ verdict: 'DROPPED', since })).length > 0 === on) return;
    }
    throw new Error(`policy ${on ? 'not enforced' : 'not lifted'} after 20 s`);
  };

  for (let rep = 1; rep <= REPS; rep++) {
    const cpuPerSecond: Partial<Record<Config, number>> = {};
    for (const config of ['trace-off', 'trace-on', 'policy-drop'] as Config[]) {
      settings.set(settingsMap, { traceForward: config === 'trace-on', traceNew: false });
      if (config === 'policy-drop') await policyOn(true);
      await new Promise((r) => setTimeout(r, 500));
      const f0 = await flowsNow();
      const c0 = cpuSeconds(pid);
      const t0 = performance.now();
      const s = await send();
      await new Promise((r) => setTimeout(r, 300)); // the reader's last polls
      const wall = (performance.now() - t0) / 1000;
      const c1 = cpuSeconds(pid);
      const f1 = await flowsNow();
      if (config === 'policy-drop') await policyOn(false);
      const events = f1.seen - f0.seen;
      const cpu = c1 - c0;
      cpuPerSecond[config] = cpu / wall;
      const add = (metric: string, unit: string, value: number): void => void samples.push({ config, metric, unit, rep, value, params });
      add('sent_per_s', '1/s', s.sent / s.seconds);
      add('events_per_s', '1/s', events / s.seconds);
      add('events_lost', 'events', f1.lost - f0.lost);
      add('agent_cpu_pct', '% of one core', (cpu / wall) * 100);
      if (events > 0) {
        add('agent_cpu_ms_per_1k_events', 'ms', (cpu * 1000) / (events / 1000));
        add('agent_cpu_ms_per_1k_events_marginal', 'ms', ((cpu / wall - cpuPerSecond['trace-off']!) * wall * 1000) / (events / 1000));
      }
      console.error(`rep ${rep} ${config}: sent ${s.sent} in ${s.seconds.toFixed(1)} s, events ${events}, lost ${f1.lost - f0.lost}, agent cpu ${cpu.toFixed(2)} s`);
    }
  }
  settingsMap.close();
  api.close();
} finally {
  await mesh?.stop().catch((e: unknown) => console.error(`mesh stop: ${(e as Error).message}`));
  if (topo) await destroyTopology(topo);
}
const rows = summarize(samples);
console.log(`results: ${writeResults('flows', rows, samples, 1500)}`);
printTable(rows, 'trace-off');
