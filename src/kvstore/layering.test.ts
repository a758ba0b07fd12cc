// The kvstore layer knows nothing of the mesh: no file under src/kvstore/
// imports from src/clustermesh/ (or any other layer above it). Reads the import
// lines of every file; relative imports may only reach src/kvstore/ and src/util/.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = resolve(here, '..');
const ALLOWED = ['kvstore', 'util'];

/** Module specifiers of every import/export-from/dynamic import in `text`. */
export function importSpecifiers(text: string): string[] {
  const out: string[] = [];
  const re = /(?:^|[\s;])(?:import|export)\s[^'"`;]*?from\s*['"]([^'"]+)['"]|(?:^|[\s;(])import\s*\(\s*['"]([^'"]+)['"]\s*\)|^\s*import\s*['"]([^'"]+)['"]/gm;
  for (const m of text.matchAll(re)) out.push((m[1] ?? m[2] ?? m[3])!);
  return out;
}

test('importSpecifiers finds static, side-effect and dynamic imports', () => {
  // Quotes come from `q`, so that this file's own text holds no such import.
  const q = "'";
  const text = [
    `import { a } from ${q}./a.ts${q};`,
    `import type {\n  B,\n} from ${q}../clustermesh/keys.ts${q};`,
    `export { c } from ${q}./c.ts${q};`,
    `import ${q}./side.ts${q};`,
    `const m = await import(${q}../clustermesh/x.ts${q});`,
  ].join('\n');
  assert.deepEqual(importSpecifiers(text), ['./a.ts', '../clustermesh/keys.ts', './c.ts', './side.ts', '../clustermesh/x.ts']);
});

test('src/kvstore imports nothing from src/clustermesh (or any layer above it)', () => {
  const offenders: string[] = [];
  for (const file of readdirSync(here).filter((f) => f.endsWith('.ts'))) {
    for (const spec of importSpecifiers(readFileSync(join(here, file), 'utf8'))) {
      if (!spec.startsWith('.')) continue; // node: builtins and packages
      const layer = relative(src, resolve(here, spec)).split('/')[0] ?? '';
      if (!ALLOWED.includes(layer)) offenders.push(`src/kvstore/${file} imports ${spec} (layer ${layer})`);
    }
  }
  assert.deepEqual(offenders, [], `the kvstore layer reaches up:\n${offenders.join('\n')}`);
});
