// What `lab up` hands each node's runtime ("kubelet"), and the runtime's
// record of each pod it runs: written before the pod's namespace is created
// and after each process starts, so `lab down` (and a restarted kubelet) find
// every namespace and process of every pod, also after a crash.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';

export const kubeletConfigSchema = z.object({
  lab: z.string(),
  cluster: z.string(),
  clusterID: z.number().int(),
  node: z.string(),
  nodeNetns: z.string(),
  /** Pod namespaces are `<netnsPrefix>_<namespace>_<pod>`. */
  netnsPrefix: z.string(),
  /** The node's dir in the lab (agent.yaml, kubelet.log, pods/). */
  nodeDir: z.string(),
  /** Where the CNI plugin executable (named after the config's type) is. */
  cniPath: z.string(),
  /** The CNI network config (without runtimeConfig; the kubelet adds the pod's labels). */
  netconf: z.record(z.string(), z.unknown()),
  /** Nameserver in the pods' resolv.conf. */
  dnsIP: z.string(),
  /** The pod CIDR the Node is registered with (what a controller manager's node IPAM would assign); default: netconf's ipam.podCIDR. */
  podCIDR: z.string().optional(),
  /** The node's cgroup (src/lab/cgroup.ts): containers run in it, where the agent's socket LB sees them. */
  cgroup: z.string().optional(),
  /** Pods come from this Kubernetes API (the node-local endpoint), status goes there; the Node is registered there. */
  kubeconfig: z.string(),
  /** The node's underlay address (the Node's InternalIP, the pods' hostIP). */
  nodeIP: z.string().optional(),
  /**
   * The node's own host filesystem for hostPath volumes: hostPath P is
   * `<hostRoot>/P` (default `<nodeDir>/root`), so two nodes of one machine never
   * share /opt/cni/bin, /etc/cni/net.d or /var/run/clustermesh.
   */
  hostRoot: z.string().optional(),
  /** hostPaths that are the machine's own, shared read-only by every node (default /lib/modules, /sys, /proc, /dev). */
  sharedHostPaths: z.array(z.string()).optional(),
  /**
   * What each image holds that the machine does not: image reference ->
   * { path in the container: file on the machine }, bind-mounted read-only in
   * the container. A container of an image not listed runs on the machine's files.
   */
  images: z.record(z.string(), z.record(z.string(), z.string())).optional(),
  /**
   * Pod networking from a CNI configuration directory, as containerd does: the
   * lexically first *.conflist/*.conf there (one plugin), its `type` found in
   * cniPath. Until one exists, pods that are not hostNetwork wait ("network not
   * ready"). Unset: `netconf` is used.
   */
  cniConfDir: z.string().optional(),
  /**
   * Paths P the CNI plugin sees as `<hostRoot>/P` (bind-mounted in a private
   * mount namespace for the call), e.g. the agent socket's directory an agent
   * pod shares through a hostPath volume. Default none.
   */
  cniHostPaths: z.array(z.string()).optional(),
});
export type KubeletConfig = z.infer<typeof kubeletConfigSchema>;

/**
 * Test hook: `CLUSTERMESH_LAB_KUBELET_CONFIG` (a JSON object of kubelet config
 * fields) is merged into every kubelet config `lab up` writes; `${nodeDir}` and
 * `${node}` in its strings are that node's dir and name.
 */
export function kubeletConfigOverrides(json: string | undefined, node: { nodeDir: string; node: string }): Partial<KubeletConfig> {
  if (!json) return {};
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (err) {
    throw new Error(`CLUSTERMESH_LAB_KUBELET_CONFIG: not JSON: ${(err as Error).message}`);
  }
  const subst = (v: unknown): unknown =>
    typeof v === 'string' ? v.replaceAll('${nodeDir}', node.nodeDir).replaceAll('${node}', node.node) : Array.isArray(v) ? v.map(subst) : v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, subst(x)])) : v;
  const r = kubeletConfigSchema.partial().strict().safeParse(subst(raw));
  if (!r.success) throw new Error(`CLUSTERMESH_LAB_KUBELET_CONFIG: ${r.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ')}`);
  return r.data;
}

export const kubeletConfigFile = (nodeDir: string): string => join(nodeDir, 'kubelet.json');

