import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AgentStatus, RemoteSummary } from '../agent/status.ts';
import { formatStatus, installNamespaceOf, summarize, type ClusterProbe, type EtcdProbe, type NodeProbe } from './status.ts';
import type { NodeTarget } from './targets.ts';

const NOW = new Date('2026-01-01T12:00:00Z');

function remote(name: string, o: Partial<RemoteSummary> = {}): RemoteSummary {
  return {
    name,
    state: 'ready',
    connected: true,
    ready: true,
    synced: { nodes: true, identities: true, ip: true, services: true },
    counts: { nodes: 2, endpoints: 4, identities: 3, services: 1 },
    reconnections: 0,
    lastError: null,
    lastErrorAt: null,
    ...o,
  };
}

function agent(cluster: string, node: string, remotes: RemoteSummary[], o: { ready?: boolean; configErrors?: Array<{ file: string; error: string }> } = {}): AgentStatus {
  return {
    node: { name: node, cluster, clusterID: cluster === 'c1' ? 1 : 2, nodeIP: '10.1.0.1', podCIDR: '10.101.1.0/24' },
    phase: o.ready === false ? 'syncing' : 'ready',
    ready: o.ready ?? true,
    remoteClusters: remotes,
    clustermesh: { configErrors: o.configErrors ?? [], configDir: '/x' },
    endpoints: { endpoints: 2, ready: 2, restoring: 0, waitingForIdentity: 0, identities: 2 },
  } as unknown as AgentStatus;
}

function nodeTarget(cluster: string, name: string): NodeTarget {
  return { key: `${cluster}/${name}`, name, cluster, socket: `/s/${name}`, pinDir: undefined, netns: undefined, underlayIP: undefined, configDir: undefined, clusterId: undefined };
}

function etcd(o: Partial<EtcdProbe> = {}): EtcdProbe {
  return { reachable: true, endpoint: 'https://10.1.0.250:2379', clusterConfigId: 1, heartbeat: '2026-01-01T11:59:55Z', exportedServices: ['default/rebel-base'], error: null, ...o };
}

function probe(name: string, id: number, nodes: NodeProbe[], o: Partial<ClusterProbe> = {}): ClusterProbe {
  return { name, id, etcd: etcd({ clusterConfigId: id }), apiserverProcess: true, configFiles: null, nodes, ...o };
}

const ok = (cluster: string, node: string, remotes: RemoteSummary[]): NodeProbe => ({ node: nodeTarget(cluster, node), status: agent(cluster, node, remotes), error: null });

test('summarize: everything connected is ready, with min/avg/max over nodes and counts per remote', () => {
  const r = summarize(
    [
      probe('c1', 1, [ok('c1', 'n1', [remote('c2')]), ok('c1', 'n2', [remote('c2', { counts: { nodes: 2, endpoints: 3, identities: 3, services: 1 }, reconnections: 2 })])]),
      probe('c2', 2, [ok('c2', 'n1', [remote('c1')])], { etcd: etcd({ clusterConfigId: 2, exportedServices: ['default/rebel-base', 'default/other'] }) }),
    ],
    NOW,
  );
  assert.equal(r.ready, true);
  assert.deepEqual(r.notReady, []);
  assert.equal(r.globalServices, 2, 'distinct ns/name over both clusters');
  const c1 = r.clusters[0]!;
  assert.deepEqual(c1.connectivity, { expected: 1, min: 1, avg: 1, max: 1 });
  assert.deepEqual(c1.nodes, { total: 2, reachable: 2, ready: 2 });
  const rc = c1.remoteClusters[0]!;
  assert.deepEqual([rc.nodes, rc.configured, rc.connected, rc.ready], [2, 2, 2, 2]);
  assert.deepEqual(rc.counts.endpoints, { min: 3, avg: 3.5, max: 4 });
  assert.equal(rc.reconnections, 2);
  assert.equal(c1.apiserver.heartbeatAgeSeconds, 5);
  assert.equal(c1.apiserver.reachable, true);
  assert.match(formatStatus(r), /all 2 nodes are connected to all 1 remote clusters \[min 1 \/ avg 1 \/ max 1\]/);
});

