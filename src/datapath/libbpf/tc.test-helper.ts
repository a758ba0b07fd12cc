// Run by tc.test.ts inside a test netns (`ip netns exec NS node --import tsx
// this-file ...`): attaches, replaces and detaches tc programs there and
// prints what it observed as one JSON object on stdout.
import { execFileSync } from 'node:child_process';
import { BpfObject, TcAction, type TcAttachMode, ifindexOf, tcAttach, tcAttachMode, tcDetach, tcDetachAll, tcFind, tcHookDestroy, tcQuery, tcxAvailable, tcxPrograms } from './index.ts';

const [objectPath, pinRoot, dev, peerNs, peerIP] = process.argv.slice(2);
if (!objectPath || !pinRoot || !dev || !peerNs || !peerIP) throw new Error('usage: tc.test-helper.ts OBJECT PINROOT DEV PEER_NETNS PEER_TARGET_IP');

const ping = (): boolean => {
  try {
    execFileSync('ip', ['netns', 'exec', peerNs, 'ping', '-c1', '-W1', '-q', peerIP], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const tc = (...args: string[]): string => execFileSync('tc', args, { encoding: 'utf8' });
const clsFilters = (dir: string): number => (JSON.parse(tc('-j', 'filter', 'show', 'dev', dev, dir)) as { options?: unknown }[]).filter((f) => f.options).length;
/** Programs on one hook, both ways. */
const programs = (ifindex: number, dir: 'ingress' | 'egress'): number => clsFilters(dir) + tcxPrograms(ifindex, dir).length;
const hasClsact = (): boolean => (JSON.parse(tc('-j', 'qdisc', 'show', 'dev', dev)) as { kind: string }[]).some((q) => q.kind === 'clsact');

const load = (verdict: number): BpfObject => {
  const o = BpfObject.open(objectPath, { pinRoot });
  o.setConst('fx_verdict', verdict);
  o.load();
  return o;
};
const runs = (o: BpfObject): bigint => o.map('fx_percpu').lookupPerCpu(Buffer.alloc(4))!.reduce((s, b) => s + b.readBigUInt64LE(), 0n);

const out: Record<string, unknown> = { tcx: tcxAvailable(), auto: tcAttachMode('auto') };
const pass = load(TcAction.ok);
const drop = load(TcAction.shot);
const NAME = 'fx_ret';

/** The attach/replace/detach sequence in one mode; leaves the device with nothing attached. */
function sequence(mode: TcAttachMode): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const ifindex = ifindexOf(dev!);
  o.queryBefore = tcQuery(ifindex, 'ingress', { name: NAME }) ?? null;
  o.pingBefore = ping();

  const a = tcAttach({ ifindex, direction: 'ingress', program: pass.program(NAME), mode });
  o.a = { mode: a.mode, name: a.name, handle: a.handle, priority: a.priority, progIdNonZero: a.progId > 0, found: tcFind(ifindex, 'ingress', { name: NAME })?.progId === a.progId };
  o.pingWithPass = ping();
  o.passRuns = Number(runs(pass));

  const b = tcAttach({ ifindex, direction: 'ingress', program: drop.program(NAME), mode });
  o.b = { sameSlot: b.handle === a.handle && b.priority === a.priority && b.name === a.name, differentProg: b.progId !== a.progId, queryMatches: tcQuery(ifindex, 'ingress', { name: NAME }) === b.progId };
  o.programsAfterReplace = programs(ifindex, 'ingress');
  // the same program again: nothing changes
  tcAttach({ ifindex, direction: 'ingress', program: drop.program(NAME), mode });
  o.programsAfterSameAgain = programs(ifindex, 'ingress');
  const dropRunsBefore = runs(drop);
  o.pingWithDrop = ping();
  o.dropRunsGrew = runs(drop) > dropRunsBefore;

  o.detachB = b.detach();
  o.detachBAgain = b.detach();
  o.detachA = a.detach(); // its slot is already empty
  o.queryAfterDetach = tcQuery(ifindex, 'ingress', { name: NAME }) ?? null;
  o.programsAfterDetach = programs(ifindex, 'ingress');
  o.pingAfterDetach = ping();

  tcAttach({ ifindex, direction: 'egress', program: pass.program(NAME), handle: 7, priority: 3, mode });
  o.egressQuery = (tcQuery(ifindex, 'egress', { name: NAME, handle: 7, priority: 3 }) ?? 0) > 0;
  o.detachByWrongName = tcDetach(ifindex, 'egress', { name: 'not_fx_ret', handle: 7, priority: 3 }) && mode === 'tcx';
  tcDetachAll(ifindex, 'egress');
  o.egressAfterDetachAll = tcQuery(ifindex, 'egress', { name: NAME, handle: 7, priority: 3 }) ?? null;
  o.clsactAfterDetachAll = hasClsact() || mode === 'tcx'; // tcx needs no qdisc

  // tcDetach by slot finds the program either way
  tcAttach({ ifindex, direction: 'ingress', program: pass.program(NAME), mode });
  o.detachBySlot = tcDetach(ifindex, 'ingress', { name: NAME });
  o.programsAfterSlotDetach = programs(ifindex, 'ingress');
  tcAttach({ ifindex, direction: 'ingress', program: pass.program(NAME), mode });
  tcHookDestroy(ifindex);
  o.afterHookDestroy = { clsact: hasClsact(), programs: programs(ifindex, 'ingress') + programs(ifindex, 'egress') };
  tcHookDestroy(ifindex); // nothing left: not an error
  o.detachWhenEmpty = tcDetach(ifindex, 'ingress', { name: NAME });
  return o;
}

try {
  const ifindex = ifindexOf(dev);
  out.ifindex = ifindex;
  const modes: TcAttachMode[] = tcxAvailable() ? ['tcx', 'cls_bpf'] : ['cls_bpf'];
  for (const mode of modes) out[mode] = sequence(mode);
  // One program of a name runs: attaching it the other way removes the first.
  if (tcxAvailable()) {
    tcAttach({ ifindex, direction: 'ingress', program: pass.program(NAME), mode: 'cls_bpf' });
    tcAttach({ ifindex, direction: 'ingress', program: drop.program(NAME), mode: 'tcx' });
    const toTcx = { cls: clsFilters('ingress'), tcx: tcxPrograms(ifindex, 'ingress').length, pingDropped: !ping() };
    tcAttach({ ifindex, direction: 'ingress', program: pass.program(NAME), mode: 'cls_bpf' });
    out.switch = { toTcx, toCls: { cls: clsFilters('ingress'), tcx: tcxPrograms(ifindex, 'ingress').length, pingPasses: ping() } };
    tcHookDestroy(ifindex);
  }
  try {
    tcAttachMode('tcx');
    out.tcxAsked = 'ok';
  } catch (e) {
    out.tcxAsked = (e as Error).message;
  }
  try {
    ifindexOf('cmt-no-such-dev');
    out.unknownDevice = 'no error';
  } catch (e) {
    out.unknownDevice = (e as { code?: string }).code;
  }
} finally {
  pass.close();
  drop.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