export const podContainerSchema = z.object({
  name: z.string(),
  pid: z.number().int().positive().optional(),
  startTime: z.string().optional(),
  logFile: z.string(),
  restarts: z.number().int().default(0),
  exit: z.string().optional(),
  /** The exit code of its last run, when the kubelet saw it end (-1: killed by a signal). */
  exitCode: z.number().int().optional(),
  /** When the running process started (ISO). */
  startedAt: z.string().optional(),
  /** An init container (spec.initContainers). */
  init: z.boolean().optional(),
});

export const podRecordSchema = z.object({
  uid: z.string(),
  namespace: z.string(),
  name: z.string(),
  cluster: z.string(),
  node: z.string(),
  netns: z.string(),
  containerID: z.string(),
  /** Set once CNI ADD succeeded. */
  ip: z.string().optional(),
  /** Directory of the pod's logs. */
  dir: z.string(),
  containers: z.array(podContainerSchema).default([]),
  /** Runs in the node's network namespace (spec.hostNetwork): no pod namespace, no CNI call. */
  hostNetwork: z.boolean().optional(),
  /** The CNI network config ADD was called with (DEL gets the same), when it came from cniConfDir. */
  netconf: z.record(z.string(), z.unknown()).optional(),
  /** How many init containers completed. */
  initDone: z.number().int().optional(),
  /** Why the pod cannot run (a failed CNI ADD, a container without command). */
  error: z.string().optional(),
  createdAt: z.string(),
});
export type PodRecord = z.infer<typeof podRecordSchema>;

export const podsDir = (nodeDir: string): string => join(nodeDir, 'pods');
export const podRecordFile = (nodeDir: string, uid: string): string => join(podsDir(nodeDir), `${uid}.json`);

export function writePodRecord(nodeDir: string, rec: PodRecord): void {
  mkdirSync(podsDir(nodeDir), { recursive: true });
  const file = podRecordFile(nodeDir, rec.uid);
  writeFileSync(`${file}.tmp`, JSON.stringify(rec, null, 2) + '\n');
  renameSync(`${file}.tmp`, file);
}

export function removePodRecord(nodeDir: string, uid: string): void {
  rmSync(podRecordFile(nodeDir, uid), { force: true });
}

export function readPodRecords(nodeDir: string): PodRecord[] {
  const dir = podsDir(nodeDir);
  if (!existsSync(dir)) return [];
  const out: PodRecord[] = [];
  for (const f of readdirSync(dir)) {
    if (!f.endsWith('.json')) continue;
    try {
      out.push(podRecordSchema.parse(JSON.parse(readFileSync(join(dir, f), 'utf8'))));
    } catch {
      /* torn write of a killed kubelet: the .tmp is ignored, a broken file skipped */
    }
  }
  return out;
}

/** The mount points under `dir` (from /proc/self/mountinfo), deepest first. */
export function mountsUnder(dir: string): string[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const out = new Set<string>();
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const target = line.split(' ')[4];
    if (target === undefined) continue;
    const t = unescape(target);
    if (t === dir || t.startsWith(prefix)) out.add(t);
  }
  return [...out].sort((a, b) => b.length - a.length);
}

/**
 * Unmounts every mount under `dir` (a node's hostRoot gets the bpffs an agent
 * pod mounts and the shared binds mount propagation needs): `lab down` leaves
 * no mount behind. Returns what was unmounted.
 */
export function unmountUnder(dir: string): string[] {
  const done: string[] = [];
  for (let pass = 0; pass < 5; pass++) {
    const targets = mountsUnder(dir);
    if (!targets.length) break;
    for (const t of targets) {
      const r = spawnSync('umount', [t], { stdio: 'ignore' });
      if (r.status !== 0) spawnSync('umount', ['-l', t], { stdio: 'ignore' });
      done.push(t);
    }
  }
  return done;
}

/** Every pod record of every node of a lab (`<labDir>/<cluster>/<node>/pods/*.json`). */
export function podRecordsOf(labDir: string): PodRecord[] {
  const out: PodRecord[] = [];
  if (!existsSync(labDir)) return out;
  for (const c of readdirSync(labDir, { withFileTypes: true })) {
    if (!c.isDirectory()) continue;
    for (const n of readdirSync(join(labDir, c.name), { withFileTypes: true })) {
      if (n.isDirectory()) out.push(...readPodRecords(join(labDir, c.name, n.name)));
    }
  }
  return out;
}
