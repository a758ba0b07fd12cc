// A long, paced TCP transfer from inside a pod: paced-get.ts reads the echo
// server's /bytes?n=N at a steady rate (the sender is held back by TCP flow
// control, not by the network), so the connection stays open for about
// N / rate seconds, hashes the body to check it against the x-sha256 the
// server announced, and reports its progress as it goes.
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { childEnv } from './process.ts';

const ROOT = resolve(import.meta.dirname, '..', '..');
const PACED_GET = resolve(ROOT, 'src', 'lab', 'paced-get.ts');

export interface TransferResult {
  status: number;
  bytes: number;
  sha256: string;
  announcedSha256: string | undefined;
  ms: number;
  /** The longest time no data arrived while the reader wanted some. */
  maxStallMs: number;
  exitCode: number | null;
  /** What went wrong, '' when nothing did. */
  error: string;
}

export interface Transfer {
  /** Bytes received so far (updated every 50 ms). */
  received(): number;
  /** For error messages: bytes so far, whether the reader has ended, what it said. */
  describe(): string;
  /** Resolves when the reader ends (never rejects; see exitCode and error). */
  done: Promise<TransferResult>;
  /** Kills the reader. */
  abort(): void;
}

/** Starts `GET url` from network namespace `netns`, read at `rateBytesPerSec`. */
export function startTransfer(netns: string, url: string, opts: { rateBytesPerSec: number; idleTimeoutSeconds?: number }): Transfer {
  const child = spawn(
    'ip',
    ['netns', 'exec', netns, process.execPath, '--import', 'tsx', PACED_GET, url, String(Math.round(opts.rateBytesPerSec)), String(opts.idleTimeoutSeconds ?? 30)],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: childEnv() },
  );
  let received = 0;
  let result: Omit<TransferResult, 'exitCode'> | undefined;
  let stderr = '';
  createInterface({ input: child.stdout }).on('line', (line) => {
    try {
      const o = JSON.parse(line) as { progress?: number; done?: boolean; error?: string } & Partial<TransferResult>;
      if (typeof o.progress === 'number') received = o.progress;
      if (o.done) {
        received = o.bytes ?? received;
        result = {
          status: o.status ?? 0,
          bytes: o.bytes ?? 0,
          sha256: o.sha256 ?? '',
          announcedSha256: o.announcedSha256,
          ms: o.ms ?? 0,
          maxStallMs: o.maxStallMs ?? 0,
          error: o.error ?? '',
        };
      }
    } catch {
      stderr += `unexpected output: ${line}\n`;
    }
  });
  child.stderr.on('data', (c: Buffer) => {
    if (stderr.length < 64 * 1024) stderr += c.toString('utf8');
  });
  const done = new Promise<TransferResult>((resolveDone) => {
    child.on('close', (code, signal) => {
      const base = result ?? { status: 0, bytes: received, sha256: '', announcedSha256: undefined, ms: 0, maxStallMs: 0, error: '' };
      const error = base.error || (code === 0 ? '' : `reader exited (${code ?? signal})${stderr ? `: ${stderr.trim().slice(0, 1000)}` : ''}`);
      resolveDone({ ...base, exitCode: code, error });
    });
  });
  return {
    received: () => received,
    describe: () =>
      `GET ${url} from ${netns}: ${received} bytes so far, reader ${child.exitCode === null && child.signalCode === null ? 'running' : `exited (${child.exitCode ?? child.signalCode})`}${stderr ? `; it said: ${stderr.trim().slice(0, 1000)}` : ''}`,
    done,
    abort: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}
