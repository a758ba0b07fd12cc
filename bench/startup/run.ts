// bench/startup: what a process costs before it does anything, and what the
// processes a lab runs keep resident (issue 20).
//   compiled: today's path, bin/clustermesh.js running dist/js (built by setup);
//             an echo pod as the lab runs it (the C program ECHO_BIN, src/lab/echo-c); the CNI
//             plugin as a kubelet runs it: the C executable cni/build/clustermesh-cni,
//             which relays to the agent (the plugin's work runs in the agent).
//   tsx:      the old path, measured in the same run: the sources of the commit
//             before dist/ existed (parent of the commit that added
//             scripts/build.mjs), run through tsx with every command imported
//             eagerly; the CNI plugin as the lab ran it (tsx src/lab/cni-main.ts).
//   node-floor: node itself on the same machine in the same run.
// Parts (--only a,b; each runs alone; all by default):
//   start   version_ms, help_ms: wall time of `clustermesh --version` / `--help` (`node-floor`: `node -e 0`);
//           version_cpu_ms, help_cpu_ms: user+system CPU time of the same (bash `times`);
//           cni_version_ms, _cpu_ms: the CNI plugin with CNI_COMMAND=VERSION, the plugin's start cost
//   echo    an idle `clustermesh lab workload echo` that answered one request: echo_rss_mb (VmRSS),
//           echo_anon_mb (RssAnon), echo_private_mb (Private_Clean + Private_Dirty of smaps_rollup:
//           what the pod alone holds; the rest of VmRSS is shared pages: the executable's and its
//           libraries'), echo_pss_mb (Pss of smaps_rollup: private pages plus its share of the shared ones,
//           with the bench's other node processes as the only sharers; see pods for a lab's);
//           after --echo-requests sequential keep-alive requests: echo_busy_rss_mb,
//           echo_busy_anon_mb, echo_rps (requests per second of those). `node-floor` is a bare
//           node:http server (an ES module; `node-floor-cjs`: the same as CommonJS): what any
//           Node.js echo pod would keep at least; `tsx` the Node.js echo of the old path.
//   cni     cni_add_ms: a CNI ADD against a real agent (1 cluster x 1 node), spawn to exit, run in
//           the node's namespace with nsenter as a kubelet there would; cni_add_agent_ms: the agent's
//           own time on the request (veth, IPAM, endpoint: the X-Cni-Agent-Ms the executable prints
//           with CLUSTERMESH_CNI_TIMING=1); cni_add_excl_agent_ms: the difference (for the tsx row,
//           which did the same work in its own process, the compiled rows' median agent time
//           subtracted; `node-floor`: `nsenter node -e 0`; `exec-floor`: `nsenter true`)
//   agent   agent_rss_mb, agent_anon_mb: the agent's VmRSS and RssAnon with 0 / 100 / 1000 local
//           endpoints (params.endpoints; compiled only). The bench's node gets a /22 pod CIDR (the
//           lab's nodes have a /24) so that 1,000 endpoints fit; each endpoint is a veth pair in the
//           node added through the agent's endpoint API, the call the CNI plugin makes.
//   pods    pods_ready_s: --pods echo pods (a Deployment per cluster, split evenly) on a 2 x 2 lab,
//           apply to all ready; lab_echo_rss_mb, lab_echo_anon_mb: VmRSS and RssAnon of those pods
//           once ready (one sample per pod), lab_echo_pss_mb: their Pss (the node binary's shared
//           pages split among the pods that map them); lab_agent_rss_mb: the lab's agents then;
//           pod_stage_<stage>_ms / pod_step_<stage>_ms: when each stage of a pod's start ended after
//           the apply / how long it took (bound from the API server's log, the rest from the kubelets'
//           'pod start stages' lines), printed as a table of medians and 90th percentiles.
// Results: bench/results/startup-partial.json, or startup.json with --write (a full run only:
// the published table reads that file).
// Usage: npm run bench -- startup [--only start,echo,cni,agent,pods] [--reps 10] [--echo-reps 3]
//          [--endpoints 0,100,1000] [--pods 200] [--nice -20] [--skip-tsx] [--write]
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { Agent, get } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { cidrRange, intToIp, ipToInt } from '../../src/cni/config.ts';
import { ipBatch, run } from '../../src/lab/exec.ts';
import { startMesh, type Mesh } from '../../src/lab/mesh.ts';
import { childEnv } from '../../src/lab/process.ts';
import { createTopology, destroyTopology, type NodeInfo, type Topology } from '../../src/lab/topology.ts';
import { labDir } from '../../src/lab/state.ts';
import { ECHO_BIN } from '../../src/lab/workload-main.ts';
import { median, printTable, summarize, writeResults, type Sample } from '../lib/results.ts';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clustermesh.js');
const CNI_PLUGIN = join(ROOT, 'cni', 'build', 'clustermesh-cni');
const PARTS = ['start', 'echo', 'cni', 'agent', 'pods'] as const;
type Part = (typeof PARTS)[number];

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    reps: { type: 'string', default: '10' },
    'echo-reps': { type: 'string', default: '3' },
    'echo-requests': { type: 'string', default: '1000' },
    endpoints: { type: 'string', default: '0,100,1000' },
    pods: { type: 'string', default: '200' },
    nice: { type: 'string', default: '-20' },
    'skip-tsx': { type: 'boolean', default: false },
    write: { type: 'boolean', default: false },
  },
});
const int = (name: string, v: string | undefined, min: number, max: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer in ${min}..${max}, got ${v}`);
  return n;
};
const only = values.only === undefined ? undefined : values.only.split(',').filter(Boolean);
for (const p of only ?? []) if (!(PARTS as readonly string[]).includes(p)) throw new Error(`--only: '${p}' is not one of ${PARTS.join(', ')}`);
const runs = (p: Part): boolean => only === undefined || only.includes(p);
const REPS = int('reps', values.reps, 1, 1000);
const ECHO_REPS = int('echo-reps', values['echo-reps'], 1, 100);
const ECHO_REQUESTS = int('echo-requests', values['echo-requests'], 1, 1_000_000);
const ENDPOINTS = (values.endpoints ?? '').split(',').filter(Boolean).map((v) => int('endpoints', v, 0, 1000));
const PODS = int('pods', values.pods, 1, 1000);
// The machine is shared (other work keeps the load far above its 2 cores): the
// measured processes run at this priority so a figure is what the process
// costs, not how long it queued. Both paths alike; `--nice 0` to turn it off.
const NICE = int('nice', values.nice, -20, 19);
const SKIP_TSX = values['skip-tsx'];
// The published table reads startup.json: only a full run replaces it.
if (values.write && (only !== undefined || SKIP_TSX)) throw new Error('--write replaces bench/results/startup.json: only with a full run (no --only, no --skip-tsx)');
const RESULTS = values.write ? 'startup' : 'startup-partial';

const niced = (argv: string[]): string[] => (NICE === 0 ? argv : ['nice', '-n', String(NICE), ...argv]);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const samples: Sample[] = [];
const add = (config: string, metric: string, unit: string, rep: number, value: number, params: Record<string, unknown> = {}): void => {
  samples.push({ config, metric, unit, rep, value: Math.round(value * 10) / 10, params });
};
const WORK = mkdtempSync(join(tmpdir(), 'cmb-startup-'));
const loadavg = (): number[] => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
const loadStart = loadavg();

// ---- the two paths -----------------------------------------------------------

const stale = spawnSync(process.execPath, ['--input-type=module', '-e', `import('${join(ROOT, 'bin', 'dist.js')}').then((m) => process.stdout.write(m.distStaleness()))`], { encoding: 'utf8' }).stdout;
if (stale) throw new Error(`dist/ is not current (${stale}); run ./scripts/setup.sh (npm run bench does)`);

type Path = 'compiled' | 'tsx';
const PATHS: Path[] = SKIP_TSX ? ['compiled'] : ['compiled', 'tsx'];
const OLD = join(WORK, 'old');
let baseCommit: string | undefined;
if (!SKIP_TSX && (runs('start') || runs('echo') || runs('cni'))) {
  const added = execFileSync('git', ['-C', ROOT, 'log', '--diff-filter=A', '--format=%H', '--', 'scripts/build.mjs'], { encoding: 'utf8' }).trim().split('\n').pop();
  if (!added) throw new Error('no commit adds scripts/build.mjs: cannot find the old path to compare with');
  baseCommit = execFileSync('git', ['-C', ROOT, 'rev-parse', `${added}^`], { encoding: 'utf8' }).trim();
  execFileSync('bash', ['-c', `mkdir -p '${OLD}' && git -C '${ROOT}' archive ${baseCommit} bin src package.json | tar -x -C '${OLD}'`]);
  symlinkSync(join(ROOT, 'node_modules'), join(OLD, 'node_modules'));
  console.error(`baseline: ${baseCommit.slice(0, 12)} (before ${added.slice(0, 12)} added dist/) in ${OLD}`);
}

/** argv of `clustermesh ARGS` on each path. */
const cli = (p: Path, args: string[]): string[] => [process.execPath, p === 'compiled' ? CLI : join(OLD, 'bin', 'clustermesh.js'), ...args];
/** argv of the CNI plugin as the lab runs it on each path. */
const cniArgv = (p: Path): string[] =>
  p === 'compiled' ? [CNI_PLUGIN] : [process.execPath, '--import', 'tsx', join(OLD, 'src', 'lab', 'cni-main.ts')];
if ((runs('start') || runs('cni')) && !existsSync(CNI_PLUGIN)) throw new Error(`${CNI_PLUGIN} is not built; run ./scripts/setup.sh`);

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

/** The `NAME: N kB` lines of a /proc file, in MB. */
function procKb(file: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of readFileSync(file, 'utf8').split('\n')) {
    const m = /^(\w+):\s+(\d+) kB$/.exec(l);
    if (m) out[m[1]!] = Number(m[2]) / 1024;
  }
  return out;
}
const procStatus = (pid: number): Record<string, number> => procKb(`/proc/${pid}/status`);
const privateMb = (pid: number): number => {
  const r = procKb(`/proc/${pid}/smaps_rollup`);
  return r.Private_Clean! + r.Private_Dirty!;
};
const pssMb = (pid: number): number => procKb(`/proc/${pid}/smaps_rollup`).Pss!;

// ---- start: --version, --help, CNI VERSION ------------------------------------

if (runs('start')) {
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
    console.error(`start rep ${rep + 1}/${REPS}`);
  }
}

// ---- echo: an echo pod's memory, beside a bare node:http server -----------------

/** `n` sequential GETs over one kept-alive connection; requests per second. */
async function requests(port: number, n: number): Promise<number> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      await new Promise<void>((done, fail) => {
        get({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
          if (res.statusCode !== 200) fail(new Error(`echo on ${port} answered ${res.statusCode}`));
          res.resume().on('end', done).on('error', fail);
        }).on('error', fail);
      });
    }
    return (n / (performance.now() - t0)) * 1000;
  } finally {
    agent.destroy();
  }
}

async function echoMemory(config: string, argv: string[], port: number, rep: number): Promise<void> {
  const child = spawn(argv[0]!, argv.slice(1), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  try {
    const end = Date.now() + 120_000;
    while (!out.includes('listening')) {
      if (child.exitCode !== null || Date.now() > end) throw new Error(`${argv.join(' ')}: no 'listening' (exit ${child.exitCode}): ${out}`);
      await sleep(50);
    }
    // A request answered, then idle: what a pod that served its readiness probe keeps.
    await requests(port, 1);
    await sleep(3000);
    const idle = procStatus(child.pid!);
    add(config, 'echo_rss_mb', 'MB', rep, idle.VmRSS!);
    add(config, 'echo_anon_mb', 'MB', rep, idle.RssAnon!);
    add(config, 'echo_private_mb', 'MB', rep, privateMb(child.pid!));
    add(config, 'echo_pss_mb', 'MB', rep, pssMb(child.pid!));
    // A pod that served traffic, idle again.
    add(config, 'echo_rps', 'req/s', rep, await requests(port, ECHO_REQUESTS));
    await sleep(2000);
    const busy = procStatus(child.pid!);
    add(config, 'echo_busy_rss_mb', 'MB', rep, busy.VmRSS!);
    add(config, 'echo_busy_anon_mb', 'MB', rep, busy.RssAnon!);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
  }
}

if (runs('echo')) {
  const floor = join(WORK, 'floor.mjs');
  writeFileSync(floor, "import { createServer } from 'node:http';\nconst port = Number(process.argv[2]);\ncreateServer((q, s) => s.end('x')).listen(port, '127.0.0.1', () => console.log('listening'));\n");
  const floorCjs = join(WORK, 'floor.cjs');
  writeFileSync(floorCjs, "const { createServer } = require('node:http');\nconst port = Number(process.argv[2]);\ncreateServer((q, s) => s.end('x')).listen(port, '127.0.0.1', () => console.log('listening'));\n");
  const echo = (port: number): string[] => ['lab', 'workload', 'echo', '--port', String(port), '--pod', 'bench'];
  const configs: Array<[string, (port: number) => string[]]> = [
    // As the lab runs a pod: the wrapper on the pods' PATH execs the C echo server.
    ['compiled', (port) => [ECHO_BIN, '--or', process.execPath, CLI, '--', ...echo(port)]],
    ...(SKIP_TSX ? [] : ([['tsx', (port: number) => cli('tsx', echo(port))]] as Array<[string, (port: number) => string[]]>)),
    ['node-floor', (port) => [process.execPath, floor, String(port)]],
    // The same server as CommonJS: node without its ES module loader.
    ['node-floor-cjs', (port) => [process.execPath, floorCjs, String(port)]],
  ];
  for (let rep = 0; rep < ECHO_REPS; rep++) {
    for (const [config, argv] of configs) {
      const port = 18000 + Math.floor(Math.random() * 2000);
      await echoMemory(config, argv(port), port, rep);
    }
    console.error(`echo rep ${rep + 1}/${ECHO_REPS}`);
  }
}

// ---- cni and agent: a real agent on a 1 x 1 mesh ----------------------------------

if (runs('cni') || runs('agent')) {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  const podNamespaces: string[] = [];
  try {
    topo = await createTopology({ clusters: 1, nodesPerCluster: 1, podsPerNode: 0, mode: 'clustermesh', prefix: 'cmbs' });
    const node: NodeInfo = topo.nodes[0]!;
    // The lab's /24 per node holds 253 pods; this node gets the /22 around it
    // (its gateway stays inside) so that 1,000 local endpoints fit. Only the
    // agent's podCIDR and the plugin's IPAM read it; no other node exists.
    const [net] = cidrRange(node.podCIDR.replace(/\/24$/, '/22'));
    node.podCIDR = `${intToIp(net)}/22`;
    const [first, last] = cidrRange(node.podCIDR);
    /** The i-th host address of the node's pod CIDR that is not its gateway. */
    const hostAddr = (i: number): string => {
      let n = first + 2 + i;
      if (n >= ipToInt(node.gatewayIP)) n++;
      if (n >= last) throw new Error(`endpoint ${i} does not fit ${node.podCIDR}`);
      return intToIp(n);
    };
    mesh = await startMesh(topo, { dir: mkdtempSync(join(tmpdir(), 'cmbs-mesh-')), progress: (l) => console.error(`mesh: ${l}`) });
    const agent = mesh.agent(node);

    if (runs('cni')) {
      const conf = JSON.stringify({
        cniVersion: '1.0.0',
        name: 'clustermesh',
        type: 'clustermesh',
        agentSocket: agent.socket,
        underlayMtu: topo.spec.underlayMtu,
        ipam: { podCIDR: node.podCIDR, gateway: node.gatewayIP, rangeStart: hostAddr(8) },
      });
      const nsenter = (argv: string[]): string[] => niced(['nsenter', `--net=/var/run/netns/${node.netns}`, ...argv]);
      const plugin = (p: Path, command: 'ADD' | 'DEL', containerID: string, netns: string): { ms: number; stderr: string } => {
        const env = childEnv({ CNI_COMMAND: command, CNI_CONTAINERID: containerID, CNI_NETNS: `/var/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', CNI_ARGS: `K8S_POD_NAMESPACE=default;K8S_POD_NAME=${containerID}`, CLUSTERMESH_CNI_TIMING: '1' });
        const full = nsenter(cniArgv(p));
        const t0 = performance.now();
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
            const t = JSON.parse(r.stderr.trim().split('\n').pop()!) as { totalMs: number; agentMs: number };
            agentMsCompiled.push(t.agentMs);
            add(p, 'cni_add_agent_ms', 'ms', rep, t.agentMs);
            add(p, 'cni_add_excl_agent_ms', 'ms', rep, r.ms - t.agentMs);
          } else tsxAdd.push(r.ms);
          plugin('compiled', 'DEL', id, ns);
          await run(['ip', 'netns', 'del', ns]);
          podNamespaces.splice(podNamespaces.indexOf(ns), 1);
        }
        // The floors: node doing nothing, and a program doing nothing, started the same way.
        for (const [config, argv] of [['node-floor', [process.execPath, '-e', '0']], ['exec-floor', ['true']]] as const) {
          const full = nsenter([...argv]);
          const t0 = performance.now();
          spawnSync(full[0]!, full.slice(1), { stdio: 'ignore' });
          add(config, 'cni_add_excl_agent_ms', 'ms', rep, performance.now() - t0);
        }
        console.error(`cni rep ${rep + 1}/${REPS}`);
      }
      tsxAdd.forEach((ms, rep) => add('tsx', 'cni_add_excl_agent_ms', 'ms', rep, ms - median(agentMsCompiled)));
    }

    if (runs('agent')) {
      // Agent memory with N local endpoints: veth pairs in the node (the agent attaches to a real device).
      const maxEp = Math.max(0, ...ENDPOINTS);
      for (let i = 0; i < maxEp; i += 250) {
        const lines: string[] = [];
        for (let j = i; j < Math.min(maxEp, i + 250); j++) lines.push(`link add cmbe${j} type veth peer name cmbep${j}`, `link set cmbe${j} up`, `link set cmbep${j} up`);
        await ipBatch(node.netns, lines);
      }
      const { stdout } = await run(['ip', '-n', node.netns, '-j', 'link', 'show', 'type', 'veth']);
      const macs = new Map((JSON.parse(stdout) as Array<{ ifname: string; address: string }>).map((l) => [l.ifname, l.address]));
      let have = 0;
      for (const n of [...ENDPOINTS].sort((a, b) => a - b)) {
        for (; have < n; have++) {
          await mesh.addEndpoint(node, `bench-ep-${have}`, { namespace: 'default', podName: `bench-ep-${have}`, ip: hostAddr(16 + have), hostIfName: `cmbe${have}`, podMac: macs.get(`cmbep${have}`)!, labels: { app: `bench-${have % 10}` } });
          if (have % 100 === 99) console.error(`agent: ${have + 1} endpoints`);
        }
        await sleep(5000); // let reconciliation and GC settle
        for (let rep = 0; rep < 3; rep++) {
          const s = procStatus(agent.process.pid!);
          add('compiled', 'agent_rss_mb', 'MB', rep, s.VmRSS!, { endpoints: n });
          add('compiled', 'agent_anon_mb', 'MB', rep, s.RssAnon!, { endpoints: n });
          await sleep(1000);
        }
        console.error(`agent with ${n} endpoints: ${procStatus(agent.process.pid!).VmRSS!.toFixed(1)} MB`);
      }
    }
  } finally {
    for (const ns of podNamespaces) await run(['ip', 'netns', 'del', ns]).catch(() => undefined);
    await mesh?.stop().catch((e: unknown) => console.error(`mesh stop: ${(e as Error).message}`));
    if (topo) await destroyTopology(topo);
  }
}

