// PolicyManager against in-memory sources and fake maps: what reaches
// cm_policy / cm_policy_enforce / cm_policy_cidr, in which order, and what happens with bad
// objects, shared identities, CIDR peers, named ports and a restart.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Cache } from '../clustermesh/cache.ts';
import type { RemoteIdentity, RemoteIpEntry } from '../clustermesh/clustermesh.ts';
import * as policyMap from '../datapath/maps/policy.ts';
import { identityLabels, labelStrings } from '../identity/labels.ts';
import type { CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy, Endpoint, NetworkPolicy, Pod } from '../model/index.ts';
import { lookupPolicyMaps, type PolicyMaps } from '../datapath/maps/policy-entries.ts';
import { ResourceCache } from '../sources/index.ts';
import { PolicyManager, gcPolicyCt, parsePolicyKeyString, policyKeyString, type LocalEndpointView } from './policy.ts';
import { Reconciler, type ReconcileTarget } from './reconciler.ts';

const C1 = 1 << 16;
const C2 = 2 << 16;
const C3 = 3 << 16;

class FakeMap<V> implements ReconcileTarget<V> {
  readonly data = new Map<string, V>();
  constructor(
    readonly name: string,
    readonly log: string[],
  ) {}
  list(): Array<[string, V]> {
    return [...this.data];
  }
  update(key: string, value: V): void {
    this.log.push(`${this.name} update ${key} ${JSON.stringify(value)}`);
    this.data.set(key, value);
  }
  delete(key: string): boolean {
    this.log.push(`${this.name} delete ${key}`);
    return this.data.delete(key);
  }
}

const silent = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

function labelsOf(cluster: string, app: string, namespace = 'default'): string[] {
  return labelStrings(identityLabels({ cluster, namespace, serviceAccount: 'default', podLabels: { app } }));
}

function endpointObject(name: string, id: number, labels: string[], ip: string, nodeName = 'other'): Endpoint {
  return {
    kind: 'Endpoint',
    metadata: { name, namespace: 'default' },
    status: { endpointId: 1, identity: { id, labels }, networking: { podIP: ip, nodeName, nodeIP: '10.2.0.2' } },
  } as unknown as Endpoint;
}

/** The example policy, seen from cluster2: ingress of app=backend only from app=frontend of cluster1, TCP 8080. */
function backendPolicy(name = 'backend-from-c1', port = '8080'): CiliumNetworkPolicy {
  return {
    kind: 'CiliumNetworkPolicy',
    metadata: { name, namespace: 'default' },
    spec: {
      endpointSelector: { matchLabels: { app: 'backend' } },
      ingress: [{ fromEndpoints: [{ matchLabels: { app: 'frontend', 'io.cilium.k8s.policy.cluster': 'cluster1' } }], toPorts: [{ ports: [{ port, protocol: 'TCP' }] }] }],
    },
  } as unknown as CiliumNetworkPolicy;
}

