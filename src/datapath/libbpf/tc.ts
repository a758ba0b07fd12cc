// tc attachment of the datapath's programs, in the calling thread's network
// namespace. Two kernel interfaces:
//  - tcx (Linux 6.6+): the program is attached to the device's ingress or
//    egress hook itself (BPF_PROG_ATTACH with BPF_TCX_INGRESS/EGRESS), no
//    qdisc and no classifier in between. It runs before any tc filter and
//    saves the cls_bpf/clsact dispatch per packet (1.0 µs per round trip of
//    the tunnel path in bench/peers --suspects, issue 15). libbpf 1.1 has no tcx API;
//    bpf_prog_attach_opts passes the attach type through. A program there is
//    known by its name: attaching replaces the program of the same name in
//    place (BPF_F_REPLACE), so a restart swaps programs without a gap.
//  - cls_bpf (older kernels, or asked for): a direct-action filter on the
//    clsact qdisc, known by its handle and priority, through libbpf's
//    netlink helpers.
// Either way, attaching also removes the program of the same name from the
// other interface (an upgrade from cls_bpf to tcx, or back), so one runs.
// `tc filter show` lists only cls_bpf; bpftool 7.3+ `net show` lists both.
import { constants as osConstants } from 'node:os';
import { bpfError } from '../errors.ts';
import { captureLog, lastErrno, lib } from './ffi.ts';
import { type BpfProgram, programInfo } from './program.ts';

export type TcDirection = 'ingress' | 'egress';
/** How a program is attached: 'auto' is tcx where the kernel has it, else cls_bpf. */
export type TcAttachMode = 'tcx' | 'cls_bpf';
export type TcAttachPreference = 'auto' | TcAttachMode;

const BPF_TC_INGRESS = 1;
const BPF_TC_EGRESS = 2;
const BPF_TC_F_REPLACE = 1;
/** enum bpf_attach_type (linux/bpf.h). */
const BPF_TCX_INGRESS = 46;
const BPF_TCX_EGRESS = 47;
/** BPF_PROG_ATTACH flag: replace the program given by replace_bpf_fd. */
const BPF_F_REPLACE = 1 << 2;
/** BPF_OBJ_NAME_LEN - 1: the kernel keeps this much of a program's name. */
const PROG_NAME_MAX = 15;
const E = osConstants.errno;

/** Where a program sits on a hook: by name on tcx, by handle and priority on cls_bpf. */
export interface TcSlot {
  /** The program's name (the kernel keeps 15 characters); required to find or remove it on tcx. */
  name?: string;
  /** cls_bpf filter handle; default 1. */
  handle?: number;
  /** cls_bpf filter priority; default 1. */
  priority?: number;
}

