import { test } from 'node:test';
import assert from 'node:assert/strict';
import { identityLabels } from '../identity/labels.ts';
import { identityRange, type Labels } from '../model/index.ts';
import {
  PolicyResolver,
  parsePolicy,
  policyKey,
  type NamedPort,
  type Policy,
  type PolicyDelta,
  type PolicyMapEntry,
  type PolicyResolverOptions,
} from './index.ts';
import { LOCAL_IDENTITY_MAX, LOCAL_IDENTITY_SCOPE, isLocalIdentity, parsePrefix, prefixContains } from './cidr.ts';

// ---------------------------------------------------------------------------
// Fixture: a mesh of clusters c1 (local, id 1), c2 (2), c3 (3).

const CLUSTER_IDS: Record<string, number> = { c1: 1, c2: 2, c3: 3 };
const CIDR_BASE = 16_000_000;

interface Fixture {
  r: PolicyResolver;
  /** Adds an identity of a pod; returns its number. */
  pod(cluster: string, namespace: string, podLabels: Labels, namespaceLabels?: Labels): number;
  labelsOf(id: number): ReturnType<typeof identityLabels>;
  /** A local endpoint (cluster c1) with the identity of these labels. */
  endpoint(endpointId: number, namespace: string, podLabels: Labels, namedPorts?: NamedPort[], namespaceLabels?: Labels): { endpointId: number; identity: number; delta: PolicyDelta };
  apply(...objects: unknown[]): PolicyDelta;
  /** allow/deny of a packet for the endpoint; `cidr`: the CIDR identity of the remote address (at()). */
  verdict(endpointId: number, direction: 'ingress' | 'egress', remote: number, port?: number, protocol?: number, cidr?: number): 'allow' | 'deny';
  /** The CIDR identity the datapath's cm_policy_cidr gives an address: the longest named prefix around it, 0 when none. */
  at(ip: string): number;
  released: string[];
}

function fixture(opts: Partial<PolicyResolverOptions> = {}): Fixture {
  const next: Record<string, number> = {};
  const labels = new Map<number, ReturnType<typeof identityLabels>>();
  const byKey = new Map<string, number>();
  let cidrNext = CIDR_BASE;
  const released: string[] = [];
  const r = new PolicyResolver({
    clusterName: 'c1',
    allocateCidrIdentity: () => cidrNext++,
    releaseCidrIdentity: (prefix) => released.push(prefix),
    ...opts,
  });
  const pod = (cluster: string, namespace: string, podLabels: Labels, namespaceLabels?: Labels): number => {
    const ls = identityLabels({ cluster, namespace, serviceAccount: 'default', podLabels, ...(namespaceLabels ? { namespaceLabels } : {}) });
    const k = JSON.stringify(ls);
    const known = byKey.get(k);
    if (known !== undefined) return known;
    const n = (next[cluster] = (next[cluster] ?? 0) + 1);
    const id = identityRange(CLUSTER_IDS[cluster]!).first + n;
    labels.set(id, ls);
    byKey.set(k, id);
    r.upsertIdentity(id, ls);
    return id;
  };
  return {
    r,
    pod,
    labelsOf: (id) => labels.get(id)!,
    endpoint(endpointId, namespace, podLabels, namedPorts = [], namespaceLabels) {
      const identity = pod('c1', namespace, podLabels, namespaceLabels);
      const delta = r.upsertEndpoint({ endpointId, identity, labels: labels.get(identity)!, namedPorts });
      return { endpointId, identity, delta };
    },
    apply: (...objects) => r.batch(() => objects.forEach((o) => r.upsertPolicy(parsePolicy(o, 'test.yaml')))),
    // What the policy entries decide: the datapath's blanket exemption of the
    // node itself (decide() reason 'host') is left out so the tests see which
    // entities and selectors admit reserved:host; it has a test of its own.
    verdict: (endpointId, direction, remote, port = 80, protocol = 6, cidr = 0) => {
      const d = r.decide(endpointId, { direction, remoteIdentity: remote, cidrIdentity: cidr, port, protocol });
      return d.reason === 'host' ? 'deny' : d.verdict;
    },
    at: (ip) => {
      const a = parsePrefix(ip)!;
      let best: { len: number; identity: number } | undefined;
      for (const c of r.cidrIdentities()) {
        const p = parsePrefix(c.prefix)!;
        if (prefixContains(p, a) && (!best || p.len > best.len)) best = { len: p.len, identity: c.identity };
      }
      return best?.identity ?? 0;
    },
    released,
  };
}

const np = (name: string, spec: unknown, namespace = 'default') => ({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace }, spec });
const cnp = (name: string, spec: unknown, namespace = 'default') => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name, namespace }, spec });
const app = (a: string) => ({ matchLabels: { app: a } });
const WORLD = 2;
const HOST = 1;
const REMOTE_NODE = 6;

const entry = (endpointId: number, direction: 'ingress' | 'egress', remoteIdentity: number, protocol: number, port: number, portEnd: number, verdict: 'allow' | 'deny' = 'allow'): PolicyMapEntry =>
  ({ endpointId, direction, remoteIdentity, protocol, port, portEnd, verdict }) as PolicyMapEntry;
const keyOf = ({ verdict: _v, ...k }: PolicyMapEntry) => k;

// ---------------------------------------------------------------------------
// Kubernetes default deny

