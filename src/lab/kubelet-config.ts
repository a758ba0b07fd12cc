// What `lab up` hands each node's runtime ("kubelet"), and the runtime's
// record of each pod it runs: written before the pod's namespace is created
// and after each process starts, so `lab down` (and a restarted kubelet) find
// every namespace and process of every pod, also after a crash.
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
  /** The node's cgroup (src/lab/cgroup.ts): containers run in it, where the agent's socket LB sees them. */
  cgroup: z.string().optional(),
  /** Pods come from this Kubernetes API (the node-local endpoint), status goes there; the Node is registered there. */
  kubeconfig: z.string(),
  /** The node's underlay address (the Node's InternalIP, the pods' hostIP). */
  nodeIP: z.string().optional(),
});
export type KubeletConfig = z.infer<typeof kubeletConfigSchema>;

export const kubeletConfigFile = (nodeDir: string): string => join(nodeDir, 'kubelet.json');

export const podContainerSchema = z.object({
  name: z.string(),
  pid: z.number().int().positive().optional(),
  startTime: z.string().optional(),
  logFile: z.string(),
  restarts: z.number().int().default(0),
  exit: z.string().optional(),
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
