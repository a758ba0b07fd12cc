// The state of a lab on disk: one directory per lab under labRoot(), with
// `lab.json` describing everything `lab up` created (namespaces, processes by
// pid and start time, pin directories, files), written incrementally as things
// are created so that `lab down` can remove exactly that, also after a crashed
// `up`. Other commands (status, inspect, observe, get, exec, logs) read it to
// find a lab's etcds, agents and pods.
//
// This file is a contract: fields are only ever added (optional), never
// renamed; `version` changes when an existing field changes meaning.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { KvConnectionConfig } from '../kvstore/types.ts';

export const LAB_STATE_VERSION = 1;
export const DEFAULT_LAB_NAME = 'default';
export const LAB_STATE_FILE = 'lab.json';

/** Where labs live: $CLUSTERMESH_LAB_ROOT or /var/lib/clustermesh/labs. */
export function labRoot(): string {
  return process.env.CLUSTERMESH_LAB_ROOT ?? '/var/lib/clustermesh/labs';
}

const LAB_NAME_RE = /^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$/;

/** Lab names: 1-16 lowercase alphanumerics and '-' (they become parts of namespace names). */
export function validateLabName(name: string): string {
  if (!LAB_NAME_RE.test(name)) {
    throw new Error(`lab name '${name}' is invalid: use 1-16 lowercase letters, digits and '-', starting and ending with a letter or digit`);
  }
  return name;
}

export function labDir(name: string): string {
  return join(labRoot(), validateLabName(name));
}

export function labStateFile(name: string): string {
  return join(labDir(name), LAB_STATE_FILE);
}

/** A process `up` started (or the runtime started for a pod): identified by pid AND start time, so a recycled pid is never signalled. */
export const processRefSchema = z.object({
  pid: z.number().int().positive(),
  /** Field 22 of /proc/<pid>/stat (clock ticks after boot) when it was recorded. */
  startTime: z.string().optional(),
  logFile: z.string(),
});
export type ProcessRef = z.infer<typeof processRefSchema>;

/** An etcd of a lab cluster (the mesh's, or its Kubernetes etcd). */
export const labEtcdSchema = z.object({
  /** What processes in the lab's networks connect to (https://10.c.0.250:2379; the Kubernetes etcd: https://127.0.0.1:2381, only inside the control-plane namespace). */
  endpoints: z.array(z.string()),
  /** What a process in the root namespace connects to (the TLS unix socket), with serverName 'localhost'. */
  localEndpoints: z.array(z.string()).optional(),
  /** TLS server name to verify on localEndpoints ('localhost'). */
  localServerName: z.string().optional(),
  caFile: z.string(),
  /** Client certificate of the root user. */
  certFile: z.string(),
  keyFile: z.string(),
  /** Directory of the etcd (data/, pki/ with users/<user>.crt|key). */
  dir: z.string().optional(),
  pid: z.number().int().positive().optional(),
  startTime: z.string().optional(),
  logFile: z.string(),
});
export type LabEtcd = z.infer<typeof labEtcdSchema>;

