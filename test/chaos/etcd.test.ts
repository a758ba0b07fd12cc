// Fault suite, control-plane family (issue 17 §1): a cluster's etcd crashes
// (SIGKILL, restarted on its data), hangs (SIGSTOP, then SIGCONT) and loses
// its data (a fresh empty etcd: the apiserver must re-export and remotes must
// not prune before it has; the cluster's Kubernetes objects are in its
// Kubernetes etcd, a process of its own, and stay); the cluster's apiserver is SIGKILLed; all under
// steady traffic on a 3-cluster mesh. Each scenario reports long-lived connections
// broken, new connections failed and the longest outage a client saw, the
// time until green, and how often a sampled ipcache entry was wrong.
// `npm run chaos` runs every family and writes RELIABILITY.md.
import assert from 'node:assert/strict';
import type { Scenario } from '../../src/lab/chaos.ts';
import { chaosFamily } from './suite.ts';

const HANG_MS = Number(process.env.CHAOS_HANG_MS ?? 30_000);
const APISERVER_DOWN_MS = 20_000;
/** Written to cluster2's mesh etcd before "etcd data lost": gone after it (the wipe was real). */
const WIPE_MARKER = 'chaos/before-data-lost';
let kubeBefore: string[] = [];

const scenarios: Scenario[] = [
  {
    name: 'etcd SIGKILL',
    fault: "cluster2's etcd killed, restarted 5 s later on its data",
    holdMs: 5000,
    inject: async (rig) => rig.mesh.killEtcd(2),
    recover: async (rig) => rig.mesh.startEtcd(2),
  },
  {
    name: 'etcd data lost',
    fault: "cluster2's etcd killed, started 5 s later empty (data dir lost; its Kubernetes etcd kept)",
    holdMs: 5000,
    prepare: async (rig) => {
      await rig.mesh.kv(2).put(WIPE_MARKER, 'x');
      kubeBefore = await rig.kubeObjectUids(2);
    },
    inject: async (rig) => rig.mesh.killEtcd(2),
    recover: async (rig) => rig.mesh.startEtcd(2, { empty: true }),
    verify: async (rig) => {
      assert.equal(await rig.mesh.kv(2).get(WIPE_MARKER), undefined, "cluster2's mesh etcd came back empty");
      assert.deepEqual(await rig.kubeObjectUids(2), kubeBefore, "cluster2's Kubernetes objects are the same objects (its Kubernetes etcd was not touched)");
    },
  },
  {
    name: 'apiserver SIGKILL',
    fault: "cluster2's clustermesh apiserver killed, restarted 2 s later",
    holdMs: 2000,
    inject: async (rig) => rig.mesh.cluster(2).apiserver.kill(),
    recover: async (rig) => rig.mesh.cluster(2).apiserver.start(),
  },
  {
    // A restart slower than a short session lease (a rescheduled pod, an image pull, a
    // loaded node): the keys of the killed apiserver must outlive it until its successor
    // has rewritten them, or every remote deletes the cluster's live pods meanwhile.
    name: 'apiserver down 20 s',
    fault: `cluster2's clustermesh apiserver killed, restarted ${APISERVER_DOWN_MS / 1000} s later`,
    holdMs: APISERVER_DOWN_MS,
    inject: async (rig) => rig.mesh.cluster(2).apiserver.kill(),
    recover: async (rig) => rig.mesh.cluster(2).apiserver.start(),
  },
  {
    name: 'etcd hang',
    fault: `cluster2's etcd stopped (SIGSTOP) for ${HANG_MS / 1000} s, then continued`,
    holdMs: HANG_MS,
    inject: async (rig) => rig.signalEtcd(2, 'SIGSTOP'),
    recover: async (rig) => rig.signalEtcd(2, 'SIGCONT'),
  },
];

chaosFamily('control plane', 'cmtce', scenarios);