test('selected for ingress only: ingress default-deny, egress untouched', () => {
  const f = fixture();
  const web = f.endpoint(1, 'default', { app: 'web' });
  const client = f.pod('c1', 'default', { app: 'client' });
  const other = f.pod('c1', 'default', { app: 'other' });
  assert.equal(f.verdict(1, 'ingress', other), 'allow', 'no policy: everything allowed');
  const d = f.apply(np('web', { podSelector: app('web'), ingress: [{ from: [{ podSelector: app('client') }] }] }));
  assert.deepEqual(d.enforcement, [{ endpointId: 1, direction: 'ingress', enforced: true }]);
  assert.equal(f.r.isEnforced(1, 'ingress'), true);
  assert.equal(f.r.isEnforced(1, 'egress'), false);
  assert.equal(f.verdict(1, 'ingress', client, 12345), 'allow', 'no ports: every port');
  assert.equal(f.verdict(1, 'ingress', client, 53, 17), 'allow', 'no ports: every protocol');
  assert.equal(f.verdict(1, 'ingress', other), 'deny');
  assert.equal(f.verdict(1, 'ingress', WORLD), 'deny');
  assert.equal(f.verdict(1, 'egress', other), 'allow', 'egress is not selected');
  assert.equal(f.verdict(1, 'egress', WORLD), 'allow');
  assert.equal(web.identity > 0, true);
});

test('selected for egress only: egress default-deny, ingress untouched; both types without rules deny all', () => {
  const f = fixture();
  f.endpoint(1, 'default', { app: 'web' });
  const db = f.pod('c1', 'default', { app: 'db' });
  f.apply(np('e', { podSelector: app('web'), policyTypes: ['Egress'], egress: [{ to: [{ podSelector: app('db') }], ports: [{ port: 5432 }] }] }));
  assert.equal(f.r.isEnforced(1, 'ingress'), false);
  assert.equal(f.verdict(1, 'ingress', db), 'allow');
  assert.equal(f.verdict(1, 'egress', db, 5432), 'allow');
  assert.equal(f.verdict(1, 'egress', db, 5433), 'deny');
  assert.equal(f.verdict(1, 'egress', WORLD, 443), 'deny');

  const g = fixture();
  g.endpoint(1, 'default', { app: 'web' });
  g.apply(np('deny-all', { podSelector: {}, policyTypes: ['Ingress', 'Egress'] }));
  assert.deepEqual(g.r.entries(), []);
  assert.equal(g.verdict(1, 'ingress', WORLD), 'deny');
  assert.equal(g.verdict(1, 'egress', WORLD), 'deny');
});

test('rules add up; an empty podSelector selects every pod of its namespace and no other', () => {
  const f = fixture();
  f.endpoint(1, 'default', { app: 'web' });
  f.endpoint(2, 'default', { app: 'api' });
  f.endpoint(3, 'other', { app: 'web' });
  const a = f.pod('c1', 'default', { app: 'a' });
  const b = f.pod('c1', 'default', { app: 'b' });
  f.apply(
    np('all-a', { podSelector: {}, ingress: [{ from: [{ podSelector: app('a') }], ports: [{ port: 80 }] }] }),
    np('web-b', { podSelector: app('web'), ingress: [{ from: [{ podSelector: app('b') }], ports: [{ port: 81 }] }, { from: [{ podSelector: app('a') }], ports: [{ port: 82 }] }] }),
  );
  assert.equal(f.verdict(1, 'ingress', a, 80), 'allow');
  assert.equal(f.verdict(1, 'ingress', a, 82), 'allow');
  assert.equal(f.verdict(1, 'ingress', b, 81), 'allow');
  assert.equal(f.verdict(1, 'ingress', b, 80), 'deny');
  assert.equal(f.verdict(2, 'ingress', a, 80), 'allow');
  assert.equal(f.verdict(2, 'ingress', b, 81), 'deny', 'web-b does not select api');
  assert.equal(f.r.isEnforced(3, 'ingress'), false, 'a namespaced policy does not select pods of another namespace');
});

test('peers: empty from = any identity; podSelector {} = pods of the policy namespace in the local cluster', () => {
  const f = fixture();
  f.endpoint(1, 'default', { app: 'web' });
  const same = f.pod('c1', 'default', { app: 'x' });
  const otherNs = f.pod('c1', 'other', { app: 'x' });
  const remote = f.pod('c2', 'default', { app: 'x' });
  f.apply(np('any', { podSelector: app('web'), ingress: [{ ports: [{ port: 80 }] }, { from: [{ podSelector: {} }], ports: [{ port: 81 }] }] }));
  assert.deepEqual(
    f.r.entries().filter((e) => e.port === 80),
    [entry(1, 'ingress', 0, 6, 80, 80)],
    'all peers: one wildcard entry, remote identity 0',
  );
  for (const id of [same, otherNs, remote, WORLD, HOST]) assert.equal(f.verdict(1, 'ingress', id, 80), 'allow');
  assert.equal(f.verdict(1, 'ingress', same, 81), 'allow');
  assert.equal(f.verdict(1, 'ingress', otherNs, 81), 'deny');
  assert.equal(f.verdict(1, 'ingress', remote, 81), 'deny');
  assert.equal(f.verdict(1, 'ingress', WORLD, 81), 'deny');
});

