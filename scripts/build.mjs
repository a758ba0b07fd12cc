#!/usr/bin/env node
// Compiles src/ into dist/js/ (run by scripts/setup.sh; `--force` rebuilds
// unconditionally). Rebuilds only when the content hash of the inputs changed;
// otherwise it re-stamps dist/ as current (an mtime moved without a change).
//
// esbuild, not tsc: one bundle per entry point with shared chunks means a start
// reads a handful of files instead of resolving ~150 modules one by one, and a
// command's code is a chunk loaded by the dynamic import in its action. It takes
// well under a second, and it is the transpiler tsx already runs (same version,
// no new download). Type checking stays with `tsc --noEmit`.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';
import { buildInputs, DIST, HELP_FILE, readStamp, ROOT, STAMP } from '../bin/dist.js';

// The entry points bin/clustermesh.js loads (each exports main(argv)).
export const ENTRIES = {
  main: 'src/cli/main.ts', // the whole CLI (commands load their code when they run)
  cni: 'src/cni/main.ts', // `clustermesh cni`: runs the CNI plugin executable (cni/), without the CLI framework
  workload: 'src/lab/workload-main.ts', // `clustermesh lab workload echo|client`: what lab pods run
  labproc: 'src/lab/proc-main.ts', // `clustermesh lab kube-api-endpoint|kubelet|kube-apiserver`, `lab workload dns`: what lab up starts
};

// zod re-exports its 60-odd message locales as z.locales; nothing here uses
// them (zod itself configures English from locales/en.js), and they are a
// third of the bundle every CNI call would compile. Keep English only.
const zodEnglishOnly = {
  name: 'zod-english-only',
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (a) => (a.importer.includes('/node_modules/zod/') ? { path: 'zod-locales', namespace: 'zod-english-only' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'zod-english-only' }, () => ({ contents: "export { default as en } from 'zod/v4/locales/en.js';", resolveDir: ROOT }));
  },
};

const checkedMs = Date.now();
const inputs = buildInputs();
const h = createHash('sha256');
for (const f of inputs.files) h.update(`${f}\0`).update(readFileSync(join(ROOT, f))).update('\0');
const hash = h.digest('hex');
const stamp = readStamp();
const force = process.argv.includes('--force');

if (!force && stamp?.hash === hash) {
  writeFileSync(STAMP, JSON.stringify({ ...inputs, hash, checkedMs }) + '\n');
  process.exit(0);
}
const t0 = performance.now();
// Built beside dist/js (same depth) and swapped in by rename: a process starting
// meanwhile sees the old build or the new one, never half of one.
const next = `${DIST}.next`;
rmSync(next, { recursive: true, force: true });
mkdirSync(next, { recursive: true });
await build({
  absWorkingDir: ROOT,
  entryPoints: Object.entries(ENTRIES).map(([out, entry]) => ({ in: entry, out })),
  outdir: next,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // Pure-JS packages are bundled (one file instead of zod's hundred: module
  // resolution and loading dominate a short run); these stay in node_modules:
  // a native addon (koffi), gRPC and pino (files found at run time).
  external: ['etcd3', '@grpc/*', 'koffi', 'pino', 'pino-*', 'prom-client', 'tsx'],
  // CommonJS packages in an ES module bundle need a require().
  banner: { js: "import { createRequire as __cmCreateRequire } from 'node:module'; const require = __cmCreateRequire(import.meta.url);" },
  minify: true,
  plugins: [zodEnglishOnly],
  chunkNames: 'chunk-[hash]',
  sourcemap: 'linked',
  logLevel: 'warning',
});
// What lab pods run (src/lab/workload-pod.ts): one CommonJS file, so node
// starts it without the ES module loader (about 3 MB less resident per pod).
await build({
  absWorkingDir: ROOT,
  entryPoints: ['src/lab/workload-pod.ts'],
  outfile: join(next, 'workload-pod.cjs'),
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  // workload-main.ts's ECHO_BIN is found from its own directory (the same depth as dist/js/).
  define: { 'import.meta.dirname': '__dirname' },
  minify: true,
  logLevel: 'warning',
});
// `clustermesh --help` answered without loading the CLI (bin/clustermesh.js):
// the text the real program just built prints, rendered by it here.
writeFileSync(join(next, HELP_FILE), JSON.stringify(renderHelp(next)) + '\n');
writeFileSync(join(next, 'BUILD.json'), JSON.stringify({ ...inputs, hash, checkedMs }) + '\n');
rmSync(`${DIST}.old`, { recursive: true, force: true });
if (existsSync(DIST)) renameSync(DIST, `${DIST}.old`);
renameSync(next, DIST);
rmSync(`${DIST}.old`, { recursive: true, force: true });
console.log(`build: dist/js from ${inputs.files.length} sources in ${Math.round(performance.now() - t0)} ms`);

/**
 * What `clustermesh --help` prints, run by the program built in `dir` (its
 * main.js, as bin/clustermesh.js runs it): `narrow` for a stdout that is not a
 * terminal (commander wraps at 80 columns), `wide` for a terminal of
 * `wideFrom` columns or more (nothing wraps there, so any such width prints
 * the same). A terminal narrower than that, but not 80, gets the full CLI.
 */
function renderHelp(dir) {
  const run = (columns) => {
    // A terminal of `columns` columns, as commander sees one (it reads isTTY and columns of process.stdout).
    const tty = columns === undefined ? '' : `Object.defineProperty(process.stdout, 'isTTY', { value: true }); process.stdout.columns = ${columns};`;
    const main = JSON.stringify(new URL(`file://${join(dir, 'main.js')}`).href);
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', `${tty} await (await import(${main})).main([process.execPath, 'clustermesh', '--help']);`], { cwd: ROOT, encoding: 'utf8' });
    if (r.status !== 0 || !r.stdout) throw new Error(`build: rendering --help failed (exit ${r.status}): ${r.stderr}`);
    return r.stdout;
  };
  const wide = run(100_000);
  const wideFrom = Math.max(...wide.split('\n').map((l) => l.length));
  if (run(wideFrom) !== wide) throw new Error(`build: --help at ${wideFrom} columns differs from its unwrapped text`);
  return { narrow: run(undefined), wide, wideFrom };
}
