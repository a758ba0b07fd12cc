// Policy computes verdicts; only the datapath knows bytes (issue 12). No file
// under src/policy/ may import from src/datapath/, not even a type: the agent
// and the datapath (src/datapath/maps/policy-entries.ts) turn verdicts into
// map entries.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const POLICY_DIR = dirname(fileURLToPath(import.meta.url));
const DATAPATH_DIR = resolve(POLICY_DIR, '..', 'datapath');

/** Module specifiers of static imports, re-exports and dynamic imports. */
function importSpecifiers(source: string): string[] {
  const out: string[] = [];
  const patterns = [
    /\b(?:import|export)\s+(?:type\s+)?(?:[\w*{}\s,$]+?\s+from\s+)?['"]([^'"]+)['"]/g,
    /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
    /\brequire\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const re of patterns) for (const m of source.matchAll(re)) out.push(m[1]!);
  return out;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.(ts|mts|cts|js|mjs)$/.test(e.name) ? [p] : [];
  });
}

test('import scanner sees every form of import', () => {
  const src = [
    "import type * as m from '../datapath/maps/policy.ts';",
    "import { a, type B } from '../datapath/x.ts';",
    "export { c } from \"../datapath/y.ts\";",
    "export * from '../datapath/z.ts';",
    "import '../datapath/side-effect.ts';",
    "const d = await import('../datapath/dyn.ts');",
  ].join('\n');
  assert.deepEqual(importSpecifiers(src), ['../datapath/maps/policy.ts', '../datapath/x.ts', '../datapath/y.ts', '../datapath/z.ts', '../datapath/side-effect.ts', '../datapath/dyn.ts']);
});

test('no file under src/policy imports from src/datapath', () => {
  // This file's own samples above are strings, not imports.
  const files = sourceFiles(POLICY_DIR).filter((f) => f !== fileURLToPath(import.meta.url));
  assert.ok(files.length > 5, `found the policy sources (${files.length})`);
  const offenders: string[] = [];
  for (const f of files) {
    for (const spec of importSpecifiers(readFileSync(f, 'utf8'))) {
      if (!spec.startsWith('.')) continue;
      const target = resolve(dirname(f), spec);
      if (target === DATAPATH_DIR || target.startsWith(DATAPATH_DIR + '/')) offenders.push(`${relative(POLICY_DIR, f)} imports ${spec}`);
    }
  }
  assert.deepEqual(offenders, [], 'src/policy must not import src/datapath (turn verdicts into map entries in src/datapath or the agent)');
});
