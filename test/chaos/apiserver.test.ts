// Fault suite, apiserver family (issue 17 §1): cluster2's clustermesh
// apiserver restarted while its etcd is down, and two apiservers of cluster2
// at once (an upgrade overlap: a second process with the same settings beside
// the first, a pod created and one deleted meanwhile, then the first stopped),
// under steady traffic on a 3-cluster mesh. See test/chaos/etcd.test.ts for what is measured.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Scenario } from '../../src/lab/chaos.ts';
import type { ManagedProcess } from '../../src/lab/process.ts';
import { chaosFamily } from './suite.ts';

let before = new Set<string>();
let second: ManagedProcess | undefined;

const scenarios: Scenario[] = [
  {
    name: 'apiserver restarted while its etcd is down',
    fault: "cluster2's etcd killed, its apiserver killed and restarted, etcd back 10 s later",
    holdMs: 10_000,
    inject: async (rig) => {
      await rig.mesh.killEtcd(2);
      await rig.mesh.cluster(2).apiserver.kill();
      await rig.mesh.cluster(2).apiserver.start();
    },
    recover: async (rig) => rig.mesh.startEtcd(2),
  },
  {
    // The keys live on the writer's session lease: once the old process is gone, every key
    // must be on the new one's, or it expires with the old lease and remotes drop live pods.
    name: 'two apiservers at once',
    fault: "a second apiserver for cluster2 (same settings) beside the first for 20 s, a pod created and one deleted meanwhile, then the first stopped",
    holdMs: 20_000,
    prepare: async (rig) => {
      before = await rig.exportLeases(2);
      await rig.deletePod(rig.pod(2, 2, 2));
    },
    inject: async (rig) => {
      second = await rig.mesh.startSecondApiserver(2);
      await sleep(5000);
      await rig.createPod(rig.pod(2, 2, 2));
      await rig.deletePod(rig.pod(2, 1, 1));
    },
    recover: async (rig) => rig.mesh.replaceApiserver(2, second!),
    verify: async (rig) => {
      const after = await rig.exportLeases(2);
      assert.equal(after.size, 1, `every exported key on one lease, the running apiserver's: ${[...after].join(', ')}`);
      assert.ok(![...after].some((l) => before.has(l)), `no exported key left on the stopped apiserver's lease (${[...before].join(', ')})`);
    },
  },
];

chaosFamily('apiserver', 'cmtcs', scenarios);
