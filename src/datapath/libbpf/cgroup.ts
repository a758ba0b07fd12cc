// cgroup attachment through BPF links. A link is pinned on the bpffs, so the
// attachment outlives the process that made it (as tc filters do) and goes
// away when its pin is removed: the node's pin directory owns it like the maps.
import { closeSync, existsSync, openSync, statfsSync, unlinkSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { bpfError } from '../errors.ts';
import { captureLog, lastErrno, lib } from './ffi.ts';
import { type BpfProgram, programInfo } from './program.ts';

/** enum bpf_attach_type values of the cgroup sock_addr hooks (linux/bpf.h). */
export const CGROUP_ATTACH_TYPE = {
  connect4: 10,
  sendmsg4: 14,
  recvmsg4: 19,
  getpeername4: 29,
} as const;

export type CgroupHook = keyof typeof CGROUP_ATTACH_TYPE;

const CGROUP2_SUPER_MAGIC = 0x63677270;

/** True when path is a directory of a cgroup v2 hierarchy. */
export function isCgroup2Dir(path: string): boolean {
  try {
    return statfsSync(path).type === CGROUP2_SUPER_MAGIC;
  } catch {
    return false;
  }
}

function withCgroupFd<T>(cgroupPath: string, fn: (fd: number) => T): T {
  if (!isCgroup2Dir(cgroupPath)) throw new Error(`${cgroupPath} is not a cgroup v2 directory (is cgroup2 mounted there, and does the cgroup exist?)`);
  const fd = openSync(cgroupPath, 'r');
  try {
    return fn(fd);
  } finally {
    closeSync(fd);
  }
}

function logged(fn: () => number): { rc: number; log: string } {
  const r = captureLog(fn);
  if ('error' in r) throw r.error;
  return { rc: r.value, log: r.log };
}

/** The kernel id of a loaded program (struct bpf_prog_info: type, id). */
export function programId(program: Pick<BpfProgram, 'fd' | 'name'>): number {
  const info = programInfo(program.fd);
  if (!info) throw bpfError('bpf_obj_get_info_by_fd', -(lastErrno() || osConstants.errno.EBADF), { target: program.name });
  return info.id;
}

/**
 * Attaches program to the cgroup's hook with a new link and pins the link
 * at pinPath. A link pinned there before is removed after the new one is in
 * place: for a moment both run, which for the sock programs is harmless (the
 * second sees a backend address, no VIP). Returns the program's id.
 */
export function attachCgroupPinned(o: { cgroupPath: string; hook: CgroupHook; program: BpfProgram; pinPath: string }): number {
  const { bpf, libc } = lib();
  const target = `${o.program.name} on ${o.cgroupPath} (${o.hook})`;
  const linkFd = withCgroupFd(o.cgroupPath, (cg) => {
    const r = logged(() => bpf.bpf_link_create(o.program.fd, cg, CGROUP_ATTACH_TYPE[o.hook], null));
    if (r.rc < 0) throw bpfError('bpf_link_create', r.rc, { target, log: r.log });
    return r.rc;
  });
  try {
    detachPinnedLink(o.pinPath);
    const rc = bpf.bpf_obj_pin(linkFd, o.pinPath);
    if (rc !== 0) throw bpfError('bpf_obj_pin', rc, { target: `${target} at ${o.pinPath}` });
  } finally {
    libc.close(linkFd);
  }
  return programId(o.program);
}

/**
 * Detaches the link pinned at pinPath (even when some process still holds
 * it) and removes the pin. false when there was no pin.
 */
export function detachPinnedLink(pinPath: string): boolean {
  if (!existsSync(pinPath)) return false;
  const { bpf, libc } = lib();
  const fd = bpf.bpf_obj_get(pinPath);
  if (fd >= 0) {
    // EINVAL/ENOLINK: already detached (its cgroup went away); the pin is all that is left.
    bpf.bpf_link_detach(fd);
    libc.close(fd);
  }
  try {
    unlinkSync(pinPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  return true;
}

/** Ids of the programs attached directly to the cgroup's hook (not inherited ones). */
export function cgroupQuery(cgroupPath: string, hook: CgroupHook): number[] {
  return withCgroupFd(cgroupPath, (cg) => {
    const flags = Buffer.alloc(4);
    const ids = Buffer.alloc(4 * 64);
    const cnt = Buffer.alloc(4);
    cnt.writeUInt32LE(64, 0);
    const rc = lib().bpf.bpf_prog_query(cg, CGROUP_ATTACH_TYPE[hook], 0, flags, ids, cnt);
    if (rc !== 0) throw bpfError('bpf_prog_query', rc, { target: `${cgroupPath} (${hook})` });
    return Array.from({ length: cnt.readUInt32LE(0) }, (_, i) => ids.readUInt32LE(4 * i));
  });
}
