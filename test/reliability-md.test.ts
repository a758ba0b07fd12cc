// RELIABILITY.md is what scripts/reliability.ts writes from the committed
// bench/results/reliability.json, nothing edited by hand (issue 17, as issue 20
// asks of BENCHMARKS.md).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { reliabilityMarkdown, type ReliabilityDoc } from '../src/lab/chaos.ts';

const ROOT = resolve(import.meta.dirname, '..');

test('RELIABILITY.md is generated from bench/results/reliability.json', () => {
  const json = resolve(ROOT, 'bench/results/reliability.json');
  const md = resolve(ROOT, 'RELIABILITY.md');
  assert.equal(existsSync(json), existsSync(md), 'both files or neither');
  if (!existsSync(json)) return;
  const doc = JSON.parse(readFileSync(json, 'utf8')) as ReliabilityDoc;
  assert.equal(readFileSync(md, 'utf8'), reliabilityMarkdown(doc), 'regenerate with: node --import tsx scripts/reliability.ts --markdown (the text), or npm run chaos (the data)');
});
