// bench/programs: what each datapath program costs per packet, per path.
//
// Every case runs the real program on a crafted frame with BPF_PROG_TEST_RUN,
// `--calls` times per repetition, and reports the mean of the durations the
// kernel measured (it times the program alone, not the system call, and
// pauses its clock while the task is rescheduled, so a busy machine inflates
// the figures far less than a wall clock would). One run per call, not the
// call's own `repeat`: a repeated run re-executes on the packet the previous
// run rewrote (TTL decremented, a service's destination already translated),
// so from the 2nd run on it would measure another path. The maps are set up
// the way the agent writes them, in a private pin directory; calls after the
// first take the established path (the first packet creates the conntrack
// entries the next ones find).
//
// Baselines measured in the same run: `fx_ret` (a trivial tc program: one
// per-CPU map lookup) is the fixed cost of a test run; `fx_redirect` (tunnel
// key + redirect, nothing else) is the least an encapsulating program can do.
// The table prints each case's ns/packet and that figure minus fx_ret's.
//
// Per program, the instruction counts the kernel reports (xlated and jited
// sizes, instructions the verifier processed) from /proc/self/fdinfo and
// bpftool.
//
// What BPF_PROG_TEST_RUN cannot show: the work done after a redirect (the
// VXLAN device's route lookup for an uncached tunnel key, the veth and the
// peer's stack). Those are in the round-trip figures of bench/peers.
//
// Usage: npm run bench -- programs [--reps N] [--calls N] [--write] [--against DIR] [--only a,b]
//   --only: these cases (and the fx_ baselines) alone.
//   partial runs (other --calls/--reps than the defaults, --against or --only) write
//   bench/results/programs-partial.json unless --write is given.
//   --against DIR: every case that runs a datapath program runs a second time,
//   in the same repetitions (alternating), on lxc.bpf.o and
//   test/overlay_test.bpf.o of DIR (another build of bpf/build, e.g. the
//   previous commit's), as `<case>@against`, sharing the maps: a before/after
//   of a datapath change on the same machine at the same time. A map whose
//   definition differs between the builds (type, sizes, flags) cannot be
//   shared: the --against object gets its own copy, pinned beside it as
//   <name>_against, which only its programs write (counters, a changed map).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { removePinDir } from '../../src/datapath/bpffs.ts';
import { BpfObject } from '../../src/datapath/libbpf/object.ts';
import { BpfMap, sameDefinition } from '../../src/datapath/libbpf/map.ts';
import { TcAction, type BpfProgram } from '../../src/datapath/libbpf/program.ts';
import * as backendSlots from '../../src/datapath/maps/backend-slots.ts';
import * as backends from '../../src/datapath/maps/backends.ts';
import * as config from '../../src/datapath/maps/config.ts';
import * as endpoints from '../../src/datapath/maps/endpoints.ts';
import * as ipcache from '../../src/datapath/maps/ipcache.ts';
import * as maglev from '../../src/datapath/maps/maglev.ts';
import * as policy from '../../src/datapath/maps/policy.ts';
import { toPolicyMaps } from '../../src/datapath/maps/policy-entries.ts';
import * as revnat from '../../src/datapath/maps/revnat.ts';
import * as lbHint from '../../src/datapath/maps/lb-hint.ts';
import * as services from '../../src/datapath/maps/services.ts';
import * as settings from '../../src/datapath/maps/settings.ts';
import { tcpFrame } from '../../src/datapath/test-packets.ts';
import { buildBpfObject, loadDatapathObject, tempPinDir } from '../../src/datapath/testing.ts';
import { planFrontend } from '../../src/loadbalancer/index.ts';
import type { PolicyMapEntry } from '../../src/policy/types.ts';
import { median, summarize, writeResults, type Sample } from '../lib/results.ts';

