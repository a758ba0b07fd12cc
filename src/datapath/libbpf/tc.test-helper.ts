// Run by tc.test.ts inside a test netns (`ip netns exec NS node --import tsx
// this-file ...`): attaches, replaces and detaches tc programs there and
// prints what it observed as one JSON object on stdout.
import { execFileSync } from 'node:child_process';
import { BpfObject, TcAction, ifindexOf, tcAttach, tcDetach, tcDetachAll, tcHookDestroy, tcQuery } from './index.ts';

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
const filters = (dir: string): number => (JSON.parse(tc('-j', 'filter', 'show', 'dev', dev, dir)) as { options?: unknown }[]).filter((f) => f.options).length;
const hasClsact = (): boolean => (JSON.parse(tc('-j', 'qdisc', 'show', 'dev', dev)) as { kind: string }[]).some((q) => q.kind === 'clsact');

const load = (verdict: number): BpfObject => {
  const o = BpfObject.open(objectPath, { pinRoot });
  o.setConst('fx_verdict', verdict);
  o.load();
  return o;
};
const runs = (o: BpfObject): bigint => o.map('fx_percpu').lookupPerCpu(Buffer.alloc(4))!.reduce((s, b) => s + b.readBigUInt64LE(), 0n);

const out: Record<string, unknown> = {};
const pass = load(TcAction.ok);
const drop = load(TcAction.shot);
try {
  const ifindex = ifindexOf(dev);
  out.ifindex = ifindex;
  out.queryBefore = tcQuery(ifindex, 'ingress') ?? null;
  out.pingBefore = ping();

  const a = tcAttach({ ifindex, direction: 'ingress', program: pass.program('fx_ret') });
  out.a = { handle: a.handle, priority: a.priority, progIdNonZero: a.progId > 0, queryMatches: tcQuery(ifindex, 'ingress') === a.progId };
  out.pingWithPass = ping();
  out.passRuns = Number(runs(pass));

  const b = tcAttach({ ifindex, direction: 'ingress', program: drop.program('fx_ret') });
  out.b = { replacedInPlace: b.handle === a.handle && b.priority === a.priority, differentProg: b.progId !== a.progId, queryMatches: tcQuery(ifindex, 'ingress') === b.progId };
  out.ingressFiltersAfterReplace = filters('ingress');
  const dropRunsBefore = runs(drop);
  out.pingWithDrop = ping();
  out.dropRunsGrew = runs(drop) > dropRunsBefore;

  out.detachB = b.detach();
  out.detachBAgain = b.detach();
  out.detachA = a.detach(); // same handle/priority, already gone
  out.queryAfterDetach = tcQuery(ifindex, 'ingress') ?? null;
  out.ingressFiltersAfterDetach = filters('ingress');
  out.pingAfterDetach = ping();

  tcAttach({ ifindex, direction: 'egress', program: pass.program('fx_ret'), handle: 7, priority: 3 });
  out.egressQuery = (tcQuery(ifindex, 'egress', 7, 3) ?? 0) > 0;
  tcDetachAll(ifindex, 'egress');
  out.egressAfterDetachAll = tcQuery(ifindex, 'egress', 7, 3) ?? null;
  out.clsactAfterDetachAll = hasClsact();
  tcHookDestroy(ifindex);
  out.clsactAfterHookDestroy = hasClsact();
  tcHookDestroy(ifindex); // nothing left: not an error
  out.detachWithoutQdisc = tcDetach(ifindex, 'ingress');
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
