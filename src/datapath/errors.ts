// Kernel and libbpf failures as typed errors carrying the errno and the
// operation. Callers branch on the class or on `code`, never on the message.
import { constants as osConstants } from 'node:os';

/** Kernel-internal errno values that reach userspace through bpf(2). */
export const ENOTSUPP = 524;

const errnoNames: ReadonlyMap<number, string> = (() => {
  const m = new Map<number, string>();
  for (const [name, value] of Object.entries(osConstants.errno)) {
    if (!m.has(value)) m.set(value, name);
  }
  m.set(ENOTSUPP, 'ENOTSUPP');
  return m;
})();

/** 'ENOENT' for 2, 'E<n>' for numbers node does not know. */
export function errnoName(errno: number): string {
  return errnoNames.get(Math.abs(errno)) ?? `E${Math.abs(errno)}`;
}

export interface BpfErrorOptions {
  /** What the operation was about: a map name, a path, an ifindex. */
  target?: string;
  /** Text libbpf printed while the operation ran (warnings), if any. */
  log?: string;
  cause?: unknown;
}

/** A failed bpf(2)/libbpf/netlink operation. `errno` is positive. */
export class BpfError extends Error {
  readonly op: string;
  readonly errno: number;
  readonly code: string;
  readonly target: string | undefined;
  readonly log: string | undefined;

  constructor(op: string, errno: number, opts: BpfErrorOptions = {}) {
    const e = Math.abs(errno);
    const code = errnoName(e);
    super(`${op}${opts.target ? ` (${opts.target})` : ''}: ${code} (errno ${e})`, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.op = op;
    this.errno = e;
    this.code = code;
    this.target = opts.target;
    this.log = opts.log;
  }
}

/** ENOENT: lookup/delete of a missing key, or update with flag 'exist' of a missing key. */
export class KeyNotFoundError extends BpfError {}

/** E2BIG on update: the map holds max_entries already. */
export class MapFullError extends BpfError {}

/** EEXIST on update with flag 'noexist'. */
export class KeyExistsError extends BpfError {}

/** EPERM/EACCES outside of program verification (missing CAP_BPF, bpffs permissions, ...). */
export class PermissionError extends BpfError {}

/** A program of an object was rejected at load; `log` holds the verifier log libbpf printed. */
export class VerifierError extends BpfError {
  readonly program: string | undefined;
  readonly verifierLog: string;
  constructor(op: string, errno: number, opts: BpfErrorOptions & { program?: string; verifierLog?: string } = {}) {
    super(op, errno, opts);
    this.program = opts.program;
    this.verifierLog = opts.verifierLog ?? opts.log ?? '';
    if (this.program) this.message += ` [program ${this.program}]`;
    const tail = lastLines(this.verifierLog, 8);
    if (tail) this.message += `\n${tail}`;
  }
}

/** Use of a map, program or object after close(). */
export class ClosedError extends BpfError {
  constructor(op: string, target?: string) {
    super(op, osConstants.errno.EBADF, target === undefined ? {} : { target });
  }
}

export type MapOp = 'lookup' | 'delete' | 'update' | 'get_next_key' | 'lookup_batch' | 'update_batch' | 'delete_batch' | 'lookup_and_delete';

const mapOpFunction: Record<MapOp, string> = {
  lookup: 'bpf_map_lookup_elem',
  delete: 'bpf_map_delete_elem',
  update: 'bpf_map_update_elem',
  get_next_key: 'bpf_map_get_next_key',
  lookup_batch: 'bpf_map_lookup_batch',
  update_batch: 'bpf_map_update_batch',
  delete_batch: 'bpf_map_delete_batch',
  lookup_and_delete: 'bpf_map_lookup_and_delete_elem',
};

/**
 * The typed error for a failed map operation. `errno` may be negative
 * (libbpf's return convention) or positive.
 */
export function mapError(op: MapOp, errno: number, opts: BpfErrorOptions & { updateFlag?: 'any' | 'noexist' | 'exist' } = {}): BpfError {
  const e = Math.abs(errno);
  const E = osConstants.errno;
  const name = mapOpFunction[op];
  if (e === E.ENOENT && (op === 'lookup' || op === 'delete' || op === 'lookup_and_delete' || op === 'delete_batch' || (op === 'update' && opts.updateFlag === 'exist'))) {
    return new KeyNotFoundError(name, e, opts);
  }
  if (e === E.E2BIG && (op === 'update' || op === 'update_batch')) return new MapFullError(name, e, opts);
  if (e === E.EEXIST && (op === 'update' || op === 'update_batch')) return new KeyExistsError(name, e, opts);
  if (e === E.EPERM || e === E.EACCES) return new PermissionError(name, e, opts);
  return new BpfError(name, e, opts);
}

/** The typed error for any other failed operation. */
export function bpfError(op: string, errno: number, opts: BpfErrorOptions = {}): BpfError {
  const e = Math.abs(errno);
  if (e === osConstants.errno.EPERM || e === osConstants.errno.EACCES) return new PermissionError(op, e, opts);
  return new BpfError(op, e, opts);
}

function lastLines(text: string, n: number): string {
  const lines = text.trimEnd().split('\n');
  return lines.slice(-n).join('\n');
}
