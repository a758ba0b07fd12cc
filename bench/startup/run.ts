// bench/startup: what a process costs before it does anything, and what the
// processes a lab runs keep resident (issue 20).
//   compiled: today's path, bin/clustermesh.js running dist/js (built by setup).
//   tsx:      the old path, measured in the same run: the sources of the commit
//             before dist/ existed (parent of the commit that added
//             scripts/build.mjs), run through tsx with every command imported
//             eagerly; the CNI plugin as the lab ran it (tsx src/lab/cni-main.ts).
// Metrics (medians over --reps runs, alternating the two paths):
//   version_ms, help_ms          wall time of `clustermesh --version` / `--help` (`node-floor`: `node -e 0`)
//   version_cpu_ms, help_cpu_ms  user+system CPU time of the same (bash `times`)
//   cni_version_ms, _cpu_ms      `clustermesh cni` with CNI_COMMAND=VERSION: the plugin's start cost
//   cni_add_ms                   a CNI ADD against a real agent (1 cluster x 1 node), spawn to exit,
//                                run in the node's namespace with nsenter as a kubelet there would
//   cni_add_excl_agent_ms        the same minus the time the plugin waited for the agent's
//                                answers (measured inside the plugin, CLUSTERMESH_CNI_TIMING=1;
//                                for the tsx row, the compiled rows' median agent time)
//   echo_rss_mb, echo_anon_mb    an idle `clustermesh lab workload echo`: VmRSS and RssAnon
//                                (private memory) from /proc/<pid>/status; `node-floor` is a
//                                bare node http server on the same machine
//   agent_rss_mb                 the agent's VmRSS with 0 / 100 / 200 local endpoints (params.endpoints);
//                                compiled only (the mesh starts the current executable)
//   pods_ready_s                 with --pods N: a Deployment of N echo pods on a 2 x 2 lab, apply to all ready
// Usage: npm run bench -- startup [--reps 10] [--endpoints 0,100,200] [--pods 0]
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ipBatch, run } from '../../src/lab/exec.ts';
import { startMesh, type Mesh } from '../../src/lab/mesh.ts';
import { childEnv } from '../../src/lab/process.ts';
import { createTopology, destroyTopology, type NodeInfo, type Topology } from '../../src/lab/topology.ts';
import { median, printTable, summarize, writeResults, type Sample } from '../lib/results.ts';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clustermesh.js');

