// The lab's node cgroups: every node of a topology gets a cgroup v2 directory
// of its own, clustermesh/<node namespace name> in the machine's cgroup v2
// hierarchy (on a hybrid host /sys/fs/cgroup/unified/clustermesh/...), and the
// processes of its pods run in it, so the node's agent can attach socket-level
// load balancing there (src/datapath/node.ts) without touching any process
// outside the node: never the machine's root cgroup, never another lab's.
// The name is the node's namespace name, unique per topology, so whoever
// removes the namespaces (a topology, a lab, the orphan sweep) finds the
// cgroup without extra state.
//
// Paths go through a mount of the same hierarchy at /run/clustermesh/cgroup2,
// made by the lab like its bpffs: `ip netns exec` (how agents and pods are
// started) remounts /sys in a mount namespace of its own, where
// /sys/fs/cgroup is gone, while /run stays visible.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';

/** Where the lab's node cgroups live, under the cgroup2 mount. */
export const LAB_CGROUP_DIR = 'clustermesh';
/** The lab's own mount of the machine's cgroup v2 hierarchy. */
export const LAB_CGROUP2_MOUNT = '/run/clustermesh/cgroup2';

/** All cgroup2 mount points. */
function cgroup2Mounts(mounts = '/proc/self/mounts'): string[] {
  try {
    return readFileSync(mounts, 'utf8')
      .split('\n')
      .map((l) => l.split(' '))
      .filter((f) => f[2] === 'cgroup2' && f[1])
      .map((f) => f[1]!.replace(/\\040/g, ' '));
  } catch {
    return [];
  }
}

/**
 * Root of the lab's node cgroups (LAB_CGROUP2_MOUNT/clustermesh, the hierarchy
 * mounted there first when needed), or undefined when this machine has no
 * cgroup v2 (or it cannot be mounted there). `mount: false` only computes the path.
 */
export function labCgroupRoot(o: { mount?: boolean } = {}): string | undefined {
  const all = cgroup2Mounts();
  if (all.length === 0) return undefined;
  if (!all.includes(LAB_CGROUP2_MOUNT) && o.mount !== false) {
    try {
      mkdirSync(LAB_CGROUP2_MOUNT, { recursive: true, mode: 0o755 });
      execFileSync('mount', ['-t', 'cgroup2', 'cgroup2', LAB_CGROUP2_MOUNT], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch {
      // Without it the lab has no node cgroups (and no socket LB): nothing else depends on them.
      return undefined;
    }
  }
  return join(LAB_CGROUP2_MOUNT, LAB_CGROUP_DIR);
}

/** The cgroup of the node whose namespace is `nodeNetns` (undefined without cgroup v2). */
export function nodeCgroupPath(nodeNetns: string, o: { mount?: boolean } = {}): string | undefined {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(nodeNetns)) throw new RangeError(`node namespace ${JSON.stringify(nodeNetns)} cannot name a cgroup`);
  const root = labCgroupRoot(o);
  return root === undefined ? undefined : join(root, nodeNetns);
}

/** Creates the node's cgroup (idempotent); returns its path, undefined without cgroup v2. */
export function createNodeCgroup(nodeNetns: string): string | undefined {
  const path = nodeCgroupPath(nodeNetns);
  if (path !== undefined) mkdirSync(path, { recursive: true });
  return path;
}

/** Pids in a cgroup (empty when it does not exist). */
export function cgroupPids(path: string): number[] {
  try {
    return readFileSync(join(path, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/**
 * Removes a node's cgroup. Its processes must be gone (the kernel refuses to
 * remove a cgroup with processes): the error names the pids still in it.
 * Missing cgroup is not an error. Programs attached to it go with it.
 */
export function removeNodeCgroup(nodeNetns: string): boolean {
  const path = nodeCgroupPath(nodeNetns, { mount: false });
  if (path === undefined || !existsSync(path)) return false;
  try {
    rmdirSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return false;
    if (code === 'EBUSY') throw new Error(`cgroup ${path} still holds processes ${cgroupPids(path).join(', ')}; stop them first`);
    throw err;
  }
  return true;
}

/**
 * argv that runs `argv` inside the cgroup: a shell moves itself in, then
 * execs, so the program and every socket it opens belong to the cgroup from
 * the start. Without a cgroup, argv as it is.
 */
export function inCgroup(cgroup: string | undefined, argv: readonly string[]): string[] {
  if (cgroup === undefined) return [...argv];
  return ['sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, ...argv];
}
