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
      assert.equal(out.queryBefore, null);
      assert.equal(out.pingBefore, true);
      assert.deepEqual(out.a, { handle: 1, priority: 1, progIdNonZero: true, queryMatches: true });
      assert.equal(out.pingWithPass, true, 'TC_ACT_OK program lets the ping through');
      assert.ok(out.passRuns > 0, 'the attached program saw the packets');
      assert.deepEqual(out.b, { replacedInPlace: true, differentProg: true, queryMatches: true });
      assert.equal(out.ingressFiltersAfterReplace, 1, 'replace, not a second filter');
      assert.equal(out.pingWithDrop, false, 'TC_ACT_SHOT program drops the ping');
      assert.equal(out.dropRunsGrew, true);
      assert.equal(out.detachB, true);
      assert.equal(out.detachBAgain, false);
      assert.equal(out.detachA, false);
      assert.equal(out.queryAfterDetach, null);
      assert.equal(out.ingressFiltersAfterDetach, 0);
      assert.equal(out.pingAfterDetach, true);
      assert.equal(out.egressQuery, true);
      assert.equal(out.egressAfterDetachAll, null);
      assert.equal(out.clsactAfterDetachAll, true, 'detach-all keeps the qdisc');
      assert.equal(out.clsactAfterHookDestroy, false);
      assert.equal(out.detachWithoutQdisc, false);
      assert.equal(out.unknownDevice, 'ENODEV');
    } finally {
      for (const ns of [nsDut, nsPeer]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      removePinDir(pinDir);
    }
    const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    assert.ok(!left.includes(`cmt-lb-${suffix}`), 'namespaces removed');
  });
});