const { values } = parseArgs({
  options: {
    reps: { type: 'string', default: '7' },
    calls: { type: 'string', default: '20000' },
    write: { type: 'boolean', default: false },
    against: { type: 'string' },
    only: { type: 'string' },
  },
});
const int = (name: string, v: string | undefined, min: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${v}`);
  return n;
};
const REPS = int('reps', values.reps, 1);
const CALLS = int('calls', values.calls, 100);
const AGAINST = values.against;
const ONLY = values.only?.split(',');
const PARTIAL = !values.write && (REPS !== 7 || CALLS !== 20000 || AGAINST !== undefined || ONLY !== undefined);

const CFG: config.DatapathConfig = { vxlanIfindex: 42, nodeIp: '10.1.0.1', clusterId: 1, redirectPeer: false, tunnelMtu: 1450 };
const GW_MAC = '0e:00:00:00:00:01';
/** The sending pod: BPF_PROG_TEST_RUN runs tc programs on lo (ifindex 1). */
const A = { ip: '10.101.0.10', mac: '0a:00:00:00:00:0a', identity: 0x10100, endpointId: 10 };
/** A pod on the same node, behind veth ifindex 77. */
const B = { ip: '10.101.0.20', mac: '0a:00:00:00:00:14', identity: 0x10101, endpointId: 20 };
/** A pod of another cluster, on another node. */
const R = { ip: '10.102.0.30', identity: 0x20100, node: '10.2.0.5' };
const VIP = '10.96.0.10';

interface Case {
  name: string;
  /** What the path does, for the table. */
  what: string;
  prog: () => BpfProgram;
  frame: Buffer;
  /** The verdict the path must give (checked once before timing). */
  expect: number;
  /** Set up the maps for this case (called before each timing run). */
  setup?: () => void;
  /** Called before every packet, outside the program's timing (a new connection each time). */
  beforeEach?: () => void;
}

const frame = (src: string, dst: string, sport: number, dport: number, srcMac = A.mac, flags = 0x10): Buffer =>
  withFlags(tcpFrame({ srcMac, dstMac: GW_MAC, src, dst, sport, dport, payload: Buffer.alloc(64) }), flags);

/** tcpFrame sends SYNs; an established connection's packet is an ACK (same checksum rules: the programs do not verify it). */
function withFlags(f: Buffer, flags: number): Buffer {
  const ihl = (f[14]! & 0x0f) * 4;
  f[14 + ihl + 13] = flags;
  return f;
}

/** The kernel's figures for one loaded program: id, verified instructions (fdinfo), xlated and jited sizes (bpftool). */
function programInfo(p: BpfProgram): { id: number; verifiedInsns: number; xlatedInsns: number; jitedBytes: number } {
  const info = readFileSync(`/proc/self/fdinfo/${p.fd}`, 'utf8');
  const field = (k: string): number => Number(/^(\S+):\s+(\S+)$/m.exec(info.split('\n').find((l) => l.startsWith(`${k}:`)) ?? '')?.[2] ?? NaN);
  const id = field('prog_id');
  const shown = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show', 'id', String(id)], { encoding: 'utf8' })) as { bytes_xlated?: number; bytes_jited?: number };
  return { id, verifiedInsns: field('verified_insns'), xlatedInsns: (shown.bytes_xlated ?? NaN) / 8, jitedBytes: shown.bytes_jited ?? NaN };
}

function main(): void {
  const dir = tempPinDir('bench-programs');
  const objs: BpfObject[] = [];
  try {
    const load = (rel: string): BpfObject => {
      const o = loadDatapathObject(rel, dir, CFG);
      objs.push(o);
      return o;
    };
    /** The same object from --against, with the same config, sharing the pinned maps. */
    const loadAgainst = (rel: string): BpfObject => {
      const o = BpfObject.open(join(AGAINST!, rel), { pinRoot: dir });
      try {
        for (const name of o.mapNames()) {
          const pin = join(dir, name);
          if (!existsSync(pin)) continue;
          const { name: _n, ...wanted } = o.mapDefinition(name);
          const m = BpfMap.openPinned(pin);
          const same = sameDefinition(wanted, m);
          m.close();
          if (!same) o.setPinPath(name, `${pin}_against`);
        }
        config.applyConfig(o, CFG);
        o.load();
      } catch (err) {
        o.close();
        throw err;
      }
      objs.push(o);
      return o;
    };
    const lxc = load('lxc.bpf.o');
    const ovl = load('test/overlay_test.bpf.o');
    const lxcAgainst = AGAINST === undefined ? undefined : loadAgainst('lxc.bpf.o');
    const ovlAgainst = AGAINST === undefined ? undefined : loadAgainst('test/overlay_test.bpf.o');
    const fx = BpfObject.open(buildBpfObject('test/libbpf_fixture.bpf.o'), { pinRoot: dir });
    objs.push(fx);
    fx.load();

    const m = (name: string): BpfMap => lxc.map(name);
    const clear = (map: BpfMap): void => {
      for (const k of [...map.keys()]) map.delete(k);
    };
    const ep = m(endpoints.MAP_NAME);
    endpoints.update(ep, { ip: A.ip }, { ifindex: 1, identity: A.identity, endpointId: A.endpointId, flags: 0, mac: A.mac, nodeMac: GW_MAC });
    endpoints.update(ep, { ip: B.ip }, { ifindex: 77, identity: B.identity, endpointId: B.endpointId, flags: 0, mac: B.mac, nodeMac: GW_MAC });
    const ipc = m(ipcache.MAP_NAME);
    ipcache.update(ipc, { addr: A.ip, prefixLen: 32 }, { identity: A.identity, tunnelEndpoint: null, flags: 0 });
    ipcache.update(ipc, { addr: B.ip, prefixLen: 32 }, { identity: B.identity, tunnelEndpoint: null, flags: 0 });
    ipcache.update(ipc, { addr: R.ip, prefixLen: 32 }, { identity: R.identity, tunnelEndpoint: R.node, flags: 0 });
    // A service with a local and a remote backend, installed as the agent does.
    const plan = planFrontend({
      vip: VIP, port: 80, protocol: 'TCP', serviceId: 7,
      backends: [
        { id: 100, ip: B.ip, port: 8080, clusterId: 1, local: true, ready: true, terminating: false, clusterGone: false },
        { id: 101, ip: R.ip, port: 8080, clusterId: 2, local: false, ready: true, terminating: false, clusterGone: false },
      ],
    });
    backends.updateMany(m(backends.MAP_NAME), plan.backends);
    backendSlots.updateMany(m(backendSlots.MAP_NAME), backendSlots.tableEntries(plan.service.value.serviceId, plan.slots));
    if (plan.maglev) maglev.update(m(maglev.MAP_NAME), plan.service.value.serviceId, plan.maglev);
    revnat.update(m(revnat.MAP_NAME), plan.revnat.key, plan.revnat.value);
    services.update(m(services.MAP_NAME), plan.service.key, plan.service.value);
    lbHint.write(m(lbHint.MAP_NAME), { vips: [plan.service.key.vip], backends: plan.backends.map(([, b]) => b.ip) });

    const policyMap = m(policy.MAP_NAME);
    const enforceMap = m(policy.ENFORCE_MAP_NAME);
    const revMap = m(policy.REV_MAP_NAME);
    const settingsMap = m(settings.MAP_NAME);
    const setTrace = (on: boolean): void => settings.set(settingsMap, { traceForward: on });
    const policyOff = (): void => {
      setTrace(false);
      clear(policyMap);
      policy.clearEnforce(enforceMap, [A.endpointId, B.endpointId]);
      policy.bumpRevision(revMap);
    };
    /** Egress of A and ingress of B enforced, each allowing exactly this traffic on port 8080. */
    const policyOn = (): void => {
      policyOff();
      const allow = (p: Partial<PolicyMapEntry> & Pick<PolicyMapEntry, 'endpointId' | 'direction'>): PolicyMapEntry => ({ remoteIdentity: 0, protocol: 6, port: 8080, portEnd: 8080, verdict: 'allow', ...p });
      const pm = toPolicyMaps(
        [
          allow({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: B.identity }),
          allow({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: R.identity }),
          allow({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity }),
          allow({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: R.identity }),
        ],
        [
          { endpointId: A.endpointId, direction: 'egress', enforced: true },
          { endpointId: B.endpointId, direction: 'ingress', enforced: true },
        ],
      );
      policy.updateMany(policyMap, pm.policy);
      policy.enforce.updateMany(enforceMap, pm.enforce);
      policy.bumpRevision(revMap);
    };
    const tunnel = Buffer.alloc(8);
    tunnel.writeUInt32LE(R.identity, 0);
    Buffer.from(R.node.split('.').map(Number)).copy(tunnel, 4);
    ovl.map('cm_test_tunnel').update(Buffer.alloc(4), tunnel);
    ovlAgainst?.map('cm_test_tunnel').update(Buffer.alloc(4), tunnel);

    const fromContainer = (): BpfProgram => lxc.program('from_container');
    // Every packet a new connection: its policy conntrack entries go before
    // each run, in this build's map (cm_policy_conn, one key for both ways)
    // and the older builds' (cm_policy_ct and cm_policy_verdict, keyed by the
    // tuple as it goes), whichever are pinned.
    let connMaps: BpfMap[] | undefined;
    const forgetConnection = (src: string, dst: string, sport: number, dport: number): (() => void) => {
      const keys = [policy.encodeConnKey({ src, dst, sport, dport, protocol: 6 }).key, Buffer.concat([Buffer.from([...src.split('.'), ...dst.split('.')].map(Number)), Buffer.from([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff, 6, 0, 0, 0])])];
      return () => {
        connMaps ??= [policy.CONN_MAP_NAME, policy.LEGACY_CT_MAP_NAME, policy.LEGACY_VERDICT_MAP_NAME].flatMap((n) => [n, `${n}_against`]).filter((n) => existsSync(join(dir, n))).map((n) => BpfMap.openPinned(join(dir, n)));
        for (const map of connMaps) for (const k of keys) map.delete(k);
      };
    };
    const cases: Case[] = [
      { name: 'fx_ret', what: 'baseline: trivial tc program (one per-CPU lookup)', prog: () => fx.program('fx_ret'), frame: frame(A.ip, B.ip, 40000, 8080), expect: TcAction.ok },
      { name: 'fx_redirect', what: 'baseline: tunnel key + redirect only', prog: () => fx.program('fx_redirect'), frame: frame(A.ip, R.ip, 40000, 8080), expect: TcAction.redirect },
      { name: 'pod_to_local_pod', what: 'from_container → local pod', prog: fromContainer, frame: frame(A.ip, B.ip, 40001, 8080), expect: TcAction.redirect, setup: policyOff },
      { name: 'pod_to_remote_pod', what: 'from_container → tunnel', prog: fromContainer, frame: frame(A.ip, R.ip, 40002, 8080), expect: TcAction.redirect, setup: policyOff },
      { name: 'pod_to_remote_pod_traced', what: 'from_container → tunnel, trace events on', prog: fromContainer, frame: frame(A.ip, R.ip, 40003, 8080), expect: TcAction.redirect, setup: () => { policyOff(); setTrace(true); } },
      { name: 'overlay_to_pod', what: 'from_overlay → local pod', prog: () => ovl.program('test_from_overlay'), frame: frame(R.ip, B.ip, 40004, 8080, '0e:00:00:00:00:99'), expect: TcAction.redirect, setup: policyOff },
      { name: 'pod_to_service_local', what: 'from_container, ClusterIP → local backend (established)', prog: fromContainer, frame: frame(A.ip, VIP, 40005, 80), expect: TcAction.redirect, setup: policyOff },
      { name: 'pod_to_local_pod_policy', what: 'from_container → local pod, egress + ingress policy', prog: fromContainer, frame: frame(A.ip, B.ip, 40006, 8080), expect: TcAction.redirect, setup: policyOn },
      { name: 'pod_to_remote_pod_policy', what: 'from_container → tunnel, egress policy', prog: fromContainer, frame: frame(A.ip, R.ip, 40007, 8080), expect: TcAction.redirect, setup: policyOn },
      { name: 'overlay_to_pod_policy', what: 'from_overlay → local pod, ingress policy', prog: () => ovl.program('test_from_overlay'), frame: frame(R.ip, B.ip, 40008, 8080, '0e:00:00:00:00:99'), expect: TcAction.redirect, setup: policyOn },
      { name: 'pod_to_local_pod_policy_new', what: 'from_container → local pod, egress + ingress policy, every packet a new connection (SYN)', prog: fromContainer, frame: frame(A.ip, B.ip, 40010, 8080, A.mac, 0x02), expect: TcAction.redirect, setup: policyOn, beforeEach: forgetConnection(A.ip, B.ip, 40010, 8080) },
      { name: 'overlay_to_pod_policy_new', what: 'from_overlay → local pod, ingress policy, every packet a new connection (SYN)', prog: () => ovl.program('test_from_overlay'), frame: frame(R.ip, B.ip, 40011, 8080, '0e:00:00:00:00:99', 0x02), expect: TcAction.redirect, setup: policyOn, beforeEach: forgetConnection(R.ip, B.ip, 40011, 8080) },
      {
        name: 'overlay_reply_to_pod_policy',
        what: 'from_overlay → local pod, the reply of a connection A opened (policy on)',
        prog: () => ovl.program('test_from_overlay'),
        frame: frame(R.ip, A.ip, 8080, 40009, '0e:00:00:00:00:99'),
        expect: TcAction.redirect,
        setup: () => {
          policyOn();
          // A -> R:8080 opens the connection whose replies these are.
          const r = fromContainer().testRun({ data: frame(A.ip, R.ip, 40009, 8080, A.mac, 0x02) });
          if (r.retval !== TcAction.redirect) throw new Error(`overlay_reply_to_pod_policy: the opening packet got ${r.retval}`);
        },
      },
    ];
    // The service case picks a backend by hash: make sure this flow's pick is the local one (try ports).
    const svc = cases.find((c) => c.name === 'pod_to_service_local')!;
    policyOff();
    for (let sport = 40005; ; sport++) {
      const f = frame(A.ip, VIP, sport, 80);
      const r = fromContainer().testRun({ data: f });
      if (r.retval === TcAction.redirect && r.dataOut.subarray(30, 34).join('.') === B.ip) {
        svc.frame = f;
        break;
      }
      if (sport > 40100) throw new Error('no source port maps to the local backend');
    }

    if (ONLY) {
      const unknown = ONLY.filter((n) => !cases.some((c) => c.name === n));
      if (unknown.length > 0) throw new Error(`--only: no case ${unknown.join(', ')}`);
      for (let i = cases.length - 1; i >= 0; i--) if (!cases[i]!.name.startsWith('fx_') && !ONLY.includes(cases[i]!.name)) cases.splice(i, 1);
    }
    if (lxcAgainst && ovlAgainst) {
      // Same frame, same setup, the other build's program of the same name.
      const other = (p: BpfProgram): BpfProgram => (p.name === 'from_container' ? lxcAgainst : ovlAgainst).program(p.name);
      for (const c of [...cases]) {
        if (c.name.startsWith('fx_')) continue;
        cases.push({ ...c, name: `${c.name}@against`, what: `${c.what} (--against)`, prog: () => other(c.prog()) });
      }
    }

    for (const c of cases) {
      c.setup?.();
      c.beforeEach?.();
      const r = c.prog().testRun({ data: c.frame });
      if (r.retval !== c.expect) throw new Error(`${c.name}: verdict ${r.retval}, expected ${c.expect}`);
    }

    const samples: Sample[] = [];
    const load0 = loadavg()[0]!;
    for (let rep = 0; rep < REPS; rep++) {
      // Alternate the order so no case always runs first or last.
      const order = rep % 2 === 0 ? cases : [...cases].reverse();
      for (const c of order) {
        c.setup?.();
        const prog = c.prog();
        let total = 0;
        for (let i = 0; i < CALLS; i++) {
          c.beforeEach?.();
          const r = prog.testRun({ data: c.frame });
          if (r.retval !== c.expect) throw new Error(`${c.name}: verdict ${r.retval} during timing`);
          total += r.durationNs;
        }
        samples.push({ config: c.name, metric: 'ns_per_packet', unit: 'ns', rep, value: total / CALLS });
      }
    }
    policyOff();
    for (const map of connMaps ?? []) map.close();

    const base = median(samples.filter((s) => s.config === 'fx_ret').map((s) => s.value));
    const progs = new Map<BpfProgram, ReturnType<typeof programInfo>>();
    for (const c of cases) {
      const p = c.prog();
      if (!progs.has(p)) progs.set(p, programInfo(p));
      const info = progs.get(p)!;
      for (const s of samples.filter((x) => x.config === c.name)) {
        samples.push({ config: c.name, metric: 'ns_over_baseline', unit: 'ns', rep: s.rep, value: s.value - base });
      }
      samples.push({ config: c.name, metric: 'verified_insns', unit: 'insns', rep: 0, value: info.verifiedInsns, params: { program: p.name } });
      samples.push({ config: c.name, metric: 'xlated_insns', unit: 'insns', rep: 0, value: info.xlatedInsns, params: { program: p.name } });
      samples.push({ config: c.name, metric: 'jited_bytes', unit: 'bytes', rep: 0, value: info.jitedBytes, params: { program: p.name } });
    }
    const rows = summarize(samples);
    console.log(`# ${REPS} reps × ${CALLS} packets per case; load average at start ${load0.toFixed(2)}, at end ${loadavg()[0]!.toFixed(2)}`);
    for (const c of cases) console.log(`#   ${c.name.padEnd(26)} ${c.what}`);
    // One line per case: rows are printed with cases as rows for readability.
    const table = cases.map((c) => {
      const get = (metric: string) => rows.find((r) => r.config === c.name && r.metric === metric);
      const ns = get('ns_per_packet')!;
      return [c.name, `${ns.median} [${ns.min}-${ns.max}]`, String(get('ns_over_baseline')!.median), String(get('verified_insns')!.median), String(get('xlated_insns')!.median)];
    });
    const head = ['case', 'ns/packet [min-max]', 'ns over fx_ret', 'verified insns', 'xlated insns'];
    const widths = head.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
    for (const l of [head, ...table]) console.log(l.map((x, i) => x.padEnd(widths[i]!)).join('  '));
    const file = writeResults(PARTIAL ? 'programs-partial' : 'programs', rows, samples, 0);
    console.log(`results: ${file}`);
  } finally {
    for (const o of objs) o.close();
    removePinDir(dir);
  }
}

main();
