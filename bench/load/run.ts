// bench/load: what loading each datapath object costs the kernel (the
// verifier), i.e. what every agent pays at start. Each object is opened,
// configured like an agent's (tunnel mode) and loaded into a private pin
// directory, --reps times; per load the wall time and this process's
// user/system CPU time around bpf_object__load (the verifier runs in the
// loading thread, as system time), and per program the instructions the
// verifier processed (verified_insns of /proc/self/fdinfo).
//
// Usage: npm run bench -- load [--reps N] [--objects lxc.bpf.o,overlay.bpf.o]
//   [--no-peer] (CFG_REDIRECT_PEER 0) [--native] (native routing with two CIDRs)
//   [--log-dir DIR] (the verifier's level-2 log of the last load into DIR/<object>.log,
//   and per function the instructions it walked there; slows the loads down)
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, isAbsolute, join } from 'node:path';
import { parseArgs } from 'node:util';
import { removePinDir } from '../../src/datapath/bpffs.ts';
import { BpfObject } from '../../src/datapath/libbpf/object.ts';
import * as config from '../../src/datapath/maps/config.ts';
import { buildBpfObject, tempPinDir } from '../../src/datapath/testing.ts';
import { median } from '../lib/results.ts';

const { values } = parseArgs({
  options: {
    reps: { type: 'string', default: '5' },
    objects: { type: 'string', default: 'lxc.bpf.o,overlay.bpf.o' },
    native: { type: 'boolean', default: false },
    'no-peer': { type: 'boolean', default: false },
    'log-dir': { type: 'string' },
  },
});
const REPS = Number(values.reps);
const LOG_DIR = values['log-dir'];
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
  let prog = '', fn = '', counts = new Map<string, number>();
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

interface Times {
  wall: number[];
  sys: number[];
  user: number[];
}

function main(): void {
  for (const rel of values.objects!.split(',')) {
    // An absolute path: that object as it is (e.g. another commit's build).
    const path = isAbsolute(rel) ? rel : buildBpfObject(rel);
    // fresh: the object creates every map (a node's first agent start);
    // pinned: its maps exist already (the second object, every restart).
    const fresh: Times = { wall: [], sys: [], user: [] };
    const pinned: Times = { wall: [], sys: [], user: [] };
    let insns: Record<string, number> = {};
    const dir = tempPinDir('bench-load');
    try {
      for (let i = 0; i < 2 * REPS; i++) {
        // Alternate: an emptied pin directory, then one holding the maps.
        if (i % 2 === 0) {
          removePinDir(dir);
          mkdirSync(dir, { recursive: true });
        }
        const into = i % 2 === 0 ? fresh : pinned;
        const o = BpfObject.open(path, { pinRoot: dir, ...(LOG_DIR ? { kernelLogLevel: 2 | 4 } : {}) });
        try {
          if (hasConfig(o)) config.applyConfig(o, CFG);
          const c0 = process.cpuUsage();
          const t0 = process.hrtime.bigint();
          o.load();
          const t1 = process.hrtime.bigint();
          const c1 = process.cpuUsage(c0);
          into.wall.push(Number(t1 - t0) / 1e6);
          into.sys.push(c1.system / 1000);
          into.user.push(c1.user / 1000);
          insns = {};
          for (const name of o.programNames()) insns[name] = verifiedInsns(o.program(name).fd);
          if (LOG_DIR && i === 2 * REPS - 1) {
            mkdirSync(LOG_DIR, { recursive: true });
            writeFileSync(join(LOG_DIR, `${basename(rel)}.log`), o.loadLog);
            console.log(perFunction(o.loadLog));
          }
        } finally {
          o.close();
        }
      }
    } finally {
      removePinDir(dir);
    }
    const f = (xs: number[]): string => `${median(xs).toFixed(0)} ms [${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)}]`;
    for (const [what, t] of [['maps created', fresh], ['maps pinned ', pinned]] as const) {
      console.log(`${rel} ${what}: wall ${f(t.wall)}, sys ${f(t.sys)}, user ${f(t.user)}`);
    }
    for (const [name, n] of Object.entries(insns)) console.log(`  ${name}: verified_insns ${n}`);
  }
}

main();