export const labClusterSchema = z.object({
  name: z.string(),
  id: z.number().int().positive(),
  /** The control-plane namespace (etcds, apiserver, DNS). */
  netns: z.string(),
  /** The control-plane address on the cluster's underlay (10.c.0.250). */
  ip: z.string(),
  /** Directory of the cluster in the lab dir. */
  dir: z.string().optional(),
  /** The mesh's etcd (the clustermesh kvstore). An installed or bare lab (the install's etcd is a pod) has none: this is then its Kubernetes etcd, as kubeEtcd. */
  etcd: labEtcdSchema,
  /** The Kubernetes etcd: the store of the cluster's Kubernetes API (user `kube`), separate from the mesh's; absent in labs of an older clustermesh (one etcd for both). */
  kubeEtcd: labEtcdSchema.optional(),
  apiserver: z.object({
    pid: z.number().int().positive().optional(),
    startTime: z.string().optional(),
    logFile: z.string(),
    etcdConfig: z.string().optional(),
  }),
  /** One YAML file per remote cluster (endpoints, trusted-ca-file, cert-file, key-file). */
  remoteConfigDir: z.string(),
  /** The cluster DNS Service IP (10.96.0.10) once DNS runs. */
  dnsIP: z.string().optional(),
  /** Pod CIDRs are per node; the Service CIDR is per cluster. */
  serviceCIDR: z.string().optional(),
  /** The cluster's Kubernetes API server (src/lab/kube-apiserver.ts): its URL (a context of the lab's kubeconfig). */
  kubeApi: z
    .object({
      url: z.string(),
      pid: z.number().int().positive().optional(),
      startTime: z.string().optional(),
      logFile: z.string(),
      /** Directory of its config and PKI (pki/ca.crt, admin.crt|key). */
      dir: z.string(),
    })
    .optional(),
  /** Extra processes of the cluster (e.g. the DNS server), by name. */
  processes: z.record(z.string(), processRefSchema).optional(),
});
export type LabCluster = z.infer<typeof labClusterSchema>;

export const labNodeSchema = z.object({
  /** e.g. 'node1' (unique within its cluster). */
  name: z.string(),
  /** Cluster name. */
  cluster: z.string(),
  netns: z.string(),
  underlayIP: z.string(),
  podCIDR: z.string(),
  gatewayIP: z.string().optional(),
  pinDir: z.string(),
  /** The agent's local API (HTTP on a unix socket). */
  socket: z.string(),
  stateDir: z.string(),
  configFile: z.string(),
  /** The agent's log. */
  logFile: z.string(),
  /** The agent's pid. */
  pid: z.number().int().positive().optional(),
  startTime: z.string().optional(),
  /** The node runtime ("kubelet") of this node. */
  kubelet: processRefSchema.optional(),
  /** Directory of the node in the lab dir. */
  dir: z.string().optional(),
});
export type LabNode = z.infer<typeof labNodeSchema>;

export const labStateSchema = z.object({
  version: z.literal(LAB_STATE_VERSION),
  name: z.string(),
  createdAt: z.string(),
  /** pid of the `lab up` that built the lab (gone once it finished). */
  pid: z.number().int().positive(),
  /** Start time of that `up` process (see processStartTime). */
  startTime: z.string().optional(),
  phase: z.enum(['starting', 'up', 'failed']),
  /** When phase is 'failed': what failed. */
  error: z.string().optional(),
  /** Milliseconds from the start of `up` to every agent connected to every cluster. */
  readyMs: z.number().optional(),
  spec: z
    .object({
      clusters: z.number().int().positive(),
      nodes: z.number().int().positive(),
      latency: z.string().optional(),
      loss: z.string().optional(),
    })
    .optional(),
  /** The local source of the lab's agents, apiservers, kubelets: 'kubernetes' (each cluster's Kubernetes API), what every `up` writes; 'store' or absent: a lab of an older clustermesh (its private store in etcd), which only `down` still handles. */
  source: z.enum(['store', 'kubernetes']).optional(),
  /** The lab directory. */
  dir: z.string().optional(),
  /** Root of the project's bpffs; every node's pins are in pinDir under it. */
  bpffsRoot: z.string(),
  router: z.object({ netns: z.string() }),
  /** Every network namespace the lab created (router, nodes, control planes), in creation order. */
  namespaces: z.array(z.string()).default([]),
  /** Every bpffs pin directory the lab created. */
  pinDirs: z.array(z.string()).default([]),
  /** Every long-running process `up` started (etcd, apiserver, agent, kubelet, and e.g. DNS), by pid and start time. */
  processes: z.array(processRefSchema.extend({ name: z.string() })).default([]),
  /** /etc/netns/<ns> directories created outside of pod records. */
  etcNetnsDirs: z.array(z.string()).default([]),
  clusters: z.array(labClusterSchema).default([]),
  nodes: z.array(labNodeSchema).default([]),
  /** The kubeconfig `up` wrote: one context per cluster, named like the cluster. */
  kubeconfig: z.string().optional(),
  /** An installed (or --bare) lab: the mesh is (to be) `clustermesh install`ed on every cluster (agents and apiservers are pods in this namespace). */
  install: z.object({ namespace: z.string(), image: z.string() }).optional(),
  /** up --prometheus: where its UI answers (this namespace), its config and log. */
  prometheus: z.object({ url: z.string(), configFile: z.string(), logFile: z.string() }).optional(),
});
export type LabState = z.infer<typeof labStateSchema>;

