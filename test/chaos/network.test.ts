// Fault suite, network family (issue 17 §1): cluster2 cut off from every other
// cluster (its port on the lab router down) for 10 s, then healed; the same
// with a pod of cluster2 created and another deleted during the cut; and (opt-in,
// CHAOS_LONG=1: it adds about 3 minutes) a cut of 2 minutes; under steady
// traffic on a 3-cluster mesh. Long-lived connections across the cut stall and
// must resume; no cluster may forget another's endpoints meanwhile, and after
// the heal every cluster has the new pod and none the deleted one.
// See test/chaos/etcd.test.ts for what is measured.
import type { ChaosRig, Scenario } from '../../src/lab/chaos.ts';
import { chaosFamily } from './suite.ts';

const CUT_MS = Number(process.env.CHAOS_PARTITION_MS ?? 10_000);
const LONG = process.env.CHAOS_LONG === '1';
const LONG_CUT_MS = Number(process.env.CHAOS_LONG_PARTITION_MS ?? 120_000);

const scenarios: Scenario[] = [
  {
    name: 'partition',
    fault: `cluster2 cut off from the other clusters for ${CUT_MS / 1000} s (router port down), then healed`,
    holdMs: CUT_MS,
    inject: async (rig) => rig.partition(2, true),
    recover: async (rig) => rig.partition(2, false),
  },
  {
    name: "partition during a pod's creation and deletion",
    fault: `cluster2 cut off for ${CUT_MS / 1000} s, a pod of cluster2 created and another deleted during the cut, then healed`,
    holdMs: CUT_MS,
    prepare: async (rig) => rig.deletePod(rig.pod(2, 2, 2)),
    inject: async (rig) => {
      await rig.partition(2, true);
      await rig.createPod(rig.pod(2, 2, 2));
      await rig.deletePod(rig.pod(2, 1, 1));
    },
    recover: async (rig) => rig.partition(2, false),
  },
  ...(LONG
    ? [
        {
          name: 'partition 2 min',
          fault: `cluster2 cut off from the other clusters for ${LONG_CUT_MS / 1000} s (router port down), then healed`,
          holdMs: LONG_CUT_MS,
          inject: async (rig: ChaosRig) => rig.partition(2, true),
          recover: async (rig: ChaosRig) => rig.partition(2, false),
        },
      ]
    : []),
];

chaosFamily('network', 'cmtcn', scenarios, { cleanup: (rig) => rig.partition(2, false) });