test('summarize: a node not ready with a remote, an unreachable agent, a missing config and a stale heartbeat are each named', () => {
  const r = summarize(
    [
      probe(
        'c1',
        1,
        [
          ok('c1', 'n1', [remote('c2'), remote('c3')]),
          ok('c1', 'n2', [remote('c2', { connected: false, ready: false, state: 'disconnected', lastError: 'kvstore list: unavailable', lastErrorAt: '2026-01-01T11:59:00Z' })]),
          { node: nodeTarget('c1', 'n3'), status: null, error: 'agent at /s/n3 is not reachable (ENOENT)' },
        ],
        { configFiles: ['c2', 'c3'], etcd: etcd({ heartbeat: '2026-01-01T11:50:00Z' }) },
      ),
    ],
    NOW,
  );
  assert.equal(r.ready, false);
  const c1 = r.clusters[0]!;
  assert.deepEqual(c1.connectivity, { expected: 2, min: 0, avg: 1, max: 2 });
  assert.equal(c1.apiserver.reachable, false);
  assert.match(c1.apiserver.error ?? '', /last heartbeat 600s ago/);
  assert.ok(r.notReady.some((s) => s.includes('agent on c1/n3 is not reachable')));
  assert.ok(r.notReady.some((s) => s === 'c1: remote cluster c3 is configured on 1 of 2 nodes'));
  assert.ok(r.notReady.some((s) => s.includes('remote cluster c2 is ready on 1 of 2 nodes (last error on c1/n2: kvstore list: unavailable)')), JSON.stringify(r.notReady));
  assert.match(formatStatus(r), /ready: no/);
});

test('summarize: etcd unreachable, an ID that differs from the record, and config errors make a cluster not ready', () => {
  const r = summarize([
    probe('c1', 1, [{ node: nodeTarget('c1', 'n1'), status: agent('c1', 'n1', [], { configErrors: [{ file: '/d/c9', error: 'field endpoints: required' }] }), error: null }], {
      etcd: etcd({ reachable: false, error: 'kvstore get: unavailable', clusterConfigId: null, heartbeat: null }),
    }),
    probe('c2', 2, [], { etcd: etcd({ clusterConfigId: 5 }) }),
  ]);
  assert.equal(r.clusters[0]!.ready, false);
  assert.ok(r.notReady.some((s) => s.startsWith('c1: etcd https://10.1.0.250:2379 is not reachable')));
  assert.ok(r.notReady.some((s) => s.includes('cannot use /d/c9: field endpoints: required')));
  assert.ok(r.notReady.some((s) => s.includes('publishes cluster ID 5, but the cluster is configured with ID 2')));
  assert.equal(r.clusters[0]!.apiserver.reachable, null, 'unknown when etcd cannot be read and the process is alive');
});

test('summarize: an endpoint refused as a duplicate on a node makes the cluster not ready, naming it', () => {
  const st = agent('c1', 'n1', []);
  st.endpoints.problems = ['endpoint c3 (default/web-3) refused at restore: its endpoint ID 1 belongs to endpoint c1 (restored first)'];
  const r = summarize([probe('c1', 1, [{ node: nodeTarget('c1', 'n1'), status: st, error: null }])], NOW);
  assert.equal(r.ready, false);
  assert.ok(r.notReady.some((s) => s === 'c1: agent on c1/n1: endpoint c3 (default/web-3) refused at restore: its endpoint ID 1 belongs to endpoint c1 (restored first)'), JSON.stringify(r.notReady));
});

test('summarize: socket LB configured on a node but a program not attached makes the cluster not ready, naming the hooks', () => {
  const st = agent('c1', 'n1', []);
  const programs = (['connect4', 'sendmsg4', 'recvmsg4', 'getpeername4'] as const).map((hook, i) => ({ hook, program: `p${i}`, progId: i + 1, attached: hook !== 'recvmsg4' }));
  (st as { datapath: unknown }).datapath = { socketLB: { enabled: true, cgroup: '/cg/n1', programs, stats: null } };
  const r = summarize([probe('c1', 1, [{ node: nodeTarget('c1', 'n1'), status: st, error: null }])], NOW);
  assert.equal(r.ready, false);
  assert.ok(r.notReady.includes('c1: agent on c1/n1: socket LB on /cg/n1: recvmsg4 not attached'), JSON.stringify(r.notReady));
});

