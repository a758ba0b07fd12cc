// Prometheus metrics of the agent, in the text format on an HTTP port of its
// own (metricsAddress, default 127.0.0.1:9962 inside the node's network
// namespace: off the pod network; the node IP to let a scraper on the
// underlay in; '' for none). Values are read when scraped: the datapath's
// per-CPU counters (cm_metrics), map fill levels, the remote clusters' state
// and the flow store. The remote-cluster counters of src/clustermesh
// (clustermesh_remote_cluster_ready, _reconnections_total,
// clustermesh_remote_values_rejected_total) live in prom-client's default
// registry and are served with these.
import type { Registry } from 'prom-client';
import type { metrics as metricsMap } from '../datapath/maps/index.ts';
import type { SockStats } from '../datapath/maps/sock.ts';
import { DropReason, TraceReason } from '../datapath/maps/reasons.ts';
import { ScrapeMetrics, type Buckets } from '../util/metrics.ts';
import type { FlowsStatus } from './flow-reader.ts';
import type { MapFill } from './datapath.ts';
import type { ReconcilerStatus } from './reconciler.ts';
import type { RemoteSummary } from './status.ts';

export { parseListenAddress, startMetricsServer, type MetricsServer } from '../util/metrics.ts';

/** Conntrack tables (map name → label). */
const CONNTRACK_MAPS: Readonly<Record<string, string>> = { cm_ct: 'service', cm_policy_conn: 'policy' };

export interface AgentMetricsSources {
  /** cm_metrics rows, summed over CPUs. */
  datapath(): metricsMap.Row[];
  /** Map fill levels (cm_ct and cm_policy_conn give the conntrack entries). */
  maps(): MapFill[];
  /** Socket-level load balancing counters (null when off). */
  socketLB(): SockStats | null;
  remotes(): RemoteSummary[];
  flows(): FlowsStatus;
  reconcilers(): { status(): ReconcilerStatus; readonly passSeconds: { full: Buckets; incremental: Buckets } }[];
  /** Seconds from receiving a remote cluster's change to its write into cm_ipcache, per remote cluster. */
  propagation(): ReadonlyMap<string, Buckets>;
}

