// Writes bench/results/reliability.json and RELIABILITY.md from the results
// the fault suite collected (one JSON object per line). Used by scripts/chaos.sh.
// `reliability.ts --markdown` rewrites RELIABILITY.md from the committed
// bench/results/reliability.json alone (after a change of the text, not the data).
import { readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { reliabilityMarkdown, type ReliabilityDoc, type ScenarioResult } from '../src/lab/chaos.ts';

const root = resolve(import.meta.dirname, '..');
const file = process.argv[2];
if (!file) {
  console.error('usage: reliability.ts RESULTS.jsonl | --markdown');
  process.exit(2);
}
if (file === '--markdown') {
  const doc = JSON.parse(readFileSync(resolve(root, 'bench/results/reliability.json'), 'utf8')) as ReliabilityDoc;
  writeFileSync(resolve(root, 'RELIABILITY.md'), reliabilityMarkdown(doc));
  console.log('reliability: RELIABILITY.md rewritten from bench/results/reliability.json');
  process.exit(0);
}
const results = readFileSync(file, 'utf8')
  .split('\n')
  .filter((l) => l.trim() !== '')
  .map((l) => JSON.parse(l) as ScenarioResult);
if (results.length === 0) {
  console.error('reliability: no scenario results; nothing written');
  process.exit(1);
}
const doc = { date: new Date().toISOString(), loadAverage1m: Number(loadavg()[0]!.toFixed(1)), results };
writeFileSync(resolve(root, 'bench/results/reliability.json'), `${JSON.stringify(doc, null, 2)}\n`);
writeFileSync(resolve(root, 'RELIABILITY.md'), reliabilityMarkdown(doc));
console.log(`reliability: ${results.length} scenarios written to bench/results/reliability.json and RELIABILITY.md`);
