// bench/load: what loading each datapath object costs the kernel, i.e. what
// every agent pays at start before it forwards a packet: the verifier walking
// every program, and creating the maps.
//
// Each object is opened, configured like an agent's (tunnel mode) and loaded
// with bpf_object__load into a private pin directory, --reps times into an
// emptied directory (the object creates every map, as at a node's first agent
// start: config `<object>`, metrics *_maps_created) and --reps times into one
// that holds the maps already (reused, as for the node's second object and on
// every agent restart: *_maps_pinned), alternating. Per load: this process's
// system and user CPU time around bpf_object__load (the verifier runs in the
// loading thread, in the kernel: system time) and the wall time; per program
// the instructions the verifier processed (verified_insns of
// /proc/self/fdinfo). Compare CPU time: wall time on the shared 2-vCPU machine
// mostly says how busy the other tenants were.
//
// Usage: npm run bench -- load [--reps N] [--objects lxc.bpf.o,overlay.bpf.o]
//   [--no-peer] (CFG_REDIRECT_PEER 0) [--native] (native routing with two CIDRs)
//   [--against DIR] every object also from DIR (another build of bpf/build,
//     e.g. the previous commit's), alternating in the same repetitions, as
//     config `<object>@against`
//   [--log-dir DIR] the verifier's level-2 log of the last load into
//     DIR/<object>.log, and per function the instructions it walked there
//     (slows the loads down; figures of such a run are not comparable)
//   [--write] write bench/results/load.json even for a partial run (other
//     --reps or --objects than the defaults, --no-peer, --native, --against
//     or --log-dir), which otherwise writes load-partial.json.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { removePinDir } from '../../src/datapath/bpffs.ts';
import { BpfObject } from '../../src/datapath/libbpf/object.ts';
import * as config from '../../src/datapath/maps/config.ts';
import { buildBpfObject, tempPinDir } from '../../src/datapath/testing.ts';
import { summarize, writeResults, type Sample } from '../lib/results.ts';

const DEFAULT_OBJECTS = 'lxc.bpf.o,overlay.bpf.o';
const { values } = parseArgs({
  options: {
    reps: { type: 'string', default: '5' },
    objects: { type: 'string', default: DEFAULT_OBJECTS },
    native: { type: 'boolean', default: false },
    'no-peer': { type: 'boolean', default: false },
    against: { type: 'string' },
    'log-dir': { type: 'string' },
    write: { type: 'boolean', default: false },
  },
});
const REPS = Number(values.reps);
if (!Number.isInteger(REPS) || REPS < 1) throw new Error(`--reps must be an integer >= 1, got ${values.reps}`);
const AGAINST = values.against;
const LOG_DIR = values['log-dir'];
const PARTIAL =
  !values.write && (REPS !== 5 || values.objects !== DEFAULT_OBJECTS || values.native || values['no-peer'] || AGAINST !== undefined || LOG_DIR !== undefined);
// The verifier's log of a successful load reaches us as a libbpf debug message.
if (LOG_DIR) process.env.CLUSTERMESH_LIBBPF_DEBUG = '1';
const CFG: config.DatapathConfig = {
  vxlanIfindex: 42,
  nodeIp: '10.1.0.1',
  clusterId: 1,
  redirectPeer: !values['no-peer'],
  tunnelMtu: 1450,
  ...(values.native ? { routingNative: true, nativeCidrs: ['10.101.0.0/16', '10.102.0.0/16'] } : {}),
};

function verifiedInsns(fd: number): number {
  const m = /^verified_insns:\s+(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/**
 * Instructions the verifier walked per function, from a level-2 log: each
 * line of an instruction ("N: (op) ...") counts for the function whose
 * validation (the program itself, or "Validating f() func#N") was last begun.
 */
function perFunction(log: string): string {
  const out: string[] = [];
  let prog = '';
  let fn = '';
  let counts = new Map<string, number>();
  const flush = (): void => {
    if (prog) out.push(`  ${prog}: ${[...counts].map(([f, n]) => `${f} ${n}`).join(', ')}`);
  };
  for (const line of log.split('\n')) {
    const begin = /prog '([^']+)': -- BEGIN PROG LOAD LOG --/.exec(line);
    if (begin) {
      flush();
      prog = begin[1]!;
      fn = prog;
      counts = new Map();
      continue;
    }
    const v = /^Validating (\S+)\(\) func#\d+/.exec(line);
    if (v) {
      fn = v[1]!;
      continue;
    }
    if (/^\d+: \([0-9a-f]{2}\)/.test(line)) counts.set(fn, (counts.get(fn) ?? 0) + 1);
  }
  flush();
  return `  lines of instructions in the verifier log per function:\n${out.join('\n')}`;
}