// ---- pods: N echo pods ready on a 2 x 2 lab ---------------------------------------

/**
 * Where the pods' time went: the scheduler's 'bound' lines (the cluster's kube-apiserver.log) and
 * each kubelet's 'pod start stages' line (kubelet.ts: when each stage of a pod's start ended). Prints,
 * per stage, the median and 90th percentile of when it ended after the apply and of how long it took
 * (from the stage before it); samples pod_stage_<stage>_ms (after the apply) and pod_step_<stage>_ms.
 */
/** The bench's echo pods (the Deployment `echo` in `default`): not the lab's own (DNS), started before the apply. */
const BENCH_PODS = 'default/echo-';

function podStages(lab: string, clusters: string[], applyAt: number, pods: number): void {
  const dir = labDir(lab);
  const lines = (file: string): Array<Record<string, unknown>> =>
    existsSync(file)
      ? readFileSync(file, 'utf8')
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as Record<string, unknown>)
      : [];
  const at = new Map<string, Record<string, number>>();
  for (const c of clusters) {
    // No 'created' stage: creationTimestamp has a resolution of one second (RFC 3339 without a fraction),
    // so it read as up to a second before the apply. The scheduler's 'bound' line has milliseconds.
    for (const l of lines(join(dir, c, 'kube-api', 'kube-apiserver.log'))) if (l.msg === 'scheduler: bound' && String(l.pod).startsWith(BENCH_PODS)) at.set(`${c}/${String(l.pod)}`, { ...at.get(`${c}/${String(l.pod)}`), bound: Date.parse(String(l.time)) - applyAt });
    for (const n of readdirSync(join(dir, c)).filter((x) => existsSync(join(dir, c, x, 'kubelet.log')))) {
      for (const l of lines(join(dir, c, n, 'kubelet.log'))) {
        if (l.msg !== 'pod start stages' || !String(l.pod).startsWith(BENCH_PODS)) continue;
        const ms = l.ms as Record<string, number | string>;
        const seen = Date.parse(String(ms.seen)) - applyAt;
        const row = at.get(`${c}/${String(l.pod)}`) ?? {};
        row.seen = seen;
        for (const [k, v] of Object.entries(ms)) if (k !== 'seen') row[k.replace(/:.*/, '')] = seen + Number(v);
        at.set(`${c}/${String(l.pod)}`, row);
      }
    }
  }
  const rows = [...at.values()].filter((r) => r.seen !== undefined);
  if (!rows.length) return console.error('pods: no kubelet stage lines (a kubelet before the stage log?)');
  const order = [...new Set(rows.flatMap((r) => Object.keys(r)))].sort((a, b) => median(rows.map((r) => r[a] ?? NaN).filter(Number.isFinite)) - median(rows.map((r) => r[b] ?? NaN).filter(Number.isFinite)));
  const pct = (xs: number[], q: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;
  console.error(`pods: stages of ${rows.length} pods (ms; 'after apply': when it ended; 'step': since the stage before it)`);
  console.error('  stage            after apply p50 / p90     step p50 / p90');
  order.forEach((k, i) => {
    const after = rows.map((r) => r[k]).filter((v): v is number => v !== undefined);
    const step = i === 0 ? after : rows.filter((r) => r[k] !== undefined && r[order[i - 1]!] !== undefined).map((r) => r[k]! - r[order[i - 1]!]!);
    after.forEach((v, j) => add('compiled', `pod_stage_${k}_ms`, 'ms', j, v, { pods }));
    step.forEach((v, j) => add('compiled', `pod_step_${k}_ms`, 'ms', j, v, { pods }));
    console.error(`  ${k.padEnd(16)} ${String(Math.round(pct(after, 0.5))).padStart(8)} / ${String(Math.round(pct(after, 0.9))).padEnd(12)} ${String(step.length ? Math.round(pct(step, 0.5)) : '-').padStart(6)} / ${step.length ? Math.round(pct(step, 0.9)) : '-'}`);
  });
}

