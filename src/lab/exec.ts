// Running commands for the test bed: `ip`, `tc`, programs inside namespaces.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { inCgroup } from './cgroup.ts';

export class CommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(`command failed (exit ${code}): ${argv.join(' ')}${stderr ? `\n${stderr.trim()}` : ''}`);
    this.name = 'CommandError';
  }
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/** Runs argv[0] with the rest as arguments; rejects with CommandError on a non-zero exit. */
export function run(argv: readonly string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error('run: empty command');
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 60_000, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err) {
          const code = typeof (err as NodeJS.ErrnoException & { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : null;
          reject(new CommandError(argv, code, stderr || err.message));
        } else resolve({ stdout, stderr });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Runs a command inside a network namespace (and, with `cgroup`, in that cgroup: a node's pods, src/lab/cgroup.ts). */
export function runIn(netns: string, argv: readonly string[], opts: { input?: string; timeoutMs?: number; cgroup?: string | undefined } = {}): Promise<RunResult> {
  return run(inCgroup(opts.cgroup, ['ip', 'netns', 'exec', netns, ...argv]), opts);
}

/** Runs `ip -batch -` inside a namespace (or the root namespace when netns is undefined). */
export function ipBatch(netns: string | undefined, lines: readonly string[]): Promise<RunResult> {
  const argv = netns === undefined ? ['ip', '-batch', '-'] : ['ip', '-n', netns, '-batch', '-'];
  return run(argv, { input: lines.join('\n') + '\n' });
}

/** Starts a long-running process inside a namespace (and `cgroup`, as runIn); the caller owns the child and must stop it. */
export function spawnIn(netns: string, argv: readonly string[], opts: { logFd?: number; env?: NodeJS.ProcessEnv; cgroup?: string | undefined } = {}): ChildProcess {
  const out = opts.logFd ?? 'ignore';
  const [cmd, ...args] = inCgroup(opts.cgroup, ['ip', 'netns', 'exec', netns, ...argv]);
  return spawn(cmd!, args, {
    stdio: ['ignore', out, out],
    env: opts.env ?? process.env,
  });
}

/** Stops a child we started: SIGTERM, then SIGKILL after graceMs. Resolves when it has exited. */
export async function stopChild(child: ChildProcess, graceMs = 2000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}
