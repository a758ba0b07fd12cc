// The project's own bpffs. `ip netns exec` remounts /sys, hiding
// /sys/fs/bpf, so pins live under a bpffs mounted where the project chooses;
// one pin directory per node.
//
// Mount it from the root mount namespace (lab up, agent start on a host):
// a mount made inside `ip netns exec` stays private to that process.
import { lstatSync, mkdirSync, readFileSync, readdirSync, rmdirSync, statfsSync, unlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { bpfError } from './errors.ts';
import { lastErrno, lib } from './libbpf/ffi.ts';

export const DEFAULT_BPFFS_ROOT = '/run/clustermesh/bpffs';

/** BPF_FS_MAGIC from linux/magic.h. */
const BPF_FS_MAGIC = 0xcafe4a11;

/** True when path is on a bpffs (the mount point itself or a directory in one). */
export function isOnBpffs(path: string): boolean {
  try {
    return statfsSync(path).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

/** True when path is itself the mount point of a bpffs, per /proc/self/mountinfo. */
export function isBpffsMountPoint(path: string, mountinfo?: string): boolean {
  const target = resolve(path);
  const text = mountinfo ?? readMountinfo();
  for (const line of text.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    const mountPoint = left[4];
    if (mountPoint !== undefined && unescapeMountinfo(mountPoint) === target && right[0] === 'bpf') return true;
  }
  return false;
}

function readMountinfo(): string {
  return readFileSync('/proc/self/mountinfo', 'utf8');
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * Makes sure root is a bpffs: creates the directory and mounts a bpffs on it
 * (`mount -t bpf bpf <root>`) unless it already is one. Returns root.
 */
export function ensureBpffs(root: string = DEFAULT_BPFFS_ROOT): string {
  const dir = resolve(root);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (isOnBpffs(dir)) return dir;
  const rc = lib().libc.mount('bpf', dir, 'bpf', 0, null);
  if (rc !== 0) throw bpfError('mount bpf', lastErrno(), { target: dir });
  return dir;
}

const NODE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** `<root>/<nodeName>/`, created. The node name must be a plain file name. */
export function nodePinDir(nodeName: string, root: string = DEFAULT_BPFFS_ROOT): string {
  if (!NODE_NAME_RE.test(nodeName) || nodeName === '.' || nodeName === '..') throw new RangeError(`node name ${JSON.stringify(nodeName)} cannot name a pin directory`);
  const dir = join(resolve(root), nodeName);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/**
 * Unlinks every pin under dir (recursively) and the directory itself.
 * Refuses directories that are not on a bpffs or that are a bpffs mount
 * point. Missing dir is not an error.
 */
export function removePinDir(dir: string): void {
  const d = resolve(dir);
  try {
    lstatSync(d);
  } catch {
    return;
  }
  if (!isOnBpffs(d)) throw new Error(`removePinDir: ${d} is not on a bpffs`);
  if (isBpffsMountPoint(d)) throw new Error(`removePinDir: ${d} is a bpffs mount point, not a pin directory`);
  removeTree(d);
}

function removeTree(d: string): void {
  for (const e of readdirSync(d, { withFileTypes: true })) {
    const p = join(d, e.name);
    if (e.isDirectory()) removeTree(p);
    else unlinkSync(p);
  }
  rmdirSync(d);
}
