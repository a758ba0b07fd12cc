// bench/peers: clustermesh against what users would otherwise pick, side by
// side in one run — plain routing (the limit), our eBPF overlay with policy
// on, the same datapath routing natively (no encapsulation), a kernel VXLAN overlay with kube-proxy's iptables, a Submariner-like
// gateway and OpenVPN between gateways (src/lab/peers-topology.ts builds each).
// Cross-cluster pod to pod: single-stream and 8-stream TCP throughput (iperf3),
// TCP request/response with 1 in flight (sockperf), TCP connect+request+close
// (bench/peers/crr.c), CPU seconds per GB moved. Repetitions alternate the
// order of the rows. Writes bench/results/peers.{json,csv} and peers-*.svg.
// --suspects: our tunnel row beside variants of it that each remove one
// suspected cost (bpf/lib/variant.h), native routing and the kernel's VXLAN
// device alone, in bench/results/peers-suspects.{json,csv}.
import { parseArgs } from 'node:util';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { listNamespaces } from '../../src/lab/topology.ts';
import { run, runIn, spawnIn, stopChild } from '../../src/lab/exec.ts';
import { createPeerBed, DATAPATH_VARIANTS, PEER_CONFIGS, PEER_DEV_PREFIX, type DatapathVariant, type PeerBed, type PeerBedConfig, type PeerConfig } from '../../src/lab/peers-topology.ts';
import type { TcAttachPreference } from '../../src/datapath/libbpf/tc.ts';
import type { TunnelEncap } from '../../src/datapath/maps/config.ts';
import { printTable, summarize, writeResults, type Sample } from '../lib/results.ts';
import { configTable, markdownTable, SUSPECT_METRICS, writeCharts } from './charts.ts';

// Rows beyond the five of the comparison, for looking into a result: only when --only or --suspects names them.
const EXTRA: Record<string, { config: PeerBedConfig; policy?: boolean; variant?: DatapathVariant; tcAttach?: TcAttachPreference; tunnelEncap?: TunnelEncap }> = {
  'clustermesh-nopolicy': { config: 'clustermesh', policy: false },
  // The tunnel through the kernel's VXLAN device (tunnelEncap device) instead of our programs' encapsulation.
  'clustermesh-device': { config: 'clustermesh', tunnelEncap: 'device' },
  // The tunnel row with its programs as cls_bpf filters on a clsact qdisc (what Linux before 6.6 gets): what tcx saves.
  'clustermesh-clsbpf': { config: 'clustermesh', tcAttach: 'cls_bpf' },
  'clustermesh-nolb': { config: 'clustermesh', variant: 'nolb' },
  'clustermesh-nometrics': { config: 'clustermesh', variant: 'nometrics' },
  'clustermesh-notrace': { config: 'clustermesh', variant: 'notrace' },
  'clustermesh-cachedroute': { config: 'clustermesh', variant: 'peerdev' },
  'clustermesh-bare': { config: 'clustermesh', variant: 'bare' },
  'kernel-vxlan': { config: 'kernel-vxlan' },
  // The tunnel with policy off and the lean variant: what our encapsulation path leaves (beside kernel-vxlan).
  'clustermesh-lean': { config: 'clustermesh', policy: false, variant: 'lean' },
  // Native routing with less and less of our work: the floor of the forwarding mechanism itself
  // (bpf_fib_lookup + bpf_redirect_neigh out, bpf_redirect_peer in) on this kernel.
  'clustermesh-native-nopolicy': { config: 'clustermesh-native', policy: false },
  'clustermesh-native-lean': { config: 'clustermesh-native', policy: false, variant: 'lean' },
  // A second, separately built limit: the ratio of two identical rows is the noise floor of
  // every ratio in the run (an A/A comparison).
  'limit-again': { config: 'limit' },
};
type RowName = PeerConfig | keyof typeof EXTRA;
/** --suspects: each clustermesh-* variant removes one cost (DATAPATH_VARIANTS says which); bare removes all four. */
const SUSPECT_ROWS = ['limit', 'clustermesh', 'clustermesh-clsbpf', 'clustermesh-nolb', 'clustermesh-nometrics', 'clustermesh-notrace', 'clustermesh-cachedroute', 'clustermesh-device', 'clustermesh-native', 'kernel-vxlan', 'clustermesh-bare', 'clustermesh-nopolicy', 'clustermesh-lean', 'clustermesh-native-nopolicy', 'clustermesh-native-lean'] as const;
for (const r of SUSPECT_ROWS) if (!(PEER_CONFIGS as readonly string[]).includes(r) && !(r in EXTRA)) throw new Error(`bench peers: suspect row ${r} is defined nowhere`);
for (const e of Object.values(EXTRA)) if (e.variant !== undefined && !(e.variant in DATAPATH_VARIANTS)) throw new Error(`bench peers: unknown variant ${e.variant}`);