function setup(
  o: {
    cluster?: string;
    pruneBlocked?: () => boolean;
    prefill?: (m: { policy: FakeMap<policyMap.Value>; enforce: FakeMap<policyMap.EnforceValue>; cidr: FakeMap<policyMap.CidrValue> }) => void;
    restoredCidrIdentities?: Array<[string, number]>;
  } = {},
) {
  const log: string[] = [];
  const maps = {
    policy: new FakeMap<policyMap.Value>('policy', log),
    enforce: new FakeMap<policyMap.EnforceValue>('enforce', log),
    cidr: new FakeMap<policyMap.CidrValue>('cidr', log),
  };
  /** prefix → whether cm_policy already had an entry naming the CIDR identity when the prefix was written to cm_policy_cidr. */
  const cidrAfterEntries = new Map<string, boolean>();
  const cidrUpdate = maps.cidr.update.bind(maps.cidr);
  maps.cidr.update = (prefix, v) => {
    cidrAfterEntries.set(prefix, [...maps.policy.data.keys()].some((k) => parsePolicyKeyString(k).identity === v.identity));
    cidrUpdate(prefix, v);
  };
  o.prefill?.(maps);
  log.length = 0;
  const src = {
    networkPolicies: new ResourceCache<NetworkPolicy>('NetworkPolicy'),
    ciliumNetworkPolicies: new ResourceCache<CiliumNetworkPolicy>('CiliumNetworkPolicy'),
    ciliumClusterwideNetworkPolicies: new ResourceCache<CiliumClusterwideNetworkPolicy>('CiliumClusterwideNetworkPolicy'),
    endpoints: new ResourceCache<Endpoint>('Endpoint'),
    pods: new ResourceCache<Pod>('Pod'),
  };
  const remote = new Cache<number, RemoteIdentity>();
  const remoteEps = new Cache<string, RemoteIpEntry>();
  const locals: LocalEndpointView[] = [];
  const cluster = o.cluster ?? 'cluster2';
  const mgr = new PolicyManager({
    clusterName: cluster,
    source: src,
    remoteIdentities: remote,
    remoteEndpoints: remoteEps,
    localEndpoints: () => locals,
    targets: maps,
    ...(o.restoredCidrIdentities ? { restoredCidrIdentities: o.restoredCidrIdentities } : {}),
    pruneBlocker: () => (o.pruneBlocked?.() ? 'waiting' : null),
    log: silent,
    applyTimeoutMs: 2000,
  });
  const addLocal = (endpointID: number, app: string, identity: number, podName = app): void => {
    locals.push({ containerID: `c-${podName}`, namespace: 'default', podName, endpointID, identity, identityLabels: labelsOf(cluster, app) });
    mgr.syncEndpoints();
  };
  const addRemote = (id: number, clusterName: string, app: string, namespace = 'default'): void => {
    remote.set(id, { id, cluster: clusterName, labels: labelsOf(clusterName, app, namespace).map((s) => ({ source: s.slice(0, s.indexOf(':')), key: s.slice(s.indexOf(':') + 1, s.indexOf('=')), value: s.slice(s.indexOf('=') + 1) })) });
  };
  const syncAll = (): void => Object.values(src).forEach((r) => r.markSynced());
  /** What the datapath would decide with the fake maps' contents. */
  const verdict = (endpointId: number, remoteIdentity: number, port = 8080, direction: 'ingress' | 'egress' = 'ingress', cidrIdentity = 0): string => {
    const pm: PolicyMaps = {
      policy: [...maps.policy.data].map(([k, v]) => [parsePolicyKeyString(k), v]),
      enforce: [...maps.enforce.data].map(([k, v]) => [{ endpointId: Number(k) }, v]),
    };
    return lookupPolicyMaps(pm, { endpointId, direction, remoteIdentity, cidrIdentity, protocol: 6, port });
  };
  // The system clock's timers do not keep the process alive; the test's waits must.
  const keep = setInterval(() => undefined, 1000);
  const stop = async (): Promise<void> => {
    clearInterval(keep);
    await mgr.stop();
  };
  const idle = async (): Promise<void> => assert.equal(await mgr.whenIdle(5000), true, 'the manager settles');
  return { mgr, stop, src, remote, remoteEps, locals, maps, log, cidrAfterEntries, addLocal, addRemote, syncAll, verdict, idle };
}

