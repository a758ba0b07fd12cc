// bench/peers: its charts (one bar per config at its median, the ratio to the
// baseline, which way is better) and its refusal to run beside a lab.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { barChartSvg } from '../bench/peers/charts.ts';
import type { Row } from '../bench/lib/results.ts';

const row = (config: string, metric: string, median: number, min: number, max: number): Row => ({ config, metric, unit: 'x', median, min, max, n: 5, params: {} });

test('a bar per config, scaled to the largest max, with ratios to the baseline', () => {
  const rows = [row('limit', 'tcp_rr_rate', 100, 90, 110), row('clustermesh', 'tcp_rr_rate', 50, 40, 60), row('limit', 'tcp_rr_p50', 30, 29, 31)];
  const svg = barChartSvg('tcp_rr_rate', rows, 'limit');
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.match(svg, /<\/svg>\n$/);
  const bars = [...svg.matchAll(/<rect x="180" y="\d+" width="([\d.]+)"/g)].map((m) => Number(m[1]));
  assert.equal(bars.length, 2, 'only the rows of the metric are drawn');
  assert.ok(Math.abs(bars[0]! / bars[1]! - 2) < 0.01, `bar lengths ${bars} should be in the ratio of the medians`);
  assert.match(svg, /50\.0 \(0\.50×\)/);
  assert.match(svg, /higher is better/);
  assert.match(barChartSvg('tcp_rr_p50', rows, 'limit'), /lower is better/);
  assert.throws(() => barChartSvg('tcp_crr_rate', rows, 'limit'), /no rows for metric 'tcp_crr_rate'/);
});

test('config names are escaped', () => {
  const svg = barChartSvg('m', [row('a<b&c', 'm', 1, 1, 1)], 'limit');
  assert.match(svg, />a&lt;b&amp;c</);
});

test('the bench refuses to run while a lab.json names a live process, and builds nothing', () => {
  const root = mkdtempSync(join(tmpdir(), 'cmtb2-labs-'));
  try {
    mkdirSync(join(root, 'somelab'));
    writeFileSync(join(root, 'somelab', 'lab.json'), JSON.stringify({ version: 1, name: 'somelab', pid: 999999999, nodes: [{ name: 'n1', pid: process.pid }] }));
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/peers/run.ts', '--quick'], { cwd: join(import.meta.dirname, '..'), env: { ...process.env, CLUSTERMESH_LAB_ROOT: root }, encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stderr, new RegExp(`lab 'somelab' .*pid ${process.pid} alive.*clustermesh lab down`));
    assert.doesNotMatch(r.stdout, /^rep /m);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
