// Injected time for backoff, rescans and timeouts, so tests run in milliseconds.
// Shared by every layer (kvstore, clustermesh, agent, apiserver); imports nothing.

export type TimerHandle = object;

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/**
 * The system clock with timers that keep the process alive: for a wait that is
 * all a process does for a while (an agent waiting for its Node at start has no
 * socket open between two reads, and an unref'd timer let Node exit with 13).
 */
export const keepAliveClock: Clock = { ...systemClock, setTimeout: (fn, ms) => setTimeout(fn, ms) };

/** Sleeps on `clock`; resolves early (with false) when `signal` aborts. */
export function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(false);
    const onAbort = () => {
      clock.clearTimeout(h);
      resolve(false);
    };
    const h = clock.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A clock that only moves when told to. Timers fire in due order on advance(). */
export class ManualClock implements Clock {
  private t = 0;
  private seq = 0;
  private readonly timers = new Map<object, { due: number; seq: number; fn: () => void }>();

  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const h = {};
    this.timers.set(h, { due: this.t + Math.max(0, ms), seq: this.seq++, fn });
    return h;
  }
  clearTimeout(handle: TimerHandle): void {
    this.timers.delete(handle);
  }
  /** Number of pending timers. */
  get pending(): number {
    return this.timers.size;
  }
  /** Moves time forward by `ms`, firing due timers (and timers they schedule) in order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: [object, { due: number; seq: number; fn: () => void }] | undefined;
      for (const e of this.timers) {
        if (e[1].due <= end && (!next || e[1].due < next[1].due || (e[1].due === next[1].due && e[1].seq < next[1].seq))) next = e;
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].due);
      next[1].fn();
    }
    this.t = end;
  }
}