const HELP = `usage: npm run bench -- peers [--reps N] [--seconds S] [--quick] [--only a,b | --suspects] [--services N]

Cross-cluster pod-to-pod benchmarks of limit, clustermesh, clustermesh-native,
kernel-vxlan-iptables, gateway and openvpn, built in the same lab topology and
measured in the same run. The clustermesh rows are checked to forward as they
claim: the tunnel row with our programs' VXLAN (nothing through the VXLAN
device), clustermesh-device through that device, the native row never.
  --reps N       repetitions; the order of the rows rotates each time (default 5)
  --seconds S    seconds of each iperf3, sockperf and connect-rate test (default 4)
  --quick        1 repetition of 2 seconds, for development (overrides both)
  --only a,b     only these rows (${PEER_CONFIGS.join(', ')};
                 also clustermesh-nopolicy: our datapath with policy off, the
                 rows of --suspects, and limit-again: a second limit, whose
                 ratio to limit is the run's noise floor)
  --suspects     where a round trip's time goes: limit, clustermesh, and
                 ${SUSPECT_ROWS.slice(2).join(', ')}
                 (the tunnel row with its programs as cls_bpf filters instead of tcx;
                 variants of our datapath from 'make -C bpf variants', each without
                 one suspected cost; our tunnel through the kernel's VXLAN device
                 (tunnelEncap device); the kernel's VXLAN device alone; the tunnel and
                 native routing with policy off, then also without lookups and
                 counters); writes
                 bench/results/peers-suspects.json with every row in it (with --only
                 or --quick: peers-suspects-partial, unless --write)
  --keep-beds    build each row's bed once and measure it in every repetition
                 (default: built anew for each; --suspects implies it)
  --allow-busy   run even while labs are up (a shared machine): says so and goes on
  --services N   ClusterIP services in kernel-vxlan-iptables' kube-proxy rules (default 100)
  --name NAME    results file names (default peers; e.g. peers-policy for a side run)
  --write        let a partial run (--only, --quick, other --reps/--seconds/--services)
                 write peers.json (its extra rows: peers-extra.json); without it such
                 a run writes peers-partial (and peers-partial-extra)
Refuses to run while a lab is up (unless --allow-busy). Writes bench/results/NAME.json, NAME.csv, NAME-<metric>.svg.
example: npm run bench -- peers --quick --only limit,clustermesh`;

