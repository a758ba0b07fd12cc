// The clustermesh executable as a user runs it, without a lab: the lazily
// loaded commands, --lab with its --name alias, and the workloads' own entry
// (bin/clustermesh.js runs them without the CLI framework; a flag it does not
// take goes to the full CLI, which explains).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { build } from 'esbuild';

const ROOT = resolve(import.meta.dirname, '..');
const CLI = resolve(ROOT, 'bin', 'clustermesh.js');
// Plain JavaScript without types: where dist/ is and whether bin/clustermesh.js uses it.
const { DIST, HELP_FILE, distStaleness } = (await import(join(ROOT, 'bin', 'dist.js'))) as { DIST: string; HELP_FILE: string; distStaleness: () => string };

function cli(args: string[], nodeArgs: string[] = []): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done, reject) => {
    const child = spawn(process.execPath, [...nodeArgs, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => done({ code, stdout, stderr }));
  });
}

test('--version, --help and a command loaded on demand with all its options', { timeout: 120_000 }, async () => {
  assert.equal((await cli(['--version'])).stdout.trim(), '0.1.0');
  const help = await cli(['--help']);
  assert.equal(help.code, 0);
  for (const c of ['demo', 'lab', 'agent', 'cni', 'status', 'inspect', 'observe', 'ui', 'troubleshoot', 'install', 'uninstall', 'enable', 'connect', 'disconnect']) assert.match(help.stdout, new RegExp(`^  ${c}\\b`, 'm'), c);
  const status = await cli(['help', 'status']);
  assert.match(status.stdout, /--wait-duration <duration>/);
  const echo = await cli(['lab', 'workload', 'echo', '--help']);
  assert.match(echo.stdout, /--port <port>\s+TCP port to listen on \(default: 8080\)/);
  assert.equal((await cli(['nosuchcommand'])).code, 1);
});

test('--lab everywhere, --name still taken by lab subcommands and demo', { timeout: 120_000 }, async () => {
  for (const args of [['lab', 'down'], ['lab', 'get'], ['demo']]) {
    const h = await cli([...args, '--help']);
    assert.match(h.stdout, /--lab <name>\s+.*\(alias: --name\)/, args.join(' '));
    assert.doesNotMatch(h.stdout, /--name <name>/, args.join(' '));
  }
  const name = `cmt-nolab-${randomBytes(3).toString('hex')}`;
  for (const flag of ['--lab', '--name']) {
    const r = await cli(['lab', 'get', 'pods', flag, name]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`no lab named ${name}; start one with: clustermesh lab up --lab ${name}`), flag);
  }
});

