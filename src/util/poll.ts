// One poll loop for "ask again every so often until it holds, or give up
// naming what was awaited and the last answer". Imports nothing of the project.

import { setTimeout as sleep } from 'node:timers/promises';

export interface PollOptions {
  /** How long to keep asking; the check runs at least once, and once more after the last wait. */
  timeoutMs: number;
  /** The pause between two checks (default 500 ms); with `maxIntervalMs`, the first pause, doubled each round up to it. */
  intervalMs?: number;
  /** Pauses grow from intervalMs by doubling up to this (quick answers early, fewer checks later). */
  maxIntervalMs?: number;
  /** What is awaited, for the timeout's message ("deployment/x available"). */
  describe: string;
  /** 'retry' (default): an error thrown by the check is a reason to ask again; 'throw': it ends the poll. */
  errors?: 'retry' | 'throw';
}

/** Handed to each check: the round (0 first) and `notYet(reason)` to say why it does not hold yet. */
export interface PollRound {
  round: number;
  /** Records `reason` as the last one reported; returns undefined, so a check can `return notYet('1/2 ready')`. */
  notYet(reason: unknown): undefined;
}

/**
 * Thrown by a check when what it waits for can never hold (the process that
 * would make it true has died): ends the poll at once, whatever `errors` says,
 * rejecting with this error.
 */
export class PollAbort extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PollAbort';
  }
}

/** The poll gave up: `last` is the last reason, error or value the check reported (undefined when none). */
export class PollTimeoutError extends Error {
  constructor(
    readonly describe: string,
    readonly timeoutMs: number,
    readonly last: unknown,
  ) {
    super(`timed out after ${fmtSeconds(timeoutMs)} waiting for ${describe}${last === undefined ? '' : `: ${lastText(last)}`}`);
    this.name = 'PollTimeoutError';
  }
}

/**
 * Runs `check` until it returns something other than undefined or false, and
 * returns that. An error it throws is retried (and kept as the last reason)
 * unless `errors: 'throw'` or it is a PollAbort. Throws a PollTimeoutError when `timeoutMs` passes.
 */
export async function pollUntil<T>(check: (r: PollRound) => Promise<T | undefined | false> | T | undefined | false, o: PollOptions): Promise<T> {
  const end = Date.now() + o.timeoutMs;
  let last: unknown;
  const notYet = (reason: unknown): undefined => {
    last = reason;
    return undefined;
  };
  for (let round = 0; ; round++) {
    // Whether to give up is decided by when the round began: a timer may wake a little before the
    // deadline, and the round it starts must not be the last (one more runs, at or after the deadline).
    const began = Date.now();
    try {
      const v = await check({ round, notYet });
      if (v !== undefined && v !== false) return v as T;
    } catch (err) {
      if (o.errors === 'throw' || err instanceof PollAbort) throw err;
      last = err;
    }
    if (began >= end) throw new PollTimeoutError(o.describe, o.timeoutMs, last);
    const interval = o.maxIntervalMs === undefined ? (o.intervalMs ?? 500) : Math.min(o.maxIntervalMs, (o.intervalMs ?? 500) * 2 ** Math.min(round, 30));
    await sleep(Math.max(0, Math.min(interval, end - Date.now())));
  }
}

function fmtSeconds(ms: number): string {
  return ms >= 1000 ? `${Math.round(ms / 1000)} s` : `${ms} ms`;
}

function lastText(v: unknown): string {
  if (v instanceof Error) return v.message;
  if (typeof v === 'string') return v;
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}