test('namespaceSelector and podSelector in one peer (AND) versus as two peers (OR)', () => {
  const f = fixture();
  f.endpoint(1, 'default', { app: 'web' });
  const team = { team: 'a' };
  const clientA = f.pod('c1', 'prod', { app: 'client' }, team);
  const otherA = f.pod('c1', 'prod', { app: 'other' }, team);
  const clientB = f.pod('c1', 'dev', { app: 'client' }, { team: 'b' });
  const clientHere = f.pod('c1', 'default', { app: 'client' });
  const otherHere = f.pod('c1', 'default', { app: 'other' });
  f.apply(
    np('and', { podSelector: app('web'), ingress: [{ from: [{ namespaceSelector: { matchLabels: team }, podSelector: app('client') }], ports: [{ port: 80 }] }] }),
    np('or', { podSelector: app('web'), ingress: [{ from: [{ namespaceSelector: { matchLabels: team } }, { podSelector: app('client') }], ports: [{ port: 81 }] }] }),
    np('by-name', { podSelector: app('web'), ingress: [{ from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'dev' } } }], ports: [{ port: 82 }] }] }),
    np('all-ns', { podSelector: app('web'), ingress: [{ from: [{ namespaceSelector: {} }], ports: [{ port: 83 }] }] }),
  );
  const allowed = (port: number) => [clientA, otherA, clientB, clientHere, otherHere].map((id) => f.verdict(1, 'ingress', id, port) === 'allow');
  assert.deepEqual(allowed(80), [true, false, false, false, false]);
  assert.deepEqual(allowed(81), [true, true, false, true, false]);
  assert.deepEqual(allowed(82), [false, false, true, false, false]);
  assert.deepEqual(allowed(83), [true, true, true, true, true]);
  assert.equal(f.verdict(1, 'ingress', WORLD, 83), 'deny', 'namespaceSelector {} selects pods, not the world');
  assert.equal(f.verdict(1, 'ingress', HOST, 83), 'deny');
  // Beyond the entries: the node reaches its pods under default deny (kubelet probes), ingress only.
  assert.deepEqual(f.r.decide(1, { direction: 'ingress', remoteIdentity: HOST, port: 83, protocol: 6 }), { verdict: 'allow', reason: 'host' });
});

test('ipBlock with except: CIDR identities, narrower CIDRs inside, per address (pods too), 0.0.0.0/0, release', () => {
  const f = fixture();
  f.endpoint(1, 'default', { app: 'web' });
  f.apply(np('ext', { podSelector: app('web'), policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['10.96.0.0/12'] } }], ports: [{ port: 443 }] }] }));
  const cidrs = f.r.cidrIdentities();
  assert.deepEqual(cidrs.map((c) => c.prefix), ['10.0.0.0/10', '10.64.0.0/11', '10.112.0.0/12', '10.128.0.0/9']);
  for (const c of cidrs) assert.equal(f.verdict(1, 'egress', WORLD, 443, 6, c.identity), 'allow', c.prefix);
  assert.equal(f.verdict(1, 'egress', WORLD, 443, 6, f.at('10.96.1.1')), 'deny', 'the except');
  assert.equal(f.verdict(1, 'egress', WORLD, 443), 'deny', 'no CIDR identity: no CIDR rule');
  // Pods are matched by address, not identity: two pods of one identity on both sides of the except.
  const db = f.pod('c1', 'default', { app: 'db' });
  const remoteDb = f.pod('c2', 'default', { app: 'db' });
  assert.equal(f.verdict(1, 'egress', db, 443, 6, f.at('10.64.0.5')), 'allow', 'a pod inside the block');
  assert.equal(f.verdict(1, 'egress', db, 443, 6, f.at('10.96.0.5')), 'deny', 'a pod of the same identity inside the except');
  assert.equal(f.verdict(1, 'egress', remoteDb, 443, 6, f.at('10.130.0.5')), 'allow', 'a pod of another cluster inside the block');
  assert.equal(f.verdict(1, 'egress', db, 443), 'deny', 'CIDR rules never select an identity');
  // A narrower CIDR another policy names gets its own identity: inside an allowed prefix it is allowed, inside the except it is not.
  f.apply(np('narrow', { podSelector: app('nothing'), policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '10.1.0.0/16' } }, { ipBlock: { cidr: '10.96.5.0/24' } }] }] }));
  const id = (p: string) => f.r.cidrIdentities().find((c) => c.prefix === p)!.identity;
  assert.equal(f.at('10.1.2.3'), id('10.1.0.0/16'));
  assert.equal(f.verdict(1, 'egress', WORLD, 443, 6, id('10.1.0.0/16')), 'allow');
  assert.equal(f.verdict(1, 'egress', WORLD, 443, 6, id('10.96.5.0/24')), 'deny');
  // 0.0.0.0/0 is a CIDR identity like any other: every address, in the mesh or not.
  f.apply(np('world', { podSelector: app('web'), policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }], ports: [{ port: 53, protocol: 'UDP' }] }] }));
  assert.equal(f.at('8.8.8.8'), id('0.0.0.0/0'));
  for (const ip of ['8.8.8.8', '10.1.2.3', '10.96.5.1']) assert.equal(f.verdict(1, 'egress', WORLD, 53, 17, f.at(ip)), 'allow', ip);
  assert.equal(f.verdict(1, 'egress', db, 53, 17, f.at('10.96.0.9')), 'allow', 'a pod address');
  assert.equal(f.verdict(1, 'egress', WORLD, 53, 17), 'deny', 'world by identity is the world entity, not a CIDR rule');
  // Removing the policies releases their identities.
  f.r.removePolicy({ kind: 'NetworkPolicy', namespace: 'default', name: 'narrow' });
  assert.deepEqual(f.released.sort(), ['10.1.0.0/16', '10.96.5.0/24']);
  f.r.removePolicy('NetworkPolicy/default/ext');
  f.r.removePolicy('NetworkPolicy/default/world');
  assert.deepEqual(f.r.cidrIdentities(), []);
});

