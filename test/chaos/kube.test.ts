// Fault suite, Kubernetes API family (issue 17 §1): cluster2's Kubernetes API
// process (src/lab/kube-apiserver.ts) stopped for a minute, then started again
// on its data, under steady traffic on a 3-cluster mesh. Agents, the apiserver
// and the kubelets keep what they have and resync without pruning valid
// entries. See test/chaos/etcd.test.ts for what is measured.
import type { Scenario } from '../../src/lab/chaos.ts';
import { chaosFamily } from './suite.ts';

const DOWN_MS = Number(process.env.CHAOS_KUBE_DOWN_MS ?? 60_000);

const scenarios: Scenario[] = [
  {
    name: 'Kubernetes API down',
    fault: `cluster2's Kubernetes API stopped for ${DOWN_MS / 1000} s, then started again`,
    holdMs: DOWN_MS,
    inject: async (rig) => rig.mesh.stopKubeApi(2),
    recover: async (rig) => rig.mesh.startKubeApi(2),
  },
];

chaosFamily('Kubernetes API', 'cmtck', scenarios);
