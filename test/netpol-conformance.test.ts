// The upstream Kubernetes network-policy conformance cases (kubernetes
// test/e2e/network/netpol/network_policy.go) against clustermesh, on a lab of
// one cluster with two nodes (issue 19 part 4). The model: namespaces x, y, z
// (labels ns=<name> and kubernetes.io/metadata.name=<name>), pods a, b, c in
// each (label pod=<name>) spread over both nodes, every pod serving TCP and
// UDP on 80 and 81 (named ports serve-80-tcp ... serve-81-udp). Each case
// writes NetworkPolicy objects to the cluster's store as `lab apply -f` does,
// probes all 81 ordered pairs at once and compares with the expected truth
// table transcribed from upstream (written for the full 9-pod model; loopback
// pairs are not counted, as upstream). Every refused pair must also show up as
// a policy drop event of its flow and in the nodes' policy drop counters.
//
// Upstream cases not run here, and why:
// - "NetworkPolicy between server and client using SCTP" (default-deny-ingress,
//   Ports, PodSelector and NamespaceSelector): SCTP traffic cannot be made on
//   this test bed: the kernel has no SCTP (socket(IPPROTO_SCTP) fails with
//   EPROTONOSUPPORT) and Node.js has no SCTP sockets. The datapath's policy
//   lookup reads SCTP ports, but nothing here can exercise it. The two cases
//   that name SCTP in a policy but probe TCP ("should not mistakenly treat
//   'protocol: SCTP' as 'protocol: TCP'", "should properly isolate pods that
//   are selected by a policy allowing SCTP") do apply and run.
// - Nothing else is skipped: named ports, endPort-free port rules, UDP,
//   namespace relabelling and policy updates all run.
import { modelSuite, networkPolicy, uniqueLabName, NAMESPACE_NAME_LABEL as NS_NAME, type ModelCase, type ModelLab, type ModelPod, type TruthTable } from './helpers/netpol.ts';

const SKIP_SCTP = 'no SCTP on this test bed: the kernel has none (EPROTONOSUPPORT) and Node.js has no SCTP sockets';

const NAMESPACES = ['x', 'y', 'z'];
const NODES = ['node1', 'node2'];
/** x/a node1, x/b node2, x/c node1, y/a node2, ...: same-node and cross-node pairs in every namespace. */
const PODS: Array<Omit<ModelPod, 'key'>> = NAMESPACES.flatMap((ns, i) => ['a', 'b', 'c'].map((name, j) => ({ cluster: 'cluster1', namespace: ns, name, node: NODES[(i * 3 + j) % 2]! })));

/** The /4 around an address (what upstream's except cases allow). */
function slash4(ip: string): string {
  const first = Number(ip.split('.')[0]) & 0xf0;
  return `${first}.0.0.0/4`;
}

const all = { podSelector: {} };
const podA = { podSelector: { matchLabels: { pod: 'a' } } };
const nsIs = (ns: string) => ({ matchLabels: { [NS_NAME]: ns } });
const nsNotIn = (ns: string) => ({ matchExpressions: [{ key: NS_NAME, operator: 'NotIn' as const, values: [ns] }] });