test('node-local CIDR identities (1<<24 | n, up to LOCAL_IDENTITY_MAX) are kept exactly in the entries; others are refused', () => {
  let next = LOCAL_IDENTITY_MAX;
  const f = fixture({ allocateCidrIdentity: () => next-- });
  f.endpoint(1, 'default', { app: 'web' });
  f.apply(
    cnp('ext', {
      endpointSelector: app('web'),
      egress: [{ toCIDRSet: [{ cidr: '198.51.100.0/24', except: ['198.51.100.64/26'] }], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }] }, { toCIDR: ['203.0.113.7/32'] }],
      egressDeny: [{ toCIDR: ['198.51.100.128/25'] }],
    }),
  );
  const id = (p: string) => f.r.cidrIdentities().find((c) => c.prefix === p)!.identity;
  for (const c of f.r.cidrIdentities()) assert.ok(isLocalIdentity(c.identity), `${c.prefix}: ${c.identity}`);
  assert.deepEqual(f.r.entries(1), [
    entry(1, 'egress', id('203.0.113.7/32'), 0, 0, 65535),
    entry(1, 'egress', id('198.51.100.128/25'), 0, 0, 65535, 'deny'),
    entry(1, 'egress', id('198.51.100.128/25'), 6, 443, 443),
    entry(1, 'egress', id('198.51.100.0/26'), 6, 443, 443),
  ].sort((a, b) => a.remoteIdentity - b.remoteIdentity || a.protocol - b.protocol));
  assert.equal(id('198.51.100.0/26'), LOCAL_IDENTITY_MAX);
  assert.equal(f.verdict(1, 'egress', id('198.51.100.0/26'), 443), 'allow');
  assert.equal(f.verdict(1, 'egress', id('198.51.100.128/25'), 443), 'deny');
  assert.equal(f.verdict(1, 'egress', id('203.0.113.7/32'), 22), 'allow');
  assert.equal(f.verdict(1, 'egress', WORLD, 443), 'deny');
  // The scope bit alone (n = 0) and anything past the scope are not identities.
  for (const bad of [LOCAL_IDENTITY_SCOPE, LOCAL_IDENTITY_MAX + 1]) {
    const g = fixture({ allocateCidrIdentity: () => bad });
    g.endpoint(1, 'default', { app: 'web' });
    assert.throws(() => g.apply(cnp('ext', { endpointSelector: app('web'), egress: [{ toCIDR: ['192.0.2.0/24'] }] })), /CIDR identity .* is invalid/);
  }
});

test('named ports: ingress against the local pod, egress against the destination', () => {
  const remotePorts = new Map<number, NamedPort[]>();
  const f = fixture({ namedPorts: (id) => remotePorts.get(id) ?? [] });
  f.endpoint(1, 'default', { app: 'web' }, [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'dns', port: 5353, protocol: 'UDP' }]);
  f.endpoint(2, 'default', { app: 'web2' }); // has no port named http
  const client = f.pod('c1', 'default', { app: 'client' });
  f.apply(np('in', { podSelector: {}, ingress: [{ from: [{ podSelector: app('client') }], ports: [{ port: 'http' }, { port: 'dns' }] }] }));
  assert.deepEqual(f.r.entries(1), [entry(1, 'ingress', client, 6, 8080, 8080)], 'dns is UDP on the pod, the rule says TCP');
  assert.equal(f.verdict(1, 'ingress', client, 8080), 'allow');
  assert.equal(f.verdict(2, 'ingress', client, 8080), 'deny', 'a pod without the name admits nothing');
  assert.deepEqual(f.r.entries(2), []);

  // Egress to "any destination on port http": per destination identity.
  const dbLocal = f.endpoint(3, 'default', { app: 'db' }, [{ name: 'http', port: 9000, protocol: 'TCP' }]).identity;
  const dbRemote = f.pod('c2', 'default', { app: 'db' });
  f.apply(cnp('out', { endpointSelector: app('client'), egress: [{ toPorts: [{ ports: [{ port: 'http', protocol: 'TCP' }, { port: '443' }] }] }] }));
  const clientEp = f.endpoint(4, 'default', { app: 'client' }).endpointId;
  const webId = f.pod('c1', 'default', { app: 'web' });
  assert.deepEqual(f.r.entries(clientEp), [
    entry(4, 'egress', 0, 0, 443, 443),
    entry(4, 'egress', webId, 6, 8080, 8080),
    entry(4, 'egress', dbLocal, 6, 9000, 9000),
  ]);
  assert.equal(f.verdict(4, 'egress', f.pod('c1', 'default', { app: 'web2' }), 8080), 'deny', 'web2 has no port named http');
  assert.equal(f.verdict(4, 'egress', WORLD, 8080), 'deny', 'the world has no named ports');
  assert.equal(f.verdict(4, 'egress', dbRemote, 9000), 'deny', 'the remote pod\'s ports are unknown: fails closed');
  // The lookup learns the remote pod's port: refreshNamedPorts returns exactly that entry.
  remotePorts.set(dbRemote, [{ name: 'http', port: 8443, protocol: 'TCP' }]);
  const d = f.r.refreshNamedPorts(dbRemote);
  assert.deepEqual(d, { added: [entry(4, 'egress', dbRemote, 6, 8443, 8443)], changed: [], removed: [], enforcement: [] });
  // A local endpoint's named ports changing re-resolves egress rules towards it.
  const d2 = f.r.upsertEndpoint({ endpointId: 3, identity: dbLocal, labels: f.labelsOf(dbLocal), namedPorts: [{ name: 'http', port: 9001, protocol: 'TCP' }] });
  // (db itself is selected by the `podSelector: {}` ingress policy: its own ingress named port moves too.)
  assert.deepEqual(d2, {
    added: [entry(3, 'ingress', client, 6, 9001, 9001), entry(4, 'egress', dbLocal, 6, 9001, 9001)],
    changed: [],
    removed: [keyOf(entry(3, 'ingress', client, 6, 9000, 9000)), keyOf(entry(4, 'egress', dbLocal, 6, 9000, 9000))],
    enforcement: [],
  });
});

