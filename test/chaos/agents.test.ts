// Fault suite, agent family (issue 17 §1): one agent SIGKILLed, and every
// agent of a cluster restarted at once (the rolling-upgrade case of Cilium
// #23823/#26462: no global outage, no drop), and an agent started while every
// remote cluster is unreachable, under steady traffic on a
// 3-cluster mesh. See test/chaos/etcd.test.ts for what is measured.
import type { Scenario } from '../../src/lab/chaos.ts';
import { chaosFamily } from './suite.ts';

const scenarios: Scenario[] = [
  {
    name: 'agent SIGKILL',
    fault: "the agent of cluster2's server node killed, restarted 2 s later",
    holdMs: 2000,
    inject: async (rig) => rig.mesh.killAgent(rig.serverPods().find((p) => p.cluster === 2)!.node),
    recover: async (rig) => rig.mesh.restartAgent(rig.serverPods().find((p) => p.cluster === 2)!.node, { waitReady: false }),
  },
  {
    name: 'all agents of a cluster',
    fault: "every agent of cluster2 killed at once, all restarted 2 s later",
    holdMs: 2000,
    inject: async (rig) => {
      await Promise.all(rig.nodesOf(2).map((n) => rig.mesh.killAgent(n)));
    },
    recover: async (rig) => {
      await Promise.all(rig.nodesOf(2).map((n) => rig.mesh.restartAgent(n, { waitReady: false })));
    },
  },
  {
    // The agent re-adopts its persisted state: no remote entry may go while no remote can be reached.
    name: 'agent started while remotes unreachable',
    fault: "the agent of cluster2's server node killed, cluster2 cut off (router port down), the agent restarted, healed 40 s later",
    holdMs: 40_000,
    inject: async (rig) => {
      const node = rig.serverPods().find((p) => p.cluster === 2)!.node;
      await rig.mesh.killAgent(node);
      await rig.partition(2, true);
      await rig.mesh.restartAgent(node, { waitReady: false });
    },
    recover: async (rig) => rig.partition(2, false),
  },
];

chaosFamily('agents', 'cmtca', scenarios, { cleanup: (rig) => rig.partition(2, false) });
