// Where the compiled CLI lives and whether it is current: shared by
// bin/clustermesh.js (every start: a cheap mtime check) and scripts/build.mjs
// (the setup step: a content hash decides whether to rebuild).
//
// dist/js/ is two levels below the repository root on purpose: modules find
// the repository (bin/, examples/, bpf/) at import.meta.dirname/../.., as
// they do from src/<dir>/ when run through tsx.
//
// CommonJS (bin/package.json), as bin/clustermesh.js: `--help` loads this
// without starting Node's ES module loader.
'use strict';
const { readdirSync, readFileSync, statSync } = require('node:fs');
const { join } = require('node:path');

const ROOT = join(__dirname, '..');
const DIST = join(ROOT, 'dist', 'js');
const STAMP = join(DIST, 'BUILD.json');
/** In DIST: what `clustermesh --help` prints, rendered at build time by the program built (scripts/build.mjs). */
const HELP_FILE = 'help.json';

const isSource = (name) => name.endsWith('.ts') && !name.endsWith('.test.ts') && !name.endsWith('.test-helper.ts');

/**
 * What the build depends on, relative to the root: the directories under src/
 * and the sources in them (tests and test helpers excluded), plus the build
 * script and package-lock.json (the bundler's version).
 */
function buildInputs() {
  const dirs = [];
  const files = ['package-lock.json', 'scripts/build.mjs'];
  const walk = (rel) => {
    dirs.push(rel);
    for (const e of readdirSync(join(ROOT, rel), { withFileTypes: true })) {
      if (e.isDirectory()) walk(`${rel}/${e.name}`);
      else if (isSource(e.name)) files.push(`${rel}/${e.name}`);
    }
  };
  walk('src');
  return { dirs: dirs.sort(), files: files.sort() };
}

/** The stamp the last build or check wrote: { hash, checkedMs, dirs, files }, or undefined. */
function readStamp() {
  try {
    return JSON.parse(readFileSync(STAMP, 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Why dist/ cannot be used ('' when it can): not built, or an input (or a
 * directory of them: a file added, removed or renamed) changed after the last
 * build or check. Only stats what the stamp lists, so it costs about a
 * millisecond. An edit always moves an mtime, so old code is never run; a
 * touch without a change only costs tsx starts until the setup step rechecks
 * the content hash.
 */
function distStaleness() {
  const stamp = readStamp();
  if (!stamp || typeof stamp.checkedMs !== 'number' || !Array.isArray(stamp.files) || !Array.isArray(stamp.dirs)) return 'dist/ is not built';
  // Plain string concatenation: a loop of path.join() gets optimized by V8,
  // and the optimizing compiler's pages stay resident in every pod (+4 MB).
  const base = ROOT + '/';
  for (const list of [stamp.dirs, stamp.files]) {
    for (let i = 0; i < list.length; i++) {
      let m;
      try {
        m = statSync(base + list[i]).mtimeMs;
      } catch {
        return `${list[i]} is gone`;
      }
      if (m > stamp.checkedMs) return `${list[i]} changed after the last build`;
    }
  }
  return '';
}

module.exports = { ROOT, DIST, STAMP, HELP_FILE, buildInputs, readStamp, distStaleness };
