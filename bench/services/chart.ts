// The service-scale curve as plain SVG (no dependency): connection setup
// latency against the number of services, both axes logarithmic, one line
// per config at the median with a whisker from min to max. Usage, to redraw
// from a results file:
//   node --import tsx bench/services/chart.ts [bench/results/services.json]
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { resultsDir, type Row } from '../lib/results.ts';

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd'];
const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const fmt = (v: number): string => (v >= 1000 ? Math.round(v).toLocaleString('en-US') : v >= 10 ? v.toFixed(0) : v.toFixed(1));

export function scaleCurveSvg(rows: readonly Row[], metric: string): string {
  const points = rows.filter((r) => r.metric === metric && typeof r.params?.services === 'number');
  if (!points.length) throw new Error(`services chart: no rows for metric '${metric}' with params.services`);
  const configs = [...new Set(points.map((r) => r.config))];
  const ns = [...new Set(points.map((r) => r.params!.services as number))].sort((a, b) => a - b);
  const W = 640;
  const H = 400;
  const L = 80;
  const R = 190;
  const T = 50;
  const B = 50;
  const lo = Math.min(...points.map((r) => r.min));
  const hi = Math.max(...points.map((r) => r.max));
  const y0 = Math.floor(Math.log10(lo));
  const y1 = Math.ceil(Math.log10(hi));
  const x0 = Math.log10(Math.max(1, ns[0]!));
  const x1 = Math.log10(ns[ns.length - 1]!);
  const x = (n: number): number => L + ((Math.log10(Math.max(1, n)) - x0) / (x1 - x0 || 1)) * (W - L - R);
  const y = (v: number): number => T + (1 - (Math.log10(v) - y0) / (y1 - y0 || 1)) * (H - T - B);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">${esc(metric)} (${esc(points[0]!.unit)}) against the number of services</text>`,
    `<text x="10" y="37" fill="#555">median of ${points[0]!.n} run${points[0]!.n === 1 ? '' : 's'}, whisker min–max; both axes logarithmic; lower is better</text>`,
  ];
  for (let e = y0; e <= y1; e++) {
    const v = 10 ** e;
    out.push(`<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`, `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${fmt(v)}</text>`);
  }
  for (const n of ns) out.push(`<line x1="${x(n)}" x2="${x(n)}" y1="${T}" y2="${H - B}" stroke="#eee"/>`, `<text x="${x(n)}" y="${H - B + 16}" text-anchor="middle">${n.toLocaleString('en-US')}</text>`);
  out.push(`<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">services</text>`);
  configs.forEach((config, i) => {
    const color = COLORS[i % COLORS.length]!;
    const series = points.filter((r) => r.config === config).sort((a, b) => (a.params!.services as number) - (b.params!.services as number));
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${series.map((r) => `${x(r.params!.services as number)},${y(r.median)}`).join(' ')}"/>`);
    for (const r of series) {
      const cx = x(r.params!.services as number);
      out.push(
        `<line x1="${cx}" x2="${cx}" y1="${y(r.min)}" y2="${y(r.max)}" stroke="${color}"/>`,
        `<circle cx="${cx}" cy="${y(r.median)}" r="3.5" fill="${color}"><title>${esc(config)} at ${r.params!.services}: ${fmt(r.median)} ${esc(r.unit)}</title></circle>`,
      );
    }
    const last = series[series.length - 1]!;
    out.push(`<text x="${W - R + 10}" y="${y(last.median) + 4}" fill="${color}">${esc(config)} ${fmt(last.median)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

/** Writes <dir>/<name>-<metric>.svg for the connection-setup metrics; returns the files. */
export function writeScaleCharts(name: string, rows: readonly Row[], dir = resultsDir): string[] {
  return ['conn_setup_p50', 'conn_setup_p99']
    .filter((m) => rows.some((r) => r.metric === m))
    .map((m) => {
      const file = join(dir, `${name}-${m}.svg`);
      writeFileSync(file, scaleCurveSvg(rows, m));
      return file;
    });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const file = process.argv[2] ?? join(resultsDir, 'services.json');
  const data = JSON.parse(readFileSync(file, 'utf8')) as { bench: string; rows: Row[] };
  for (const f of writeScaleCharts(data.bench, data.rows)) console.log(`wrote ${f}`);
}