const { values } = parseArgs({
  options: {
    reps: { type: 'string', default: '5' },
    seconds: { type: 'string', default: '4' },
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    services: { type: 'string', default: '100' },
    name: { type: 'string' },
    write: { type: 'boolean', default: false },
    suspects: { type: 'boolean', default: false },
    'keep-beds': { type: 'boolean', default: false },
    'allow-busy': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(HELP);
  process.exit(0);
}
const reps = values.quick ? 1 : Number(values.reps);
const seconds = values.quick ? 2 : Number(values.seconds);
const services = Number(values.services);
if (!Number.isInteger(reps) || reps < 1) throw new Error(`bench peers: --reps must be a positive integer, got ${values.reps}`);
if (!Number.isFinite(seconds) || seconds < 1) throw new Error(`bench peers: --seconds must be at least 1, got ${values.seconds}`);
// A partial run must not replace the data behind the published comparison.
const partialRun = values.only !== undefined || values.quick || reps !== 5 || seconds !== 4 || services !== 100;
// Building a bed takes minutes on a machine busy creating other namespaces: --suspects keeps them.
const keepBeds = values['keep-beds'] || values.suspects;
// --suspects with --only or --quick: the published peers-suspects.json holds every suspect row.
const suspectsPartial = values.only !== undefined || values.quick;
const resultsName = values.name ?? (values.suspects ? (suspectsPartial && !values.write ? 'peers-suspects-partial' : 'peers-suspects') : partialRun && !values.write ? 'peers-partial' : 'peers');
if (!/^[a-z][a-z0-9-]{0,31}$/.test(resultsName)) throw new Error(`bench peers: --name must be lowercase letters, digits and '-', got '${resultsName}'`);
if (!Number.isInteger(services) || services < 0) throw new Error(`bench peers: --services must be a non-negative integer, got ${values.services}`);
// --suspects with --only: those of the suspect rows (limit and clustermesh always).
const suspectsOnly = values.only?.split(',').map((s) => s.trim());
if (values.suspects && suspectsOnly) for (const c of suspectsOnly) if (!(SUSPECT_ROWS as readonly string[]).includes(c)) throw new Error(`bench peers: --suspects --only names '${c}'; the suspect rows are ${SUSPECT_ROWS.join(', ')}`);
const ALL_ROWS: readonly RowName[] = [...PEER_CONFIGS, ...(Object.keys(EXTRA) as Array<keyof typeof EXTRA>)];
const only = values.suspects ? SUSPECT_ROWS.filter((r) => r === 'limit' || r === 'clustermesh' || !suspectsOnly || suspectsOnly.includes(r)) : (values.only?.split(',').map((s) => s.trim()) ?? [...PEER_CONFIGS]);
for (const c of only) if (!(ALL_ROWS as readonly string[]).includes(c)) throw new Error(`bench peers: --only names '${c}'; the rows are ${ALL_ROWS.join(', ')}`);
const CONFIGS = ALL_ROWS.filter((c) => only.includes(c));

const PORT_IPERF = 5201;
const PORT_RR = 11111;
const PORT_CRR = 5301;
const CLK_TCK = 100; // USER_HZ of /proc/stat on Linux

/** A lab is up when a lab.json under the lab root names a live process, or a lab's namespaces exist. */
async function labsUp(): Promise<string[]> {
  const found: string[] = [];
  const root = process.env.CLUSTERMESH_LAB_ROOT ?? '/var/lib/clustermesh/labs';
  if (existsSync(root)) {
    for (const name of readdirSync(root)) {
      const file = join(root, name, 'lab.json');
      if (!existsSync(file)) continue;
      let pids: number[] = [];
      try {
        pids = collectPids(JSON.parse(readFileSync(file, 'utf8')));
      } catch {
        continue;
      }
      const alive = pids.filter((p) => existsSync(`/proc/${p}`));
      if (alive.length) found.push(`lab '${name}' (${file}: pid ${alive.slice(0, 3).join(', ')} alive)`);
    }
  }
  const ns = (await listNamespaces()).filter((n) => /^cm-[0-9a-f]{6}-/.test(n));
  if (ns.length) found.push(`namespaces ${ns.slice(0, 3).join(', ')}${ns.length > 3 ? '…' : ''}`);
  return found;
}

function collectPids(v: unknown): number[] {
  if (Array.isArray(v)) return v.flatMap(collectPids);
  if (v && typeof v === 'object') {
    return Object.entries(v).flatMap(([k, x]) => (k === 'pid' && typeof x === 'number' && Number.isInteger(x) && x > 0 ? [x] : collectPids(x)));
  }
  return [];
}

/** Busy CPU ticks of the whole machine (user, nice, system, irq, softirq; steal and idle excluded). */
function busyTicks(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return f[0]! + f[1]! + f[2]! + f[5]! + f[6]!;
}

/** Fields of /proc/<pid>/stat after the command name (field 3 is index 0). */
function procStat(pid: number | 'self'): number[] {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).trim().split(/\s+/).map(Number);
  } catch {
    return [];
  }
}