test('port ranges (endPort) and protocols', () => {
  const f = fixture();
  f.endpoint(1, 'default', { app: 'web' });
  const c = f.pod('c1', 'default', { app: 'client' });
  f.apply(
    np('k', { podSelector: app('web'), ingress: [{ from: [{ podSelector: app('client') }], ports: [{ port: 8000, endPort: 8100 }, { protocol: 'UDP', port: 53 }, { protocol: 'SCTP' }] }] }),
    cnp('c', { endpointSelector: app('web'), ingress: [{ fromEndpoints: [app('client')], toPorts: [{ ports: [{ port: '9000', endPort: 9010, protocol: 'ANY' }] }] }] }),
  );
  assert.deepEqual(f.r.entries(1), [
    entry(1, 'ingress', c, 0, 9000, 9010),
    entry(1, 'ingress', c, 6, 8000, 8100),
    entry(1, 'ingress', c, 17, 53, 53),
    entry(1, 'ingress', c, 132, 0, 65535),
  ]);
  assert.equal(f.verdict(1, 'ingress', c, 8000), 'allow');
  assert.equal(f.verdict(1, 'ingress', c, 8100), 'allow');
  assert.equal(f.verdict(1, 'ingress', c, 8101), 'deny');
  assert.equal(f.verdict(1, 'ingress', c, 8050, 17), 'deny', 'TCP range does not admit UDP');
  assert.equal(f.verdict(1, 'ingress', c, 53, 17), 'allow');
  assert.equal(f.verdict(1, 'ingress', c, 53, 6), 'deny');
  assert.equal(f.verdict(1, 'ingress', c, 1, 132), 'allow');
  assert.equal(f.verdict(1, 'ingress', c, 9005, 17), 'allow', 'ANY');
});

