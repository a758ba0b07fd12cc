import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { DropReason, TraceReason } from '../datapath/maps/reasons.ts';
import type { metrics as metricsMap } from '../datapath/maps/index.ts';
import type { FlowsStatus } from './flow-reader.ts';
import type { RemoteSummary } from './status.ts';
import { agentRegistry } from './metrics.ts';
import { Buckets, parseListenAddress, startMetricsServer } from '../util/metrics.ts';
import type { ReconcilerStatus } from './reconciler.ts';

const row = (reason: number, reasonName: string, direction: 'ingress' | 'egress', packets: number): metricsMap.Row => ({
  reason,
  reasonName,
  direction,
  packets: BigInt(packets),
  bytes: BigInt(packets * 100),
  drop: reason >= 130,
});

const rec = {
  status: () => ({ name: 'ipcache', failures: 3, mapFull: 2, retries: 1, pending: 0, errors: 0 }) as ReconcilerStatus,
  passSeconds: { full: new Buckets(), incremental: new Buckets() },
};
rec.passSeconds.incremental.observe(0.002);
const prop = new Buckets();
prop.observe(0.03);
prop.observe(0.2);

function sources(rows: metricsMap.Row[]) {
  const flows: FlowsStatus = { capacity: 4096, stored: 10, seen: 12, oldest: null, newest: null, followers: 0, followerDropped: 1, decodeErrors: 0, lost: { datapath: 7, sinceStart: 7 } };
  const remote = {
    name: 'c2',
    state: 'ready',
    connected: true,
    ready: true,
    synced: { nodes: true, identities: true, ip: true, services: true },
    counts: { nodes: 1, endpoints: 2, identities: 3, services: 0 },
    reconnections: 0,
    lastError: 'boom',
    lastErrorAt: '2026-01-01T00:00:00.000Z',
    heartbeat: { lastSeenAt: null, value: null, ageMs: 1500, stale: false, staleAfterMs: 180_000 },
  } as unknown as RemoteSummary;
  return {
    datapath: () => rows,
    maps: () => [
      { name: 'cm_ipcache', entries: 5, maxEntries: 512000, fill: 0, refused: 36 },
      { name: 'cm_ct', entries: 9, maxEntries: 65536, fill: 0, refused: 2 },
      { name: 'cm_policy_conn', entries: 4, maxEntries: 65536, fill: 0, refused: 0 },
    ],
    remotes: () => [remote],
    flows: () => flows,
    socketLB: () => ({ connect: 6, sendmsg: 2, recvmsg: 0, getpeername: 0, noBackend: 0, revnatFail: 0 }),
    reconcilers: () => [rec],
    propagation: () => new Map([['c2', prop]]),
  };
}

