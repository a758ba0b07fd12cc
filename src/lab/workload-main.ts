// `clustermesh lab workload echo|client`: what lab pods run. bin/clustermesh.js
// calls main() directly, so neither loads the CLI framework; src/cli/lab.ts
// defines the same flags for --help and runs the same functions. Parsers throw
// plain Errors (lab.ts turns them into usage errors). The echo server itself is
// a C program (src/lab/echo-c, ECHO_BIN): lab pods exec it directly (the
// `clustermesh` wrapper on their PATH, lab.ts); from here it runs as a child.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';

/** The echo server executable, built by scripts/setup.sh (`make -C src/lab/echo-c`) into dist/lab/. */
export const ECHO_BIN = resolve(import.meta.dirname, '..', '..', 'dist', 'lab', 'clustermesh-echo');

/** ECHO_BIN's argv for o, the flags it takes as they are. */
export function echoArgv(o: EchoOptions): string[] {
  return [ECHO_BIN, 'lab', 'workload', 'echo', '--port', String(o.port), '--cluster', o.cluster, '--node', o.node, '--pod', o.pod];
}

/** Throws when ECHO_BIN is not built, saying how to build it. */
export function requireEchoBin(): void {
  if (!existsSync(ECHO_BIN)) throw new Error(`the echo server executable ${ECHO_BIN} is not built; run ./scripts/setup.sh`);
}

/**
 * Node flags of the processes a lab pod runs for `lab workload client`
 * (the lab's `clustermesh` wrapper on the pods' PATH passes them; bench/startup
 * measures each). --lite-mode: no optimizing compiler and no feedback vectors
 * until a function is hot; a pod that has served traffic keeps ~7 MB less
 * (the compiler's code pages and its output), its requests run as fast (an echo
 * answer is I/O-bound). Idle, right after start, a pod keeps about as much
 * either way: most of it is the node binary's own pages, shared by every pod.
 * --no-expose-wasm: lite mode turns WebAssembly off anyway, and says so on
 * stderr unless told.
 */
export const WORKLOAD_NODE_FLAGS: readonly string[] = ['--lite-mode', '--no-expose-wasm'];

export function parsePort(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 65535) throw new Error(`must be a port number 1..65535, got '${value}'`);
  return n;
}

export function parseCount(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 1_000_000) throw new Error(`must be an integer 1..1000000, got '${value}'`);
  return n;
}

export interface EchoOptions {
  port: number;
  cluster: string;
  node: string;
  pod: string;
}

/** Defaults of echo's flags: who the server says it is comes from the pod's environment. */
export const ECHO_DEFAULTS = {
  port: 8080,
  cluster: process.env.CLUSTERMESH_CLUSTER ?? 'unknown',
  node: process.env.CLUSTERMESH_NODE ?? 'unknown',
  pod: process.env.CLUSTERMESH_POD ?? 'unknown',
} as const satisfies EchoOptions;

export interface ClientOptions {
  count: number;
  timeout: number;
  json?: boolean | undefined;
}

export const CLIENT_DEFAULTS = { count: 10, timeout: 3000 } as const;

/** Runs ECHO_BIN as a child until it exits (SIGTERM and SIGINT passed on); exits with its status. */
export async function runEcho(o: EchoOptions): Promise<void> {
  requireEchoBin();
  const [bin, ...args] = echoArgv(o);
  const child = spawn(bin!, args, { stdio: 'inherit' });
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => child.kill(sig));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((done, fail) => {
    child.once('error', fail);
    child.once('exit', (c, s) => done([c, s]));
  });
  process.exit(code ?? (signal === 'SIGTERM' || signal === 'SIGINT' ? 0 : 1));
}

/** Makes o.count requests and prints who answered; exit code 1 when none did. */
export async function runClient(url: string, o: ClientOptions): Promise<void> {
  const { httpGet } = await import('./workload.ts');
  const tally: Record<string, number> = {};
  let failures = 0;
  let lastError = '';
  const t0 = performance.now();
  for (let i = 0; i < o.count; i++) {
    try {
      const r = await httpGet(url, o.timeout);
      const who = JSON.parse(r.body.toString()) as { cluster: string; node: string; pod: string };
      const k = `${who.cluster}/${who.node}/${who.pod}`;
      tally[k] = (tally[k] ?? 0) + 1;
    } catch (err) {
      failures++;
      lastError = (err as Error).message;
    }
  }
  const ms = performance.now() - t0;
  if (o.json) {
    console.log(JSON.stringify({ url, requests: o.count, failures, tally, ...(lastError ? { lastError } : {}) }));
  } else {
    console.log(`${o.count} requests to ${url} in ${(ms / 1000).toFixed(2)} s: ${o.count - failures} answered, ${failures} failed`);
    const byCluster: Record<string, number> = {};
    for (const [k, v] of Object.entries(tally)) byCluster[k.split('/')[0]!] = (byCluster[k.split('/')[0]!] ?? 0) + v;
    for (const [k, v] of Object.entries(tally).sort()) console.log(`  ${String(v).padStart(4)}  ${k}`);
    if (Object.keys(byCluster).length) console.log(`  by cluster: ${Object.entries(byCluster).sort().map(([k, v]) => `${k} ${v}`).join(', ')}`);
    if (lastError) console.log(`  last error: ${lastError}`);
  }
  if (failures === o.count) process.exitCode = 1;
}

/**
 * The fast path: argv is ['echo' | 'client', ...flags]. Returns false, having
 * done nothing, for anything it does not take as is (--help, an unknown flag,
 * a bad value): the full CLI then explains.
 */
export async function main(argv: string[]): Promise<boolean> {
  const [which, ...args] = argv;
  let run: () => Promise<void>;
  try {
    if (which === 'echo') {
      const { values, positionals } = parseArgs({ args, strict: true, allowPositionals: true, options: { port: { type: 'string' }, cluster: { type: 'string' }, node: { type: 'string' }, pod: { type: 'string' } } });
      if (positionals.length) return false;
      const o = { ...ECHO_DEFAULTS, ...values, port: values.port === undefined ? ECHO_DEFAULTS.port : parsePort(values.port) };
      run = () => runEcho(o);
    } else if (which === 'client') {
      const { values, positionals } = parseArgs({ args, strict: true, allowPositionals: true, options: { count: { type: 'string', short: 'n' }, timeout: { type: 'string' }, json: { type: 'boolean' } } });
      if (positionals.length !== 1) return false;
      const o = { count: values.count === undefined ? CLIENT_DEFAULTS.count : parseCount(values.count), timeout: values.timeout === undefined ? CLIENT_DEFAULTS.timeout : parseCount(values.timeout), json: values.json };
      run = () => runClient(positionals[0]!, o);
    } else return false;
  } catch {
    return false;
  }
  await run();
  return true;
}