export class NoSuchLabError extends Error {
  constructor(readonly labName: string) {
    super(`no lab named ${labName}; start one with: clustermesh lab up --lab ${labName}`);
    this.name = 'NoSuchLabError';
  }
}

/** The state of lab `name`; throws NoSuchLabError when there is none, and names the file when it is unreadable. */
export function readLabState(name: string = DEFAULT_LAB_NAME): LabState {
  const file = labStateFile(name);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NoSuchLabError(name);
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`lab state ${file} is not valid JSON (${(err as Error).message}); remove the lab with: clustermesh lab down --lab ${name}`);
  }
  const parsed = labStateSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Error(`lab state ${file}: field ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return parsed.data;
}

/** Names of every lab that has a state file under labRoot(). */
export function listLabs(): string[] {
  let entries: string[];
  try {
    entries = readdirSync(labRoot());
  } catch {
    return [];
  }
  return entries.filter((e) => LAB_NAME_RE.test(e) && existsSync(join(labRoot(), e, LAB_STATE_FILE))).sort();
}

/** Writes the state atomically (temp file + rename), creating the lab dir when missing. */
export function writeLabState(state: LabState): void {
  const dir = labDir(state.name);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, LAB_STATE_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(labStateSchema.parse(state), null, 2) + '\n');
  renameSync(tmp, file);
}

/** Field 22 of /proc/<pid>/stat: when the process started (ticks since boot); undefined when it is gone. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may hold spaces and parentheses: count from the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19];
  } catch {
    return undefined;
  }
}

/** True when the process recorded as (pid, startTime) still runs (the same process, not a recycled pid). */
export function sameProcessAlive(ref: { pid?: number | undefined; startTime?: string | undefined }): boolean {
  if (ref.pid === undefined) return false;
  const now = processStartTime(ref.pid);
  if (now === undefined) return false;
  // A zombie is not alive.
  try {
    const stat = readFileSync(`/proc/${ref.pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return false;
  } catch {
    return false;
  }
  return ref.startTime === undefined || ref.startTime === now;
}

/**
 * How a process in the root network namespace (the CLI) reaches cluster `c`'s
 * etcd as root: its TLS unix socket when recorded (the control-plane address
 * is only routed inside the lab), else the network endpoint.
 */
export function clusterKvConfig(c: LabCluster, timeoutMs = 5000): KvConnectionConfig {
  return etcdKvConfig(c.etcd, timeoutMs);
}

/** The same for any recorded etcd of a lab (e.g. a cluster's kubeEtcd). */
export function etcdKvConfig(e: LabEtcd, timeoutMs = 5000): KvConnectionConfig {
  const local = e.localEndpoints?.length ? e.localEndpoints : undefined;
  return {
    endpoints: local ?? e.endpoints,
    caFile: e.caFile,
    certFile: e.certFile,
    keyFile: e.keyFile,
    timeoutMs,
    ...(local && e.localServerName ? { serverName: e.localServerName } : {}),
  };
}

/** The cluster of a lab by name (or 'cluster<N>' / N as id); a clear error listing the lab's clusters otherwise. */
export function findCluster(state: LabState, name: string): LabCluster {
  const c = state.clusters.find((x) => x.name === name || String(x.id) === name);
  if (!c) throw new Error(`lab ${state.name} has no cluster '${name}'; its clusters are: ${state.clusters.map((x) => x.name).join(', ') || '(none yet)'}`);
  return c;
}