if (runs('pods')) {
  const lab = `cmbs${process.pid}`;
  const clusters = ['cluster1', 'cluster2'];
  const cm = (args: string[], timeout = 900_000): string => execFileSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', timeout, maxBuffer: 64 << 20 });
  const perCluster = Math.ceil(PODS / clusters.length);
  const file = join(WORK, 'echo.yaml');
  writeFileSync(
    file,
    `apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: echo\nspec:\n  replicas: ${perCluster}\n  selector:\n    matchLabels:\n      app: echo\n  template:\n    metadata:\n      labels:\n        app: echo\n    spec:\n      containers:\n        - name: echo\n          command: ["clustermesh", "lab", "workload", "echo", "--port", "8080"]\n`,
  );
  try {
    console.error(`pods: lab up ${lab} (2 x 2)`);
    cm(['lab', 'up', '--lab', lab, '--clusters', '2', '--nodes', '2']);
    const t0 = performance.now();
    const applyAt = Date.now();
    for (const c of clusters) cm(['lab', 'apply', '--lab', lab, '-f', file, '--cluster', c]);
    // Polled with kubectl: the Deployments' readyReplicas, one small object per cluster (about 0.1 s of
    // CPU a poll). `lab get pods` (a Node.js CLI reading every pod of both clusters) cost about 0.35 s a
    // poll: 9.6 CPU-seconds of a 57 s run on two cores, taken from the lab it measured.
    const kubeconfig = join(labDir(lab), 'kubeconfig');
    const readyIn = (c: string): number =>
      Number(execFileSync('kubectl', ['--kubeconfig', kubeconfig, '--context', c, 'get', 'deployment', 'echo', '-o', 'jsonpath={.status.readyReplicas}'], { encoding: 'utf8', timeout: 60_000 }) || 0);
    for (;;) {
      const ready = clusters.reduce((n, c) => n + readyIn(c), 0);
      if (ready >= perCluster * clusters.length) break;
      if (performance.now() - t0 > 1_800_000) throw new Error(`only ${ready}/${perCluster * clusters.length} echo pods ready after 1800 s`);
      await sleep(2000);
    }
    const s = (performance.now() - t0) / 1000;
    const pods = (JSON.parse(cm(['lab', 'get', 'pods', '--lab', lab, '-o', 'json'])) as Array<{ deployment: string | null; ready: boolean; netns: string | null }>).filter((p) => p.deployment === 'echo');
    add('compiled', 'pods_ready_s', 's', 0, s, { pods: perCluster * clusters.length, clusters: 2, nodes: 2 });
    console.error(`pods: ${perCluster * clusters.length} echo pods ready after ${s.toFixed(1)} s`);
    // Each pod's process (the one node process in its namespace), once the pods are ready and idle.
    await sleep(5000);
    let i = 0;
    for (const p of pods) {
      const pids = p.netns ? (await run(['ip', 'netns', 'pids', p.netns])).stdout.split('\n').filter(Boolean).map(Number) : [];
      const pid = pids.find((x) => existsSync(`/proc/${x}/cmdline`) && readFileSync(`/proc/${x}/cmdline`, 'utf8').includes('workload\0echo'));
      if (pid === undefined) continue;
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (cmdline[0] !== ECHO_BIN) throw new Error(`echo pod ${pid} does not run ${ECHO_BIN}: ${cmdline.join(' ')}`);
      const st = procStatus(pid);
      add('compiled', 'lab_echo_rss_mb', 'MB', i, st.VmRSS!, { pods: pods.length });
      add('compiled', 'lab_echo_anon_mb', 'MB', i, st.RssAnon!, { pods: pods.length });
      add('compiled', 'lab_echo_pss_mb', 'MB', i, pssMb(pid), { pods: pods.length });
      i++;
    }
    const nodes = JSON.parse(cm(['lab', 'get', 'nodes', '--lab', lab, '-o', 'json'])) as Array<{ agent: { pid: number | null } }>;
    nodes.forEach((n, j) => n.agent.pid && add('compiled', 'lab_agent_rss_mb', 'MB', j, procStatus(n.agent.pid).VmRSS!, { pods: pods.length }));
    podStages(lab, clusters, applyAt, pods.length);
  } finally {
    try {
      cm(['lab', 'down', '--lab', lab]);
    } catch (e) {
      console.error(`lab down ${lab}: ${(e as Error).message}`);
    }
  }
}

const rows = summarize(samples);
const out = writeResults(RESULTS, rows, samples, 1500);
// The baseline commit, what ran and the machine's load belong with the figures.
const json = JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>;
writeFileSync(out, JSON.stringify({ ...json, parts: only ?? PARTS, baseline: baseCommit ?? null, nice: NICE, loadavgStart: loadStart, loadavg: loadavg() }, null, 2) + '\n');
rmSync(WORK, { recursive: true, force: true });
printTable(rows.filter((r) => Object.keys(r.params).length === 0), SKIP_TSX ? 'compiled' : 'tsx');
for (const r of rows.filter((x) => Object.keys(x.params).length > 0)) console.log(`${r.metric} ${JSON.stringify(r.params)}: ${r.median} [${r.min}-${r.max}] ${r.unit}`);
console.log(`results: ${out}${RESULTS === 'startup' ? '' : ' (partial: pass --write with a full run to replace startup.json)'}`);