/** A registry whose values are read from the sources at each scrape. */
export function agentRegistry(src: AgentMetricsSources): Registry {
  let rows: metricsMap.Row[] = [];
  let remotes: RemoteSummary[] = [];
  let flows: FlowsStatus | undefined;
  let reconcilers: ReconcilerStatus[] = [];
  let maps: MapFill[] = [];
  const m = new ScrapeMetrics(() => {
    try {
      rows = src.datapath();
    } catch {
      rows = [];
    }
    try {
      maps = src.maps();
    } catch {
      maps = [];
    }
    remotes = src.remotes();
    flows = src.flows();
    reconcilers = src.reconcilers().map((r) => r.status());
  });
  const counter = m.counter.bind(m);
  const gauge = m.gauge.bind(m);
  const lost = TraceReason.TRACE_EVENT_LOST;
  const xlate = TraceReason.TRACE_SERVICE_XLATE;
  const isDrop = (reason: number): boolean => reason >= 130;
  const isForward = (reason: number): boolean => !isDrop(reason) && reason !== lost && reason !== xlate;
  const policyDrop = (reason: number): boolean => reason === DropReason.DROP_POLICY || reason === DropReason.DROP_POLICY_DENY;

  counter('clustermesh_drop_count_total', 'Packets dropped by the datapath, by reason and direction (from the pod\'s point of view)', ['reason', 'direction'], (c) => {
    for (const x of rows) if (isDrop(x.reason)) c.inc({ reason: x.reasonName, direction: x.direction }, Number(x.packets));
  });
  counter('clustermesh_drop_bytes_total', 'Bytes of packets dropped by the datapath, by reason and direction', ['reason', 'direction'], (c) => {
    for (const x of rows) if (isDrop(x.reason)) c.inc({ reason: x.reasonName, direction: x.direction }, Number(x.bytes));
  });
  counter('clustermesh_forward_count_total', 'Packets the datapath passed on, by where they went (reason) and direction', ['reason', 'direction'], (c) => {
    for (const x of rows) if (isForward(x.reason)) c.inc({ reason: x.reasonName, direction: x.direction }, Number(x.packets));
  });
  counter('clustermesh_forward_bytes_total', 'Bytes of packets the datapath passed on, by reason and direction', ['reason', 'direction'], (c) => {
    for (const x of rows) if (isForward(x.reason)) c.inc({ reason: x.reasonName, direction: x.direction }, Number(x.bytes));
  });
  counter(
    'clustermesh_policy_verdicts_total',
    'Packets refused by network policy, by direction and match (deny-entry: an explicit deny; default-deny: enforced and no allow entry). Allowed packets are counted as forwards',
    ['direction', 'match'],
    (c) => {
      for (const x of rows) if (policyDrop(x.reason)) c.inc({ direction: x.direction, match: x.reason === DropReason.DROP_POLICY_DENY ? 'deny-entry' : 'default-deny' }, Number(x.packets));
    },
  );
  counter(
    'clustermesh_service_translations_total',
    'Connections or packets sent to a service backend: path packet = packets translated by the per-packet datapath (by direction); socket-connect / socket-sendmsg = connect() calls and unconnected UDP datagrams translated by socket-level load balancing',
    ['path', 'direction'],
    (c) => {
      c.inc({ path: 'packet', direction: 'egress' }, 0); // from_container translates: the series exists from the start
      for (const x of rows) if (x.reason === xlate) c.inc({ path: 'packet', direction: x.direction }, Number(x.packets));
      const sock = src.socketLB();
      if (sock) {
        c.inc({ path: 'socket-connect', direction: 'egress' }, sock.connect);
        c.inc({ path: 'socket-sendmsg', direction: 'egress' }, sock.sendmsg);
      }
    },
  );
  gauge('clustermesh_map_entries', 'Entries of a datapath map', ['map'], (g) => {
    for (const x of maps) g.set({ map: x.name }, x.entries);
  });
  gauge('clustermesh_map_capacity', 'Maximum entries of a datapath map', ['map'], (g) => {
    for (const x of maps) g.set({ map: x.name }, x.maxEntries);
  });
  gauge('clustermesh_conntrack_entries', 'Entries of a conntrack table: service (connections to service backends) or policy (connections policy allowed)', ['table'], (g) => {
    for (const x of maps) if (CONNTRACK_MAPS[x.name]) g.set({ table: CONNTRACK_MAPS[x.name]! }, x.entries);
  });
  gauge('clustermesh_map_refused_entries', 'Entries of a sized datapath map not written for lack of room: a reconciler\'s keys its full map refused (retried, nothing evicted); for cm_ct the connections not tracked (drops DROP_CT_WRITE_FAILED)', ['map'], (g) => {
    for (const x of maps) g.set({ map: x.name }, x.refused);
  });
  counter('clustermesh_map_full_errors_total', 'Map writes of a reconciler refused because the map was full (E2BIG/ENOSPC); the datapath\'s own (conntrack) are drops with reason DROP_CT_WRITE_FAILED', ['reconciler'], (c) => {
    for (const x of reconcilers) c.inc({ reconciler: x.name }, x.mapFull);
  });
  gauge('clustermesh_remote_clusters', 'Remote clusters configured, by state', ['state'], (g) => {
    const by = new Map<string, number>();
    for (const x of remotes) by.set(x.state, (by.get(x.state) ?? 0) + 1);
    for (const [state, n] of by) g.set({ state }, n);
  });
  gauge('clustermesh_remote_cluster_connected', '1 while the session to the remote cluster\'s etcd is up', ['source_cluster'], (g) => {
    for (const x of remotes) g.set({ source_cluster: x.name }, x.connected ? 1 : 0);
  });
  gauge('clustermesh_remote_cluster_last_failure_timestamp_seconds', 'When the last failure with the remote cluster happened (Unix time; absent when none)', ['source_cluster'], (g) => {
    for (const x of remotes) if (x.lastErrorAt) g.set({ source_cluster: x.name }, Date.parse(x.lastErrorAt) / 1000);
  });
  gauge('clustermesh_remote_cluster_heartbeat_age_seconds', 'Time since the remote cluster\'s heartbeat last changed (absent before the first one)', ['source_cluster'], (g) => {
    for (const x of remotes) if (x.heartbeat?.ageMs !== null && x.heartbeat?.ageMs !== undefined) g.set({ source_cluster: x.name }, x.heartbeat.ageMs / 1000);
  });
  gauge('clustermesh_remote_cluster_heartbeat_stale', '1 when the remote cluster\'s heartbeat has not changed for longer than its limit', ['source_cluster'], (g) => {
    for (const x of remotes) g.set({ source_cluster: x.name }, x.heartbeat?.stale ? 1 : 0);
  });
  gauge('clustermesh_remote_cluster_entries', 'Entries learned from the remote cluster, by kind', ['source_cluster', 'kind'], (g) => {
    for (const x of remotes) for (const [kind, n] of Object.entries(x.counts)) g.set({ source_cluster: x.name, kind }, n);
  });
  counter('clustermesh_flows_seen_total', 'Flows the agent decoded from the datapath\'s events', [], (c) => {
    if (flows) c.inc(flows.seen);
  });
  gauge('clustermesh_flows_stored', 'Flows kept in memory (at most flowBufferSize)', [], (g) => {
    if (flows) g.set(flows.stored);
  });
  counter(
    'clustermesh_flows_lost_total',
    'Events lost: ring_buffer_full = the datapath had no room in the ring (the reader was behind or down), counted since the maps were created; slow_follower = flows a follow stream could not take',
    ['cause'],
    (c) => {
      if (!flows) return;
      c.inc({ cause: 'ring_buffer_full' }, flows.lost.datapath);
      c.inc({ cause: 'slow_follower' }, flows.followerDropped);
    },
  );
  gauge('clustermesh_reconciler_pending', 'Keys of a reconciler whose desired state is not in the target yet', ['reconciler'], (g) => {
    for (const x of reconcilers) g.set({ reconciler: x.name }, x.pending);
  });
  gauge('clustermesh_reconciler_errors', 'Pending keys of a reconciler whose last attempt failed', ['reconciler'], (g) => {
    for (const x of reconcilers) g.set({ reconciler: x.name }, x.errors);
  });
  counter('clustermesh_reconciler_retries_total', 'Attempts that were retries of a failed one', ['reconciler'], (c) => {
    for (const x of reconcilers) c.inc({ reconciler: x.name }, x.retries);
  });
  counter('clustermesh_reconciler_errors_total', 'Failed operations of a reconciler (each attempt; retried with backoff)', ['reconciler'], (c) => {
    for (const x of reconcilers) c.inc({ reconciler: x.name }, x.failures);
  });
  m.histogram<'reconciler' | 'pass'>('clustermesh_reconciler_duration_seconds', 'How long a reconciler pass took: full (every entry compared) or incremental (pending keys only; passes with work)', (add) => {
    for (const r of src.reconcilers()) {
      const name = r.status().name;
      add({ reconciler: name, pass: 'full' }, r.passSeconds.full);
      add({ reconciler: name, pass: 'incremental' }, r.passSeconds.incremental);
    }
  });
  m.histogram<'source_cluster'>(
    'clustermesh_propagation_delay_seconds',
    'From receiving a remote cluster\'s endpoint change (its etcd watch event) to the write of that address into cm_ipcache. Measured from receipt: the kvstore values carry no write time and etcd keeps none per revision',
    (add) => {
      for (const [cluster, b] of src.propagation()) add({ source_cluster: cluster }, b);
    },
  );
  return m.registry;
}
