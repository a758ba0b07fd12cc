// Long-running programs of the test bed (apiservers, agents) started inside a
// namespace with their own log file, tracked by pid. A process is only ever
// signalled through the handle that started it; nothing is found by name.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readSync, fstatSync } from 'node:fs';
import { heldArgv, recordThenRelease } from '../util/held-start.ts';

export interface ManagedProcessSpec {
  /** Shown in errors and progress, e.g. 'agent cluster1/node2'. */
  name: string;
  /** Network namespace to run in (`ip netns exec`); undefined for this one. */
  netns?: string;
  argv: readonly string[];
  /** stdout and stderr go here (appended). */
  logFile: string;
  env?: NodeJS.ProcessEnv;
  /** Killed (SIGKILL) by the kernel when this process dies, so a crashed test
   * leaves no agent behind (setpriv --pdeathsig). Default true. */
  dieWithParent?: boolean;
  /** Outlive this process (the lab's `up`): own session (setsid), not killed when
   * this process exits, no pdeathsig. Stop it later by its pid. Default false. */
  detached?: boolean;
  /** File descriptors of this process passed on as fds 3, 4, ... (e.g. a listening socket). */
  extraFds?: number[];
  /**
   * Called with the pid after the spawn and before the program runs (e.g. to
   * write the pid into the lab's state): until it returns the child is held
   * (src/util/held-start.ts), so a starter killed in between leaves no
   * program running unrecorded. When it throws, the child is killed and
   * start() rejects with its error.
   */
  beforeRun?: (pid: number, spec: ManagedProcessSpec) => void | Promise<void>;
}

/** Environment for children: without node:test's marker, which would make a child node report as a sub-test. */
export function childEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.NODE_TEST_CONTEXT;
  return env;
}

// Every child still running when this process exits is SIGKILLed.
const live = new Set<ChildProcess>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const c of live) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
}

export class ManagedProcess {
  #child: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #starts = 0;
  /** How the last run ended, undefined while running or never started. */
  lastExit: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  constructor(readonly spec: ManagedProcessSpec) {}

  get pid(): number | undefined {
    return this.running ? this.#child?.pid : undefined;
  }

  get running(): boolean {
    const c = this.#child;
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  }

  /** How many times start() spawned it. */
  get starts(): number {
    return this.#starts;
  }

  /** Spawns the program; no-op while it runs. Rejects when it cannot be spawned. */
  async start(): Promise<void> {
    if (this.running) return;
    const { netns, argv, logFile } = this.spec;
    const detached = this.spec.detached === true;
    const wrapped = [...(this.spec.dieWithParent === false || detached ? [] : ['setpriv', '--pdeathsig', 'KILL']), ...argv];
    const inNetns = netns === undefined ? wrapped : ['ip', 'netns', 'exec', netns, ...wrapped];
    const beforeRun = this.spec.beforeRun;
    const full = beforeRun ? heldArgv(inNetns) : inNetns;
    const fd = openSync(logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(full[0]!, full.slice(1), { stdio: [beforeRun ? 'pipe' : 'ignore', fd, fd, ...(this.spec.extraFds ?? [])], env: this.spec.env ?? childEnv(), detached });
    } finally {
      closeSync(fd);
    }
    if (!detached) {
      hookExit();
      live.add(child);
    }
    this.#child = child;
    this.#starts++;
    this.lastExit = undefined;
    this.#exited = new Promise<void>((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null): void => {
        live.delete(child);
        if (this.#child === child) this.lastExit = { code, signal };
        resolve();
      };
      child.once('exit', done);
      child.once('error', () => done(null, null));
    });
    // `ip netns exec`, setpriv and the hold exec the program: the pid is the program's own.
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', (err) => reject(new Error(`${this.spec.name}: cannot start ${full[0]}: ${err.message}`)));
    });
    if (beforeRun) {
      try {
        await recordThenRelease(child, (pid) => beforeRun(pid, this.spec));
      } catch (err) {
        await this.#exited;
        throw err;
      }
    }
    // Outliving this process: not what keeps it alive (kill() and stop() hold on again while they wait).
    if (detached) child.unref();
  }

  /** Resolves when the current run has ended. */
  exited(): Promise<void> {
    return this.#exited;
  }

  /** SIGKILL, and wait for the exit. No-op when not running. */
  async kill(): Promise<void> {
    if (!this.running) return;
    this.#child!.ref();
    this.#child!.kill('SIGKILL');
    await this.#exited;
  }

  /** SIGTERM, SIGKILL after graceMs; resolves when it has exited. No-op when not running. */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.running) return;
    const child = this.#child!;
    child.ref();
    child.kill('SIGTERM');
    const timer = setTimeout(() => {
      if (this.running && this.#child === child) child.kill('SIGKILL');
    }, graceMs);
    await this.#exited;
    clearTimeout(timer);
  }

  /** For error messages: pid or how it ended, where its log is, and (with tailLines) the log's last lines. */
  describe(tailLines = 0): string {
    const state = this.running
      ? `running as pid ${this.pid}`
      : this.lastExit
        ? `exited (code ${this.lastExit.code}, signal ${this.lastExit.signal})`
        : 'not running';
    const tail = tailLines > 0 ? this.tail(tailLines) : '';
    return `${this.spec.name}: ${state}; log ${this.spec.logFile}${tail ? `\n  ${tail.split('\n').join('\n  ')}` : ''}`;
  }

  /** The last lines of the log (at most 8 KiB of it). */
  tail(lines: number): string {
    let fd: number | undefined;
    try {
      fd = openSync(this.spec.logFile, 'r');
      const size = fstatSync(fd).size;
      const len = Math.min(size, 8192);
      const buf = Buffer.alloc(len);
      readSync(fd, buf, 0, len, size - len);
      return buf.toString('utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
}
