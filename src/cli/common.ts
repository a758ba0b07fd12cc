// What the operator commands (status, inspect, observe, troubleshoot, enable,
// connect, disconnect) share: exit codes, output format, error reporting,
// repeatable flags.
//
// Exit codes (stable, for scripts):
//   0  done; everything checked is fine
//   1  done, and something checked is not fine (not ready, a check failed)
//   2  could not do it: bad flags, no such lab, unreadable file, nothing reachable
import { Command, InvalidArgumentError, Option } from 'commander';

export const EXIT_OK = 0;
export const EXIT_NOT_OK = 1;
export const EXIT_ERROR = 2;

/** An error for the user: printed as one line, exits with `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT_ERROR,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export type OutputFormat = 'text' | 'json';

export function outputOption(): Option {
  return new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text');
}

/**
 * `--lab <name>`: the lab a command works on, the same flag everywhere. `--name`
 * (what `lab` and `demo` took at first) still works as a hidden alias.
 */
export function labOption(cmd: Command, defaultName: string, description = 'the lab'): Command {
  cmd.option('--lab <name>', `${description} (alias: --name)`, defaultName);
  cmd.addOption(new Option('--name <name>').hideHelp());
  cmd.on('option:name', (v: string) => cmd.setOptionValueWithSource('lab', v, 'cli'));
  return cmd;
}

/** Collects a repeatable flag's values. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

export function parsePositiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`must be a positive integer, got '${value}'`);
  return n;
}

/** `250ms`, `15s`, `5m`, `1h` (or plain milliseconds) -> milliseconds. */
export function parseDurationFlag(value: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError(`'${value}' is not a duration (e.g. 500ms, 30s, 5m)`);
  const n = Number(m[1]) * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const)[(m[2] ?? 'ms') as 'ms' | 's' | 'm' | 'h'];
  if (!(n > 0)) throw new InvalidArgumentError(`'${value}' must be greater than zero`);
  return n;
}

/** Resources an action opened; closed before the process exits. */
export class Closer {
  private readonly fns: Array<() => unknown> = [];
  add(fn: () => unknown): void {
    this.fns.push(fn);
  }
  async closeAll(): Promise<void> {
    for (const fn of this.fns.splice(0).reverse()) {
      try {
        await fn();
      } catch {
        // closing is best effort
      }
    }
  }
}

/**
 * Wraps a command action: the action returns its exit code; a thrown error is
 * printed as `clustermesh <cmd>: <message>` and exits 2 (or the CliError's
 * code). The process exits when the action is done, so lingering gRPC or
 * keep-alive handles cannot keep it running.
 */
export function action<A extends unknown[]>(name: string, fn: (closer: Closer, ...args: A) => Promise<number | void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    // gRPC's TLS deprecation notices (server name = IP) are not the user's business.
    process.noDeprecation = true;
    const closer = new Closer();
    let code: number = EXIT_OK;
    try {
      code = (await fn(closer, ...args)) ?? EXIT_OK;
    } catch (err) {
      const e = err as Error;
      process.stderr.write(`clustermesh ${name}: ${e instanceof CliError ? e.message : e?.message ?? String(err)}\n`);
      if (process.env.CLUSTERMESH_DEBUG && !(e instanceof CliError)) process.stderr.write(`${e?.stack ?? ''}\n`);
      code = e instanceof CliError ? e.exitCode : EXIT_ERROR;
    } finally {
      await closer.closeAll();
    }
    await exitWhenFlushed(code);
  };
}

/**
 * process.exit(code) once stdout and stderr have written everything: on a
 * pipe whose reader is slow, what did not fit the pipe (64 KiB) is still
 * queued, and process.exit() drops it (`lab get pods -o json` of 200 pods
 * came out cut at 65,536 bytes).
 */
export async function exitWhenFlushed(code: number): Promise<never> {
  // A write's callback runs once it and everything before it is written (or failed: a closed pipe).
  await Promise.all([process.stdout, process.stderr].map((s) => new Promise<void>((done) => (s.writableLength > 0 && !s.destroyed ? s.write('', () => done()) : done()))));
  process.exit(code);
}

/** Flag errors (unknown option, missing value) exit 2 like other usage errors; --help exits 0. Applied to a command and all its subcommands. */
export function usageExitCodes(cmd: Command): Command {
  cmd.exitOverride((err) => {
    process.exit(err.exitCode === 0 ? EXIT_OK : EXIT_ERROR);
  });
  cmd.showHelpAfterError('(add --help for usage and an example)');
  for (const sub of cmd.commands) usageExitCodes(sub);
  return cmd;
}

/** JSON for scripts: stable key order as built, two-space indent, trailing newline. */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v), 2) + '\n');
}

/** Left-aligned columns; the last column is not padded. */
export function table(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n');
}

/** Adds an "Example:" block to a command's help. */
export function example(cmd: Command, ...lines: string[]): Command {
  return cmd.addHelpText('after', `\nExample${lines.length > 1 ? 's' : ''}:\n${lines.map((l) => `  ${l}`).join('\n')}\n`);
}
