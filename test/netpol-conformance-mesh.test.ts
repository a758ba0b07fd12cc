// The network-policy test model spread over two clusters (issue 19 part 4):
// a lab of two clusters of one node each, namespaces x and y in both, pods a
// and b in each namespace of each cluster (8 pods, 64 ordered pairs, keys
// c1:x/a ... c2:y/b), every pod serving TCP and UDP 80 and 81. Policies are
// written to one cluster's store and name `io.cilium.k8s.policy.cluster`, or
// rely on the default-local-cluster rule.
//
// The expectations come from the rules as the README states them, not from
// the code:
// - a cluster's policies are enforced by that cluster's agents, on its own
//   pods (egress at the source pod, ingress at the destination pod), against
//   identities of the whole mesh;
// - `io.cilium.k8s.policy.cluster` in a selector scopes it to that cluster;
//   a selector without it means the local cluster (policyDefaultLocalCluster,
//   default true) -- for a podSelector, a namespaceSelector and a
//   CiliumNetworkPolicy's fromEndpoints alike;
// - a NetworkPolicy rule without `from`/`to` names no selector: it admits
//   every peer (Kubernetes: an empty list matches all sources), so also the
//   pods of other clusters;
// - namespaces are per cluster: a selector without a namespace means the
//   policy's namespace, with the cluster scoping above (x of cluster2 is not
//   "the same namespace" for a selector of a cluster1 policy unless the
//   selector names cluster2).
// Refused pairs are checked against policy drop events and counters as in
// test/netpol-conformance.test.ts.
import { modelSuite, networkPolicy, uniqueLabName, NAMESPACE_NAME_LABEL as NS_NAME, type ModelCase, type ModelLab, type ModelPod, type TruthTable } from './helpers/netpol.ts';

const CLUSTER = 'io.cilium.k8s.policy.cluster';
const NAMESPACES = ['x', 'y'];
const PODS: Array<Omit<ModelPod, 'key'>> = ['cluster1', 'cluster2'].flatMap((cluster) =>
  NAMESPACES.flatMap((namespace) => ['a', 'b'].map((name) => ({ cluster, namespace, name, node: 'node1' }))),
);

const c1 = 'cluster1';
const c2 = 'cluster2';