describe('PolicyManager', () => {
  it('a CiliumClusterwideNetworkPolicy selects in every namespace, its peers too; a CiliumNetworkPolicy only in its own', async () => {
    const t = setup();
    try {
      t.mgr.start();
      t.addRemote(C1 + 1, 'cluster1', 'frontend');
      t.addRemote(C1 + 3, 'cluster1', 'frontend', 'other');
      t.addLocal(5, 'backend', C2 + 1);
      t.syncAll();
      // The namespaced policy admits the frontend of its own namespace only.
      t.src.ciliumNetworkPolicies.set(backendPolicy());
      await t.idle();
      assert.equal(t.verdict(5, C1 + 1), 'allowed');
      assert.equal(t.verdict(5, C1 + 3), 'default-deny', 'a CNP peer selector is scoped to the policy namespace');
      t.src.ciliumNetworkPolicies.remove({ namespace: 'default', name: 'backend-from-c1' });
      // The clusterwide one: no namespace on the object, none added to its selectors.
      const ccnp = { ...backendPolicy('backend-from-c1-everywhere'), kind: 'CiliumClusterwideNetworkPolicy', metadata: { name: 'backend-from-c1-everywhere' } } as unknown as CiliumClusterwideNetworkPolicy;
      t.src.ciliumClusterwideNetworkPolicies.set(ccnp);
      await t.idle();
      assert.deepEqual(t.maps.enforce.data.get('5'), { active: true, ingress: true, egress: false });
      assert.equal(t.verdict(5, C1 + 1), 'allowed');
      assert.equal(t.verdict(5, C1 + 3), 'allowed', 'a CCNP peer selector matches in every namespace');
      assert.equal(t.verdict(5, C1 + 1, 8081), 'default-deny');
      assert.equal(t.mgr.status().policies.objects, 1);
      t.src.ciliumClusterwideNetworkPolicies.remove({ name: 'backend-from-c1-everywhere' });
      await t.idle();
      assert.equal(t.verdict(5, C1 + 3), 'not-enforced', 'deleting it restores default allow');
    } finally {
      await t.stop();
    }
  });

  it('writes nothing before the policy kinds are listed; then enforces the example policy exactly', async () => {
    const t = setup();
    try {
      t.mgr.start();
      t.addRemote(C1 + 1, 'cluster1', 'frontend');
      t.addRemote(C3 + 1, 'cluster3', 'frontend');
      t.addRemote(C1 + 2, 'cluster1', 'other');
      t.addLocal(5, 'backend', C2 + 1);
      t.src.ciliumNetworkPolicies.set(backendPolicy());
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(t.log.length, 0, 'nothing written while the sources are not listed');
      assert.equal(await t.mgr.whenIdle(50), false);

      t.syncAll();
      await t.idle();
      assert.deepEqual(t.maps.enforce.data.get('5'), { active: true, ingress: true, egress: false });
      assert.equal(t.verdict(5, C1 + 1), 'allowed', 'frontend of cluster1 on 8080');
      assert.equal(t.verdict(5, C1 + 1, 8081), 'default-deny', 'not on another port');
      assert.equal(t.verdict(5, C3 + 1), 'default-deny', 'the same labels in cluster3 are not admitted');
      assert.equal(t.verdict(5, C1 + 2), 'default-deny', 'another cluster1 pod is not admitted');
      assert.equal(t.verdict(5, C1 + 1, 8080, 'egress'), 'not-enforced');
      // Entries before the flag.
      const firstEnforce = t.log.findIndex((l) => l.startsWith('enforce'));
      const lastPolicy = t.log.map((l) => l.startsWith('policy update')).lastIndexOf(true);
      assert.ok(lastPolicy >= 0 && firstEnforce > lastPolicy, `entries written before ACTIVE: ${t.log.join(' | ')}`);

      const st = t.mgr.status();
      assert.equal(st.synced, true);
      assert.deepEqual(st.policies, { objects: 1, applied: 1 });
      assert.deepEqual(st.endpoints, { local: 1, enforced: 1, ingressEnforced: 1, egressEnforced: 0 });
      const view = t.mgr.inspect().endpoints[0]!;
      assert.deepEqual(view.enforced, { ingress: true, egress: false });
      assert.deepEqual(
        view.entries.map((e) => [e.direction, e.identity, e.protocol, e.port, e.portEnd, e.verdict]),
        [['ingress', C1 + 1, 'TCP', 8080, 8080, 'allow']],
      );
      assert.ok(view.entries[0]!.labels.includes('k8s:app=frontend'), 'inspect names the remote identity by its labels');
    } finally {
      await t.stop();
    }
  });

  it('a remote identity appearing later is admitted without touching the policy; removing the policy clears the flags before the entries', async () => {
    const t = setup();
    try {
      t.mgr.start();
      t.syncAll();
      t.addLocal(5, 'backend', C2 + 1);
      t.src.ciliumNetworkPolicies.set(backendPolicy());
      await t.idle();
      assert.equal(t.verdict(5, C1 + 7), 'default-deny');
      t.addRemote(C1 + 7, 'cluster1', 'frontend');
      await t.idle();
      assert.equal(t.verdict(5, C1 + 7), 'allowed', 'a new frontend identity of cluster1');

      t.log.length = 0;
      t.src.ciliumNetworkPolicies.remove({ namespace: 'default', name: 'backend-from-c1' });
      await t.idle();
      assert.equal(t.maps.enforce.data.size, 0, 'the endpoint is no longer enforced');
      assert.equal(t.maps.policy.data.size, 0, 'its entries are gone');
      assert.equal(t.verdict(5, C3 + 1), 'not-enforced', 'default allow again');
      const enforceAt = t.log.findIndex((l) => l.startsWith('enforce delete 5'));
      const firstPolicyDelete = t.log.findIndex((l) => l.startsWith('policy delete'));
      assert.ok(enforceAt >= 0 && firstPolicyDelete > enforceAt, `flags cleared before entries are deleted: ${t.log.join(' | ')}`);
    } finally {
      await t.stop();
    }
  });

  it('an object that fails to parse is counted with its name and error; the previous good version stays', async () => {
    const t = setup();
    try {
      t.mgr.start();
      t.syncAll();
      t.addRemote(C1 + 1, 'cluster1', 'frontend');
      t.addLocal(5, 'backend', C2 + 1);
      t.src.ciliumNetworkPolicies.set(backendPolicy());
      await t.idle();
      const before = new Map(t.maps.policy.data);
      const bad = backendPolicy('backend-from-c1', '99999');
      t.src.ciliumNetworkPolicies.set(bad);
      await t.idle();
      const st = t.mgr.status();
      assert.equal(st.parseErrors.length, 1);
      assert.equal(st.parseErrors[0]!.name, 'backend-from-c1');
      assert.equal(st.parseErrors[0]!.kind, 'CiliumNetworkPolicy');
      assert.match(st.parseErrors[0]!.error, /port 99999/);
      assert.deepEqual(t.maps.policy.data, before, 'the previous version is still enforced');
      assert.equal(t.verdict(5, C1 + 1), 'allowed');
      // Fixed: the error goes away.
      t.src.ciliumNetworkPolicies.set(backendPolicy('backend-from-c1', '9090'));
      await t.idle();
      assert.equal(t.mgr.status().parseErrors.length, 0);
      assert.equal(t.verdict(5, C1 + 1, 9090), 'allowed');
      assert.equal(t.verdict(5, C1 + 1, 8080), 'default-deny');
    } finally {
      await t.stop();
    }
  });

  it('local identities are reference-counted over Endpoint objects and this node’s endpoints', async () => {
    const t = setup({ cluster: 'cluster1' });
    try {
      t.mgr.start();
      t.syncAll();
      // Egress of frontend (local) to backend pods of this cluster, two of which share an identity.
      t.addLocal(3, 'frontend', C1 + 1);
      t.src.networkPolicies.set({
        kind: 'NetworkPolicy',
        metadata: { name: 'fe-egress', namespace: 'default' },
        spec: { podSelector: { matchLabels: { app: 'frontend' } }, policyTypes: ['Egress'], egress: [{ to: [{ podSelector: { matchLabels: { app: 'backend' } } }] }] },
      } as unknown as NetworkPolicy);
      const be = labelsOf('cluster1', 'backend');
      t.src.endpoints.set(endpointObject('be-1', C1 + 9, be, '10.101.2.10'));
      t.src.endpoints.set(endpointObject('be-2', C1 + 9, be, '10.101.2.11'));
      await t.idle();
      assert.equal(t.verdict(3, C1 + 9, 80, 'egress'), 'allowed');
      t.src.endpoints.remove({ namespace: 'default', name: 'be-1' });
      await t.idle();
      assert.equal(t.verdict(3, C1 + 9, 80, 'egress'), 'allowed', 'still one endpoint with the identity');
      t.src.endpoints.remove({ namespace: 'default', name: 'be-2' });
      await t.idle();
      assert.equal(t.verdict(3, C1 + 9, 80, 'egress'), 'default-deny', 'identity gone with its last endpoint');
      assert.equal(t.mgr.status().endpoints.egressEnforced, 1);
    } finally {
      await t.stop();
    }
  });

  it('CIDR peers get a node-local identity (1<<24 | n) in cm_policy_cidr, matched by address (pods too), released with the policy', async () => {
    const t = setup({ cluster: 'cluster1' });
    try {
      t.mgr.start();
      t.syncAll();
      t.addLocal(3, 'frontend', C1 + 1);
      t.src.ciliumNetworkPolicies.set({
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'to-dns', namespace: 'default' },
        spec: { endpointSelector: { matchLabels: { app: 'frontend' } }, egress: [{ toCIDR: ['192.0.2.0/24'] }] },
      } as unknown as CiliumNetworkPolicy);
      await t.idle();
      const id = t.maps.cidr.data.get('192.0.2.0/24')?.identity;
      assert.ok(id !== undefined, 'the prefix is in cm_policy_cidr');
      assert.ok(id > 0x1000000 && id <= 0x1ffffff, `identity ${id} is node-local`);
      assert.equal(t.verdict(3, 2, 53, 'egress', id), 'allowed', 'world inside the prefix');
      assert.equal(t.verdict(3, C1 + 7, 53, 'egress', id), 'allowed', 'a pod whose address lies in the prefix');
      assert.equal(t.verdict(3, C1 + 7, 53, 'egress'), 'default-deny', 'the same identity elsewhere');
      assert.equal(t.verdict(3, 2, 53, 'egress'), 'default-deny', 'world outside the prefix');
      assert.deepEqual(t.mgr.inspect().cidrIdentities, [{ prefix: '192.0.2.0/24', identity: id }]);
      assert.ok(t.mgr.status().cidrIdentities === 1 && t.mgr.reconcilers.some((r) => r.name === 'policy-cidr'));
      t.src.ciliumNetworkPolicies.remove({ namespace: 'default', name: 'to-dns' });
      await t.idle();
      await t.mgr.cidrRec.settle();
      assert.equal(t.maps.cidr.data.has('192.0.2.0/24'), false);
    } finally {
      await t.stop();
    }
  });

  it('a new CIDR identity reaches cm_policy_cidr only after the entries naming it; numbers restored from the pinned map are kept', async () => {
    const restored = 0x1000abc;
    const t = setup({ cluster: 'cluster1', restoredCidrIdentities: [['192.0.2.0/24', restored], ['203.0.113.0/24', 0x1000001]] });
    try {
      t.mgr.start();
      t.syncAll();
      t.addLocal(3, 'frontend', C1 + 1);
      const cnp = (name: string, cidrs: string[]) =>
        ({ kind: 'CiliumNetworkPolicy', metadata: { name, namespace: 'default' }, spec: { endpointSelector: { matchLabels: { app: 'frontend' } }, egress: [{ toCIDR: cidrs }] } }) as unknown as CiliumNetworkPolicy;
      t.src.ciliumNetworkPolicies.set(cnp('a', ['192.0.2.0/24', '198.51.100.0/24']));
      await t.idle();
      await t.mgr.cidrRec.settle();
      const id = (prefix: string) => t.maps.cidr.data.get(prefix)?.identity;
      assert.equal(id('192.0.2.0/24'), restored, 'the restored number');
      const fresh = id('198.51.100.0/24')!;
      assert.ok(fresh > 0x1000000 && fresh !== restored, `a new node-local number: ${fresh}`);
      assert.equal(t.cidrAfterEntries.get('198.51.100.0/24'), true, 'the new number after its entries');
      // A narrower prefix inside an allowed one: its number appears only once the allow for it is written.
      t.src.ciliumNetworkPolicies.set(cnp('b', ['192.0.2.128/25']));
      await t.idle();
      await t.mgr.cidrRec.settle();
      const narrow = id('192.0.2.128/25')!;
      assert.ok(narrow > 0x1000000 && ![restored, fresh].includes(narrow));
      assert.equal(t.cidrAfterEntries.get('192.0.2.128/25'), true);
      assert.equal(t.verdict(3, 2, 53, 'egress', narrow), 'allowed');
      // 0x1000001 was held for 203.0.113.0/24, which no policy names: free again after the first flush.
      t.src.ciliumNetworkPolicies.set(cnp('c', ['10.250.0.0/16']));
      await t.idle();
      await t.mgr.cidrRec.settle();
      assert.ok(id('10.250.0.0/16')! > 0x1000000);
    } finally {
      await t.stop();
    }
  });

  it('named ports resolve against the Pod object of the local endpoint', async () => {
    const t = setup();
    try {
      t.mgr.start();
      t.syncAll();
      t.addRemote(C2 + 50, 'cluster2', 'frontend');
      t.addLocal(5, 'backend', C2 + 1, 'backend-0');
      t.src.networkPolicies.set({
        kind: 'NetworkPolicy',
        metadata: { name: 'named', namespace: 'default' },
        spec: { podSelector: { matchLabels: { app: 'backend' } }, ingress: [{ ports: [{ port: 'http', protocol: 'TCP' }] }] },
      } as unknown as NetworkPolicy);
      await t.idle();
      assert.equal(t.verdict(5, C2 + 50, 8080), 'default-deny', 'no Pod object: the name resolves to nothing');
      t.src.pods.set({
        kind: 'Pod',
        metadata: { name: 'backend-0', namespace: 'default' },
        spec: { serviceAccountName: 'default', containers: [{ name: 'web', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }] }] },
        status: { phase: 'Running', conditions: [] },
      } as unknown as Pod);
      await t.idle();
      assert.equal(t.verdict(5, C2 + 50, 8080), 'allowed');
      assert.equal(t.verdict(5, C2 + 50, 8081), 'default-deny');
    } finally {
      await t.stop();
    }
  });

  it('egress named ports resolve against the Pod objects of this cluster’s pods on other nodes', async () => {
    const t = setup({ cluster: 'cluster1' });
    try {
      t.mgr.start();
      t.syncAll();
      t.addLocal(3, 'frontend', C1 + 1);
      t.src.networkPolicies.set({
        kind: 'NetworkPolicy',
        metadata: { name: 'fe-named', namespace: 'default' },
        spec: { podSelector: { matchLabels: { app: 'frontend' } }, policyTypes: ['Egress'], egress: [{ to: [{ podSelector: { matchLabels: { app: 'backend' } } }], ports: [{ port: 'http' }] }] },
      } as unknown as NetworkPolicy);
      t.src.endpoints.set(endpointObject('be-1', C1 + 9, labelsOf('cluster1', 'backend'), '10.101.2.10'));
      await t.idle();
      assert.equal(t.verdict(3, C1 + 9, 8080, 'egress'), 'default-deny', 'no Pod object yet: the name means nothing');
      t.src.pods.set({
        kind: 'Pod',
        metadata: { name: 'be-1', namespace: 'default' },
        spec: { serviceAccountName: 'default', containers: [{ name: 'web', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }] }] },
        status: { phase: 'Running', conditions: [] },
      } as unknown as Pod);
      await t.idle();
      assert.equal(t.verdict(3, C1 + 9, 8080, 'egress'), 'allowed');
      assert.equal(t.verdict(3, C1 + 9, 8081, 'egress'), 'default-deny');
      t.src.pods.remove({ namespace: 'default', name: 'be-1' });
      await t.idle();
      assert.equal(t.verdict(3, C1 + 9, 8080, 'egress'), 'default-deny', 'the Pod object gone: fails closed');
    } finally {
      await t.stop();
    }
  });

  it('egress named ports towards pods of another cluster resolve against their ip entries (issue 12)', async () => {
    const t = setup({ cluster: 'cluster1' });
    const be: RemoteIpEntry = {
      cluster: 'cluster2',
      ip: '10.102.2.10',
      prefix: '10.102.2.10/32',
      identity: C2 + 9,
      hostIP: '10.2.0.2',
      encryptKey: 0,
      namespace: 'default',
      podName: 'be-1',
      serviceAccount: 'default',
      namedPorts: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    };
    try {
      t.mgr.start();
      t.syncAll();
      t.addLocal(3, 'frontend', C1 + 1);
      t.addRemote(C2 + 9, 'cluster2', 'backend');
      t.src.ciliumNetworkPolicies.set({
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'fe-remote', namespace: 'default' },
        spec: {
          endpointSelector: { matchLabels: { app: 'frontend' } },
          egress: [{ toEndpoints: [{ matchLabels: { app: 'backend', 'io.cilium.k8s.policy.cluster': 'cluster2' } }], toPorts: [{ ports: [{ port: 'http', protocol: 'TCP' }] }] }],
        },
      } as unknown as CiliumNetworkPolicy);
      await t.idle();
      assert.equal(t.verdict(3, C2 + 9, 8080, 'egress'), 'default-deny', 'no ip entry yet: the name means nothing');
      t.remoteEps.set(be.ip, be);
      await t.idle();
      assert.equal(t.verdict(3, C2 + 9, 8080, 'egress'), 'allowed');
      assert.equal(t.verdict(3, C2 + 9, 8081, 'egress'), 'default-deny');
      t.remoteEps.set(be.ip, { ...be, namedPorts: [{ name: 'http', port: 9090, protocol: 'TCP' }] });
      await t.idle();
      assert.deepEqual([t.verdict(3, C2 + 9, 9090, 'egress'), t.verdict(3, C2 + 9, 8080, 'egress')], ['allowed', 'default-deny']);
      t.remoteEps.delete(be.ip);
      await t.idle();
      assert.equal(t.verdict(3, C2 + 9, 9090, 'egress'), 'default-deny', 'the entry gone: fails closed');
    } finally {
      await t.stop();
    }
  });

  it('restart: the desired state is recomputed and only differences are written; stale entries wait for pruning', async () => {
    let blocked = true;
    const first = setup();
    let saved: { policy: Map<string, policyMap.Value>; enforce: Map<string, policyMap.EnforceValue> };
    try {
      first.mgr.start();
      first.syncAll();
      first.addRemote(C1 + 1, 'cluster1', 'frontend');
      first.addLocal(5, 'backend', C2 + 1);
      first.src.ciliumNetworkPolicies.set(backendPolicy());
      await first.idle();
      saved = { policy: new Map(first.maps.policy.data), enforce: new Map(first.maps.enforce.data) };
    } finally {
      await first.stop();
    }
    const stale = policyKeyString({ endpointId: 5, direction: 'ingress', protocol: 6, identity: C3 + 99, port: 80, portPrefixLen: 16 });
    const t = setup({
      pruneBlocked: () => blocked,
      prefill: (m) => {
        for (const [k, v] of saved.policy) m.policy.data.set(k, v);
        for (const [k, v] of saved.enforce) m.enforce.data.set(k, v);
        m.policy.data.set(stale, { allow: true, deny: false });
      },
    });
    try {
      t.mgr.start();
      t.addRemote(C1 + 1, 'cluster1', 'frontend');
      t.addLocal(5, 'backend', C2 + 1);
      t.src.ciliumNetworkPolicies.set(backendPolicy());
      t.syncAll();
      await t.idle();
      assert.equal(t.log.length, 0, `nothing rewritten: ${t.log.join(' | ')}`);
      assert.ok(t.maps.policy.data.has(stale), 'a stale entry stays while the sources are not all synced');
      blocked = false;
      for (let i = 0; i < 100 && t.maps.policy.data.has(stale); i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(t.maps.policy.data.has(stale), false, 'pruned once the sources synced');
      assert.deepEqual(t.log, [`policy delete ${stale}`]);
    } finally {
      await t.stop();
    }
  });

  it('the endpoints-map tap reports endpoint changes and waits for their policy', async () => {
    const t = setup();
    try {
      t.mgr.start();
      t.syncAll();
      t.addRemote(C1 + 1, 'cluster1', 'frontend');
      t.src.ciliumNetworkPolicies.set(backendPolicy());
      await t.idle();
      const inner = new Reconciler<number>({ name: 'endpoints', target: new FakeMap<number>('endpoints', t.log) });
      await inner.start();
      const tapped = t.mgr.tapEndpointsMap(inner);
      t.locals.push({ containerID: 'c-be', namespace: 'default', podName: 'be', endpointID: 9, identity: C2 + 1, identityLabels: labelsOf('cluster2', 'backend') });
      tapped.upsert('10.102.1.9', 1);
      await tapped.whenApplied('10.102.1.9', 2000);
      assert.deepEqual(t.maps.enforce.data.get('9'), { active: true, ingress: true, egress: false }, 'policy in place when whenApplied resolves');
      assert.equal(t.verdict(9, C1 + 1), 'allowed');
      t.locals.length = 0;
      tapped.remove('10.102.1.9');
      await tapped.whenApplied('10.102.1.9', 2000);
      assert.equal(t.maps.enforce.data.has('9'), false);
      assert.equal([...t.maps.policy.data.keys()].some((k) => k.startsWith('9/')), false);
      await inner.stop();
    } finally {
      await t.stop();
    }
  });

  it('cm_policy_conn garbage collection deletes expired connections only', () => {
    const data = new Map<string, Buffer>();
    const map = {
      lookup: (k: Buffer) => data.get(k.toString('hex')),
      update: (k: Buffer, v: Buffer) => void data.set(k.toString('hex'), v),
      delete: (k: Buffer) => data.delete(k.toString('hex')),
      *entries(): Generator<[Buffer, Buffer]> {
        for (const [k, v] of data) yield [Buffer.from(k, 'hex'), v];
      },
    };
    const conn = (sport: number) => ({ src: '10.101.1.10', dst: '10.102.1.11', sport, dport: 8080, protocol: 6 });
    policyMap.writeConnections(map, [
      [conn(1000), { lifetime: 100, flags: 0 }],
      [conn(1001), { lifetime: 200, flags: 0 }],
      [conn(1002), { lifetime: 99, flags: 0 }],
    ]);
    assert.equal(gcPolicyCt(map, 150), 2);
    assert.deepEqual([...policyMap.connections(map)].map((c) => c.sport), [1001]);
    assert.equal(gcPolicyCt(map, 150), 0);
  });
});