test('summarize: the local source the agents report (store / kubernetes) is shown per cluster', () => {
  const st = { ...agent('c1', 'n1', []), local: { source: 'kubernetes', synced: true, kinds: {}, counts: { nodes: 1, endpoints: 0, namespaces: 1 } } } as AgentStatus;
  const r = summarize([probe('c1', 1, [{ node: nodeTarget('c1', 'n1'), status: st, error: null }])], NOW);
  assert.equal(r.clusters[0]!.localSource, 'kubernetes');
  assert.match(formatStatus(r), /source:\s+kubernetes/);
});

test('summarize: the routing mode and tunnel encapsulation the agents report are shown per cluster (an agent without the fields: tunnel, the device)', () => {
  const st = agent('c1', 'n1', []);
  let r = summarize([probe('c1', 1, [{ node: nodeTarget('c1', 'n1'), status: st, error: null }])], NOW);
  assert.equal(r.clusters[0]!.routing, 'tunnel, VXLAN device');
  (st as { datapath: unknown }).datapath = { routingMode: 'native', nativeRoutingCIDRs: ['10.101.0.0/16', '10.102.0.0/16'] };
  r = summarize([probe('c1', 1, [{ node: nodeTarget('c1', 'n1'), status: st, error: null }])], NOW);
  assert.equal(r.clusters[0]!.routing, 'native (10.101.0.0/16, 10.102.0.0/16), VXLAN device');
  assert.match(formatStatus(r), /routing:\s+native \(10\.101\.0\.0\/16, 10\.102\.0\.0\/16\), VXLAN device/);
  (st as { datapath: unknown }).datapath = { routingMode: 'tunnel', nativeRoutingCIDRs: [], tunnelEncap: 'bpf' };
  r = summarize([probe('c1', 1, [{ node: nodeTarget('c1', 'n1'), status: st, error: null }])], NOW);
  assert.equal(r.clusters[0]!.routing, 'tunnel, VXLAN in BPF');
});

test("summarize: without etcd, a cluster's exports are what an agent programs as global and shared", () => {
  const r = summarize(
    [
      probe('c1', 1, [], { etcd: null, agentExports: { services: ['default/rebel-base'], node: 'c1/n1' } }),
      probe('c2', 2, [], { etcd: null, agentExports: { services: ['default/other', 'default/rebel-base'], node: 'c2/n1' } }),
      probe('c3', 3, [], { etcd: null, agentExports: { error: 'connect ECONNREFUSED', node: 'c3/n1' } }),
    ],
    NOW,
  );
  assert.deepEqual(r.clusters.map((c) => [c.exportedServices, c.exportedServicesFrom]), [[1, 'agent'], [2, 'agent'], [null, null]]);
  assert.equal(r.globalServices, 2, 'distinct ns/name over the clusters whose agents answered');
  assert.match(formatStatus(r), /exports:\s+2 global services \(as an agent programs them; etcd not read\)/);
  const none = summarize([probe('c1', 1, [], { etcd: null })], NOW);
  assert.equal(none.globalServices, null, 'no etcd and no agent: no count');
});

test('summarize: no nodes and no remotes is ready (a cluster not meshed yet), and JSON keys are stable', () => {
  const r = summarize([probe('c1', 1, [])], NOW);
  assert.equal(r.ready, true);
  assert.deepEqual(Object.keys(r), ['ready', 'notReady', 'clusters', 'globalServices', 'prometheus']);
  assert.deepEqual(Object.keys(r.clusters[0]!), ['name', 'id', 'ready', 'etcd', 'apiserver', 'kubeApi', 'localSource', 'nodes', 'connectivity', 'remoteClusters', 'exportedServices', 'exportedServicesFrom', 'flows', 'nodeDetails', 'routing']);
  assert.equal(r.clusters[0]!.kubeApi, null, 'no Kubernetes API known (not a lab)');
  assert.equal(r.clusters[0]!.localSource, null, 'no agent reachable: no source known');
});

