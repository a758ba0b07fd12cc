// bench/policy: policy resolution in the agent's control plane (pure CPU, no BPF).
//   full:        a fresh resolver resolving --identities identities of a mesh of
//                --clusters clusters × --policies policies × --endpoints local endpoints
//                (one batch, as at agent start).
//   incremental: on the resolved state, one identity appearing (and then
//                disappearing) and one policy being replaced, timed per change.
//                Recomputing everything per change would cost one full resolution:
//                the ratio printed at the end divides policy_full_ms by
//                policy_incremental_ms; it is not a separately measured baseline.
// Wall and CPU time are both recorded: on a shared machine CPU time is the steadier figure.
// Usage: npm run bench -- policy [--identities N] [--policies N] [--endpoints N] [--clusters N] [--reps N] [--ops N]
import { parseArgs } from 'node:util';
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { identityLabels } from '../../src/identity/labels.ts';
import { identityRange } from '../../src/model/index.ts';
import { PolicyResolver, parsePolicy, type LocalEndpoint, type Policy } from '../../src/policy/index.ts';
import { median, printTable, summarize, writeResults, type Sample } from '../lib/results.ts';

const { values } = parseArgs({
  options: {
    identities: { type: 'string', default: '10000' },
    policies: { type: 'string', default: '1000' },
    endpoints: { type: 'string', default: '200' },
    clusters: { type: 'string', default: '4' },
    reps: { type: 'string', default: '5' },
    ops: { type: 'string', default: '200' },
  },
});
const int = (name: string, v: string | undefined, min: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${v}`);
  return n;
};
const IDENTITIES = int('identities', values.identities, 1);
const POLICIES = int('policies', values.policies, 1);
const ENDPOINTS = int('endpoints', values.endpoints, 1);
const CLUSTERS = int('clusters', values.clusters, 1);
const REPS = int('reps', values.reps, 1);
const OPS = int('ops', values.ops, 1);

// ---------------------------------------------------------------------------
// A deterministic mesh: apps spread over namespaces and clusters.

let seed = 7;
const rnd = (n: number): number => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed % n;
};
const NAMESPACES = 20;
const APPS = 400;
const cluster = (c: number) => `c${c}`;
const ns = (i: number) => `ns${i % NAMESPACES}`;
const nsLabels = (i: number) => ({ team: `team${i % NAMESPACES % 5}` });

interface IdentityDef {
  id: number;
  labels: ReturnType<typeof identityLabels>;
}

function makeIdentity(c: number, n: number, appIdx: number, nsIdx: number): IdentityDef {
  return {
    id: identityRange(c).first + n,
    labels: identityLabels({
      cluster: cluster(c),
      namespace: ns(nsIdx),
      serviceAccount: 'default',
      podLabels: { app: `app${appIdx}`, tier: ['front', 'back', 'data'][appIdx % 3]!, version: `v${n % 4}` },
      namespaceLabels: nsLabels(nsIdx),
    }),
  };
}

const identities: IdentityDef[] = [];
for (let i = 0; i < IDENTITIES; i++) {
  const c = 1 + (i % CLUSTERS);
  const n = 1 + Math.floor(i / CLUSTERS);
  const a = i % APPS;
  identities.push(makeIdentity(c, n, a, a)); // app<k> lives in namespace ns<k % 20> in every cluster
}
const localIdentities = identities.filter((d) => d.labels.some((l) => l.key === 'io.cilium.k8s.policy.cluster' && l.value === 'c1'));

const endpoints: LocalEndpoint[] = [];
for (let e = 0; e < ENDPOINTS; e++) {
  const d = localIdentities[e % localIdentities.length]!;
  endpoints.push({ endpointId: 1 + e, identity: d.id, labels: d.labels, namedPorts: [{ name: 'http', port: 8080, protocol: 'TCP' }] });
}

/** A mix of what real clusters carry: same-namespace allows, cross-cluster CNPs, namespace selectors, CIDRs, entities, denies. */
function makePolicy(i: number): Policy {
  const a = rnd(APPS);
  const peerApp = (a + 1 + rnd(5)) % APPS;
  const namespace = ns(a);
  const sameNsPeer = peerApp - (peerApp % NAMESPACES) + (a % NAMESPACES); // an app living in the same namespace
  const kind = i % 10;
  const meta = { name: `p${i}`, namespace };
  if (kind < 4) {
    return parsePolicy({
      kind: 'NetworkPolicy',
      metadata: meta,
      spec: {
        podSelector: { matchLabels: { app: `app${a}` } },
        ingress: [
          { from: [{ podSelector: { matchLabels: { app: `app${sameNsPeer % APPS}` } } }], ports: [{ port: 80 }, { port: 'http' }] },
          { from: [{ namespaceSelector: { matchLabels: nsLabels(rnd(NAMESPACES)) }, podSelector: { matchLabels: { tier: 'front' } } }], ports: [{ port: 443 }] },
        ],
      },
    });
  }
  if (kind < 7) {
    return parsePolicy({
      kind: 'CiliumNetworkPolicy',
      metadata: meta,
      spec: {
        endpointSelector: { matchLabels: { app: `app${a}` } },
        ingress: [
          {
            fromEndpoints: [
              { matchLabels: { app: `app${peerApp}`, 'k8s:io.kubernetes.pod.namespace': ns(peerApp), 'io.cilium.k8s.policy.cluster': cluster(1 + rnd(CLUSTERS)) } },
              { matchLabels: { app: `app${sameNsPeer % APPS}` }, matchExpressions: [{ key: 'version', operator: 'In', values: ['v1', 'v2'] }] },
            ],
            toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }, { port: '9000', endPort: 9100, protocol: 'TCP' }] }],
          },
        ],
      },
    });
  }
  if (kind < 8) {
    const o = rnd(200);
    return parsePolicy({
      kind: 'CiliumNetworkPolicy',
      metadata: meta,
      spec: {
        endpointSelector: { matchLabels: { app: `app${a}` } },
        egress: [
          { toCIDRSet: [{ cidr: `10.${o}.0.0/16`, except: [`10.${o}.${rnd(256)}.0/24`] }], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }] },
          { toEntities: ['cluster'] },
          { toEntities: ['world'], toPorts: [{ ports: [{ port: '53', protocol: 'UDP' }] }] },
        ],
      },
    });
  }
  if (kind < 9) {
    return parsePolicy({
      kind: 'CiliumNetworkPolicy',
      metadata: meta,
      spec: {
        endpointSelector: {},
        ingressDeny: [{ fromEndpoints: [{ matchLabels: { app: `app${peerApp}`, 'k8s:io.kubernetes.pod.namespace': ns(peerApp) } }], toPorts: [{ ports: [{ port: '22' }] }] }],
        ingress: [{ fromEntities: ['cluster'] }],
      },
    });
  }
  return parsePolicy({
    kind: 'NetworkPolicy',
    metadata: meta,
    spec: {
      podSelector: { matchLabels: { tier: ['front', 'back', 'data'][a % 3] } },
      policyTypes: ['Egress'],
      egress: [{ to: [{ namespaceSelector: {} }], ports: [{ port: 53, protocol: 'UDP' }, { port: 'http' }] }],
    },
  });
}
const policies = Array.from({ length: POLICIES }, (_, i) => makePolicy(i));

// ---------------------------------------------------------------------------

function newResolver(): PolicyResolver {
  const cidrIds = new Map<string, number>();
  return new PolicyResolver({
    clusterName: 'c1',
    allocateCidrIdentity: (p) => {
      if (!cidrIds.has(p)) cidrIds.set(p, 0xff0000 + cidrIds.size);
      return cidrIds.get(p)!;
    },
  });
}

function resolveAll(): { r: PolicyResolver; ms: number; cpuMs: number; deltaEntries: number } {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const r = newResolver();
  const delta = r.batch(() => {
    for (const d of identities) r.upsertIdentity(d.id, d.labels);
    for (const p of policies) r.upsertPolicy(p);
    for (const e of endpoints) r.upsertEndpoint(e);
  });
  const ms = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return { r, ms, cpuMs: (c.user + c.system) / 1000, deltaEntries: delta.added.length };
}

const samples: Sample[] = [];
const params = { identities: IDENTITIES, policies: POLICIES, endpoints: ENDPOINTS, clusters: CLUSTERS };
const add = (config: string, metric: string, unit: string, rep: number, value: number) => samples.push({ config, metric, unit, rep, value, params });

console.log(`policy: ${IDENTITIES} identities in ${CLUSTERS} clusters, ${POLICIES} policies, ${ENDPOINTS} local endpoints, ${REPS} reps (load average ${loadavg()[0]!.toFixed(2)})`);
resolveAll(); // warm-up (JIT)
for (let rep = 0; rep < REPS; rep++) {
  const { r, ms, cpuMs, deltaEntries } = resolveAll();
  add('clustermesh', 'policy_full_ms', 'ms', rep, ms);
  add('clustermesh', 'policy_full_cpu_ms', 'ms', rep, cpuMs);
  const stats = r.stats();
  if (deltaEntries !== stats.entries) throw new Error(`the initial delta has ${deltaEntries} entries, the state ${stats.entries}`);
  add('clustermesh', 'policy_entries', 'entries', rep, stats.entries);
  add('clustermesh', 'policy_selectors', 'selectors', rep, stats.selectors);
  const before = r.entryCount();

  // One identity appearing and disappearing: a new pod of a random existing app, in a random cluster.
  const addMs: number[] = [];
  const removeMs: number[] = [];
  const deltaKeys: number[] = [];
  for (let op = 0; op < OPS; op++) {
    const a = rnd(APPS);
    const d = makeIdentity(1 + rnd(CLUSTERS), 60000 + op, a, a);
    let t = performance.now();
    const added = r.upsertIdentity(d.id, d.labels);
    addMs.push(performance.now() - t);
    t = performance.now();
    const removed = r.removeIdentity(d.id);
    removeMs.push(performance.now() - t);
    if (added.added.length !== removed.removed.length) throw new Error('identity add/remove deltas do not mirror each other');
    deltaKeys.push(added.added.length);
  }
  if (r.entryCount() !== before) throw new Error('entries changed after adding and removing the same identities');
  add('clustermesh', 'policy_incremental_ms', 'ms', rep, median(addMs));
  add('clustermesh', 'policy_incremental_remove_ms', 'ms', rep, median(removeMs));
  add('clustermesh', 'policy_delta_entries', 'entries', rep, median(deltaKeys));

  // One policy replaced by another version of itself (the next rep starts from the original set again).
  const updMs: number[] = [];
  for (let op = 0; op < Math.min(OPS, 50); op++) {
    const i = rnd(POLICIES);
    const p = { ...makePolicy(i), name: policies[i]!.name, namespace: policies[i]!.namespace };
    const t = performance.now();
    r.upsertPolicy(p);
    updMs.push(performance.now() - t);
  }
  add('clustermesh', 'policy_update_ms', 'ms', rep, median(updMs));
}

const rows = summarize(samples);
printTable(rows, 'clustermesh');
const med = (metric: string): number => rows.find((r) => r.config === 'clustermesh' && r.metric === metric)!.median;
console.log(`a full resolution per change instead of the incremental update: ${(med('policy_full_ms') / med('policy_incremental_ms')).toFixed(0)}x (policy_full_ms / policy_incremental_ms, both medians of this run)`);
console.log(`load average now ${loadavg()[0]!.toFixed(2)}`);
const file = writeResults('policy', rows, samples, 0);
console.log(`wrote ${file}`);