test('lab workload echo and client run from their own entry; bad flags get the full CLI error', { timeout: 120_000 }, async () => {
  const bad = await cli(['lab', 'workload', 'echo', '--port', '70000']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /option '--port <port>' argument '70000' is invalid\. must be a port number 1\.\.65535/);
  const unknown = await cli(['lab', 'workload', 'client']);
  assert.match(unknown.stderr, /missing required argument 'url'/);

  const port = 20000 + Math.floor(Math.random() * 20000);
  const server = spawn(process.execPath, [CLI, 'lab', 'workload', 'echo', '--port', String(port), '--cluster', 'c9', '--node', 'n9', '--pod', 'p9'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    let out = '';
    server.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const end = Date.now() + 60_000;
    while (!out.includes('listening')) {
      assert.ok(Date.now() < end && server.exitCode === null, `echo did not start: ${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.match(out, new RegExp(`echo: listening on :${port} as c9/n9/p9`));
    const c = await cli(['lab', 'workload', 'client', `http://127.0.0.1:${port}/`, '-n', '3', '--json']);
    assert.equal(c.code, 0, c.stderr);
    assert.deepEqual(JSON.parse(c.stdout), { url: `http://127.0.0.1:${port}/`, requests: 3, failures: 0, tally: { 'c9/n9/p9': 3 } });
  } finally {
    server.kill('SIGTERM');
  }
  // Nobody listens there any more: every request fails, exit 1.
  const none = await cli(['lab', 'workload', 'client', `http://127.0.0.1:${port}/`, '--count=2', '--timeout', '2000']);
  assert.equal(none.code, 1);
  assert.match(none.stdout, /2 requests to .* 0 answered, 2 failed/);
});

// What a pod start pays for: the CNI plugin's entry and the workloads' entry
// reach no package at all (zod's schemas were most of the plugin's start; the
// workloads take no CLI framework), only node: builtins and their own sources.
test('the CNI plugin and the lab workloads load no package, only node: builtins', async () => {
  for (const entry of ['src/cni/main.ts', 'src/lab/workload-main.ts', 'src/lab/workload-pod.ts']) {
    const r = await build({ absWorkingDir: ROOT, entryPoints: [entry], bundle: true, format: 'esm', platform: 'node', packages: 'external', write: false, metafile: true, outdir: 'out', logLevel: 'error' });
    const imports = Object.values(r.metafile.outputs).flatMap((o) => o.imports.map((i) => i.path));
    assert.ok(imports.some((p) => p.startsWith('node:')), `${entry}: the metafile lists its imports`);
    assert.deepEqual(imports.filter((p) => !p.startsWith('node:')), [], `${entry} imports packages`);
    const sources = Object.keys(r.metafile.inputs);
    assert.ok(sources.includes(entry) && !sources.includes('src/model/meta.ts'), `${entry}: ${sources.join(', ')}`);
  }
});

// bin/clustermesh.js answers a bare --help from dist/js/help.json (rendered at
// build time) without loading commander. Whatever it prints must be what the
// program in src/ prints, on a pipe (80 columns) and on terminals of several
// widths: a wide one gets the unwrapped text, one of neither width the full CLI.
test('--help from the build is what the program in src/ prints, at every width', { timeout: 300_000 }, async () => {
  // The reference: src/cli/main.ts through tsx, never the build.
  const src = (nodeArgs: string[]) =>
    new Promise<string>((done, reject) => {
      const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', '--input-type=module', '-e', `await (await import(${JSON.stringify(join(ROOT, 'src', 'cli', 'main.ts'))})).main([process.execPath, 'clustermesh', '--help']);`], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.once('error', reject);
      child.once('exit', (code) => (code === 0 ? done(out) : reject(new Error(`src --help: exit ${code}`))));
    });
  const terminal = (columns: number): string[] => ['--import', `data:text/javascript,Object.defineProperty(process.stdout, 'isTTY', { value: true }); process.stdout.columns = ${columns};`];
  const built = distStaleness() === '' ? (JSON.parse(readFileSync(join(DIST, HELP_FILE), 'utf8')) as { narrow: string; wide: string; wideFrom: number }) : undefined;
  const want = await src([]);
  assert.match(want, /^Usage: clustermesh \[options\] \[command\]\n/);
  for (const form of ['--help', '-h', 'help']) {
    const r = await cli([form]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, want, form);
  }
  // dist/ current (as after ./scripts/setup.sh): that was the built text, not the full CLI.
  if (built) assert.equal(built.narrow, want, 'dist/js/help.json');
  for (const columns of [80, 100, 200, ...(built ? [built.wideFrom, built.wideFrom - 1] : [])]) {
    const want = await src(terminal(columns));
    const r = await cli(['--help'], terminal(columns));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, want, `a terminal of ${columns} columns`);
    if (built && columns >= built.wideFrom) assert.equal(built.wide, want, `dist/js/help.json at ${columns} columns`);
  }
});

// A command's output on a pipe whose reader is slow: more than the pipe holds
// (64 KiB) must all arrive before the process exits (`lab get pods -o json`
// of 200 pods came out cut at 65,536 bytes).
test('a command writing 1 MiB to a slow pipe exits only after all of it is written', { timeout: 120_000 }, async () => {
  const script = `const { action } = await import(${JSON.stringify(join(ROOT, 'src', 'cli', 'common.ts'))}); await action('t', async () => { process.stdout.write('x'.repeat(1 << 20)); return 3; })();`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  child.stdout.pause();
  await new Promise((r) => setTimeout(r, 3000)); // the child has written what fits and waits
  let n = 0;
  child.stdout.on('data', (d: Buffer) => (n += d.length));
  child.stdout.resume();
  const code = await new Promise((r) => child.once('close', r));
  assert.equal(code, 3);
  assert.equal(n, 1 << 20);
});
