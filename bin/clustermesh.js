#!/usr/bin/env node
// The `clustermesh` executable. Runs the compiled JavaScript in dist/js/
// (built from src/ by scripts/setup.sh) and only what the command needs:
//   clustermesh cni                       -> dist/js/cni.js (runs the CNI plugin executable, cni/build/clustermesh-cni)
//   clustermesh lab workload echo|client  -> dist/js/workload.js (what lab pods run)
//   clustermesh lab kube-api-endpoint|kubelet|kube-apiserver, lab workload dns
//                                         -> dist/js/labproc.js (the processes `lab up` starts; src/lab/proc-main.ts)
//   clustermesh --version                 -> package.json's version, nothing loaded
//   clustermesh --help (-h, help)         -> dist/js/help.json: what the full CLI prints, rendered by it at
//                                            build time (scripts/build.mjs); test/cli-start.test.ts compares
//   anything else                         -> dist/js/main.js (commands load their code when they run)
// When dist/ is missing or older than src/, it runs src/ through tsx instead
// (slow, never stale) and says so on a terminal; ./scripts/setup.sh rebuilds.
//
// This file is CommonJS (bin/package.json): --version and --help then never
// start Node's ES module loader, about 13 ms of CPU of a start; the commands
// load dist/js/ (ES modules) with import().
'use strict';
const { readFileSync } = require('node:fs');
const { join } = require('node:path');
const { pathToFileURL } = require('node:url');

const argv = process.argv.slice(2);
if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
  // What the full CLI prints too (src/cli/main.ts reads the same field): nothing to load, not even tsx.
  process.stdout.write(`${JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')).version}\n`);
} else {
  // Loaded only past --version, which needs nothing of it.
  const dist = require('./dist.js');
  const help = argv.length === 1 && (argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') ? builtHelp(dist) : undefined;
  if (help !== undefined) process.stdout.write(help);
  // A rejection ends the process as an uncaught error does (exit code 1, the error on stderr).
  else void run(argv, dist);
}

/** The program's --help text from the build, for this stdout; undefined when the full CLI must render it. */
function builtHelp({ DIST, distStaleness, HELP_FILE }) {
  if (distStaleness()) return undefined;
  let h;
  try {
    h = JSON.parse(readFileSync(join(DIST, HELP_FILE), 'utf8'));
  } catch {
    return undefined;
  }
  // What commander wraps at: the terminal's width, 80 columns when stdout is no terminal.
  const width = process.stdout.isTTY ? process.stdout.columns : undefined;
  if (width === undefined || width === 80) return h.narrow;
  return width >= h.wideFrom ? h.wide : undefined;
}

async function run(argv, { distStaleness }) {
  // dist/ is minified: stack traces (CLUSTERMESH_DEBUG) read the source maps beside it.
  if (process.env.CLUSTERMESH_DEBUG) process.setSourceMapsEnabled(true);
  const stale = distStaleness();
  if (stale) {
    if (process.stderr.isTTY) process.stderr.write(`clustermesh: running src/ through tsx (slow start): ${stale}; rebuild with ./scripts/setup.sh\n`);
    const { register } = await import('tsx/esm/api');
    register();
  }
  const load = (entry, src) => import(pathToFileURL(join(__dirname, '..', stale ? `src/${src}` : `dist/js/${entry}.js`)).href);

  let done = false;
  if (argv[0] === 'cni' && argv.length === 1) {
    done = await (await load('cni', 'cni/main.ts')).main(argv);
  } else if (argv[0] === 'lab' && argv[1] === 'workload' && (argv[2] === 'echo' || argv[2] === 'client')) {
    // false: --help, or flags it does not take; the full CLI explains.
    done = await (await load('workload', 'lab/workload-main.ts')).main(argv.slice(2));
  } else if (argv[0] === 'lab' && (['kube-api-endpoint', 'kubelet', 'kube-apiserver'].includes(argv[1]) || (argv[1] === 'workload' && argv[2] === 'dns'))) {
    // false: --help, or flags it does not take exactly; the full CLI explains.
    done = await (await load('labproc', 'lab/proc-main.ts')).main(argv.slice(1));
  }
  if (!done) await (await load('main', 'cli/main.ts')).main(process.argv);
}