export interface TcAttachOptions extends Omit<TcSlot, 'name'> {
  ifindex: number;
  direction: TcDirection;
  program: BpfProgram | { fd: number; name?: string };
  /** Default 'auto'. */
  mode?: TcAttachPreference;
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

/** struct bpf_prog_attach_opts (libbpf 1.1), 16 bytes: 0 sz | 8 flags | 12 replace_prog_fd */
function attachOpts(flags: number, replaceFd: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(16n, 0);
  b.writeUInt32LE(flags, 8);
  b.writeInt32LE(replaceFd, 12);
  return b;
}

/** Runs a libbpf call, collecting what libbpf prints (the kernel's extack message) for the error. */
function logged(fn: () => number): { rc: number; log: string } {
  const r = captureLog(fn);
  if ('error' in r) throw r.error;
  return { rc: r.value, log: r.log };
}

const gone = (rc: number): boolean => -rc === E.ENOENT || -rc === E.ENODEV || -rc === E.EINVAL;

function attachPoint(direction: TcDirection): number {
  return direction === 'ingress' ? BPF_TC_INGRESS : BPF_TC_EGRESS;
}

function tcxType(direction: TcDirection): number {
  return direction === 'ingress' ? BPF_TCX_INGRESS : BPF_TCX_EGRESS;
}

let tcxProbed: boolean | undefined;

/** True when the kernel has tcx hooks (Linux 6.6+): asked once per process, on lo. */
export function tcxAvailable(): boolean {
  if (tcxProbed === undefined) {
    const cnt = Buffer.alloc(4);
    // An unknown attach type is EINVAL; a known one on a hook with no program answers 0 and no ids.
    tcxProbed = lib().bpf.bpf_prog_query(1, BPF_TCX_INGRESS, 0, null, null, cnt) === 0;
  }
  return tcxProbed;
}

/** The mode a preference resolves to on this kernel; 'tcx' asked where there is none is an error. */
export function tcAttachMode(pref: TcAttachPreference = 'auto'): TcAttachMode {
  if (pref === 'cls_bpf') return 'cls_bpf';
  if (tcxAvailable()) return 'tcx';
  if (pref === 'tcx') throw new Error('tc attach mode tcx: this kernel has no tcx hooks (Linux 6.6 or later); use auto or cls_bpf');
  return 'cls_bpf';
}

/** Runs fn with an fd of the program with this id; undefined when the program is gone. */
function withProgFd<T>(id: number, fn: (fd: number) => T): T | undefined {
  const { bpf, libc } = lib();
  const fd = bpf.bpf_prog_get_fd_by_id(id);
  if (fd < 0) return undefined;
  try {
    return fn(fd);
  } finally {
    libc.close(fd);
  }
}

const nameOfId = (id: number): string | undefined => withProgFd(id, (fd) => programInfo(fd)?.name);
const sameName = (kernelName: string | undefined, name: string): boolean => kernelName !== undefined && kernelName === name.slice(0, PROG_NAME_MAX);

/** Ids of the programs on a tcx hook, in the order they run; [] without tcx or device. */
export function tcxPrograms(ifindex: number, direction: TcDirection): number[] {
  if (!tcxAvailable()) return [];
  const ids = Buffer.alloc(4 * 64);
  const cnt = Buffer.alloc(4);
  cnt.writeUInt32LE(64, 0);
  const rc = lib().bpf.bpf_prog_query(ifindex, tcxType(direction), 0, null, ids, cnt);
  if (rc !== 0) {
    if (gone(rc)) return [];
    throw bpfError('bpf_prog_query', rc, { target: `ifindex ${ifindex} tcx ${direction}` });
  }
  return Array.from({ length: cnt.readUInt32LE(0) }, (_, i) => ids.readUInt32LE(4 * i));
}

/** Removes one program from a tcx hook; false when it was not attached there. */
function tcxDetachId(ifindex: number, direction: TcDirection, id: number): boolean {
  const r = withProgFd(id, (fd) => logged(() => lib().bpf.bpf_prog_detach2(fd, ifindex, tcxType(direction))));
  if (!r || r.rc === 0) return r !== undefined;
  if (gone(r.rc)) return false;
  throw bpfError('bpf_prog_detach2', r.rc, { target: `ifindex ${ifindex} tcx ${direction}`, log: r.log });
}

/** A program this process attached; detach() removes it (idempotent). */
export class TcAttachment {
  #attached = true;
  constructor(
    readonly ifindex: number,
    readonly direction: TcDirection,
    readonly mode: TcAttachMode,
    /** The program's name as the kernel keeps it (tcx finds it by that). */
    readonly name: string,
    readonly handle: number,
    readonly priority: number,
    readonly progId: number,
  ) {}

  get attached(): boolean {
    return this.#attached;
  }