/**
 * CPU ticks attributable to the measurement: user+system of the given
 * long-running processes (iperf3 server, the row's daemons), of the children
 * this process has reaped (the iperf3 client, once it exited), and the
 * machine's irq+softirq ticks (where forwarding, encapsulation and the BPF
 * programs run; this kernel samples softirq time on the tick, not per task).
 */
function ourTicks(pids: readonly number[]): number {
  let t = 0;
  for (const pid of pids) {
    const f = procStat(pid);
    if (f.length > 12) t += f[11]! + f[12]!; // utime, stime
  }
  const self = procStat('self');
  t += self[13]! + self[14]!; // cutime, cstime
  const g = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return t + g[5]! + g[6]!;
}

async function rxBytes(netns: string, dev: string): Promise<number> {
  const { stdout } = await run(['ip', '-n', netns, '-s', '-j', 'link', 'show', 'dev', dev]);
  return (JSON.parse(stdout) as Array<{ stats64: { rx: { bytes: number } } }>)[0]!.stats64.rx.bytes;
}

async function txPackets(netns: string, dev: string): Promise<number> {
  const { stdout } = await run(['ip', '-n', netns, '-s', '-j', 'link', 'show', 'dev', dev]);
  return (JSON.parse(stdout) as Array<{ stats64: { tx: { packets: number } } }>)[0]!.stats64.tx.packets;
}

