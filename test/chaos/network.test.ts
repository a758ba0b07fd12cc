// Fault suite, network family (issue 17 §1): cluster2 cut off from every other
// cluster (its port on the lab router down) for 10 s, then healed, under
// steady traffic on a 3-cluster mesh. Long-lived connections across the cut
// stall and must resume; no cluster may forget another's endpoints meanwhile.
// See test/chaos/etcd.test.ts for what is measured.
import type { Scenario } from '../../src/lab/chaos.ts';
import { chaosFamily } from './suite.ts';

const CUT_MS = Number(process.env.CHAOS_PARTITION_MS ?? 10_000);

const scenarios: Scenario[] = [
  {
    name: 'partition',
    fault: `cluster2 cut off from the other clusters for ${CUT_MS / 1000} s (router port down), then healed`,
    holdMs: CUT_MS,
    inject: async (rig) => rig.partition(2, true),
    recover: async (rig) => rig.partition(2, false),
  },
];

chaosFamily('network', 'cmtcn', scenarios, { cleanup: (rig) => rig.partition(2, false) });