  /**
   * Removes the program; false when it was already gone (device deleted,
   * replaced: on tcx by a program of the same name, on cls_bpf by a filter of
   * the same handle/priority).
   */
  detach(): boolean {
    if (!this.#attached) return false;
    this.#attached = false;
    if (this.mode === 'tcx') return tcxDetachId(this.ifindex, this.direction, this.progId);
    return clsDetach(this.ifindex, this.direction, this.handle, this.priority);
  }
}

/**
 * Attaches the program to the device's ingress or egress (tcx, or a
 * direct-action cls_bpf filter on a clsact qdisc created if needed). What
 * held the same slot is replaced atomically: on tcx the program of the same
 * name, on cls_bpf the filter of the same handle and priority. The program
 * of the same name on the other interface is removed after.
 */
export function tcAttach(o: TcAttachOptions): TcAttachment {
  const mode = tcAttachMode(o.mode);
  const handle = o.handle ?? 1;
  const priority = o.priority ?? 1;
  const info = programInfo(o.program.fd);
  if (!info) throw bpfError('bpf_obj_get_info_by_fd', -(lastErrno() || E.EBADF), { target: o.program.name ?? `fd ${o.program.fd}` });
  const target = `${o.program.name ?? info.name} on ifindex ${o.ifindex} ${o.direction}`;
  if (mode === 'tcx') {
    const { bpf } = lib();
    const type = tcxType(o.direction);
    const current = tcxPrograms(o.ifindex, o.direction);
    if (!current.includes(info.id)) {
      const old = current.find((id) => nameOfId(id) === info.name);
      const run = (replaceFd: number): { rc: number; log: string } =>
        logged(() => bpf.bpf_prog_attach_opts(o.program.fd, o.ifindex, type, attachOpts(replaceFd >= 0 ? BPF_F_REPLACE : 0, replaceFd >= 0 ? replaceFd : 0)));
      const r = old === undefined ? run(-1) : (withProgFd(old, run) ?? run(-1));
      if (r.rc !== 0) throw bpfError('bpf_prog_attach_opts', r.rc, { target: `${target} (tcx)`, log: r.log });
    }
    // An earlier version's filter of the same program (an upgrade from cls_bpf).
    const cls = clsQuery(o.ifindex, o.direction, handle, priority);
    if (cls !== undefined && sameName(nameOfId(cls), info.name)) clsDetach(o.ifindex, o.direction, handle, priority);
    return new TcAttachment(o.ifindex, o.direction, 'tcx', info.name, handle, priority, info.id);
  }
  const { bpf } = lib();
  const hook = tcHook(o.ifindex, attachPoint(o.direction));
  const c1 = logged(() => bpf.bpf_tc_hook_create(hook));
  if (c1.rc !== 0 && -c1.rc !== E.EEXIST) throw bpfError('bpf_tc_hook_create', c1.rc, { target, log: c1.log });
  const opts = tcOpts({ progFd: o.program.fd, flags: BPF_TC_F_REPLACE, handle, priority });
  const c2 = logged(() => bpf.bpf_tc_attach(hook, opts));
  if (c2.rc !== 0) throw bpfError('bpf_tc_attach', c2.rc, { target, log: c2.log });
  // tcx runs before every filter: a program of this name left there (a downgrade) would shadow this one.
  for (const id of tcxPrograms(o.ifindex, o.direction)) if (nameOfId(id) === info.name) tcxDetachId(o.ifindex, o.direction, id);
  return new TcAttachment(o.ifindex, o.direction, 'cls_bpf', info.name, opts.readUInt32LE(20), opts.readUInt32LE(24), opts.readUInt32LE(16));
}

function clsDetach(ifindex: number, direction: TcDirection, handle: number, priority: number): boolean {
  const { rc, log } = logged(() => lib().bpf.bpf_tc_detach(tcHook(ifindex, attachPoint(direction)), tcOpts({ handle, priority })));
  if (rc === 0) return true;
  if (gone(rc)) return false;
  throw bpfError('bpf_tc_detach', rc, { target: `ifindex ${ifindex} ${direction}`, log });
}

function clsQuery(ifindex: number, direction: TcDirection, handle: number, priority: number): number | undefined {
  const opts = tcOpts({ handle, priority });
  const { rc, log } = logged(() => lib().bpf.bpf_tc_query(tcHook(ifindex, attachPoint(direction)), opts));
  if (rc === 0) return opts.readUInt32LE(16);
  if (gone(rc)) return undefined;
  throw bpfError('bpf_tc_query', rc, { target: `ifindex ${ifindex} ${direction}`, log });
}

/**
 * Removes what holds a slot: the tcx programs of slot.name, and the cls_bpf
 * filter of its handle/priority. false when neither was there.
 */
export function tcDetach(ifindex: number, direction: TcDirection, slot: TcSlot = {}): boolean {
  let removed = false;
  if (slot.name !== undefined) {
    for (const id of tcxPrograms(ifindex, direction)) if (sameName(nameOfId(id), slot.name)) removed = tcxDetachId(ifindex, direction, id) || removed;
  }
  return clsDetach(ifindex, direction, slot.handle ?? 1, slot.priority ?? 1) || removed;
}

/**
 * The program in a slot, or undefined: the tcx program of slot.name
 * (without a name, the first tcx program of the hook), else the cls_bpf
 * filter of its handle/priority.
 */
export function tcFind(ifindex: number, direction: TcDirection, slot: TcSlot = {}): { progId: number; mode: TcAttachMode } | undefined {
  const tcx = tcxPrograms(ifindex, direction);
  const hit = slot.name === undefined ? tcx[0] : tcx.find((id) => sameName(nameOfId(id), slot.name!));
  if (hit !== undefined) return { progId: hit, mode: 'tcx' };
  const cls = clsQuery(ifindex, direction, slot.handle ?? 1, slot.priority ?? 1);
  return cls === undefined ? undefined : { progId: cls, mode: 'cls_bpf' };
}

/** The id of the program in a slot (tcFind), or undefined. */
export function tcQuery(ifindex: number, direction: TcDirection, slot: TcSlot = {}): number | undefined {
  return tcFind(ifindex, direction, slot)?.progId;
}

/** The tcx programs of a device's hook, in the order they run, with their names. */
export function tcxList(ifindex: number, direction: TcDirection): Array<{ progId: number; name: string }> {
  return tcxPrograms(ifindex, direction).map((progId) => ({ progId, name: nameOfId(progId) ?? '' }));
}

/** Removes every program of one direction: all tcx programs and all filters (the qdisc stays). Missing device is not an error. */
export function tcDetachAll(ifindex: number, direction: TcDirection): void {
  for (const id of tcxPrograms(ifindex, direction)) tcxDetachId(ifindex, direction, id);
  const { rc, log } = logged(() => lib().bpf.bpf_tc_hook_destroy(tcHook(ifindex, attachPoint(direction))));
  if (rc === 0 || gone(rc)) return;
  throw bpfError('bpf_tc_hook_destroy', rc, { target: `ifindex ${ifindex} ${direction}`, log });
}

/** Deletes the clsact qdisc with all its filters, and every tcx program of both hooks. Missing qdisc or device is not an error. */
export function tcHookDestroy(ifindex: number): void {
  for (const d of ['ingress', 'egress'] as const) for (const id of tcxPrograms(ifindex, d)) tcxDetachId(ifindex, d, id);
  const { rc, log } = logged(() => lib().bpf.bpf_tc_hook_destroy(tcHook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)));
  if (rc === 0 || gone(rc)) return;
  throw bpfError('bpf_tc_hook_destroy', rc, { target: `ifindex ${ifindex}`, log });
}

/** if_nametoindex(3) in the calling thread's netns; throws BpfError(ENODEV) for an unknown name. */
export function ifindexOf(name: string): number {
  const idx = lib().libc.if_nametoindex(name);
  if (idx === 0) throw bpfError('if_nametoindex', lastErrno() || E.ENODEV, { target: name });
  return idx;
}