async function waitForPort(netns: string, ip: string, port: number, serverNetns: string): Promise<void> {
  // By the clock, not a count of tries. First the server listens (ss, no shell: on a
  // loaded machine each bash start can take seconds), then one connect from the client.
  const until = Date.now() + 120_000;
  while (Date.now() < until) {
    try {
      const { stdout } = await runIn(serverNetns, ['ss', '-Hltn', `sport = :${port}`], { timeoutMs: 15_000 });
      if (stdout.trim() === '') throw new Error('not listening yet');
      await runIn(netns, ['timeout', '5', 'bash', '--norc', '-c', `exec 3<>/dev/tcp/${ip}/${port}`], { timeoutMs: 15_000 });
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`bench peers: nothing answers on ${ip}:${port} from ${netns}`);
}

/** Packets the peer devices of the peerdev/bare variants sent on a node. */
async function peerDevTx(netns: string): Promise<number> {
  const { stdout } = await run(['ip', '-n', netns, '-s', '-j', 'link', 'show']);
  return (JSON.parse(stdout) as Array<{ ifname: string; stats64: { tx: { packets: number } } }>).filter((l) => l.ifname.startsWith(PEER_DEV_PREFIX)).reduce((n, l) => n + l.stats64.tx.packets, 0);
}

async function measure(bed: PeerBed, config: RowName, crr: string, rep: number): Promise<Sample[]> {
  const { client: a, server: b } = bed;
  const params = config === 'kernel-vxlan-iptables' ? { services } : undefined;
  const out: Sample[] = [];
  const add = (metric: string, unit: string, value: number): void => {
    if (!Number.isFinite(value)) throw new Error(`bench peers: ${config} ${metric} is not a number (${value})`);
    out.push({ config, metric, unit, rep, value, ...(params ? { params } : {}) });
  };
  // Client TIME_WAITs are recycled so tens of thousands of connections per second do not run out of ports.
  await runIn(a.netns, ['sysctl', '-qw', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=1024 65000']);
  const servers = [
    spawnIn(b.netns, ['iperf3', '-s', '-B', b.ip, '-p', String(PORT_IPERF)]),
    // Round-trip and connection-rate client and server share CPU 0 (as bench/datapath
    // does): a cross-CPU wake-up on this VM costs more than the datapath.
    spawnIn(b.netns, ['taskset', '-c', '0', 'sockperf', 'sr', '--tcp', '-i', b.ip, '-p', String(PORT_RR)]),
    spawnIn(b.netns, ['taskset', '-c', '0', crr, '-s', b.ip, String(PORT_CRR)]),
  ];
  try {
    for (const p of [PORT_IPERF, PORT_RR, PORT_CRR]) await waitForPort(a.netns, b.ip, p, b.netns);
    const ours = bed.config === 'clustermesh' || bed.config === 'clustermesh-native';
    const peerDev = bed.variant === 'peerdev' || bed.variant === 'bare';
    const vxlan0 = ours ? await txPackets(a.node.netns, 'cm_vxlan') : 0;
    const peer0 = peerDev ? await peerDevTx(a.node.netns) : 0;
    const vx0 = bed.config === 'kernel-vxlan' ? await txPackets(a.node.netns, 'vx0') : 0;
    const pids = [...bed.pids, ...servers.flatMap((s) => (s.pid === undefined ? [] : [s.pid]))];
    let ticks = 0;
    let machineTicks = 0;
    let bytes = 0;
    for (const [metric, streams] of [['tcp_throughput', 1], ['tcp_throughput_8streams', 8]] as const) {
      const rx0 = await rxBytes(b.netns, 'eth0');
      const t0 = ourTicks(pids);
      const m0 = busyTicks();
      const ip = await runIn(a.netns, ['iperf3', '-c', b.ip, '-p', String(PORT_IPERF), '-P', String(streams), '-t', String(seconds), '-O', '1', '-J'], { timeoutMs: (seconds + 30) * 1000 });
      machineTicks += busyTicks() - m0;
      ticks += ourTicks(pids) - t0;
      bytes += (await rxBytes(b.netns, 'eth0')) - rx0;
      const j = JSON.parse(ip.stdout) as { end: { sum_received: { bits_per_second: number } } };
      add(metric, 'Gbit/s', j.end.sum_received.bits_per_second / 1e9);
    }
    // CPU per GB received by the server pod over both iperf3 runs: all busy time of the machine
    // (exact on a quiet machine), and a cross-check that counts only the measurement's processes
    // plus irq/softirq (without IRQ time accounting a task's runtime includes the softirq work
    // done in its context, so this one counts some softirq twice; it is the one to read when
    // other work shares the machine).
    if (ours) {
      const sent = (await txPackets(a.node.netns, 'cm_vxlan')) - vxlan0;
      if (peerDev) {
        const viaPeer = (await peerDevTx(a.node.netns)) - peer0;
        if (sent > 0 || viaPeer === 0) throw new Error(`bench peers: ${config}: during iperf3 the client's node sent ${viaPeer} packets through its peer devices and ${sent} through cm_vxlan: not the cached-route path`);
      } else if (bed.config === 'clustermesh' && bed.tunnelEncap === 'bpf') {
        if (sent > 0) throw new Error(`bench peers: ${config}: cm_vxlan on the client's node sent ${sent} packets during iperf3: not (only) the BPF encapsulation`);
      } else if (bed.config === 'clustermesh' && sent === 0) throw new Error(`bench peers: ${config}: cm_vxlan on the client's node sent nothing during iperf3: not the tunnel device's path`);
      if (bed.config === 'clustermesh-native' && sent > 0) throw new Error(`bench peers: ${config}: cm_vxlan on the client's node sent ${sent} packets: native routing encapsulated`);
    }
    if (bed.config === 'kernel-vxlan' && (await txPackets(a.node.netns, 'vx0')) === vx0) throw new Error(`bench peers: ${config}: vx0 on the client's node sent nothing during iperf3`);
    add('cpu_s_per_gb', 's/GB', machineTicks / CLK_TCK / (bytes / 1e9));
    add('cpu_s_per_gb_attributed', 's/GB', ticks / CLK_TCK / (bytes / 1e9));

    const sp = await runIn(a.netns, ['taskset', '-c', '0', 'sockperf', 'pp', '--tcp', '-i', b.ip, '-p', String(PORT_RR), '-t', String(seconds), '--full-rtt'], { timeoutMs: (seconds + 30) * 1000 });
    const text = sp.stdout + sp.stderr;
    const valid = /\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=\d+; ReceivedMessages=(\d+)/.exec(text);
    const p50 = /percentile 50\.000 =\s*([\d.]+)/.exec(text);
    const p99 = /percentile 99\.000 =\s*([\d.]+)/.exec(text);
    if (!valid || !p50 || !p99) throw new Error(`bench peers: cannot parse sockperf output of ${config}:\n${text}`);
    add('tcp_rr_rate', 'req/s', Number(valid[2]) / Number(valid[1]));
    add('tcp_rr_p50', 'us', Number(p50[1]));
    add('tcp_rr_p99', 'us', Number(p99[1]));

    const cr = await runIn(a.netns, ['taskset', '-c', '0', crr, '-c', b.ip, String(PORT_CRR), String(seconds)], { timeoutMs: (seconds + 30) * 1000 });
    const c = JSON.parse(cr.stdout) as { transactions: number; seconds: number; p50_us: number; p99_us: number; errors: number };
    add('tcp_crr_rate', 'conn/s', c.transactions / c.seconds);
    add('tcp_crr_p50', 'us', c.p50_us);
    add('tcp_crr_p99', 'us', c.p99_us);
  } finally {
    for (const s of servers) await stopChild(s);
  }
  return out;
}

const up = await labsUp();
if (up.length && values['allow-busy']) {
  console.log(`bench peers: measuring beside other work (--allow-busy): ${up.join('; ')}; read the ratios, not the absolute figures`);
} else if (up.length) {
  console.error(`bench peers: a lab is up (${up.join('; ')}); run 'clustermesh lab down' first, the benchmark needs the machine to itself`);
  process.exit(1);
}

const work = mkdtempSync(join(tmpdir(), 'cmbp-'));
const crr = join(work, 'crr');
const samples: Sample[] = [];
// Beds up right now: the row being measured, or with --keep-beds all of them.
const live = new Set<PeerBed>();
const failures: string[] = [];
// Ctrl-C or a kill: the row being measured is taken down before exiting (processes, namespaces, temp files).
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    console.error(`bench peers: ${sig}, cleaning up`);
    void Promise.allSettled([...live].map((b) => b.stop()))
      .then((r) => r.forEach((x) => x.status === 'rejected' && console.error(x.reason)))
      .finally(() => {
        rmSync(work, { recursive: true, force: true });
        process.exit(130);
      });
  });
}
try {
  await run(['clang', '-O2', '-Wall', '-o', crr, join(dirname(fileURLToPath(import.meta.url)), 'crr.c')]);
  console.log(`peers: ${reps} repetition(s) of ${seconds} s tests, rows ${CONFIGS.join(', ')}; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')} at ${new Date().toISOString()}`);
  const build = async (config: RowName): Promise<PeerBed> => {
    const extra = config in EXTRA ? EXTRA[config] : undefined;
    const bed = await createPeerBed(extra?.config ?? (config as PeerConfig), { prefix: 'cmbp', allowPorts: [PORT_IPERF, PORT_RR, PORT_CRR], services, policy: extra?.policy ?? true, ...(extra?.variant ? { variant: extra.variant } : {}), ...(extra?.tcAttach ? { tcAttach: extra.tcAttach } : {}), ...(extra?.tunnelEncap ? { tunnelEncap: extra.tunnelEncap } : {}) });
    live.add(bed);
    return bed;
  };
  // --keep-beds: every row's bed is built once, up front, and measured in each repetition.
  const kept = new Map<RowName, PeerBed>();
  // The variants' objects once, before beds are built side by side (each build would run make).
  if (CONFIGS.some((c) => EXTRA[c]?.variant !== undefined)) await run(['make', '-s', '-C', join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bpf'), 'variants']);
  if (keepBeds) {
    // Three at a time: most of a build is waiting for namespaces and processes.
    for (let i = 0; i < CONFIGS.length; i += 3) {
      await Promise.all(CONFIGS.slice(i, i + 3).map(async (config) => {
        try {
          kept.set(config, await build(config));
        } catch (err) {
          failures.push(`${config}: building its bed: ${err instanceof Error ? err.message : String(err)}`);
          console.error(`${config}: FAILED: ${failures.at(-1)}`);
        }
      }));
    }
    console.log(`beds built (load ${loadavg()[0]!.toFixed(2)} at ${new Date().toISOString()})`);
  }
  for (let rep = 1; rep <= reps; rep++) {
    // Rotate the order so no row always runs first (or last) on a warm or busy machine.
    const order = CONFIGS.map((_, i) => CONFIGS[(i + rep - 1) % CONFIGS.length]!);
    for (const config of order) {
      if (keepBeds && !kept.has(config)) continue;
      let bed: PeerBed | undefined;
      try {
        bed = keepBeds ? kept.get(config)! : await build(config);
        const got = await measure(bed, config, crr, rep);
        samples.push(...got);
        console.log(`rep ${rep} ${config}: ${got.map((s) => `${s.metric}=${s.value.toFixed(2)}`).join(' ')} (load ${loadavg()[0]!.toFixed(2)})`);
      } catch (err) {
        // One failed measurement costs that row one sample, not the whole run; it is reported at the end.
        failures.push(`rep ${rep} ${config}: ${err instanceof Error ? err.message : String(err)}`);
        console.error(`rep ${rep} ${config}: FAILED: ${failures.at(-1)}`);
      } finally {
        if (bed && !keepBeds) {
          live.delete(bed);
          await bed.stop();
        }
      }
    }
  }
} finally {
  for (const bed of live) await bed.stop().catch((e: unknown) => console.error(e));
  live.clear();
  rmSync(work, { recursive: true, force: true });
}

if (samples.length === 0) {
  console.error(`bench peers: no measurement succeeded; results left as they were:\n${failures.join('\n')}`);
  process.exit(1);
}
const rows = summarize(samples);
console.log(`\nload average ${loadavg().map((l) => l.toFixed(2)).join(' ')} at ${new Date().toISOString()}`);
if (values.suspects) {
  // One file with every row; read against clustermesh (what each removal buys) and the limit.
  printTable(rows, 'clustermesh');
  const file = writeResults(resultsName, rows, samples, 1500);
  console.log('');
  console.log(configTable(rows, SUSPECT_METRICS, ['clustermesh', 'limit']));
  console.log(`\nwrote ${file} and its CSV`);
  if (failures.length) {
    console.error(`\nbench peers: ${failures.length} measurement(s) failed; their rows have fewer samples:\n${failures.join('\n')}`);
    process.exitCode = 1;
  }
  process.exit();
}
console.log('');
printTable(rows, 'limit');
// The comparison's file holds the main rows; extra rows of the same run go to NAME-extra
// with the limit and clustermesh beside them.
const isExtra = (c: string): boolean => c in EXTRA;
const main = rows.filter((r) => !isExtra(r.config));
const file = writeResults(resultsName, main, samples.filter((s) => !isExtra(s.config)), 1500);
const charts = writeCharts(resultsName, main, 'limit');
if (rows.some((r) => isExtra(r.config))) {
  const keep = (c: string): boolean => isExtra(c) || c === 'limit' || c === 'clustermesh';
  // The extra rows are their own file (a run naming them is partial for the main rows), named
  // after the main one: a partial run without --write never replaces the published extras.
  const extraFile = writeResults(`${resultsName}-extra`, rows.filter((r) => keep(r.config)), samples.filter((s) => keep(s.config)), 1500);
  console.log(`wrote ${extraFile} and its CSV`);
}
console.log('');
console.log(markdownTable(rows, 'limit'));
console.log(`\nwrote ${file}, its CSV and ${charts.length} charts (${charts.map((f) => f.split('/').pop()).join(', ')})`);
if (failures.length) {
  console.error(`\nbench peers: ${failures.length} measurement(s) failed; their rows have fewer samples:\n${failures.join('\n')}`);
  process.exitCode = 1;
}
