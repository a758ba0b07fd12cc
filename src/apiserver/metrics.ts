// Prometheus metrics of the apiserver (GET /metrics on metricsAddress, default
// 127.0.0.1:9963; '' for none), read from its status at each scrape: what it
// exports per kind, objects it could not export, its writes into the mesh
// kvstore per prefix, the synced canaries and the heartbeat (the etcd link),
// and the phase of its start (served before etcd answers); GET /readyz: 200
// once the start is done (apiserverReady).
import type { Registry } from 'prom-client';
import type { SyncedPrefixName } from '../clustermesh/keys.ts';
import { ScrapeMetrics } from '../util/metrics.ts';
import { APISERVER_PHASES, type ApiserverPhase, type ApiserverStatus } from './apiserver.ts';

export interface ApiserverMetricsSource {
  /** Where the start is (etcd-bootstrap, claiming, exporting, ready). */
  phase(): ApiserverPhase;
  /** undefined until the exports exist (the first etcd listing done): the endpoint serves from the start. */
  status(): ApiserverStatus | undefined;
  /** Source objects not exported (could not be converted), by kind (none before the exports exist). */
  exportErrors(): Partial<Record<'nodes' | 'ip' | 'services' | 'identities', number>>;
  heartbeat(): { writes: number; failures: number; lastRoundOk: boolean };
}

/** GET /readyz of the metrics endpoint (the install's readinessProbe): ready once the start is done (phase ready). */
export function apiserverReady(phase: ApiserverPhase): true | string {
  return phase === 'ready' || `phase ${phase}`;
}

export function apiserverRegistry(src: ApiserverMetricsSource): Registry {
  let st: ApiserverStatus | undefined;
  const m = new ScrapeMetrics(() => {
    st = src.status();
  });
  m.gauge('clustermesh_apiserver_phase', 'Where the apiserver is: 1 for the current phase (etcd-bootstrap: setting up etcd\'s users; claiming: waiting for etcd to take the writer key; exporting: the first listing and export; ready: synced canaries written), 0 for the others', ['phase'], (g) => {
    const now = src.phase();
    for (const p of APISERVER_PHASES) g.set({ phase: p }, p === now ? 1 : 0);
  });
  const stores = (): [SyncedPrefixName, ApiserverStatus['stores'][SyncedPrefixName]][] => (st ? (Object.entries(st.stores) as never) : []);
  m.gauge('clustermesh_apiserver_exported_objects', 'Objects the apiserver publishes in the mesh kvstore, by kind (nodes, ip, services; identities: the identities its pods hold)', ['kind'], (g) => {
    if (!st) return;
    g.set({ kind: 'nodes' }, st.exported.nodes);
    g.set({ kind: 'ip' }, st.exported.ip);
    g.set({ kind: 'services' }, st.exported.services);
    g.set({ kind: 'identities' }, st.identities.identities);
  });
  m.counter('clustermesh_apiserver_export_errors_total', 'Source objects that could not be exported (invalid, or an identity outside the cluster\'s range), by kind', ['kind'], (c) => {
    for (const [kind, n] of Object.entries(src.exportErrors())) c.inc({ kind }, n ?? 0);
  });
  m.counter('clustermesh_apiserver_kvstore_operations_total', 'Writes into the mesh kvstore, by prefix and operation (put, delete)', ['prefix', 'operation'], (c) => {
    for (const [prefix, s] of stores()) {
      c.inc({ prefix, operation: 'put' }, s.puts);
      c.inc({ prefix, operation: 'delete' }, s.deletes);
    }
  });
  m.counter('clustermesh_apiserver_kvstore_errors_total', 'Failed writes into the mesh kvstore (retried), by prefix', ['prefix'], (c) => {
    for (const [prefix, s] of stores()) c.inc({ prefix }, s.failures);
  });
  m.gauge('clustermesh_apiserver_kvstore_queued', 'Keys waiting to be written or deleted, by prefix', ['prefix'], (g) => {
    for (const [prefix, s] of stores()) g.set({ prefix }, s.queued + s.inFlight);
  });
  m.gauge('clustermesh_apiserver_synced', '1 once the prefix\'s synced canary is written (its initial export is complete)', ['prefix'], (g) => {
    for (const [prefix, s] of stores()) g.set({ prefix }, s.synced ? 1 : 0);
  });
  m.counter('clustermesh_apiserver_heartbeats_total', 'Heartbeats written (cilium/.heartbeat)', [], (c) => {
    c.inc(src.heartbeat().writes);
  });
  m.counter('clustermesh_apiserver_heartbeat_failures_total', 'Heartbeat rounds that failed to reach etcd', [], (c) => {
    c.inc(src.heartbeat().failures);
  });
  m.gauge('clustermesh_apiserver_kvstore_connected', '1 when the last heartbeat round reached the mesh kvstore (etcd)', [], (g) => {
    g.set(src.heartbeat().lastRoundOk ? 1 : 0);
  });
  m.gauge('clustermesh_apiserver_identity_pods', 'Pods whose identities the apiserver holds references for', [], (g) => {
    if (st) g.set(st.identities.pods);
  });
  return m.registry;
}
