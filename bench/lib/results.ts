// Shared helpers of the benchmarks: statistics, the machine description and
// the results file of ../shared/design/BENCH-RESULTS.md.
import { readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface Row {
  config: string;
  metric: string;
  unit: string;
  median: number;
  min: number;
  max: number;
  n: number;
  params: Record<string, unknown>;
}

export interface Sample {
  config: string;
  metric: string;
  unit: string;
  rep: number;
  value: number;
  params?: Record<string, unknown>;
}

export const resultsDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'results');

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const idx = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[idx]!;
}

/** Groups raw samples by (config, metric, params) into rows with median, min and max. */
export function summarize(samples: readonly Sample[]): Row[] {
  const groups = new Map<string, Sample[]>();
  for (const s of samples) {
    const k = JSON.stringify([s.config, s.metric, s.params ?? {}]);
    groups.set(k, [...(groups.get(k) ?? []), s]);
  }
  return [...groups.values()].map((g) => {
    const v = g.map((s) => s.value);
    const first = g[0]!;
    return { config: first.config, metric: first.metric, unit: first.unit, median: round(median(v)), min: round(Math.min(...v)), max: round(Math.max(...v)), n: v.length, params: first.params ?? {} };
  });
}

const round = (x: number): number => Math.round(x * 1000) / 1000;

export function machine(mtu: number): { kernel: string; cpus: number; cpuModel: string; mtu: number } {
  return { kernel: release(), cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', mtu };
}

export function writeResults(name: string, rows: Row[], samples: readonly Sample[], mtu: number): string {
  mkdirSync(resultsDir, { recursive: true });
  const file = join(resultsDir, `${name}.json`);
  writeFileSync(file, JSON.stringify({ bench: name, when: new Date().toISOString().replace(/\.\d+Z$/, 'Z'), machine: machine(mtu), rows }, null, 2) + '\n');
  const csv = ['config,metric,unit,rep,value,params', ...samples.map((s) => `${s.config},${s.metric},${s.unit},${s.rep},${s.value},"${JSON.stringify(s.params ?? {}).replace(/"/g, '""')}"`)];
  writeFileSync(join(resultsDir, `${name}.csv`), csv.join('\n') + '\n');
  return file;
}

/** Prints medians per metric with the ratio of each config to the baseline config. */
export function printTable(rows: readonly Row[], baseline: string): void {
  const metrics = [...new Set(rows.map((r) => r.metric))];
  const configs = [...new Set(rows.map((r) => r.config))];
  const head = ['metric', 'unit', ...configs.flatMap((c) => (c === baseline ? [c] : [c, `/${baseline}`]))];
  const lines = [head];
  for (const m of metrics) {
    const base = rows.find((r) => r.metric === m && r.config === baseline);
    const unit = rows.find((r) => r.metric === m)?.unit ?? '';
    const cells = [m, unit];
    for (const c of configs) {
      const r = rows.find((x) => x.metric === m && x.config === c);
      cells.push(r ? `${r.median} [${r.min}-${r.max}]` : '-');
      if (c !== baseline) cells.push(r && base ? (r.median / base.median).toFixed(2) : '-');
    }
    lines.push(cells);
  }
  const widths = head.map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length)));
  for (const l of lines) console.log(l.map((c, i) => c.padEnd(widths[i]!)).join('  '));
}

export function readJson<T>(file: string): T {
  return JSON.parse(readFileSync(file, 'utf8')) as T;
}
