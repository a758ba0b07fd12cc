import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { removePinDir } from '../bpffs.ts';
import { REPO_ROOT, buildBpfObject, datapathSkipReason, tempPinDir, uniqueSuffix } from '../testing.ts';

const skip = datapathSkipReason();
const helper = join(fileURLToPath(new URL('.', import.meta.url)), 'tc.test-helper.ts');
const ip = (...args: string[]): void => {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
};

describe('tc attach/detach in a netns', { skip }, () => {
  it('attaches, replaces atomically, detaches; traffic follows the attached program', () => {
    const suffix = uniqueSuffix(3);
    const nsPeer = `cmt-lb-${suffix}-a`;
    const nsDut = `cmt-lb-${suffix}-b`;
    const pinDir = tempPinDir('libbpf-tc');
    try {
      ip('netns', 'add', nsPeer);
      ip('netns', 'add', nsDut);
      ip('-n', nsPeer, 'link', 'add', 'va', 'type', 'veth', 'peer', 'name', 'vb', 'netns', nsDut);
      ip('-n', nsPeer, 'addr', 'add', '10.250.0.1/30', 'dev', 'va');
      ip('-n', nsDut, 'addr', 'add', '10.250.0.2/30', 'dev', 'vb');
      for (const [ns, dev] of [[nsPeer, 'va'], [nsDut, 'vb']] as const) {
        ip('-n', ns, 'link', 'set', dev, 'up');
        ip('-n', ns, 'link', 'set', 'lo', 'up');
      }
      const r = spawnSync('ip', ['netns', 'exec', nsDut, process.execPath, '--import', 'tsx', helper, buildBpfObject('test/libbpf_fixture.bpf.o'), pinDir, 'vb', nsPeer, '10.250.0.2'], {
        cwd: REPO_ROOT,
        encoding: 'utf8',
        timeout: 60_000,
      });
      assert.equal(r.status, 0, `helper failed: ${r.stderr}`);
      assert.equal(r.stderr, '', 'nothing printed to stderr (libbpf warnings are captured into errors)');
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
      assert.equal(out.auto, out.tcx ? 'tcx' : 'cls_bpf', 'auto is tcx where the kernel has it');
      const modes = out.tcx ? ['tcx', 'cls_bpf'] : ['cls_bpf'];
      for (const mode of modes) {
        const m = out[mode];
        assert.ok(m, `${mode} ran`);
        const msg = `${mode}: ${JSON.stringify(m)}`;
        assert.equal(m.queryBefore, null, msg);
        assert.equal(m.pingBefore, true, msg);
        assert.deepEqual(m.a, { mode, name: 'fx_ret', handle: 1, priority: 1, progIdNonZero: true, found: true }, msg);
        assert.equal(m.pingWithPass, true, `${mode}: TC_ACT_OK program lets the ping through`);
        assert.ok(m.passRuns > 0, `${mode}: the attached program saw the packets`);
        assert.deepEqual(m.b, { sameSlot: true, differentProg: true, queryMatches: true }, msg);
        assert.equal(m.programsAfterReplace, 1, `${mode}: replace, not a second program`);
        assert.equal(m.programsAfterSameAgain, 1, `${mode}: the same program again changes nothing`);
        assert.equal(m.pingWithDrop, false, `${mode}: TC_ACT_SHOT program drops the ping`);
        assert.equal(m.dropRunsGrew, true, msg);
        assert.equal(m.detachB, true, msg);
        assert.equal(m.detachBAgain, false, msg);
        assert.equal(m.detachA, false, msg);
        assert.equal(m.queryAfterDetach, null, msg);
        assert.equal(m.programsAfterDetach, 0, msg);
        assert.equal(m.pingAfterDetach, true, msg);
        assert.equal(m.egressQuery, true, msg);
        assert.equal(m.detachByWrongName, false, `${mode}: a tcx program is removed by its own name only`);
        assert.equal(m.egressAfterDetachAll, null, msg);
        assert.equal(m.clsactAfterDetachAll, true, `${mode}: detach-all keeps the qdisc`);
        assert.equal(m.detachBySlot, true, msg);
        assert.equal(m.programsAfterSlotDetach, 0, msg);
        assert.deepEqual(m.afterHookDestroy, { clsact: false, programs: 0 }, msg);
        assert.equal(m.detachWhenEmpty, false, msg);
      }
      if (out.tcx) {
        assert.deepEqual(out.switch, { toTcx: { cls: 0, tcx: 1, pingDropped: true }, toCls: { cls: 1, tcx: 0, pingPasses: true } }, 'one program of a name runs, whichever way it was attached last');
        assert.equal(out.tcxAsked, 'ok');
      } else {
        assert.match(out.tcxAsked, /^tc attach mode tcx: this kernel has no tcx hooks/);
      }
      assert.equal(out.unknownDevice, 'ENODEV');
    } finally {
      for (const ns of [nsDut, nsPeer]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      removePinDir(pinDir);
    }
    const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    assert.ok(!left.includes(`cmt-lb-${suffix}`), 'namespaces removed');
  });
});
