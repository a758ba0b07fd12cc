// Bar charts of a benchmark's results as plain SVG text (no dependency): one
// file per metric, one bar per config at its median with a whisker from min
// to max and the ratio to the baseline. Usage, to redraw from a results file:
//   node --import tsx bench/peers/charts.ts [bench/results/peers.json]
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { resultsDir, type Row } from '../lib/results.ts';

/** Metrics where less is better (latencies, costs); the chart says which way is better. */
const LOWER_IS_BETTER = /(_p\d+|cpu_s_per_gb|_seconds|_ms)$/;

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function fmt(x: number): string {
  if (x >= 1000) return Math.round(x).toLocaleString('en-US');
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

export function barChartSvg(metric: string, rows: readonly Row[], baseline: string): string {
  const bars = rows.filter((r) => r.metric === metric);
  if (!bars.length) throw new Error(`charts: no rows for metric '${metric}'`);
  const base = bars.find((r) => r.config === baseline);
  const unit = bars[0]!.unit;
  const lower = LOWER_IS_BETTER.test(metric);
  const labelW = 180;
  const plotW = 420;
  const rowH = 34;
  const top = 48;
  const width = labelW + plotW + 150;
  const height = top + bars.length * rowH + 30;
  const max = Math.max(...bars.map((r) => r.max)) * 1.05 || 1;
  const x = (v: number): number => labelW + (v / max) * plotW;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="13">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">${esc(metric)} (${esc(unit)})</text>`,
    `<text x="10" y="38" fill="#555">median of ${bars[0]!.n} run${bars[0]!.n === 1 ? '' : 's'}, whisker min–max; ${lower ? 'lower' : 'higher'} is better; ratio to ${esc(baseline)} on the right</text>`,
  ];
  bars.forEach((r, i) => {
    const y = top + i * rowH;
    const colour = r.config === 'clustermesh' ? '#2b7bb9' : r.config === 'clustermesh-native' ? '#5fa8d3' : r.config === baseline ? '#7a7a7a' : '#c8a45a';
    out.push(
      `<text x="${labelW - 8}" y="${y + 20}" text-anchor="end">${esc(r.config)}</text>`,
      `<rect x="${labelW}" y="${y + 6}" width="${Math.max(1, x(r.median) - labelW).toFixed(1)}" height="${rowH - 12}" fill="${colour}"/>`,
      `<line x1="${x(r.min).toFixed(1)}" x2="${x(r.max).toFixed(1)}" y1="${y + rowH / 2}" y2="${y + rowH / 2}" stroke="#222" stroke-width="1.5"/>`,
      `<line x1="${x(r.min).toFixed(1)}" x2="${x(r.min).toFixed(1)}" y1="${y + 11}" y2="${y + rowH - 11}" stroke="#222"/>`,
      `<line x1="${x(r.max).toFixed(1)}" x2="${x(r.max).toFixed(1)}" y1="${y + 11}" y2="${y + rowH - 11}" stroke="#222"/>`,
      `<text x="${(x(r.max) + 6).toFixed(1)}" y="${y + 20}">${fmt(r.median)}${base && r !== base ? ` (${(r.median / base.median).toFixed(2)}×)` : ''}</text>`,
    );
  });
  out.push(`<line x1="${labelW}" x2="${labelW}" y1="${top}" y2="${top + bars.length * rowH}" stroke="#222"/>`, '</svg>', '');
  return out.join('\n');
}

/** The medians [min–max] of every metric as a Markdown table, one column per config and its ratio to the baseline. */
export function markdownTable(rows: readonly Row[], baseline: string): string {
  const configs = [...new Set(rows.map((r) => r.config))];
  const head = ['metric', ...configs.flatMap((c) => (c === baseline ? [c] : [c, `/${baseline}`]))];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const metric of [...new Set(rows.map((r) => r.metric))]) {
    const base = rows.find((r) => r.metric === metric && r.config === baseline);
    const cells = [`${metric} (${rows.find((r) => r.metric === metric)!.unit})`];
    for (const c of configs) {
      const r = rows.find((x) => x.metric === metric && x.config === c);
      cells.push(r ? `${fmt(r.median)} [${fmt(r.min)}–${fmt(r.max)}]` : '–');
      if (c !== baseline) cells.push(r && base ? (r.median / base.median).toFixed(2) : '–');
    }
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** The metrics of the suspects table (bench/peers --suspects). */
export const SUSPECT_METRICS = ['tcp_rr_p50', 'tcp_rr_rate', 'tcp_crr_rate', 'tcp_throughput', 'tcp_throughput_8streams'] as const;

/**
 * One line per config (the suspects table): for each metric the median
 * [min–max] and its ratios to both baselines, e.g. clustermesh and limit.
 */
export function configTable(rows: readonly Row[], metrics: readonly string[], baselines: readonly [string, string]): string {
  const configs = [...new Set(rows.map((r) => r.config))];
  const head = ['config', ...metrics.flatMap((m) => [`${m} (${rows.find((r) => r.metric === m)?.unit ?? ''})`, `/${baselines[0]}`, `/${baselines[1]}`])];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const c of configs) {
    const cells = [`\`${c}\``];
    for (const m of metrics) {
      const r = rows.find((x) => x.config === c && x.metric === m);
      cells.push(r ? `${fmt(r.median)} [${fmt(r.min)}–${fmt(r.max)}]` : '–');
      for (const b of baselines) {
        const base = rows.find((x) => x.config === b && x.metric === m);
        cells.push(r && base && c !== b ? (r.median / base.median).toFixed(2) : '–');
      }
    }
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Writes <dir>/<name>-<metric>.svg for every metric of rows; returns the files. */
export function writeCharts(name: string, rows: readonly Row[], baseline: string, dir = resultsDir): string[] {
  const files: string[] = [];
  for (const metric of [...new Set(rows.map((r) => r.metric))]) {
    const file = join(dir, `${name}-${metric}.svg`);
    writeFileSync(file, barChartSvg(metric, rows, baseline));
    files.push(file);
  }
  return files;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const file = process.argv[2] ?? join(resultsDir, 'peers.json');
  const data = JSON.parse(readFileSync(file, 'utf8')) as { bench: string; rows: Row[] };
  if (data.bench === 'peers-suspects') {
    console.log(configTable(data.rows, SUSPECT_METRICS, ['clustermesh', 'limit']));
    process.exit(0);
  }
  for (const f of writeCharts(data.bench, data.rows, 'limit')) console.log(`wrote ${f}`);
  console.log(markdownTable(data.rows, 'limit'));
}
