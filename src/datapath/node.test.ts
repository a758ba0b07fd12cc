import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DEFAULT_BPFFS_ROOT, removePinDir } from './bpffs.ts';
import { REPO_ROOT, buildBpfObject, datapathSkipReason, withNodePodRig } from './testing.ts';

const skip = datapathSkipReason();
const helper = join(fileURLToPath(new URL('.', import.meta.url)), 'node.test-helper.ts');

describe('NodeDatapath in a node netns', { skip }, () => {
  it('start, attach, traffic counters and events, stop keeps pins, restart reuses them, destroy removes them', async () => {
    buildBpfObject('lxc.bpf.o');
    buildBpfObject('overlay.bpf.o');
    buildBpfObject('test/metrics_v1.bpf.o');
    const suffix = await withNodePodRig('lb', ({ suffix, nodeNs, podNs }) => {
      const nodeName = `test-node-${suffix}`;
      try {
        const r = spawnSync('ip', ['netns', 'exec', nodeNs, process.execPath, '--import', 'tsx', helper, nodeName, podNs], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 90_000 });
        assert.equal(r.status, 0, `helper failed: ${r.stderr}`);
        assert.equal(r.stderr, '', 'nothing printed to stderr (libbpf warnings are captured into errors)');
        const out = JSON.parse(r.stdout.trim().split('\n').pop()!);

        assert.deepEqual(out.vxlan, { kind: 'vxlan', external: true, port: 8472, mtu: 1450, up: true, ifindex: true });
        assert.equal(out.overlayAttached, true);
        assert.equal(out.pinDir, join(DEFAULT_BPFFS_ROOT, nodeName));
        assert.equal(out.pins, true, 'all maps pinned in the node pin dir');
        assert.equal(out.lxcAttached, true);
        assert.equal(out.lxcEgressAttached, true, 'to_container on the veth egress');
        assert.equal(out.pingUnknownSource, false);
        assert.ok(out.counters['DROP_UNKNOWN_SOURCE/egress'] >= 1, JSON.stringify(out.counters));
        assert.ok(out.counters['TRACE_ARP_REPLY/egress'] >= 1, JSON.stringify(out.counters));
        assert.ok(out.counters['TRACE_TO_OVERLAY/egress'] >= 1, JSON.stringify(out.counters));
        assert.deepEqual(out.dropEvent, { srcIp: '10.101.0.5' });
        assert.deepEqual(out.afterStop, { overlayAttached: false, lxcAttached: false, lxcEgressAttached: false, pinsKept: true });
        assert.deepEqual(out.afterRestart, { endpoints: ['10.101.0.5:1000'], ipcache: ['10.102.0.0/24:2000:10.1.0.3'], metricsKept: true });
        assert.deepEqual(out.afterStopKeepAttached, { lxcAttached: true, lxcEgressAttached: true, overlayAttached: true });
        assert.deepEqual(
          out.metricsUpgrade,
          // BPF_MAP_TYPE_PERCPU_HASH (5) -> BPF_MAP_TYPE_PERCPU_ARRAY (6)
          { replaced: ['cm_metrics:type 5->6'], fromType: 5, emptyAfter: 0, countsAfter: true, replacedOnNextStart: 0, keptOnNextStart: true },
          'a cm_metrics pinned as the old per-CPU hash is replaced by the per-CPU array (only it), which counts from then on and is kept by the next start',
        );
        assert.deepEqual(
          out.policyUpgrade,
          {
            replaced: ['cm_policy_ct->cm_policy_conn carried 1, not 0', 'cm_policy_verdict->cm_policy_conn'],
            oldPinsLeft: [],
            conns: ['10.101.0.5:40000->10.102.0.77:80/6 verdict none whole'],
            replacedOnNextStart: 0,
          },
          'the live connection of an old cm_policy_ct is carried into cm_policy_conn (the expired one is not, the verdicts are not), and both old pins are removed',
        );
        assert.deepEqual(
          out.upgrade,
          {
            oldSize: 256 * 1024,
            replaced: [`cm_events:${256 * 1024}->${4 * 1024 * 1024}`],
            newSize: 4 * 1024 * 1024,
            endpoints: ['10.101.0.5:1000'],
            ipcache: ['10.102.0.0/24:2000:10.1.0.3'],
            metricsKept: true,
            drainedFromOldRing: true,
            retiredTakenOnce: true,
            replacedOnNextStart: 0,
          },
          'a pinned cm_events of the old size is replaced (only it: the other maps keep their entries) and its events are still read',
        );
        const mode = out.attachUpgrade.expected;
        assert.ok(['tcx', 'cls_bpf'].includes(mode));
        assert.deepEqual(
          out.attachUpgrade,
          {
            expected: mode,
            before: 'cls_bpf',
            ingress: mode,
            egress: mode,
            overlay: mode,
            clsFilters: mode === 'tcx' ? 0 : 2,
            statusAttach: [`from_overlay:${mode}`, `from_netdev:${mode}`, `from_container:${mode}`],
          },
          "an agent's cls_bpf filter is replaced by the program attached the kernel's way, and no second copy stays",
        );
        assert.deepEqual(out.attachDowngrade, { ingress: 'cls_bpf', egress: 'cls_bpf', overlay: 'cls_bpf', tcxLeft: 0, clsFilters: 2 }, 'tcAttach cls_bpf removes the tcx programs of the same name');
        assert.deepEqual(out.afterDestroy, { lxcAttached: false, lxcEgressAttached: false, overlayAttached: false, tcxLeft: 0, clsFilters: 0, pinDirExists: false, vxlanKept: true });
        assert.equal(out.vxlanAfterCreatorDestroy, false, 'the instance that created the VXLAN device deletes it on destroy');
      } finally {
        removePinDir(join(DEFAULT_BPFFS_ROOT, nodeName));
      }
      return suffix;
    });
    assert.ok(!execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(`cmt-lb-${suffix}`));
  });
});
