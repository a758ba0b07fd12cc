// tc (clsact, direct-action) attachment through libbpf's netlink helpers.
// Everything here acts on the network namespace of the calling thread.
import { constants as osConstants } from 'node:os';
import { bpfError } from '../errors.ts';
import { captureLog, lastErrno, lib } from './ffi.ts';
import type { BpfProgram } from './program.ts';

export type TcDirection = 'ingress' | 'egress';

const BPF_TC_INGRESS = 1;
const BPF_TC_EGRESS = 2;
const BPF_TC_F_REPLACE = 1;
const E = osConstants.errno;

export interface TcAttachOptions {
  ifindex: number;
  direction: TcDirection;
  program: BpfProgram | { fd: number; name?: string };
  /** Filter priority; default 1. */
  priority?: number;
  /** Filter handle; default 1. */
  handle?: number;
}

/** struct bpf_tc_hook (libbpf 1.1), 24 bytes: 0 sz | 8 ifindex | 12 attach_point | 16 parent */
function tcHook(ifindex: number, attachPoint: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(24n, 0);
  b.writeInt32LE(ifindex, 8);
  b.writeUInt32LE(attachPoint, 12);
  return b;
}

/** struct bpf_tc_opts (libbpf 1.1), 32 bytes: 0 sz | 8 prog_fd | 12 flags | 16 prog_id | 20 handle | 24 priority */
function tcOpts(f: { progFd?: number; flags?: number; handle?: number; priority?: number }): Buffer {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(32n, 0);
  b.writeInt32LE(f.progFd ?? 0, 8);
  b.writeUInt32LE(f.flags ?? 0, 12);
  b.writeUInt32LE(f.handle ?? 0, 20);
  b.writeUInt32LE(f.priority ?? 0, 24);
  return b;
}

/** Runs a libbpf tc call, collecting what libbpf prints (the kernel's extack message) for the error. */
function logged(fn: () => number): { rc: number; log: string } {
  const r = captureLog(fn);
  if ('error' in r) throw r.error;
  return { rc: r.value, log: r.log };
}

function attachPoint(direction: TcDirection): number {
  return direction === 'ingress' ? BPF_TC_INGRESS : BPF_TC_EGRESS;
}

/** A tc filter this process attached; detach() removes it (idempotent). */
export class TcAttachment {
  #attached = true;
  constructor(
    readonly ifindex: number,
    readonly direction: TcDirection,
    readonly handle: number,
    readonly priority: number,
    readonly progId: number,
  ) {}

  get attached(): boolean {
    return this.#attached;
  }

  /** Removes the filter; false when it was already gone (device or qdisc deleted, replaced by handle/priority elsewhere). */
  detach(): boolean {
    if (!this.#attached) return false;
    this.#attached = false;
    return tcDetach(this.ifindex, this.direction, this.handle, this.priority);
  }
}

/**
 * Creates the clsact qdisc if needed and attaches the program as a
 * direct-action filter; an existing filter with the same handle and priority
 * is replaced atomically (BPF_TC_F_REPLACE).
 */
export function tcAttach(o: TcAttachOptions): TcAttachment {
  const { bpf } = lib();
  const point = attachPoint(o.direction);
  const target = `ifindex ${o.ifindex} ${o.direction}`;
  const hook = tcHook(o.ifindex, point);
  const c1 = logged(() => bpf.bpf_tc_hook_create(hook));
  if (c1.rc !== 0 && -c1.rc !== E.EEXIST) throw bpfError('bpf_tc_hook_create', c1.rc, { target, log: c1.log });
  const opts = tcOpts({ progFd: o.program.fd, flags: BPF_TC_F_REPLACE, handle: o.handle ?? 1, priority: o.priority ?? 1 });
  const c2 = logged(() => bpf.bpf_tc_attach(hook, opts));
  if (c2.rc !== 0) throw bpfError('bpf_tc_attach', c2.rc, { target: o.program.name ? `${o.program.name} on ${target}` : target, log: c2.log });
  return new TcAttachment(o.ifindex, o.direction, opts.readUInt32LE(20), opts.readUInt32LE(24), opts.readUInt32LE(16));
}

/** Removes one filter; false when it was not there. */
export function tcDetach(ifindex: number, direction: TcDirection, handle = 1, priority = 1): boolean {
  const { rc, log } = logged(() => lib().bpf.bpf_tc_detach(tcHook(ifindex, attachPoint(direction)), tcOpts({ handle, priority })));
  if (rc === 0) return true;
  if (-rc === E.ENOENT || -rc === E.ENODEV || -rc === E.EINVAL) return false;
  throw bpfError('bpf_tc_detach', rc, { target: `ifindex ${ifindex} ${direction}`, log });
}

/** The id of the program attached with handle/priority, or undefined. */
export function tcQuery(ifindex: number, direction: TcDirection, handle = 1, priority = 1): number | undefined {
  const opts = tcOpts({ handle, priority });
  const { rc, log } = logged(() => lib().bpf.bpf_tc_query(tcHook(ifindex, attachPoint(direction)), opts));
  if (rc === 0) return opts.readUInt32LE(16);
  if (-rc === E.ENOENT || -rc === E.ENODEV || -rc === E.EINVAL) return undefined;
  throw bpfError('bpf_tc_query', rc, { target: `ifindex ${ifindex} ${direction}`, log });
}

/** Removes every filter of one direction (the qdisc stays). Missing qdisc or device is not an error. */
export function tcDetachAll(ifindex: number, direction: TcDirection): void {
  const { rc, log } = logged(() => lib().bpf.bpf_tc_hook_destroy(tcHook(ifindex, attachPoint(direction))));
  if (rc === 0 || -rc === E.ENOENT || -rc === E.ENODEV || -rc === E.EINVAL) return;
  throw bpfError('bpf_tc_hook_destroy', rc, { target: `ifindex ${ifindex} ${direction}`, log });
}

/** Deletes the clsact qdisc with all its filters. Missing qdisc or device is not an error. */
export function tcHookDestroy(ifindex: number): void {
  const { rc, log } = logged(() => lib().bpf.bpf_tc_hook_destroy(tcHook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)));
  if (rc === 0 || -rc === E.ENOENT || -rc === E.ENODEV || -rc === E.EINVAL) return;
  throw bpfError('bpf_tc_hook_destroy', rc, { target: `ifindex ${ifindex}`, log });
}

/** if_nametoindex(3) in the calling thread's netns; throws BpfError(ENODEV) for an unknown name. */
export function ifindexOf(name: string): number {
  const idx = lib().libc.if_nametoindex(name);
  if (idx === 0) throw bpfError('if_nametoindex', lastErrno() || E.ENODEV, { target: name });
  return idx;
}
