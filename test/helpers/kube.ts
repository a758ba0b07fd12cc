// Helpers of the tests that drive the CLI, and a Kubernetes API (the lab's)
// with real kubectl: running a command, kubectl with a kubeconfig, polling.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { pollUntil } from '../../src/util/poll.ts';

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cmd` to its end (never rejects: a command that cannot start has code 1); `input` goes to its stdin. */
export function run(cmd: string, args: readonly string[], o: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { env: o.env ?? process.env, timeout: o.timeoutMs ?? 120_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr }),
    );
    if (o.input !== undefined) child.stdin!.end(o.input);
  });
}

/** A run's exit code and output, for an assertion message. */
export const show = (r: Run): string => `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

/** Asserts exit 0 and returns stdout; the failure shows the command's output. */
export async function ok(r: Run | Promise<Run>, what: string): Promise<string> {
  const x = await r;
  assert.equal(x.code, 0, `${what} failed (exit ${x.code}):\n${x.stderr}${x.stdout}`);
  return x.stdout;
}

/**
 * kubectl against `kubeconfig()` (read at each call: tests set it in before()),
 * with its discovery cache in `cacheDir()` so runs never share one.
 */
export function kubectlFor(o: { kubeconfig: () => string; cacheDir: () => string; env?: () => NodeJS.ProcessEnv; timeoutMs?: number }) {
  const env = (): NodeJS.ProcessEnv => ({ ...(o.env?.() ?? process.env), KUBECONFIG: o.kubeconfig(), KUBECACHEDIR: o.cacheDir(), KUBECTL_EXTERNAL_DIFF: '' });
  const kubectl = (...args: string[]): Promise<Run> => run('kubectl', args, { env: env(), timeoutMs: o.timeoutMs ?? 60_000 });
  const kubectlIn = (input: string, ...args: string[]): Promise<Run> => run('kubectl', args, { env: env(), input, timeoutMs: o.timeoutMs ?? 60_000 });
  const kubectlOk = (...args: string[]): Promise<string> => ok(kubectl(...args), `kubectl ${args.join(' ')}`);
  return { kubectl, kubectlIn, kubectlOk, env };
}

/** Polls `check` until it returns something other than undefined or false; its errors are retried and the last one is reported on timeout. */
export function eventually<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 60_000, intervalMs = 100): Promise<T> {
  return pollUntil(() => check(), { timeoutMs, intervalMs, describe: what });
}