const { values } = parseArgs({
  options: {
    reps: { type: 'string', default: '10' },
    endpoints: { type: 'string', default: '0,100,200' },
    pods: { type: 'string', default: '0' },
    nice: { type: 'string', default: '-20' },
  },
});
const int = (name: string, v: string | undefined, min: number, max: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer in ${min}..${max}, got ${v}`);
  return n;
};
const REPS = int('reps', values.reps, 1, 1000);
const ENDPOINTS = (values.endpoints ?? '').split(',').filter(Boolean).map((v) => int('endpoints', v, 0, 230));
const PODS = int('pods', values.pods, 0, 1000);
// The machine is shared (other work keeps the load far above its 2 cores): the
// measured processes run at this priority so a figure is what the process
// costs, not how long it queued. Both paths alike; `--nice 0` to turn it off.
const NICE = int('nice', values.nice, -20, 19);
const niced = (argv: string[]): string[] => (NICE === 0 ? argv : ['nice', '-n', String(NICE), ...argv]);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const samples: Sample[] = [];
const add = (config: string, metric: string, unit: string, rep: number, value: number, params: Record<string, unknown> = {}): void => {
  samples.push({ config, metric, unit, rep, value: Math.round(value * 10) / 10, params });
};

// ---- the two paths -----------------------------------------------------------

const stale = spawnSync(process.execPath, ['--input-type=module', '-e', `import('${join(ROOT, 'bin', 'dist.js')}').then((m) => process.stdout.write(m.distStaleness()))`], { encoding: 'utf8' }).stdout;
if (stale) throw new Error(`dist/ is not current (${stale}); run ./scripts/setup.sh (npm run bench does)`);

const added = execFileSync('git', ['-C', ROOT, 'log', '--diff-filter=A', '--format=%H', '--', 'scripts/build.mjs'], { encoding: 'utf8' }).trim().split('\n').pop();
if (!added) throw new Error('no commit adds scripts/build.mjs: cannot find the old path to compare with');
const baseCommit = execFileSync('git', ['-C', ROOT, 'rev-parse', `${added}^`], { encoding: 'utf8' }).trim();
const OLD = mkdtempSync(join(tmpdir(), 'cmb-startup-old-'));
execFileSync('bash', ['-c', `git -C '${ROOT}' archive ${baseCommit} bin src package.json | tar -x -C '${OLD}'`]);
symlinkSync(join(ROOT, 'node_modules'), join(OLD, 'node_modules'));
console.error(`baseline: ${baseCommit.slice(0, 12)} (before ${added.slice(0, 12)} added dist/) in ${OLD}`);

type Path = 'compiled' | 'tsx';
const PATHS: Path[] = ['compiled', 'tsx'];
/** argv of `clustermesh ARGS` on each path. */
const cli = (p: Path, args: string[]): string[] => [process.execPath, p === 'compiled' ? CLI : join(OLD, 'bin', 'clustermesh.js'), ...args];
/** argv of the CNI plugin as the lab runs it on each path. */
const cniArgv = (p: Path): string[] =>
  p === 'compiled' ? [process.execPath, CLI, 'cni'] : [process.execPath, '--import', 'tsx', join(OLD, 'src', 'lab', 'cni-main.ts')];

function wallMs(argv: string[], env?: NodeJS.ProcessEnv, input?: string): number {
  const full = niced(argv);
  const t0 = performance.now();
  const r = spawnSync(full[0]!, full.slice(1), { cwd: ROOT, env: env ?? process.env, input: input ?? '', stdio: ['pipe', 'ignore', 'pipe'], encoding: 'utf8' });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return ms;
}

/** User + system CPU of a run, from bash's `times` (children's line). */
function cpuMs(argv: string[], env?: NodeJS.ProcessEnv, input?: string): number {
  const full = niced(['bash', '-c', '"$@" >/dev/null 2>&1; times', 'bash', ...argv]);
  const r = spawnSync(full[0]!, full.slice(1), { cwd: ROOT, env: env ?? process.env, input: input ?? '', encoding: 'utf8' });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  const m = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(line);
  if (!m) throw new Error(`cannot read the CPU time of ${argv.join(' ')} from '${line}'`);
  return (Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4])) * 1000;
}

function procStatus(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(\w+):\s+(\d+) kB$/.exec(l);
    if (m) out[m[1]!] = Number(m[2]) / 1024;
  }
  return out;
}

// ---- --version, --help, CNI VERSION -----------------------------------------

for (let rep = 0; rep < REPS; rep++) {
  for (const p of PATHS) {
    add(p, 'version_ms', 'ms', rep, wallMs(cli(p, ['--version'])));
    add(p, 'version_cpu_ms', 'ms', rep, cpuMs(cli(p, ['--version'])));
    add(p, 'help_ms', 'ms', rep, wallMs(cli(p, ['--help'])));
    add(p, 'help_cpu_ms', 'ms', rep, cpuMs(cli(p, ['--help'])));
    add(p, 'cni_version_ms', 'ms', rep, wallMs(cniArgv(p), { ...process.env, CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'));
    add(p, 'cni_version_cpu_ms', 'ms', rep, cpuMs(cniArgv(p), { ...process.env, CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'));
  }
  // The floor: node itself, doing nothing.
  add('node-floor', 'version_ms', 'ms', rep, wallMs([process.execPath, '-e', '0']));
  add('node-floor', 'version_cpu_ms', 'ms', rep, cpuMs([process.execPath, '-e', '0']));
  console.error(`startup rep ${rep + 1}/${REPS}`);
}

// ---- an idle echo pod --------------------------------------------------------

async function idleRss(argv: string[], port: number): Promise<Record<string, number>> {
  const child = spawn(argv[0]!, argv.slice(1), { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const end = Date.now() + 120_000;
    while (!out.includes('listening')) {
      if (child.exitCode !== null || Date.now() > end) throw new Error(`${argv.join(' ')}: no 'listening' (exit ${child.exitCode}): ${out}`);
      await sleep(50);
    }
    // A request answered, then idle: what a pod that served its readiness probe keeps.
    const r = await fetch(`http://127.0.0.1:${port}/`);
    if (r.status !== 200) throw new Error(`echo on ${port} answered ${r.status}`);
    await r.text();
    await sleep(3000);
    return procStatus(child.pid!);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
  }
}