test('metrics: drops by reason and direction, forwards, policy verdicts, maps, remote clusters, flows lost', async () => {
  const rows = [
    row(TraceReason.TRACE_TO_ENDPOINT, 'TRACE_TO_ENDPOINT', 'ingress', 40),
    row(DropReason.DROP_POLICY, 'DROP_POLICY', 'ingress', 3),
    row(DropReason.DROP_UNKNOWN_ENDPOINT, 'DROP_UNKNOWN_ENDPOINT', 'ingress', 2),
    row(TraceReason.TRACE_EVENT_LOST, 'TRACE_EVENT_LOST', 'ingress', 7),
    row(TraceReason.TRACE_SERVICE_XLATE, 'TRACE_SERVICE_XLATE', 'egress', 5),
  ];
  const r = agentRegistry(sources(rows));
  const text = await r.metrics();
  for (const line of [
    'clustermesh_drop_count_total{reason="DROP_POLICY",direction="ingress"} 3',
    'clustermesh_drop_count_total{reason="DROP_UNKNOWN_ENDPOINT",direction="ingress"} 2',
    'clustermesh_drop_bytes_total{reason="DROP_POLICY",direction="ingress"} 300',
    'clustermesh_forward_count_total{reason="TRACE_TO_ENDPOINT",direction="ingress"} 40',
    'clustermesh_policy_verdicts_total{direction="ingress",match="default-deny"} 3',
    'clustermesh_map_entries{map="cm_ipcache"} 5',
    'clustermesh_map_capacity{map="cm_ipcache"} 512000',
    'clustermesh_map_refused_entries{map="cm_ipcache"} 36',
    'clustermesh_map_refused_entries{map="cm_ct"} 2',
    'clustermesh_remote_clusters{state="ready"} 1',
    'clustermesh_remote_cluster_connected{source_cluster="c2"} 1',
    'clustermesh_remote_cluster_last_failure_timestamp_seconds{source_cluster="c2"} 1767225600',
    'clustermesh_remote_cluster_heartbeat_age_seconds{source_cluster="c2"} 1.5',
    'clustermesh_remote_cluster_entries{source_cluster="c2",kind="endpoints"} 2',
    'clustermesh_flows_lost_total{cause="ring_buffer_full"} 7',
    'clustermesh_flows_lost_total{cause="slow_follower"} 1',
    'clustermesh_flows_seen_total 12',
    'clustermesh_service_translations_total{path="packet",direction="egress"} 5',
    'clustermesh_service_translations_total{path="socket-connect",direction="egress"} 6',
    'clustermesh_conntrack_entries{table="service"} 9',
    'clustermesh_conntrack_entries{table="policy"} 4',
    'clustermesh_map_full_errors_total{reconciler="ipcache"} 2',
    'clustermesh_reconciler_errors_total{reconciler="ipcache"} 3',
    'clustermesh_reconciler_duration_seconds_bucket{reconciler="ipcache",pass="incremental",le="0.0025"} 1',
    'clustermesh_reconciler_duration_seconds_count{reconciler="ipcache",pass="full"} 0',
    'clustermesh_propagation_delay_seconds_bucket{source_cluster="c2",le="0.05"} 1',
    'clustermesh_propagation_delay_seconds_bucket{source_cluster="c2",le="+Inf"} 2',
    'clustermesh_propagation_delay_seconds_sum{source_cluster="c2"} 0.23',
  ])
    assert.ok(text.includes(`\n${line}\n`), `${line} in:\n${text}`);
  assert.doesNotMatch(text, /forward_count_total\{reason="TRACE_EVENT_LOST"/, 'the lost marker is no forward');
  assert.doesNotMatch(text, /forward_count_total\{reason="TRACE_SERVICE_XLATE"/, 'a translation is counted besides its forward');
  assert.match(text, /# TYPE clustermesh_propagation_delay_seconds histogram/);
  // One more policy drop changes exactly that reason's counter (values are read per scrape).
  rows[1] = row(DropReason.DROP_POLICY, 'DROP_POLICY', 'ingress', 4);
  await new Promise((res) => setTimeout(res, 300));
  const after = await r.metrics();
  assert.ok(after.includes('clustermesh_drop_count_total{reason="DROP_POLICY",direction="ingress"} 4\n'));
  assert.ok(after.includes('clustermesh_drop_count_total{reason="DROP_UNKNOWN_ENDPOINT",direction="ingress"} 2\n'));
});

test('the metrics server answers GET /metrics on its address; a bad address is named', async () => {
  const s = await startMetricsServer('127.0.0.1:0', [agentRegistry(sources([]))]);
  try {
    const [status, body] = await new Promise<[number, string]>((resolve, reject) => {
      const { host, port } = parseListenAddress(s.address);
      request({ host, port, path: '/metrics' }, (res) => {
        let b = '';
        res.on('data', (c: Buffer) => (b += c.toString()));
        res.on('end', () => resolve([res.statusCode ?? 0, b]));
      })
        .on('error', reject)
        .end();
    });
    assert.equal(status, 200);
    assert.match(body, /# TYPE clustermesh_drop_count_total counter/);
  } finally {
    await s.close();
  }
  assert.throws(() => parseListenAddress('9962'), /'9962' must be host:port/);
});
