import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { DEFAULT_BPFFS_ROOT, ensureBpffs, isBpffsMountPoint, isOnBpffs, nodePinDir, removePinDir } from './bpffs.ts';
import { BpfMap, BpfObject } from './libbpf/index.ts';
import { buildBpfObject, datapathSkipReason, uniqueSuffix } from './testing.ts';

const skip = datapathSkipReason();

describe('bpffs', () => {
  it('isBpffsMountPoint reads /proc/self/mountinfo lines, escapes included', () => {
    const info = [
      '22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw',
      '61 27 0:40 / /run/clustermesh/bpffs rw,relatime - bpf bpf rw',
      '62 27 0:41 / /run/with\\040space rw,relatime shared:5 - bpf bpf rw,mode=700',
      '63 27 0:42 / /run/tmpfs rw - tmpfs tmpfs rw',
    ].join('\n');
    assert.equal(isBpffsMountPoint('/run/clustermesh/bpffs', info), true);
    assert.equal(isBpffsMountPoint('/run/clustermesh/bpffs/', info), true);
    assert.equal(isBpffsMountPoint('/run/with space', info), true);
    assert.equal(isBpffsMountPoint('/run/tmpfs', info), false);
    assert.equal(isBpffsMountPoint('/sys', info), false);
  });

  it('nodePinDir refuses names that are not plain file names', () => {
    for (const bad of ['', '.', '..', 'a/b', '../x', 'x y']) assert.throws(() => nodePinDir(bad, '/nonexistent'), RangeError, bad);
  });

  it('ensureBpffs mounts once and is idempotent', { skip }, () => {
    const root = ensureBpffs();
    assert.equal(root, DEFAULT_BPFFS_ROOT);
    assert.equal(ensureBpffs(), root);
    assert.equal(isOnBpffs(root), true);
    assert.equal(isBpffsMountPoint(root), true);
    const mounts = execFileSync('findmnt', ['-n', '-o', 'TARGET', '-t', 'bpf'], { encoding: 'utf8' }).split('\n').filter((l) => l === root);
    assert.equal(mounts.length, 1, 'mounted exactly once');
  });

  it('ensureBpffs mounts on a directory of its own choosing', { skip }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'cmt-bpffs-'));
    try {
      assert.equal(isOnBpffs(dir), false);
      ensureBpffs(dir);
      assert.equal(isOnBpffs(dir), true);
      assert.equal(isBpffsMountPoint(dir), true);
    } finally {
      try {
        execFileSync('umount', [dir]);
      } catch {
        // not mounted
      }
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('removePinDir unlinks pins recursively and refuses what is not a pin directory', { skip }, () => {
    const root = ensureBpffs();
    const dir = nodePinDir(`test-rm-${uniqueSuffix()}`, root);
    const obj = BpfObject.open(buildBpfObject('test/libbpf_fixture.bpf.o'), { pinRoot: join(dir, 'sub') });
    try {
      obj.load();
      obj.map('fx_hash').pin(join(dir, 'fx_hash'));
    } finally {
      obj.close();
    }
    assert.ok(existsSync(join(dir, 'sub', 'fx_pinned')));
    const m = BpfMap.openPinned(join(dir, 'fx_hash'));
    m.close();
    removePinDir(dir);
    assert.equal(existsSync(dir), false);
    removePinDir(dir); // missing: fine
    assert.throws(() => removePinDir(root), /mount point/);
    const plain = mkdtempSync(join(tmpdir(), 'cmt-notbpf-'));
    try {
      assert.throws(() => removePinDir(plain), /not on a bpffs/);
      assert.ok(existsSync(plain));
    } finally {
      rmSync(plain, { recursive: true, force: true });
    }
  });
});
