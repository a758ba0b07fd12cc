// Prometheus metrics of the agent, in the text format on an HTTP port of its
// own (metricsAddress, default 127.0.0.1:9962 inside the node's network
// namespace: off the pod network; the node IP to let a scraper on the
// underlay in; '' for none). Values are read when scraped: the datapath's
// per-CPU counters (cm_metrics), map fill levels, the remote clusters' state
// and the flow store. The remote-cluster counters of src/clustermesh
// (clustermesh_remote_cluster_ready, _reconnections_total,
// clustermesh_remote_values_rejected_total) live in prom-client's default
// registry and are served with these.
import { createServer, type Server } from 'node:http';
import promClient, { Registry } from 'prom-client';
import type { metrics as metricsMap } from '../datapath/maps/index.ts';
import { DropReason, TraceReason } from '../datapath/maps/reasons.ts';
import type { FlowsStatus } from './flow-reader.ts';
import type { MapFill } from './datapath.ts';
import type { ReconcilerStatus } from './reconciler.ts';
import type { RemoteSummary } from './status.ts';

export interface AgentMetricsSources {
  /** cm_metrics rows, summed over CPUs. */
  datapath(): metricsMap.Row[];
  maps(): MapFill[];
  remotes(): RemoteSummary[];
  flows(): FlowsStatus;
  reconcilers(): ReconcilerStatus[];
}

/** A registry whose values are read from the sources at each scrape. */
export function agentRegistry(src: AgentMetricsSources): Registry {
  const r = new Registry();
  const reg = [r];
  let rows: metricsMap.Row[] = [];
  let remotes: RemoteSummary[] = [];
  let flows: FlowsStatus | undefined;
  let reconcilers: ReconcilerStatus[] = [];
  // Read once per scrape: collectors of one scrape run within milliseconds of each other.
  let readAt = -Infinity;
  const refresh = (): void => {
    if (Date.now() - readAt < 250) return;
    readAt = Date.now();
    try {
      rows = src.datapath();
    } catch {
      rows = [];
    }
    remotes = src.remotes();
    flows = src.flows();
    reconcilers = src.reconcilers();
  };
  const lost = TraceReason.TRACE_EVENT_LOST;
  const isDrop = (reason: number): boolean => reason >= 130;
  const policyDrop = (reason: number): boolean => reason === DropReason.DROP_POLICY || reason === DropReason.DROP_POLICY_DENY;

  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[], fill: (c: promClient.Counter<L>) => void): void => {
    new promClient.Counter<L>({
      name,
      help,
      labelNames,
      registers: reg,
      collect() {
        refresh();
        this.reset();
        fill(this);
      },
    });
  };
  const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[], fill: (g: promClient.Gauge<L>) => void): void => {
    new promClient.Gauge<L>({
      name,
      help,
      labelNames,
      registers: reg,
      collect() {
        refresh();
        this.reset();
        fill(this);
      },
    });
  };

  counter('clustermesh_drop_count_total', 'Packets dropped by the datapath, by reason and direction (from the pod\'s point of view)', ['reason', 'direction'], (c) => {
    for (const x of rows) if (isDrop(x.reason)) c.inc({ reason: x.reasonName, direction: x.direction }, Number(x.packets));
  });
  counter('clustermesh_drop_bytes_total', 'Bytes of packets dropped by the datapath, by reason and direction', ['reason', 'direction'], (c) => {
    for (const x of rows) if (isDrop(x.reason)) c.inc({ reason: x.reasonName, direction: x.direction }, Number(x.bytes));
  });
  counter('clustermesh_forward_count_total', 'Packets the datapath passed on, by where they went (reason) and direction', ['reason', 'direction'], (c) => {
    for (const x of rows) if (!isDrop(x.reason) && x.reason !== lost) c.inc({ reason: x.reasonName, direction: x.direction }, Number(x.packets));
  });
  counter('clustermesh_forward_bytes_total', 'Bytes of packets the datapath passed on, by reason and direction', ['reason', 'direction'], (c) => {
    for (const x of rows) if (!isDrop(x.reason) && x.reason !== lost) c.inc({ reason: x.reasonName, direction: x.direction }, Number(x.bytes));
  });
  counter(
    'clustermesh_policy_verdicts_total',
    'Packets refused by network policy, by direction and match (deny-entry: an explicit deny; default-deny: enforced and no allow entry). Allowed packets are counted as forwards',
    ['direction', 'match'],
    (c) => {
      for (const x of rows) if (policyDrop(x.reason)) c.inc({ direction: x.direction, match: x.reason === DropReason.DROP_POLICY_DENY ? 'deny-entry' : 'default-deny' }, Number(x.packets));
    },
  );
  gauge('clustermesh_map_entries', 'Entries of a datapath map', ['map'], (g) => {
    for (const m of src.maps()) g.set({ map: m.name }, m.entries);
  });
  gauge('clustermesh_map_capacity', 'Maximum entries of a datapath map', ['map'], (g) => {
    for (const m of src.maps()) g.set({ map: m.name }, m.maxEntries);
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
  return r;
}

export interface MetricsServer {
  readonly address: string;
  close(): Promise<void>;
}

/** Parses 'host:port' (IPv4 or a name; port 0..65535). */
export function parseListenAddress(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  const host = s.slice(0, i);
  const port = Number(s.slice(i + 1));
  if (i <= 0 || !/^\d+$/.test(s.slice(i + 1)) || port > 65535) throw new Error(`'${s}' must be host:port, e.g. 127.0.0.1:9962`);
  return { host, port };
}

/** Serves GET /metrics of `registries` on address (each read at every scrape: metrics registered later are served too). */
export async function startMetricsServer(address: string, registries: Registry[]): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(address);
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://agent').pathname;
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('try GET /metrics\n');
      return;
    }
    Promise.all(registries.map((r) => r.metrics())).then(
      (texts) => {
        res.writeHead(200, { 'content-type': registries[0]!.contentType });
        res.end(texts.filter((t) => t.trim() !== '').join('\n'));
      },
      (err: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`metrics: ${(err as Error).message}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address();
  const bound = a && typeof a === 'object' ? `${a.address}:${a.port}` : address;
  return {
    address: bound,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
