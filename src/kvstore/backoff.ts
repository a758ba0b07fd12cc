// Retry delays with exponential growth and jitter: the kvstore's watches and
// writes, and the Kubernetes reflector (a module of its own so that users of
// the Kubernetes source do not load the etcd client with it).

export interface BackoffOptions {
  /** First delay (default 100 ms). */
  initialMs?: number;
  /** Cap (default 10 s). */
  maxMs?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** Fraction of random jitter added, 0..1 (default 0.2). */
  jitter?: number;
}

export function backoffDelay(attempt: number, o: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = o.initialMs ?? 100;
  const max = o.maxMs ?? 10_000;
  const base = Math.min(max, initial * Math.pow(o.factor ?? 2, Math.max(0, attempt)));
  return Math.round(base * (1 + (o.jitter ?? 0.2) * random()));
}
