// Every metric the Grafana dashboard (deploy/grafana/clustermesh.json) queries
// is one the agent or the apiserver serves.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Registry } from 'prom-client';
import { agentRegistry } from '../agent/metrics.ts';
import { apiserverRegistry } from '../apiserver/metrics.ts';
import { clusterMeshMetrics } from '../clustermesh/remote-cluster.ts';
import { familyNames } from './metrics.ts';

const DASHBOARD = resolve(import.meta.dirname, '..', '..', 'deploy', 'grafana', 'clustermesh.json');

/** Family names a PromQL expression uses (histogram series names mapped to their family). */
export function metricNamesIn(expr: string): string[] {
  return [...expr.matchAll(/\bclustermesh_[a-z0-9_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, ''));
}

test('every metric name the Grafana dashboard queries exists in the agent\'s or the apiserver\'s registry', () => {
  const never = (): never => {
    throw new Error('not read: only names are listed');
  };
  const remote = new Registry();
  clusterMeshMetrics(remote);
  const served = new Set([
    ...familyNames(agentRegistry({ datapath: never, maps: never, socketLB: never, remotes: never, flows: never, reconcilers: never, propagation: never })),
    ...familyNames(apiserverRegistry({ phase: never, status: never, exportErrors: never, heartbeat: never })),
    ...familyNames(remote),
  ]);
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: { title: string; targets?: { expr: string }[] }[]; templating: { list: { query?: unknown }[] } };
  const exprs = [
    ...dash.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}"`, expr: t.expr }))),
    ...dash.templating.list.flatMap((v) => (typeof (v.query as { query?: unknown })?.query === 'string' ? [{ where: 'variable', expr: (v.query as { query: string }).query }] : [])),
  ];
  assert.ok(exprs.length > 20, `${exprs.length} queries`);
  const used = new Set<string>();
  for (const { where, expr } of exprs) {
    const names = metricNamesIn(expr);
    assert.ok(names.length > 0, `${where}: ${expr} queries no clustermesh_ metric`);
    for (const n of names) {
      used.add(n);
      assert.ok(served.has(n), `${where}: ${n} is served by no registry (served: ${[...served].sort().join(', ')})`);
    }
  }
  // And the dashboard shows every family of the list.
  for (const n of ['clustermesh_drop_count_total', 'clustermesh_service_translations_total', 'clustermesh_map_full_errors_total', 'clustermesh_conntrack_entries', 'clustermesh_propagation_delay_seconds', 'clustermesh_reconciler_duration_seconds', 'clustermesh_flows_lost_total', 'clustermesh_apiserver_exported_objects'])
    assert.ok(used.has(n), `the dashboard shows ${n}`);
});

test('metric names in PromQL: histogram series map to their family', () => {
  assert.deepEqual(metricNamesIn('histogram_quantile(0.9, sum by (le) (rate(clustermesh_propagation_delay_seconds_bucket[5m]))) / clustermesh_map_capacity'), ['clustermesh_propagation_delay_seconds', 'clustermesh_map_capacity']);
});