const CASES: ModelCase[] = [
  {
    name: "should support a 'default-deny-ingress' policy",
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-ingress', { ...all, policyTypes: ['Ingress'] }));
      await m.validate(T().ingress({ namespace: 'x' }, false), { port: 80 });
    },
  },
  {
    name: "should support a 'default-deny-all' policy",
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-all', { ...all, policyTypes: ['Ingress', 'Egress'] }));
      await m.validate(T().ingress({ namespace: 'x' }, false).egress({ namespace: 'x' }, false), { port: 80 });
    },
  },
  {
    name: 'should enforce policy to allow traffic from pods within server namespace based on PodSelector',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'x-a-allows-x-b', { ...podA, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] }));
      await m.validate(T().ingress('x/a', false).expect('x/b', 'x/a', true), { port: 80 });
    },
  },
  {
    name: 'should enforce policy to allow ingress traffic for a target',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-all', { ...all, policyTypes: ['Ingress'] }));
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-all-to-a', { ...podA, ingress: [{ from: [{ podSelector: {}, namespaceSelector: {} }] }] }));
      await m.validate(T().ingress('x/a', true).ingress('x/b', false).ingress('x/c', false), { port: 80 });
    },
  },
  {
    name: 'should enforce policy to allow ingress traffic from pods in all namespaces',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-from-another-ns', { ...podA, ingress: [{ from: [{ namespaceSelector: { matchLabels: {} } }] }] }));
      await m.validate(T(), { port: 80 });
    },
  },
  {
    name: 'should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-client-a-via-ns-selector', { ...podA, ingress: [{ from: [{ namespaceSelector: nsIs('y') }] }] }));
      await m.validate(T().expect({ namespace: 'x' }, 'x/a', false).expect({ namespace: 'z' }, 'x/a', false), { port: 80 });
    },
  },
  {
    name: 'should enforce policy based on PodSelector with MatchExpressions',
    run: async (m, T) => {
      const sel = { matchExpressions: [{ key: 'pod', operator: 'In' as const, values: ['b'] }] };
      await m.applyPolicies('cluster1', networkPolicy('x', 'x-a-allows-x-b', { ...podA, ingress: [{ from: [{ podSelector: sel }] }] }));
      await m.validate(T().ingress('x/a', false).expect('x/b', 'x/a', true), { port: 80 });
    },
  },
  {
    name: 'should enforce policy based on NamespaceSelector with MatchExpressions',
    run: async (m, T) => {
      const sel = { matchExpressions: [{ key: NS_NAME, operator: 'In' as const, values: ['y'] }] };
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-ns-y-match-selector', { ...podA, ingress: [{ from: [{ namespaceSelector: sel }] }] }));
      await m.validate(T().expect({ namespace: 'x' }, 'x/a', false).expect({ namespace: 'z' }, 'x/a', false), { port: 80 });
    },
  },
  {
    name: 'should enforce policy based on PodSelector or NamespaceSelector',
    run: async (m, T) => {
      await m.applyPolicies(
        'cluster1',
        networkPolicy('x', 'allow-ns-y-match-selector', { ...podA, ingress: [{ from: [{ namespaceSelector: nsNotIn('x') }, { podSelector: { matchLabels: { pod: 'b' } } }] }] }),
      );
      await m.validate(T().expect('x/c', 'x/a', false), { port: 80 });
    },
  },
  {
    name: 'should enforce policy based on PodSelector and NamespaceSelector',
    run: async (m, T) => {
      await m.applyPolicies(
        'cluster1',
        networkPolicy('x', 'allow-ns-y-podselector-and-nsselector', { ...podA, ingress: [{ from: [{ namespaceSelector: nsNotIn('x'), podSelector: { matchLabels: { pod: 'b' } } }] }] }),
      );
      await m.validate(T().ingress('x/a', false).expect('y/b', 'x/a', true).expect('z/b', 'x/a', true), { port: 80 });
    },
  },
  {
    name: 'should enforce policy based on Multiple PodSelectors and NamespaceSelectors',
    run: async (m, T) => {
      const pods = { matchExpressions: [{ key: 'pod', operator: 'In' as const, values: ['b', 'c'] }] };
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-ns-y-z-pod-b-c', { ...podA, ingress: [{ from: [{ namespaceSelector: nsNotIn('x'), podSelector: pods }] }] }));
      await m.validate(T().expect({ namespace: 'x' }, 'x/a', false).expect('y/a', 'x/a', false).expect('z/a', 'x/a', false), { port: 80 });
    },
  },
  {
    name: 'should enforce policy based on any PodSelectors',
    run: async (m, T) => {
      await m.applyPolicies(
        'cluster1',
        networkPolicy('x', 'allow-ns-x-pod-b-c', { ...podA, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }, { podSelector: { matchLabels: { pod: 'c' } } }] }] }),
      );
      await m.validate(T().ingress('x/a', false).expect('x/b', 'x/a', true).expect('x/c', 'x/a', true), { port: 80 });
    },
  },
  {
    name: 'should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector',
    run: async (m, T) => {
      await m.applyPolicies(
        'cluster1',
        networkPolicy('x', 'allow-ns-y-pod-a-via-namespace-pod-selector', { ...podA, ingress: [{ from: [{ namespaceSelector: nsIs('y'), podSelector: { matchLabels: { pod: 'a' } } }] }] }),
      );
      await m.validate(T().ingress('x/a', false).expect('y/a', 'x/a', true), { port: 80 });
    },
  },
  {
    name: 'should enforce policy based on Ports',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-client-a-via-ns-selector', { ...podA, ingress: [{ from: [{ namespaceSelector: nsIs('y') }], ports: [{ port: 81, protocol: 'TCP' }] }] }));
      await m.validate(T().expect({ namespace: 'x' }, 'x/a', false).expect({ namespace: 'z' }, 'x/a', false), { port: 81 });
    },
  },
  {
    name: 'should enforce multiple, stacked policies with overlapping podSelectors',
    run: async (m, T) => {
      const allowFromY = (name: string, port: number) => networkPolicy('x', name, { ...podA, ingress: [{ from: [{ namespaceSelector: nsIs('y') }], ports: [{ port, protocol: 'TCP' }] }] });
      await m.applyPolicies('cluster1', allowFromY('allow-client-a-via-ns-selector', 81));
      const allow = (): TruthTable => T().expect({ namespace: 'x' }, 'x/a', false).expect({ namespace: 'z' }, 'x/a', false);
      await m.validate(allow(), { port: 81 });
      await m.validate(T().ingress('x/a', false), { port: 80 });
      await m.applyPolicies('cluster1', allowFromY('allow-client-a-via-ns-selector-80', 80));
      await m.validate(allow(), { port: 80 });
    },
  },
  {
    name: 'should support allow-all policy',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-all', { ...all, ingress: [{}] }));
      await m.validate(T(), { port: 80 });
      await m.validate(T(), { port: 81 });
    },
  },
  {
    name: 'should allow ingress access on one named port',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-all', { ...all, ingress: [{ ports: [{ port: 'serve-81-tcp' }] }] }));
      await m.validate(T(), { port: 81 });
      await m.validate(T().ingress({ namespace: 'x' }, false), { port: 80 });
    },
  },
  {
    name: 'should allow ingress access from namespace on one named port',
    run: async (m, T) => {
      await m.applyPolicies(
        'cluster1',
        networkPolicy('x', 'allow-client-a-via-ns-selector-80', { ...podA, ingress: [{ from: [{ namespaceSelector: nsIs('y') }], ports: [{ port: 'serve-80-tcp', protocol: 'TCP' }] }] }),
      );
      await m.validate(T().expect({ namespace: 'x' }, 'x/a', false).expect({ namespace: 'z' }, 'x/a', false), { port: 80 });
      await m.validate(T().ingress('x/a', false), { port: 81 });
    },
  },
  {
    name: 'should allow egress access on one named port',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-egress', { ...all, egress: [{ ports: [{ port: 'serve-80-tcp' }] }] }));
      await m.validate(T(), { port: 80 });
      await m.validate(T().egress({ namespace: 'x' }, false), { port: 81 });
    },
  },
  {
    name: 'should enforce updated policy',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-all-mutate-to-deny-all', { ...all, ingress: [{}] }));
      await m.validate(T(), { port: 81 });
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-all-mutate-to-deny-all', { ...all, ingress: [] }));
      await m.validate(T().ingress({ namespace: 'x' }, false), { port: 81 });
    },
  },
  {
    name: 'should allow ingress access from updated namespace',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-client-a-via-ns-selector', { ...podA, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns2: 'updated' } } }] }] }));
      await m.validate(T().ingress('x/a', false), { port: 80 });
      await m.setNamespaceLabels('y', m.namespaceLabels('y', { ns2: 'updated' }));
      await m.validate(T().ingress('x/a', false).expect({ namespace: 'y' }, 'x/a', true), { port: 80 });
    },
  },
  {
    name: 'should allow ingress access from updated pod',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-client-a-via-pod-selector', { ...podA, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b', pod2: 'updated' } } }] }] }));
      await m.validate(T().ingress('x/a', false), { port: 80 });
      const before = await m.identityOf('x/b');
      await m.setPodLabels('x/b', { pod: 'b', pod2: 'updated' });
      try {
        await m.validate(T().ingress('x/a', false).expect('x/b', 'x/a', true), { port: 80 });
      } finally {
        console.log(`# x/b identity before the relabel ${before}, after ${await m.identityOf('x/b')}`);
      }
    },
  },
  {
    name: 'should deny ingress from pods on other namespaces',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-empty-policy', { ...all, ingress: [{ from: [{ podSelector: { matchLabels: {} } }] }] }));
      await m.validate(T().expect({ namespace: 'y' }, { namespace: 'x' }, false).expect({ namespace: 'z' }, { namespace: 'x' }, false), { port: 80 });
    },
  },
  {
    name: 'should deny ingress access to updated pod',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-ingress-via-label-selector', { podSelector: { matchLabels: { target: 'isolated' } }, policyTypes: ['Ingress'] }));
      await m.validate(T(), { port: 80 });
      const before = await m.identityOf('x/a');
      await m.setPodLabels('x/a', { pod: 'a', target: 'isolated' });
      try {
        await m.validate(T().ingress('x/a', false), { port: 80 });
      } finally {
        console.log(`# x/a identity before the relabel ${before}, after ${await m.identityOf('x/a')}`);
      }
    },
  },
  {
    name: 'should deny egress from pods based on PodSelector',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-egress-pod-a', { ...podA, policyTypes: ['Egress'] }));
      await m.validate(T().egress('x/a', false), { port: 80 });
    },
  },
  {
    name: 'should deny egress from all pods in a namespace',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-egress-ns-x', { ...all, policyTypes: ['Egress'] }));
      await m.validate(T().egress({ namespace: 'x' }, false), { port: 80 });
    },
  },
  {
    name: 'should work with Ingress, Egress specified together',
    run: async (m, T) => {
      await m.applyPolicies(
        'cluster1',
        networkPolicy('x', 'allow-client-a-via-pod-selector', {
          ...podA,
          policyTypes: ['Egress', 'Ingress'],
          ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }],
          egress: [{ ports: [{ port: 80 }] }],
        }),
      );
      await m.validate(T().ingress('x/a', false).expect('x/b', 'x/a', true), { port: 80 });
      await m.validate(T().ingress('x/a', false).egress('x/a', false).expect('x/b', 'x/a', true), { port: 81 });
    },
  },
  {
    name: 'should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)',
    run: async (m, T) => {
      const fromXA = [{ from: [{ namespaceSelector: nsIs('x'), podSelector: { matchLabels: { pod: 'a' } } }] }];
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-to-ns-y-pod-a', { ...podA, egress: [{ to: [{ namespaceSelector: nsIs('y'), podSelector: { matchLabels: { pod: 'a' } } }] }] }));
      await m.applyPolicies(
        'cluster1',
        networkPolicy('y', 'allow-from-xa-on-ya-match-selector', { ...podA, ingress: fromXA }),
        networkPolicy('y', 'allow-from-xa-on-yb-match-selector', { podSelector: { matchLabels: { pod: 'b' } }, ingress: fromXA }),
      );
      await m.validate(T().egress('x/a', false).ingress('y/a', false).expect('x/a', 'y/a', true).ingress('y/b', false), { port: 80 });
    },
  },
  {
    name: 'should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-to-ns-y-pod-a', { ...podA, egress: [{ to: [{ namespaceSelector: nsIs('y'), podSelector: { matchLabels: { pod: 'a' } } }] }] }));
      await m.validate(T().egress('x/a', false).expect('x/a', 'y/a', true), { port: 80 });
    },
  },
  {
    name: 'should enforce ingress policy allowing any port traffic to a server on a specific protocol',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-ingress-by-proto', { ...podA, ingress: [{ ports: [{ protocol: 'TCP' }] }] }));
      await m.validate(T(), { port: 80 });
      await m.validate(T().ingress('x/a', false), { port: 80, protocol: 'udp' });
    },
  },
  {
    name: 'should enforce multiple ingress policies with ingress allow-all policy taking precedence',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-ingress-port-80', { ...all, ingress: [{ ports: [{ port: 80 }] }] }));
      await m.validate(T().ingress({ namespace: 'x' }, false), { port: 81 });
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-ingress', { ...all, ingress: [{}] }));
      await m.validate(T(), { port: 81 });
    },
  },
  {
    name: 'should enforce multiple egress policies with egress allow-all policy taking precedence',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-egress-port-80', { ...all, egress: [{ ports: [{ port: 80 }] }] }));
      await m.validate(T().egress({ namespace: 'x' }, false), { port: 81 });
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-egress', { ...all, egress: [{}] }));
      await m.validate(T(), { port: 81 });
    },
  },
  {
    name: 'should stop enforcing policies after they are deleted',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-all', { ...all, policyTypes: ['Ingress', 'Egress'] }));
      await m.validate(T().egress({ namespace: 'x' }, false).ingress({ namespace: 'x' }, false), { port: 80 });
      await m.deleteAllPolicies();
      await m.validate(T(), { port: 80 });
    },
  },
  {
    name: 'should allow egress access to server in CIDR block',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-client-a-via-cidr-egress-rule', { ...podA, egress: [{ to: [{ ipBlock: { cidr: `${m.pod('y/b').ip}/32` } }] }] }));
      await m.validate(T().egress('x/a', false).expect('x/a', 'y/b', true), { port: 80 });
    },
  },
  {
    name: 'should enforce except clause while egress access to server in CIDR block',
    run: async (m, T) => {
      const b = m.pod('x/b').ip;
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-client-a-via-cidr-egress-rule', { ...podA, egress: [{ to: [{ ipBlock: { cidr: slash4(b), except: [`${b}/32`] } }] }] }));
      await m.validate(T().expect('x/a', 'x/b', false), { port: 80 });
    },
  },
  {
    name: 'should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed',
    run: async (m, T) => {
      const b = m.pod('x/b').ip;
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-client-a-via-cidr-egress-rule', { ...podA, egress: [{ to: [{ ipBlock: { cidr: slash4(b), except: [`${b}/32`] } }] }] }));
      await m.validate(T().expect('x/a', 'x/b', false), { port: 80 });
      // Upstream replaces the policy (same name) by one that allows only x/b's address.
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-client-a-via-cidr-egress-rule', { ...podA, egress: [{ to: [{ ipBlock: { cidr: `${b}/32` } }] }] }));
      await m.validate(T().egress('x/a', false).expect('x/a', 'x/b', true), { port: 80 });
    },
  },
  {
    name: 'should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-egress-for-target', { ...podA, egress: [{}] }));
      await m.validate(T(), { port: 80 });
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-ingress-via-label-selector', { ...podA, policyTypes: ['Ingress'] }));
      await m.validate(T().ingress('x/a', false), { port: 80 });
    },
  },
  {
    name: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-ingress', { ...all, policyTypes: ['Ingress'] }));
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-only-sctp-ingress-on-port-81', { ...podA, ingress: [{ ports: [{ port: 81, protocol: 'SCTP' }] }] }));
      await m.validate(T().ingress({ namespace: 'x' }, false), { port: 81 });
    },
  },
  {
    name: "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-only-sctp-ingress-on-port-80', { ...podA, ingress: [{ ports: [{ port: 80, protocol: 'SCTP' }] }] }));
      await m.validate(T().ingress('x/a', false), { port: 81 });
    },
  },
  {
    name: 'should not allow access by TCP when a policy specifies only UDP',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-only-udp-ingress-on-port-81', { ...podA, ingress: [{ ports: [{ port: 81, protocol: 'UDP' }] }] }));
      await m.validate(T().ingress('x/a', false), { port: 81 });
    },
  },
  {
    name: 'should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-client-a-via-ns-selector-for-immutable-ns-label', { ...podA, ingress: [{ from: [{ namespaceSelector: nsIs('y') }] }] }));
      await m.validate(T().expect({ namespace: 'x' }, 'x/a', false).expect({ namespace: 'z' }, 'x/a', false), { port: 80 });
    },
  },
  {
    name: 'should enforce policy based on NamespaceSelector with MatchExpressions using default ns label',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-ns-y-match-selector-for-immutable-ns-label', { ...podA, egress: [{ to: [{ namespaceSelector: nsNotIn('y') }] }] }));
      await m.validate(T().expect('x/a', { namespace: 'y' }, false), { port: 80 });
    },
  },
  // "NetworkPolicy between server and client using UDP"
  {
    name: "UDP: should support a 'default-deny-ingress' policy",
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'deny-all', { ...all, policyTypes: ['Ingress'] }));
      await m.validate(T().ingress({ namespace: 'x' }, false), { port: 80, protocol: 'udp' });
    },
  },
  {
    name: 'UDP: should enforce policy based on Ports',
    run: async (m, T) => {
      await m.applyPolicies('cluster1', networkPolicy('x', 'allow-ingress-on-port-81-ns-x', { ...podA, ingress: [{ from: [{ namespaceSelector: nsIs('y') }], ports: [{ port: 81, protocol: 'UDP' }] }] }));
      await m.validate(T().expect({ namespace: 'x' }, 'x/a', false).expect({ namespace: 'z' }, 'x/a', false), { port: 81, protocol: 'udp' });
    },
  },
  {
    name: 'UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector',
    run: async (m, T) => {
      await m.applyPolicies(
        'cluster1',
        networkPolicy('x', 'allow-ns-y-pod-a-via-namespace-pod-selector', { ...podA, ingress: [{ from: [{ namespaceSelector: nsIs('y'), podSelector: { matchLabels: { pod: 'a' } } }] }] }),
      );
      await m.validate(T().ingress('x/a', false).expect('y/a', 'x/a', true), { port: 80, protocol: 'udp' });
    },
  },
  // "NetworkPolicy between server and client using SCTP": listed so the report shows them, not run (see the top).
  ...['should support a \'default-deny-ingress\' policy', 'should enforce policy based on Ports', 'should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector'].map(
    (name): ModelCase => ({ name: `SCTP: ${name}`, skip: SKIP_SCTP, run: async () => undefined }),
  ),
];

modelSuite('network policy conformance (upstream Kubernetes model), one cluster of two nodes', () => ({ name: uniqueLabName('cmtnp'), clusters: 1, nodes: 2, namespaces: NAMESPACES, pods: PODS }), CASES);
