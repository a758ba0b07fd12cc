// Socket-level load balancing's attachment (bpf/sock.bpf.c through
// NodeDatapath): pinned cgroup links that survive an agent stop, are replaced
// by a restart, are detached by stop() and by a start without the setting.
// What the programs do to real sockets: test/services-socklb.test.ts.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createNodeCgroup, removeNodeCgroup } from '../lab/cgroup.ts';
import { DEFAULT_BPFFS_ROOT, removePinDir } from './bpffs.ts';
import { REPO_ROOT, buildBpfObject, datapathSkipReason, uniqueSuffix } from './testing.ts';

const helper = join(fileURLToPath(new URL('.', import.meta.url)), 'sock.test-helper.ts');

describe('socket LB attachment to a cgroup', { skip: datapathSkipReason() }, () => {
  it('attaches four programs by pinned links; stop keeps or detaches them; a restart replaces them; off detaches what a previous start left', (t) => {
    for (const o of ['lxc.bpf.o', 'overlay.bpf.o', 'sock.bpf.o']) buildBpfObject(o);
    const suffix = uniqueSuffix(3);
    const nodeNs = `cmt-sock-${suffix}-node`;
    const nodeName = `test-sock-${suffix}`;
    const cgroup = createNodeCgroup(nodeNs);
    if (cgroup === undefined) {
      t.skip('no cgroup v2 hierarchy on this machine');
      return;
    }
    try {
      spawnSync('ip', ['netns', 'add', nodeNs]);
      spawnSync('ip', ['-n', nodeNs, 'link', 'add', 'ul0', 'type', 'veth', 'peer', 'name', 'ul1']);
      spawnSync('ip', ['-n', nodeNs, 'addr', 'add', '10.1.0.2/24', 'dev', 'ul0']);
      spawnSync('ip', ['-n', nodeNs, 'link', 'set', 'ul0', 'up']);
      const r = spawnSync('ip', ['netns', 'exec', nodeNs, process.execPath, '--import', 'tsx', helper, nodeName, cgroup], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 90_000 });
      assert.equal(r.status, 0, `helper failed: ${r.stderr}`);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
      assert.deepEqual(out.status, { enabled: true, cgroup, attached: true, stats: { connect: 0, sendmsg: 0, recvmsg: 0, getpeername: 0, noBackend: 0, revnatFail: 0 } });
      assert.equal(out.afterStart, true, 'exactly our program on each hook');
      assert.equal(out.afterStopKeep, true, 'stop({ detach: false }) (an agent stopping) keeps them attached');
      assert.deepEqual(out.afterRestart, { replaced: true, newIds: true }, 'a restart puts its programs in place of the old ones, not beside them');
      assert.deepEqual(out.afterStop, { connect4: [], sendmsg4: [], recvmsg4: [], getpeername4: [] });
      assert.deepEqual(out.offAfterOn, { attached: { connect4: [], sendmsg4: [], recvmsg4: [], getpeername4: [] }, status: false });
    } finally {
      spawnSync('ip', ['netns', 'del', nodeNs]);
      removePinDir(join(DEFAULT_BPFFS_ROOT, nodeName));
      removeNodeCgroup(nodeNs);
    }
  });
});