test("summarize: a lab's prometheus is shown by URL; its process gone makes the report not ready", () => {
  const url = 'http://127.0.0.1:9090';
  const up = summarize([probe('c1', 1, [], { prometheus: { url, process: true } })], NOW);
  assert.equal(up.ready, true);
  assert.deepEqual(up.prometheus, { url, process: true });
  assert.match(formatStatus(up), /prometheus: ok {2}http:\/\/127\.0\.0\.1:9090\//);
  const down = summarize([probe('c1', 1, [], { prometheus: { url, process: false } })], NOW);
  assert.equal(down.ready, false);
  assert.match(down.notReady.join('\n'), /prometheus \(http:\/\/127\.0\.0\.1:9090\) is not running/);
  assert.equal(summarize([probe('c1', 1, [])], NOW).prometheus, null);
});

test("summarize: a lab cluster's Kubernetes API is shown by URL; its process gone makes the cluster not ready", () => {
  const url = 'https://127.0.0.1:40001';
  const up = summarize([probe('c1', 1, [], { kubeApi: { url, process: true } })], NOW);
  assert.equal(up.ready, true);
  assert.deepEqual(up.clusters[0]!.kubeApi, { url, process: true });
  assert.match(formatStatus(up), /kube-api: {4}ok {2}https:\/\/127\.0\.0\.1:40001 {2}\(kubectl --context c1\)/);
  const down = summarize([probe('c1', 1, [], { kubeApi: { url, process: false } })], NOW);
  assert.equal(down.ready, false);
  assert.match(down.notReady.join('\n'), /c1: Kubernetes API server not running/);
  assert.match(formatStatus(down), /kube-api: {4}FAIL {2}https:\/\/127\.0\.0\.1:40001 {2}\(process not running\)/);
});

test("summarize: with MCS, a remote whose exports are not merged yet is shown with the reason (the controller's rule), a merged one is not", () => {
  const view = { exports: [], imports: [] };
  const r = summarize(
    [
      probe('c1', 1, [ok('c1', 'n1', [remote('c2'), remote('c3')])], { configFiles: ['c2', 'c3'], mcs: view }),
      probe('c2', 2, [], { etcd: etcd({ clusterConfigId: 2, serviceExports: { ready: false, why: 'cluster-config does not advertise serviceExportsEnabled' } }) }),
      probe('c3', 3, [], { etcd: etcd({ clusterConfigId: 3, serviceExports: { ready: true } }) }),
    ],
    NOW,
  );
  const c1 = r.clusters.find((c) => c.name === 'c1')!;
  assert.deepEqual(c1.mcsRemotes, [
    { name: 'c2', waiting: 'cluster-config does not advertise serviceExportsEnabled' },
    { name: 'c3', waiting: null },
  ]);
  const text = formatStatus(r);
  assert.match(text, /^ {4}remote c2: its exports are not merged yet: cluster-config does not advertise serviceExportsEnabled$/m);
  assert.doesNotMatch(text, /remote c3: its exports/);
  assert.equal(r.clusters.find((c) => c.name === 'c2')!.mcsRemotes, undefined, 'no MCS view: no MCS remotes');
});

test('status --context: --install-namespace and --namespace name the install namespace; both and different is a usage error (exit 2)', () => {
  assert.equal(installNamespaceOf({}), 'clustermesh-system');
  assert.equal(installNamespaceOf({ installNamespace: 'cm' }), 'cm');
  assert.equal(installNamespaceOf({ namespace: 'cm' }), 'cm');
  assert.equal(installNamespaceOf({ namespace: 'cm', installNamespace: 'cm' }), 'cm');
  assert.throws(() => installNamespaceOf({ namespace: 'a', installNamespace: 'b' }), (e: Error & { exitCode?: number }) => /--namespace a and --install-namespace b disagree/.test(e.message) && e.exitCode === 2);
});