/** The object has the datapath's per-node settings (lxc, overlay; not sock). */
function hasConfig(o: BpfObject): boolean {
  try {
    o.setConst(config.CONST_NAMES.vxlanIfindex, 0);
    return true;
  } catch {
    return false;
  }
}

interface Subject {
  config: string;
  path: string;
  /** Its own pin directory: the maps of two builds need not be compatible. */
  dir: string;
}

/** One load of @s into its pin directory, emptied first when @fresh; samples into @samples. */
function loadOnce(s: Subject, fresh: boolean, rep: number, samples: Sample[], log: boolean): void {
  if (fresh) {
    removePinDir(s.dir);
    mkdirSync(s.dir, { recursive: true });
  }
  const o = BpfObject.open(s.path, { pinRoot: s.dir, ...(log ? { kernelLogLevel: 2 | 4 } : {}) });
  try {
    if (hasConfig(o)) config.applyConfig(o, CFG);
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    o.load();
    const t1 = process.hrtime.bigint();
    const c1 = process.cpuUsage(c0);
    const maps = fresh ? 'maps_created' : 'maps_pinned';
    const add = (metric: string, value: number): void => {
      samples.push({ config: s.config, metric: `${metric}_${maps}`, unit: 'ms', rep, value });
    };
    add('sys_ms', c1.system / 1000);
    add('user_ms', c1.user / 1000);
    add('wall_ms', Number(t1 - t0) / 1e6);
    if (fresh && rep === 0) {
      for (const name of o.programNames()) {
        samples.push({ config: s.config, metric: 'verified_insns', unit: 'insns', rep: 0, value: verifiedInsns(o.program(name).fd), params: { program: name } });
      }
    }
    if (log) {
      mkdirSync(LOG_DIR!, { recursive: true });
      writeFileSync(join(LOG_DIR!, `${basename(s.config).replace(/@/g, '-')}.log`), o.loadLog);
      console.log(`${s.config}:\n${perFunction(o.loadLog)}`);
    }
  } finally {
    o.close();
  }
}

function main(): void {
  const subjects: Subject[] = [];
  for (const rel of values.objects!.split(',')) {
    subjects.push({ config: rel, path: buildBpfObject(rel), dir: tempPinDir('bench-load') });
    if (AGAINST !== undefined) subjects.push({ config: `${rel}@against`, path: join(AGAINST, rel), dir: tempPinDir('bench-load') });
  }
  const samples: Sample[] = [];
  const load0 = loadavg()[0]!;
  try {
    for (let rep = 0; rep < REPS; rep++) {
      // Alternate the order so no object always loads first or last.
      const order = rep % 2 === 0 ? subjects : [...subjects].reverse();
      for (const s of order) {
        loadOnce(s, true, rep, samples, false);
        loadOnce(s, false, rep, samples, LOG_DIR !== undefined && rep === REPS - 1);
      }
    }
  } finally {
    for (const s of subjects) removePinDir(s.dir);
  }
  const rows = summarize(samples);
  console.log(`# ${REPS} loads per object and case; load average at start ${load0.toFixed(2)}, at end ${loadavg()[0]!.toFixed(2)}`);
  const head = ['object', 'maps', 'sys ms [min-max]', 'user ms', 'wall ms [min-max]'];
  const table: string[][] = [];
  for (const s of subjects) {
    for (const maps of ['maps_created', 'maps_pinned']) {
      const get = (m: string) => rows.find((r) => r.config === s.config && r.metric === `${m}_${maps}`)!;
      const sys = get('sys_ms');
      const wall = get('wall_ms');
      table.push([s.config, maps.replace('maps_', ''), `${sys.median} [${sys.min}-${sys.max}]`, String(get('user_ms').median), `${wall.median} [${wall.min}-${wall.max}]`]);
    }
  }
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
  for (const l of [head, ...table]) console.log(l.map((x, i) => x.padEnd(widths[i]!)).join('  '));
  for (const s of subjects) {
    const insns = rows.filter((r) => r.config === s.config && r.metric === 'verified_insns');
    console.log(`${s.config} verified_insns: ${insns.map((r) => `${String(r.params.program)} ${r.median}`).join(', ')}`);
  }
  const file = writeResults(PARTIAL ? 'load-partial' : 'load', rows, samples, 0);
  console.log(`results: ${file}`);
}

main();
