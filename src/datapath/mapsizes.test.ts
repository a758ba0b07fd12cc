// mapSizes on real BPF maps: cm_ipcache sized 64 and 100 entries to write →
// 36 refused (status and reconciler), the older entries intact and traffic to
// them still forwarded; a restart with 128 replaces the map and the
// reconciler writes all 100. A resized cm_ct keeps its live entries (as many
// as fit, longest-lived first) and drops the expired ones.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { REPO_ROOT, buildBpfObject, datapathSkipReason, withNodePodRig } from './testing.ts';

const skip = datapathSkipReason();
const helper = join(fileURLToPath(new URL('.', import.meta.url)), 'mapsizes.test-helper.ts');

describe('mapSizes on a node datapath', { skip }, () => {
  it('a full cm_ipcache refuses and counts, evicts nothing; a bigger size on restart takes every entry; a resized cm_ct keeps its live connections', async () => {
    buildBpfObject('lxc.bpf.o');
    buildBpfObject('overlay.bpf.o');
    await withNodePodRig('cap', ({ suffix, nodeNs, podNs }) => {
      const r = spawnSync('ip', ['netns', 'exec', nodeNs, process.execPath, '--import', 'tsx', helper, `test-cap-${suffix}`, podNs], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 120_000 });
      assert.equal(r.status, 0, `helper failed: ${r.stderr}`);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
      assert.deepEqual(out.small, {
        replaced: [],
        status: { maxEntries: 64, entries: 64, refused: 36 },
        reconciler: { desired: 100, pending: 36, refused: 36, mapFullAtLeast: true },
        oldPresent: true,
        forwardedToOld: true,
      });
      assert.deepEqual(out.big, {
        replaced: ['cm_ipcache:64->128'],
        status: { maxEntries: 128, entries: 100, refused: 0 },
        reconciler: { desired: 100, pending: 0, refused: 0, mapFullAtLeast: true },
        oldPresent: true,
        forwardedToOld: true,
      });
      assert.deepEqual(out.smallCt, { replaced: null, carriedOver: null, sports: [] });
      assert.deepEqual(out.bigCt, { replaced: '64->128', carriedOver: { entries: 3, notCarried: 0 }, sports: [40001, 40002, 40003] }, 'live entries carried over, expired ones not');
      assert.deepEqual(out.shrunkCt, { replaced: '128->2', carriedOver: { entries: 2, notCarried: 1 }, sports: [40001, 40002] }, 'the longest-lived that fit');
    });
  });
});