const CASES: ModelCase[] = [
  {
    name: "a cluster's default-deny-ingress isolates its own pods only, against sources of every cluster",
    run: async (m, T) => {
      await m.applyPolicies(c1, networkPolicy('x', 'deny-ingress', { podSelector: {}, policyTypes: ['Ingress'] }));
      await m.validate(T().ingress({ cluster: c1, namespace: 'x' }, false), { port: 80 });
    },
  },
  {
    name: 'a podSelector without the cluster label admits pods of the local cluster only (same namespace name elsewhere is refused)',
    run: async (m, T) => {
      await m.applyPolicies(c1, networkPolicy('x', 'allow-same-namespace', { podSelector: {}, ingress: [{ from: [{ podSelector: {} }] }] }));
      await m.validate(T().ingress({ cluster: c1, namespace: 'x' }, false).expect({ cluster: c1, namespace: 'x' }, { cluster: c1, namespace: 'x' }, true), { port: 80 });
      await m.validate(T().ingress({ cluster: c1, namespace: 'x' }, false).expect({ cluster: c1, namespace: 'x' }, { cluster: c1, namespace: 'x' }, true), { port: 80, protocol: 'udp' });
    },
  },
  {
    name: 'a namespaceSelector without the cluster label admits pods of every namespace of the local cluster only',
    run: async (m, T) => {
      await m.applyPolicies(c1, networkPolicy('x', 'allow-all-namespaces', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: {} }] }] }));
      await m.validate(T().expect({ cluster: c2 }, 'c1:x/a', false), { port: 80 });
    },
  },
  {
    name: 'a podSelector naming io.cilium.k8s.policy.cluster admits that cluster\'s pods of the policy namespace',
    run: async (m, T) => {
      await m.applyPolicies(c1, networkPolicy('x', 'allow-c2-x-b', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b', [CLUSTER]: c2 } } }] }] }));
      await m.validate(T().ingress('c1:x/a', false).expect('c2:x/b', 'c1:x/a', true), { port: 80 });
    },
  },
  {
    name: 'a namespaceSelector with a podSelector naming both clusters admits that namespace in both',
    run: async (m, T) => {
      const both = { matchExpressions: [{ key: CLUSTER, operator: 'In' as const, values: [c1, c2] }] };
      await m.applyPolicies(c1, networkPolicy('x', 'allow-y-everywhere', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { [NS_NAME]: 'y' } }, podSelector: both }] }] }));
      await m.validate(T().ingress('c1:x/a', false).expect({ namespace: 'y' }, 'c1:x/a', true), { port: 80 });
    },
  },
  {
    name: 'an egress policy of cluster2 naming cluster1 pods: only those are reachable from the selected pod',
    run: async (m, T) => {
      await m.applyPolicies(
        c2,
        networkPolicy('y', 'to-c1-pod-b', { podSelector: { matchLabels: { pod: 'a' } }, egress: [{ to: [{ namespaceSelector: {}, podSelector: { matchLabels: { pod: 'b', [CLUSTER]: c1 } } }] }] }),
      );
      await m.validate(T().egress('c2:y/a', false).expect('c2:y/a', { cluster: c1, name: 'b' }, true), { port: 80 });
    },
  },
  {
    name: 'egress to a namespaceSelector without the cluster label reaches the local cluster only',
    run: async (m, T) => {
      await m.applyPolicies(c1, networkPolicy('x', 'to-every-namespace', { podSelector: { matchLabels: { pod: 'a' } }, egress: [{ to: [{ namespaceSelector: {} }] }] }));
      await m.validate(T().expect('c1:x/a', { cluster: c2 }, false), { port: 80 });
    },
  },
  {
    name: 'a rule without from admits every source, other clusters included; its ports still apply',
    run: async (m, T) => {
      await m.applyPolicies(c1, networkPolicy('x', 'port-80-from-anywhere', { podSelector: {}, ingress: [{ ports: [{ port: 80, protocol: 'TCP' }] }] }));
      await m.validate(T(), { port: 80 });
      await m.validate(T().ingress({ cluster: c1, namespace: 'x' }, false), { port: 81 });
    },
  },
  {
    name: 'CiliumNetworkPolicy: fromEndpoints without the cluster label is the local cluster; naming cluster1 admits cluster1',
    run: async (m, T) => {
      const cnp = (from: Array<Record<string, string>>) => ({
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'a-from-a', namespace: 'x' },
        spec: { endpointSelector: { matchLabels: { pod: 'a' } }, ingress: from.map((l) => ({ fromEndpoints: [{ matchLabels: l }] })) },
      });
      await m.applyPolicies(c2, cnp([{ pod: 'b' }]));
      await m.validate(T().ingress('c2:x/a', false).expect('c2:x/b', 'c2:x/a', true), { port: 81 });
      await m.applyPolicies(c2, cnp([{ pod: 'b' }, { pod: 'a', [CLUSTER]: c1 }]));
      await m.validate(T().ingress('c2:x/a', false).expect('c2:x/b', 'c2:x/a', true).expect('c1:x/a', 'c2:x/a', true), { port: 81 });
    },
  },
  {
    name: 'egress in cluster1 and ingress in cluster2 both enforced on a cross-cluster flow',
    run: async (m, T) => {
      await m.applyPolicies(
        c1,
        networkPolicy('x', 'a-to-c2-y', { podSelector: { matchLabels: { pod: 'a' } }, egress: [{ to: [{ namespaceSelector: { matchLabels: { [NS_NAME]: 'y' } }, podSelector: { matchLabels: { [CLUSTER]: c2 } } }] }] }),
      );
      await m.applyPolicies(
        c2,
        networkPolicy('y', 'from-c1-x-a', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { [NS_NAME]: 'x' } }, podSelector: { matchLabels: { pod: 'a', [CLUSTER]: c1 } } }] }] }),
      );
      await m.validate(T().egress('c1:x/a', false).ingress({ cluster: c2, namespace: 'y' }, false).expect('c1:x/a', { cluster: c2, namespace: 'y' }, true), { port: 80 });
    },
  },
  {
    name: "a namespace label added in cluster2 admits that namespace's pods to a cluster1 policy naming cluster2",
    run: async (m, T) => {
      await m.applyPolicies(
        c1,
        networkPolicy('x', 'from-blue-c2', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'blue' } }, podSelector: { matchLabels: { [CLUSTER]: c2 } } }] }] }),
      );
      await m.validate(T().ingress('c1:x/a', false), { port: 80 });
      await m.setNamespaceLabels('y', m.namespaceLabels('y', { team: 'blue' }), [c2]);
      await m.validate(T().ingress('c1:x/a', false).expect({ cluster: c2, namespace: 'y' }, 'c1:x/a', true), { port: 80 });
    },
  },
  {
    name: 'a pod relabelled in cluster2 is admitted by a cluster1 policy that now selects it',
    run: async (m, T) => {
      await m.applyPolicies(
        c1,
        networkPolicy('x', 'from-c2-clients', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: {}, podSelector: { matchLabels: { role: 'client', [CLUSTER]: c2 } } }] }] }),
      );
      await m.validate(T().ingress('c1:x/a', false), { port: 80 });
      const before = await m.identityOf('c2:y/b');
      await m.setPodLabels('c2:y/b', { pod: 'b', role: 'client' });
      try {
        await m.validate(T().ingress('c1:x/a', false).expect('c2:y/b', 'c1:x/a', true), { port: 80 });
      } finally {
        console.log(`# c2:y/b identity before the relabel ${before}, after ${await m.identityOf('c2:y/b')}`);
      }
    },
  },
];

modelSuite('network policy conformance across two clusters of one node', () => ({ name: uniqueLabName('cmtnpm'), clusters: 2, nodes: 1, namespaces: NAMESPACES, pods: PODS }), CASES);