test('deny wins over allow, across policies and kinds; a deny-only policy enforces', () => {
  const f = fixture();
  f.endpoint(1, 'default', { app: 'web' });
  const good = f.pod('c1', 'default', { app: 'good' });
  const bad = f.pod('c1', 'default', { app: 'bad' });
  f.apply(np('allow', { podSelector: app('web'), ingress: [{ from: [{ podSelector: {} }] }] }));
  assert.equal(f.verdict(1, 'ingress', bad, 80), 'allow');
  const d = f.apply(cnp('deny', { endpointSelector: app('web'), ingressDeny: [{ fromEndpoints: [app('bad')], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] }));
  assert.deepEqual(d.added, [entry(1, 'ingress', bad, 6, 80, 80, 'deny')]);
  assert.equal(f.verdict(1, 'ingress', bad, 80), 'deny');
  assert.equal(f.verdict(1, 'ingress', bad, 81), 'allow');
  assert.equal(f.verdict(1, 'ingress', good, 80), 'allow');
  // The same key allowed and denied: one entry, deny; the flip is a `changed`.
  const d2 = f.apply(np('allow80', { podSelector: app('web'), ingress: [{ from: [{ podSelector: app('bad') }], ports: [{ port: 80 }] }] }));
  assert.deepEqual(d2, { added: [], changed: [], removed: [], enforcement: [] }, 'allow under an existing deny changes nothing visible');
  const d3 = f.r.removePolicy('CiliumNetworkPolicy/default/deny');
  assert.deepEqual(d3.changed, [entry(1, 'ingress', bad, 6, 80, 80, 'allow')]);
  // A wildcard deny overrides specific allows (decided at lookup).
  f.apply(cnp('deny-world', { endpointSelector: app('web'), ingressDeny: [{ fromEntities: ['all'], toPorts: [{ ports: [{ port: '22' }] }] }] }));
  assert.equal(f.verdict(1, 'ingress', good, 22), 'deny');
  // Deny-only: enforced, so what is not allowed is dropped.
  const g = fixture();
  g.endpoint(1, 'default', { app: 'web' });
  g.apply(cnp('d', { endpointSelector: app('web'), egressDeny: [{ toEntities: ['world'] }] }));
  assert.equal(g.r.isEnforced(1, 'egress'), true);
  assert.equal(g.verdict(1, 'egress', WORLD), 'deny');
  assert.equal(g.verdict(1, 'egress', g.pod('c1', 'default', { app: 'x' })), 'deny');
  // ... unless enableDefaultDeny says otherwise: then only the deny applies.
  g.apply(cnp('d', { endpointSelector: app('web'), egressDeny: [{ toEntities: ['world'] }], enableDefaultDeny: { egress: false } }));
  assert.equal(g.r.isEnforced(1, 'egress'), false);
  assert.equal(g.verdict(1, 'egress', WORLD), 'deny');
  assert.equal(g.verdict(1, 'egress', g.pod('c1', 'default', { app: 'x' })), 'allow');
});

test('entities: world, cluster, host, remote-node, all', () => {
  const f = fixture();
  f.endpoint(1, 'default', { app: 'web' });
  const local = f.pod('c1', 'other', { app: 'x' });
  const remote = f.pod('c2', 'default', { app: 'x' });
  f.apply(
    cnp('e', {
      endpointSelector: app('web'),
      ingress: [
        { fromEntities: ['world'], toPorts: [{ ports: [{ port: '1' }] }] },
        { fromEntities: ['cluster'], toPorts: [{ ports: [{ port: '2' }] }] },
        { fromEntities: ['host'], toPorts: [{ ports: [{ port: '3' }] }] },
        { fromEntities: ['remote-node'], toPorts: [{ ports: [{ port: '4' }] }] },
        { fromEntities: ['all'], toPorts: [{ ports: [{ port: '5' }] }] },
        { fromCIDR: ['192.0.2.0/24'], toPorts: [{ ports: [{ port: '6' }] }] },
      ],
    }),
  );
  const cidr = f.r.cidrIdentities()[0]!.identity;
  const row = (port: number) => [WORLD, cidr, local, remote, HOST, REMOTE_NODE].map((id) => (f.verdict(1, 'ingress', id, port) === 'allow' ? 1 : 0));
  // A CIDR identity is where an address lies, not what it is: an address outside the mesh is world (2) as well.
  assert.deepEqual(row(1), [1, 0, 0, 0, 0, 0], 'world: the world identity');
  assert.deepEqual(row(2), [0, 0, 1, 0, 1, 1], 'cluster: local-cluster endpoints, host, remote-node');
  assert.deepEqual(row(3), [0, 0, 0, 0, 1, 0]);
  assert.deepEqual(row(4), [0, 0, 0, 0, 0, 1]);
  assert.deepEqual(row(5), [1, 1, 1, 1, 1, 1]);
  assert.deepEqual(row(6), [0, 1, 0, 0, 0, 0]);
  assert.deepEqual(f.r.entries(1).filter((e) => e.port === 5), [entry(1, 'ingress', 0, 0, 5, 5)]);
});

test('cluster scoping: a selector naming cluster c2 admits c2 only; no cluster label = local cluster, or every cluster with the option off', () => {
  for (const defaultLocal of [true, false]) {
    const f = fixture({ policyDefaultLocalCluster: defaultLocal });
    f.endpoint(1, 'default', { app: 'web' });
    const [c1, c2, c3] = ['c1', 'c2', 'c3'].map((c) => f.pod(c, 'default', { app: 'client' }));
    f.apply(
      cnp('named', { endpointSelector: app('web'), ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client', 'io.cilium.k8s.policy.cluster': 'c2' } }], toPorts: [{ ports: [{ port: '1' }] }] }] }),
      np('k8s-named', { podSelector: app('web'), ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client', 'io.cilium.k8s.policy.cluster': 'c3' } } }], ports: [{ port: 2 }] }] }),
      cnp('in', { endpointSelector: app('web'), ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' }, matchExpressions: [{ key: 'k8s:io.cilium.k8s.policy.cluster', operator: 'In', values: ['c2', 'c3'] }] }], toPorts: [{ ports: [{ port: '3' }] }] }] }),
      cnp('exists', { endpointSelector: app('web'), ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' }, matchExpressions: [{ key: 'io.cilium.k8s.policy.cluster', operator: 'Exists' }] }], toPorts: [{ ports: [{ port: '4' }] }] }] }),
      cnp('unnamed', { endpointSelector: app('web'), ingress: [{ fromEndpoints: [app('client')], toPorts: [{ ports: [{ port: '5' }] }] }] }),
      np('k8s-unnamed', { podSelector: app('web'), ingress: [{ from: [{ podSelector: app('client') }], ports: [{ port: 6 }] }] }),
      cnp('cluster-entity', { endpointSelector: app('web'), ingress: [{ fromEntities: ['cluster'], toPorts: [{ ports: [{ port: '7' }] }] }] }),
    );
    const row = (port: number) => [c1!, c2!, c3!].map((id) => (f.verdict(1, 'ingress', id, port) === 'allow' ? 1 : 0));
    assert.deepEqual(row(1), [0, 1, 0], 'names c2: not the same labels in c3');
    assert.deepEqual(row(2), [0, 0, 1]);
    assert.deepEqual(row(3), [0, 1, 1]);
    assert.deepEqual(row(4), [1, 1, 1]);
    assert.deepEqual(row(5), defaultLocal ? [1, 0, 0] : [1, 1, 1], `no cluster label, default-local ${defaultLocal}`);
    assert.deepEqual(row(6), defaultLocal ? [1, 0, 0] : [1, 1, 1]);
    assert.deepEqual(row(7), [1, 0, 0], 'the cluster entity is the local cluster either way');
  }
});

test('CiliumNetworkPolicy peers are scoped to the policy namespace unless they name one', () => {
  const f = fixture();
  f.endpoint(1, 'prod', { app: 'web' });
  const here = f.pod('c1', 'prod', { app: 'client' });
  const there = f.pod('c1', 'dev', { app: 'client' });
  f.apply(
    cnp('p', {
      endpointSelector: app('web'),
      ingress: [
        { fromEndpoints: [app('client')], toPorts: [{ ports: [{ port: '1' }] }] },
        { fromEndpoints: [{ matchLabels: { app: 'client', 'k8s:io.kubernetes.pod.namespace': 'dev' } }], toPorts: [{ ports: [{ port: '2' }] }] },
        { fromEndpoints: [{}], toPorts: [{ ports: [{ port: '3' }] }] },
        { fromEndpoints: [{ matchLabels: { 'reserved:host': '' } }], toPorts: [{ ports: [{ port: '4' }] }] },
      ],
    }, 'prod'),
  );
  const row = (port: number) => [here, there, HOST].map((id) => (f.verdict(1, 'ingress', id, port) === 'allow' ? 1 : 0));
  assert.deepEqual(row(1), [1, 0, 0]);
  assert.deepEqual(row(2), [0, 1, 0]);
  assert.deepEqual(row(3), [1, 0, 0]);
  assert.deepEqual(row(4), [0, 0, 1]);
});

// ---------------------------------------------------------------------------
// Incremental deltas

test('an identity appearing or disappearing changes exactly its entries', () => {
  const f = fixture();
  f.endpoint(1, 'default', { app: 'web' });
  f.endpoint(2, 'default', { app: 'api' });
  f.endpoint(3, 'default', { app: 'db' });
  f.apply(
    np('web', { podSelector: app('web'), ingress: [{ from: [{ podSelector: app('client') }], ports: [{ port: 80 }, { port: 443 }] }] }),
    np('api', { podSelector: app('api'), ingress: [{ from: [{ podSelector: { matchExpressions: [{ key: 'app', operator: 'In', values: ['client', 'batch'] }] } }], ports: [{ port: 8080 }] }] }),
    np('db', { podSelector: app('db'), ingress: [{ from: [{ podSelector: app('api') }] }] }),
  );
  const before = f.r.entries();
  const id = 65536 + 500;
  const labels = identityLabels({ cluster: 'c1', namespace: 'default', serviceAccount: 'default', podLabels: { app: 'client' } });
  const add = f.r.upsertIdentity(id, labels);
  assert.deepEqual(add, {
    added: [entry(1, 'ingress', id, 6, 80, 80), entry(1, 'ingress', id, 6, 443, 443), entry(2, 'ingress', id, 6, 8080, 8080)],
    changed: [],
    removed: [],
    enforcement: [],
  });
  assert.deepEqual(f.r.upsertIdentity(id, labels), { added: [], changed: [], removed: [], enforcement: [] }, 'a repeat is no change');
  // Its labels change from client to batch: web loses it, api keeps it (no delta for api).
  const relabel = f.r.upsertIdentity(id, identityLabels({ cluster: 'c1', namespace: 'default', serviceAccount: 'default', podLabels: { app: 'batch' } }));
  assert.deepEqual(relabel, { added: [], changed: [], removed: [keyOf(entry(1, 'ingress', id, 6, 80, 80)), keyOf(entry(1, 'ingress', id, 6, 443, 443))], enforcement: [] });
  const rm = f.r.removeIdentity(id);
  assert.deepEqual(rm, { added: [], changed: [], removed: [keyOf(entry(2, 'ingress', id, 6, 8080, 8080))], enforcement: [] });
  assert.deepEqual(f.r.entries(), before);
  // An identity no selector wants: no delta; a remote one with local labels: none either (local-cluster default).
  assert.deepEqual(f.r.upsertIdentity(65536 + 501, identityLabels({ cluster: 'c1', namespace: 'default', serviceAccount: 'default', podLabels: { app: 'nobody' } })).added, []);
  assert.deepEqual(f.r.upsertIdentity(131072 + 9, identityLabels({ cluster: 'c2', namespace: 'default', serviceAccount: 'default', podLabels: { app: 'client' } })).added, []);
});

test('entries shared by several rules stay until the last one goes; endpoints and policies come and go with exact deltas', () => {
  const f = fixture();
  const client = f.pod('c1', 'default', { app: 'client' });
  f.endpoint(1, 'default', { app: 'web' });
  f.apply(
    np('a', { podSelector: app('web'), ingress: [{ from: [{ podSelector: app('client') }], ports: [{ port: 80 }] }] }),
    np('b', { podSelector: {}, ingress: [{ from: [{ podSelector: app('client') }], ports: [{ port: 80 }] }] }),
  );
  const e80 = entry(1, 'ingress', client, 6, 80, 80);
  assert.deepEqual(f.r.removePolicy('NetworkPolicy/default/a'), { added: [], changed: [], removed: [], enforcement: [] });
  assert.deepEqual(f.r.entries(), [e80]);
  // A new endpoint the remaining policy selects.
  const d = f.r.upsertEndpoint({ endpointId: 2, identity: client, labels: f.labelsOf(client), namedPorts: [] });
  assert.deepEqual(d, { added: [entry(2, 'ingress', client, 6, 80, 80)], changed: [], removed: [], enforcement: [{ endpointId: 2, direction: 'ingress', enforced: true }] });
  assert.deepEqual(f.r.removeEndpoint(2), { added: [], changed: [], removed: [keyOf(entry(2, 'ingress', client, 6, 80, 80))], enforcement: [{ endpointId: 2, direction: 'ingress', enforced: false }] });
  // Replacing a policy: only the difference.
  const r2 = f.apply(np('b', { podSelector: {}, ingress: [{ from: [{ podSelector: app('client') }], ports: [{ port: 80 }, { port: 81 }] }] }));
  assert.deepEqual(r2, { added: [entry(1, 'ingress', client, 6, 81, 81)], changed: [], removed: [], enforcement: [] });
  assert.deepEqual(f.r.removePolicy(policyKey({ kind: 'NetworkPolicy', namespace: 'default', name: 'b' })), {
    added: [],
    changed: [],
    removed: [keyOf(e80), keyOf(entry(1, 'ingress', client, 6, 81, 81))],
    enforcement: [{ endpointId: 1, direction: 'ingress', enforced: false }],
  });
  assert.deepEqual(f.r.stats(), { identities: 8 + 2, policies: 0, selectors: 0, endpoints: 1, entries: 0, cidrIdentities: 0 });
});

test('randomised: the deltas of any sequence of changes add up to the full resolution of the final state', () => {
  for (const seed of [42, 8, 2024]) randomised(seed);
});

function randomised(initialSeed: number): void {
  let seed = initialSeed;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const apps = ['a', 'b', 'c', 'd'];
  const nss = ['default', 'prod'];
  const clusters = ['c1', 'c2', 'c3'];
  const pick = <T,>(xs: readonly T[]): T => xs[rnd(xs.length)]!;
  const randomPolicy = (name: string): Policy => {
    const ns = pick(nss);
    /** One peer field of a rule: `from…` for ingress, `to…` for egress. */
    const peer = (d: 'from' | 'to'): Record<string, unknown> =>
      pick([
        () => ({ [`${d}Endpoints`]: [app(pick(apps))] }),
        () => ({ [`${d}Endpoints`]: [{ matchLabels: { app: pick(apps), 'io.cilium.k8s.policy.cluster': pick(clusters) } }] }),
        () => ({ [`${d}Entities`]: [pick(['world', 'cluster', 'host', 'all'])] }),
        () => ({ [`${d}CIDRSet`]: [{ cidr: pick(['10.0.0.0/8', '10.1.0.0/16', '0.0.0.0/0']), except: pick([[], ['10.1.2.0/24']]) }] }),
        () => ({ [`${d}Endpoints`]: [{ matchExpressions: [{ key: 'app', operator: pick(['In', 'NotIn']), values: [pick(apps)] }] }] }),
        () => ({}), // ports only (every peer), or the empty rule (no peer)
      ])();
    const ports = (): Record<string, unknown> => {
      const p = pick([[], [{ port: '80', protocol: 'TCP' }], [{ port: 'http' }], [{ port: '8000', endPort: 8010, protocol: 'UDP' }]]);
      return p.length > 0 ? { toPorts: [{ ports: p }] } : {};
    };
    const rule = (d: 'from' | 'to') => ({ ...peer(d), ...ports() });
    if (rnd(3) === 0) {
      return parsePolicy(
        np(name, { podSelector: app(pick(apps)), ingress: [{ from: [{ podSelector: app(pick(apps)) }], ports: [{ port: 80 }] }], egress: [{ to: [{ namespaceSelector: {} }] }] }, ns),
      );
    }
    const spec: Record<string, unknown> = { endpointSelector: rnd(4) === 0 ? {} : app(pick(apps)), ingress: [rule('from')] };
    if (rnd(2)) spec.ingressDeny = [rule('from')];
    if (rnd(2)) spec.egress = [rule('to')];
    if (rnd(3) === 0) spec.egressDeny = [rule('to')];
    return parsePolicy(cnp(name, spec, ns));
  };
  const namedPorts = (): NamedPort[] => (rnd(2) ? [{ name: 'http', port: 8080 + rnd(3), protocol: 'TCP' }] : []);

  // CIDR identities are numbered per prefix, so both resolvers agree on them.
  const cidrIds = new Map<string, number>();
  const alloc = (p: string) => {
    if (!cidrIds.has(p)) cidrIds.set(p, CIDR_BASE + cidrIds.size);
    return cidrIds.get(p)!;
  };
  const inc = new PolicyResolver({ clusterName: 'c1', allocateCidrIdentity: alloc });
  const mirror = new Map<string, PolicyMapEntry>();
  const enforced = new Set<string>();
  const k = (e: { endpointId: number; direction: string; remoteIdentity: number; protocol: number; port: number; portEnd: number }) =>
    `${e.endpointId}|${e.direction}|${e.remoteIdentity}|${e.protocol}|${e.port}|${e.portEnd}`;
  const applyDelta = (d: PolicyDelta) => {
    for (const e of d.added) {
      assert.equal(mirror.has(k(e)), false, `added twice: ${k(e)}`);
      mirror.set(k(e), e);
    }
    for (const e of d.changed) {
      assert.equal(mirror.has(k(e)), true, `changed but absent: ${k(e)}`);
      mirror.set(k(e), e);
    }
    for (const e of d.removed) assert.equal(mirror.delete(k(e)), true, `removed but absent: ${k(e)}`);
    for (const e of d.enforcement) (e.enforced ? enforced.add.bind(enforced) : enforced.delete.bind(enforced))(`${e.endpointId}|${e.direction}`);
  };

  const identities = new Map<number, ReturnType<typeof identityLabels>>();
  const endpoints = new Map<number, { identity: number; labels: ReturnType<typeof identityLabels>; namedPorts: NamedPort[] }>();
  const policies = new Map<string, Policy>();
  for (let step = 0; step < 400; step++) {
    const op = rnd(10);
    if (op < 4) {
      const cluster = pick(clusters);
      const id = identityRange(CLUSTER_IDS[cluster]!).first + 1 + rnd(30);
      const labels = identityLabels({ cluster, namespace: pick(nss), serviceAccount: 'default', podLabels: { app: pick(apps) } });
      identities.set(id, labels);
      applyDelta(inc.upsertIdentity(id, labels));
    } else if (op < 5 && identities.size > 0) {
      const id = pick([...identities.keys()]);
      if ([...endpoints.values()].some((e) => e.identity === id)) continue;
      identities.delete(id);
      applyDelta(inc.removeIdentity(id));
    } else if (op < 7) {
      const local = [...identities.entries()].filter(([id]) => id < 131072);
      if (local.length === 0) continue;
      const [identity, labels] = pick(local);
      const endpointId = 1 + rnd(6);
      const np_ = namedPorts();
      endpoints.set(endpointId, { identity, labels, namedPorts: np_ });
      applyDelta(inc.upsertEndpoint({ endpointId, identity, labels, namedPorts: np_ }));
    } else if (op < 8 && endpoints.size > 0) {
      const endpointId = pick([...endpoints.keys()]);
      endpoints.delete(endpointId);
      applyDelta(inc.removeEndpoint(endpointId));
    } else if (op < 9 || policies.size === 0) {
      const p = randomPolicy(`p${rnd(8)}`);
      policies.set(policyKey(p), p);
      applyDelta(inc.upsertPolicy(p));
    } else {
      const key = pick([...policies.keys()]);
      policies.delete(key);
      applyDelta(inc.removePolicy(key));
    }
    assert.deepEqual([...mirror.values()].sort((a, b) => (k(a) < k(b) ? -1 : 1)), inc.entries().sort((a, b) => (k(a) < k(b) ? -1 : 1)), `seed ${initialSeed} step ${step}: deltas add up to the state`);
  }
  // A fresh resolver given the final state in one batch resolves to the same entries.
  const full = new PolicyResolver({ clusterName: 'c1', allocateCidrIdentity: alloc });
  const d = full.batch(() => {
    for (const p of policies.values()) full.upsertPolicy(p);
    for (const [id, labels] of identities) full.upsertIdentity(id, labels);
    for (const [endpointId, e] of endpoints) full.upsertEndpoint({ endpointId, identity: e.identity, labels: e.labels, namedPorts: e.namedPorts });
  });
  assert.deepEqual(full.entries(), inc.entries());
  assert.deepEqual(d.added, full.entries(), 'the batch delta of a fresh resolver is its whole state');
  assert.deepEqual(full.enforcement(), inc.enforcement());
  assert.deepEqual([...enforced].sort(), inc.enforcement().map((e) => `${e.endpointId}|${e.direction}`).sort());
  assert.ok(inc.entries().length > 20, `a non-trivial final state (${inc.entries().length} entries)`);
}
