// mapSizes on real BPF maps: cm_ipcache sized 64 and 100 entries to write →
// 36 refused (status and reconciler), the older entries intact and traffic to
// them still forwarded; a restart with 128 replaces the map and the
// reconciler writes all 100.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { REPO_ROOT, buildBpfObject, datapathSkipReason, withNodePodRig } from './testing.ts';

const skip = datapathSkipReason();
const helper = join(fileURLToPath(new URL('.', import.meta.url)), 'mapsizes.test-helper.ts');

describe('mapSizes on a node datapath', { skip }, () => {
  it('a full cm_ipcache refuses and counts, evicts nothing; a bigger size on restart takes every entry', async () => {
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
    });
  });
});
