import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { LAB_CGROUP2_MOUNT, inCgroup, nodeCgroupPath } from './cgroup.ts';

describe('lab node cgroups', () => {
  it('a node cgroup is named after the node namespace, under the lab mount', () => {
    const p = nodeCgroupPath('cm-abc123-c1n2', { mount: false });
    if (p !== undefined) assert.equal(p, `${LAB_CGROUP2_MOUNT}/clustermesh/cm-abc123-c1n2`);
    assert.throws(() => nodeCgroupPath('../x', { mount: false }), /cannot name a cgroup/);
  });

  it('inCgroup moves the shell into the cgroup before it execs, and keeps argv word for word', () => {
    assert.deepEqual(inCgroup(undefined, ['ip', 'netns', 'exec', 'ns', 'a b']), ['ip', 'netns', 'exec', 'ns', 'a b']);
    const argv = inCgroup('/cg/x y', ['printf', '%s|', 'a b', '$HOME']);
    assert.equal(argv[0], 'sh');
    // run the script with a cgroup path whose cgroup.procs is a plain file: the pid lands there, argv is intact
    const dir = execFileSync('mktemp', ['-d'], { encoding: 'utf8' }).trim();
    try {
      const out = execFileSync('sh', ['-c', argv[2]!, dir, 'printf', '%s|', 'a b', '$HOME'], { encoding: 'utf8' });
      assert.equal(out, 'a b|$HOME|');
      assert.match(execFileSync('cat', [`${dir}/cgroup.procs`], { encoding: 'utf8' }), /^\d+\n$/);
    } finally {
      execFileSync('rm', ['-rf', dir]);
    }
  });
});