const FLOOR = join(OLD, 'floor.mjs');
writeFileSync(FLOOR, "import { createServer } from 'node:http';\nconst port = Number(process.argv[2]);\ncreateServer((q, s) => s.end('x')).listen(port, '127.0.0.1', () => console.log('listening'));\n");
const echoReps = Math.min(REPS, 5);
for (let rep = 0; rep < echoReps; rep++) {
  for (const p of [...PATHS, 'node-floor'] as const) {
    const port = 18000 + Math.floor(Math.random() * 2000);
    const argv = p === 'node-floor' ? [process.execPath, FLOOR, String(port)] : cli(p, ['lab', 'workload', 'echo', '--port', String(port), '--pod', 'bench']);
    const s = await idleRss(argv, port);
    add(p, 'echo_rss_mb', 'MB', rep, s.VmRSS!);
    add(p, 'echo_anon_mb', 'MB', rep, s.RssAnon!);
  }
  console.error(`echo rep ${rep + 1}/${echoReps}`);
}

// ---- CNI ADD against a real agent, agent RSS by local endpoints ---------------

let topo: Topology | undefined;
let mesh: Mesh | undefined;
const podNamespaces: string[] = [];
try {
  topo = await createTopology({ clusters: 1, nodesPerCluster: 1, podsPerNode: 0, mode: 'clustermesh', prefix: 'cmbs' });
  mesh = await startMesh(topo, { dir: mkdtempSync(join(tmpdir(), 'cmbs-mesh-')), progress: (l) => console.error(`mesh: ${l}`) });
  const node: NodeInfo = topo.nodes[0]!;
  const agent = mesh.agent(node);
  const conf = JSON.stringify({
    cniVersion: '1.0.0',
    name: 'clustermesh',
    type: 'clustermesh',
    agentSocket: agent.socket,
    underlayMtu: topo.spec.underlayMtu,
    ipam: { podCIDR: node.podCIDR, gateway: node.gatewayIP, rangeStart: node.podCIDR.replace(/0\/24$/, '10') },
  });
  const plugin = (p: Path, command: 'ADD' | 'DEL', containerID: string, netns: string): { ms: number; stderr: string } => {
    const env = childEnv({ CNI_COMMAND: command, CNI_CONTAINERID: containerID, CNI_NETNS: `/var/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', CNI_ARGS: `K8S_POD_NAMESPACE=default;K8S_POD_NAME=${containerID}`, CLUSTERMESH_CNI_TIMING: '1' });
    const t0 = performance.now();
    const full = niced(['nsenter', `--net=/var/run/netns/${node.netns}`, ...cniArgv(p)]);
    const r = spawnSync(full[0]!, full.slice(1), { env, input: conf, encoding: 'utf8' });
    const ms = performance.now() - t0;
    if (r.status !== 0) throw new Error(`cni ${command} (${p}): exit ${r.status}: ${r.stdout} ${r.stderr}`);
    return { ms, stderr: r.stderr };
  };
  const agentMsCompiled: number[] = [];
  const tsxAdd: number[] = [];
  for (let rep = 0; rep < REPS; rep++) {
    for (const p of PATHS) {
      const id = `bench-${p}-${rep}`;
      const ns = `cmbs-pod-${process.pid}-${rep}`;
      await run(['ip', 'netns', 'add', ns]);
      podNamespaces.push(ns);
      const r = plugin(p, 'ADD', id, ns);
      add(p, 'cni_add_ms', 'ms', rep, r.ms);
      if (p === 'compiled') {
        const t = JSON.parse(r.stderr.trim().split('\n').pop()!) as { startMs: number; runMs: number; agentMs: number };
        agentMsCompiled.push(t.agentMs);
        add(p, 'cni_add_agent_ms', 'ms', rep, t.agentMs);
        add(p, 'cni_add_excl_agent_ms', 'ms', rep, r.ms - t.agentMs);
      } else tsxAdd.push(r.ms);
      plugin('compiled', 'DEL', id, ns);
      await run(['ip', 'netns', 'del', ns]);
      podNamespaces.splice(podNamespaces.indexOf(ns), 1);
    }
  }
  tsxAdd.forEach((ms, rep) => add('tsx', 'cni_add_excl_agent_ms', 'ms', rep, ms - median(agentMsCompiled)));

  // Agent RSS with N local endpoints: veth pairs in the node (the agent attaches to a real device).
  const maxEp = Math.max(0, ...ENDPOINTS);
  if (maxEp > 0) {
    const lines: string[] = [];
    for (let i = 0; i < maxEp; i++) lines.push(`link add cmbe${i} type veth peer name cmbep${i}`, `link set cmbe${i} up`, `link set cmbep${i} up`);
    await ipBatch(node.netns, lines);
  }
  const { stdout } = await run(['ip', '-n', node.netns, '-j', 'link', 'show', 'type', 'veth']);
  const macs = new Map((JSON.parse(stdout) as Array<{ ifname: string; address: string }>).map((l) => [l.ifname, l.address]));
  const base = node.podCIDR.replace(/0\/24$/, '');
  let have = 0;
  for (const n of [...ENDPOINTS].sort((a, b) => a - b)) {
    for (; have < n; have++) {
      await mesh.addEndpoint(node, `bench-ep-${have}`, { namespace: 'default', podName: `bench-ep-${have}`, ip: `${base}${20 + have}`, hostIfName: `cmbe${have}`, podMac: macs.get(`cmbep${have}`)!, labels: { app: `bench-${have % 10}` } });
    }
    await sleep(5000); // let reconciliation and GC settle
    for (let rep = 0; rep < 3; rep++) {
      add('compiled', 'agent_rss_mb', 'MB', rep, procStatus(agent.process.pid!).VmRSS!, { endpoints: n });
      await sleep(1000);
    }
    console.error(`agent with ${n} endpoints: ${procStatus(agent.process.pid!).VmRSS!.toFixed(1)} MB`);
  }
} finally {
  for (const ns of podNamespaces) await run(['ip', 'netns', 'del', ns]).catch(() => undefined);
  await mesh?.stop().catch((e: unknown) => console.error(`mesh stop: ${(e as Error).message}`));
  if (topo) await destroyTopology(topo);
}

// ---- N echo pods ready on a 2 x 2 lab (opt-in: --pods N) ------------------------

if (PODS > 0) {
  const lab = `cmbs${process.pid}`;
  const cm = (args: string[], timeout = 600_000): string => execFileSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', timeout, maxBuffer: 64 << 20 });
  const file = join(OLD, 'echo.yaml');
  writeFileSync(
    file,
    `apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: echo\nspec:\n  replicas: ${PODS}\n  selector:\n    matchLabels:\n      app: echo\n  template:\n    metadata:\n      labels:\n        app: echo\n    spec:\n      containers:\n        - name: echo\n          command: ["clustermesh", "lab", "workload", "echo", "--port", "8080"]\n`,
  );
  try {
    cm(['lab', 'up', '--lab', lab, '--clusters', '2', '--nodes', '2']);
    const t0 = performance.now();
    cm(['lab', 'apply', '--lab', lab, '-f', file, '--cluster', 'cluster1']);
    for (;;) {
      const pods = JSON.parse(cm(['lab', 'get', 'pods', '--lab', lab, '--cluster', 'cluster1', '-o', 'json'])) as Array<{ deployment: string | null; ready: boolean }>;
      const ready = pods.filter((p) => p.deployment === 'echo' && p.ready).length;
      if (ready >= PODS) break;
      if (performance.now() - t0 > 900_000) throw new Error(`only ${ready}/${PODS} echo pods ready after 900 s`);
      await sleep(1000);
    }
    add('compiled', 'pods_ready_s', 's', 0, (performance.now() - t0) / 1000, { pods: PODS, clusters: 2, nodes: 2 });
  } finally {
    try {
      cm(['lab', 'down', '--lab', lab]);
    } catch (e) {
      console.error(`lab down ${lab}: ${(e as Error).message}`);
    }
  }
}

const rows = summarize(samples);
const out = writeResults('startup', rows, samples, 1500);
// The baseline commit and machine load belong with the figures.
const json = JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>;
writeFileSync(out, JSON.stringify({ ...json, baseline: baseCommit, nice: NICE, loadavg: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number) }, null, 2) + '\n');
rmSync(OLD, { recursive: true, force: true });
printTable(rows, 'tsx');
console.log(`results: ${out}`);
