// BENCHMARKS.md's tables against the committed results files (issue 20): every
// table with figures names its file in a comment right above it,
//   <!-- results: bench/results/datapath.json -->
// and every figure in its cells (after the first column, which names the metric)
// must be a median, min or max of that file, or a ratio of two medians of the
// same metric, at the precision the table shows. A table with figures and no
// such comment fails, as does a figure no row of the file gives. Only a table
// that describes configurations ('what it is') may say <!-- results: none -->.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');

interface Row {
  config: string;
  metric: string;
  median: number;
  min: number;
  max: number;
  params?: Record<string, unknown>;
}

interface Table {
  line: number;
  source: string | undefined;
  rows: string[][];
}

/** The markdown tables of `md` with the results comment (if any) right above each. */
export function tablesOf(md: string): Table[] {
  const lines = md.split('\n');
  const tables: Table[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i]!.startsWith('|') || !/^\|[-| :]+\|$/.test(lines[i + 1] ?? '')) continue;
    let j = i - 1;
    while (j >= 0 && lines[j]!.trim() === '') j--;
    const source = /^<!-- results: (\S+) -->$/.exec(lines[j] ?? '')?.[1];
    const rows: string[][] = [];
    let k = i + 2;
    for (; k < lines.length && lines[k]!.startsWith('|'); k++) rows.push(lines[k]!.split('|').slice(1, -1).map((c) => c.trim()));
    tables.push({ line: i + 1, source, rows });
    i = k;
  }
  return tables;
}

/** The figures of a cell: numbers with optional thousands separators, not inside backticks. */
export function figuresOf(cell: string): string[] {
  return [...cell.replace(/`[^`]*`/g, '').matchAll(/(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])\d+(?:\.\d+)?(?![\w])/g)].map((m) => m[0]);
}

/** Every value the file gives: medians, mins, maxes, ratios of medians of one metric. */
function valuesOf(rows: Row[]): number[] {
  const out: number[] = [];
  for (const r of rows) out.push(r.median, r.min, r.max);
  for (const a of rows) {
    for (const b of rows) {
      if (a !== b && a.metric === b.metric && b.median !== 0) out.push(a.median / b.median);
    }
  }
  return out;
}

/** `shown` is `v` at the table's precision (its decimals; a whole number may round half either way). */
function shows(shown: string, v: number): boolean {
  const s = shown.replace(/,/g, '');
  const decimals = s.includes('.') ? s.split('.')[1]!.length : 0;
  const x = Number(s);
  const step = 10 ** -decimals;
  return Math.abs(v - x) <= step / 2 + 1e-9;
}

test('tablesOf and figuresOf read what a table shows', () => {
  const md = ['text', '<!-- results: bench/results/x.json -->', '', '| metric | a | b |', '|---|---|---|', '| tcp_rr_p50 (µs) | 31.1 [28.2–34.4] | 29,606 |', '', '| c | d |', '|---|---|', '| `limit` | 1.5 |'].join('\n');
  const t = tablesOf(md);
  assert.equal(t.length, 2);
  assert.equal(t[0]!.source, 'bench/results/x.json');
  assert.equal(t[1]!.source, undefined);
  assert.deepEqual(figuresOf(t[0]!.rows[0]![1]!), ['31.1', '28.2', '34.4']);
  assert.deepEqual(figuresOf(t[0]!.rows[0]![2]!), ['29,606']);
  assert.ok(shows('29,606', 29606.4) && !shows('29,606', 29607) && shows('0.85', 0.8549) && !shows('0.85', 0.8561));
});

test('every figure in a table of BENCHMARKS.md comes from the results file the table names', () => {
  const md = readFileSync(join(ROOT, 'BENCHMARKS.md'), 'utf8');
  const problems: string[] = [];
  for (const t of tablesOf(md)) {
    const cells = t.rows.flatMap((r) => r.slice(1));
    const figures = cells.flatMap(figuresOf);
    if (figures.length === 0) continue;
    // A table that describes configurations (ports, MTUs) says so: <!-- results: none -->.
    if (t.source === 'none' && /what it is/.test(md.split('\n')[t.line - 1]!)) continue;
    if (t.source === undefined || t.source === 'none') {
      problems.push(`BENCHMARKS.md:${t.line}: a table with figures names no results file (<!-- results: bench/results/NAME.json --> above it)`);
      continue;
    }
    const file = join(ROOT, t.source);
    if (!t.source.startsWith('bench/results/') || !existsSync(file)) {
      problems.push(`BENCHMARKS.md:${t.line}: ${t.source} is not a committed file under bench/results/`);
      continue;
    }
    const values = valuesOf((JSON.parse(readFileSync(file, 'utf8')) as { rows: Row[] }).rows);
    for (const r of t.rows) {
      for (const f of r.slice(1).flatMap(figuresOf)) {
        if (!values.some((v) => shows(f, v))) problems.push(`BENCHMARKS.md:${t.line}: ${f} (row '${r[0]}') is in no row of ${t.source}`);
      }
    }
  }
  assert.deepEqual(problems, []);
});
