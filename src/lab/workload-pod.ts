// What a lab pod runs for `clustermesh lab workload echo|client` (the lab's
// `clustermesh` wrapper on the pods' PATH, lab.ts): workload-main's main()
// built as one CommonJS file, dist/js/workload-pod.cjs (scripts/build.mjs).
// Node runs it without its ES module loader and without bin/clustermesh.js's
// check of dist/ (the lab uses this file only when dist/ is current): about
// 3 MB less resident per pod (BENCHMARKS.md, startup). argv as the wrapper
// passes it: `lab workload echo|client FLAGS`.
import { dirname, join } from 'node:path';
import { main } from './workload-main.ts';

const argv = process.argv.slice(2);
void main(argv.slice(2)).then(async (done) => {
  if (done) return;
  // --help, or a flag it does not take: the full CLI explains.
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync(process.execPath, [join(dirname(process.argv[1]!), '..', '..', 'bin', 'clustermesh.js'), ...argv], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
});
