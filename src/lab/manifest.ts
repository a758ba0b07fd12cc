// `lab apply -f` / `lab delete -f` / `lab scale`: Kubernetes YAML into a lab
// cluster's store. Every document of a file is validated first (model parsers,
// the policy parser for policies, a Deployment schema here); any error names
// the file, the document (1-based) and the field, and then nothing of the file
// is written. Deployments are the lab's own controller: they live under
// LAB_DEPLOYMENT_PREFIX in the cluster's etcd and are expanded into Pods
// scheduled over the cluster's nodes (the node with the fewest pods first);
// Services get a ClusterIP from 10.96.0.0/16 (10.96.0.10 stays for DNS).
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { z } from 'zod';
import type { KvClient } from '../kvstore/client.ts';
import {
  ModelError,
  formatPath,
  labelsSchema,
  objectMetaSchema,
  parseObject,
  podSchema,
  type ClusterObject,
  type Pod,
  type Service,
} from '../model/index.ts';
import { parsePolicy } from '../policy/parse.ts';
import { StoreWriter, encodeStoreObject } from '../sources/store/writer.ts';
import { storeKey } from '../sources/store/keys.ts';
import { intToIp, ipToInt, inCidr } from '../cni/config.ts';

export const LAB_DEPLOYMENT_PREFIX = 'clustermesh/lab/v1/deployments/';
export const DEPLOYMENT_ANNOTATION = 'lab.clustermesh.io/deployment';
export const TEMPLATE_HASH_ANNOTATION = 'lab.clustermesh.io/template-hash';
const SERVICE_CIDR = '10.96.0.0/16';
const RESERVED_SERVICE_IPS = new Set(['10.96.0.0', '10.96.0.1', '10.96.0.10', '10.96.255.255']);

export const SUPPORTED_KINDS = ['Namespace', 'Pod', 'Deployment', 'Service', 'NetworkPolicy', 'CiliumNetworkPolicy'] as const;
export type ManifestKind = (typeof SUPPORTED_KINDS)[number];

const deploymentSchema = z
  .object({
    kind: z.literal('Deployment'),
    apiVersion: z.string().optional(),
    metadata: objectMetaSchema,
    spec: z.object({
      replicas: z.number().int().min(0).max(1000).default(1),
      selector: z.object({ matchLabels: labelsSchema }),
      template: z.object({
        metadata: z.object({ labels: labelsSchema.default({}), annotations: z.record(z.string(), z.string()).default({}) }).default({ labels: {}, annotations: {} }),
        spec: z.unknown(),
      }),
    }),
  })
  .superRefine((d, ctx) => {
    for (const [k, v] of Object.entries(d.spec.selector.matchLabels)) {
      if (d.spec.template.metadata.labels[k] !== v) {
        ctx.addIssue({ code: 'custom', path: ['spec', 'template', 'metadata', 'labels'], message: `must include the selector's ${k}: ${v}` });
      }
    }
  });
export type Deployment = z.infer<typeof deploymentSchema>;

/** One validated document. */
export type ManifestObject =
  | { kind: 'Deployment'; doc: number; object: Deployment }
  | { kind: Exclude<ManifestKind, 'Deployment'>; doc: number; object: ClusterObject };

export class ManifestError extends Error {
  constructor(
    readonly file: string,
    readonly problems: readonly string[],
  ) {
    super(`${file}: nothing applied, ${problems.length} error${problems.length === 1 ? '' : 's'}:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'ManifestError';
  }
}

function describeDoc(raw: unknown): string {
  const o = raw as { kind?: unknown; metadata?: { name?: unknown; namespace?: unknown } } | null;
  const kind = typeof o?.kind === 'string' ? o.kind : 'object';
  const name = typeof o?.metadata?.name === 'string' ? o.metadata.name : '<unnamed>';
  const ns = typeof o?.metadata?.namespace === 'string' ? `${o.metadata.namespace}/` : '';
  return `${kind} ${ns}${name}`;
}

function withNamespace(raw: unknown, ns: string): unknown {
  const o = raw as { metadata?: Record<string, unknown> } | null;
  if (typeof o !== 'object' || o === null || typeof o.metadata !== 'object' || o.metadata === null) return raw;
  return o.metadata.namespace === undefined ? { ...o, metadata: { ...o.metadata, namespace: ns } } : raw;
}

/** The Pod a Deployment's template describes (validated as a Pod, fields named from the Deployment). */
function templatePod(d: Deployment, name: string, nodeName?: string): unknown {
  return {
    kind: 'Pod',
    metadata: {
      name,
      namespace: d.metadata.namespace,
      labels: d.spec.template.metadata.labels,
      annotations: { ...d.spec.template.metadata.annotations, [DEPLOYMENT_ANNOTATION]: d.metadata.name, [TEMPLATE_HASH_ANNOTATION]: templateHash(d) },
    },
    spec: { ...(d.spec.template.spec as object), ...(nodeName ? { nodeName } : {}) },
  };
}

export function templateHash(d: Deployment): string {
  return createHash('sha256').update(JSON.stringify(d.spec.template)).digest('hex').slice(0, 10);
}

/**
 * Parses and validates every document of `text`. Throws ManifestError naming
 * file, document (1-based) and field for each problem; nothing is returned then.
 */
export function parseManifest(text: string, file: string, defaultNamespace = 'default'): ManifestObject[] {
  const problems: string[] = [];
  const docs = parseAllDocuments(text, { prettyErrors: true });
  const list = Array.isArray(docs) ? docs : [];
  const out: ManifestObject[] = [];
  const seen = new Set<string>();
  for (const [i, d] of list.entries()) {
    const at = `document ${i + 1}`;
    if (d.errors.length) {
      for (const e of d.errors) {
        const pos = e.linePos?.[0];
        problems.push(`${at}: invalid YAML${pos ? ` at line ${pos.line}, column ${pos.col}` : ''}: ${e.message.split('\n')[0]}`);
      }
      continue;
    }
    const raw0 = d.toJS() as unknown;
    if (raw0 === null || raw0 === undefined) continue; // an empty document (e.g. a trailing ---)
    if (typeof raw0 !== 'object' || Array.isArray(raw0)) {
      problems.push(`${at}: field (root): must be a mapping with kind, metadata and spec`);
      continue;
    }
    const kind = (raw0 as { kind?: unknown }).kind;
    if (!(SUPPORTED_KINDS as readonly unknown[]).includes(kind)) {
      problems.push(`${at} (${describeDoc(raw0)}): field kind: ${typeof kind === 'string' ? `'${kind}' is not supported` : 'missing'}; the lab takes ${SUPPORTED_KINDS.join(', ')}`);
      continue;
    }
    const raw = kind === 'Namespace' ? raw0 : withNamespace(raw0, defaultNamespace);
    const what = `${at} (${describeDoc(raw)})`;
    try {
      let obj: ManifestObject;
      if (kind === 'Deployment') {
        const r = deploymentSchema.safeParse(raw);
        if (!r.success) throw new ModelError(what, r.error.issues.map((x) => ({ path: formatPath(x.path), message: x.message })));
        const dep = r.data;
        // The template must be a valid Pod; its field paths are shown from the Deployment.
        const tp = podSchema.safeParse(templatePod(dep, `${dep.metadata.name}-x`));
        if (!tp.success) {
          throw new ModelError(
            what,
            tp.error.issues.map((x) => ({ path: formatPath(['spec', 'template', ...x.path]), message: x.message })),
          );
        }
        obj = { kind: 'Deployment', doc: i + 1, object: dep };
      } else {
        const object = parseObject(kind as Exclude<ManifestKind, 'Deployment'>, raw, what);
        if (kind === 'NetworkPolicy' || kind === 'CiliumNetworkPolicy') parsePolicy(raw, what);
        if (kind === 'Service') checkServiceIP(object as Service, what);
        obj = { kind: kind as Exclude<ManifestKind, 'Deployment'>, doc: i + 1, object };
      }
      const key = `${obj.kind}/${(obj.object.metadata as { namespace?: string }).namespace ?? ''}/${obj.object.metadata.name}`;
      if (seen.has(key)) problems.push(`${what}: field metadata.name: appears twice in the file`);
      seen.add(key);
      out.push(obj);
    } catch (err) {
      if (err instanceof ModelError) {
        // ModelError's object is the `what` above (document and object); keep only the fields.
        const fields = err.issues.map((x) => `field ${x.path || '(root)'}: ${x.message}`).join('; ');
        problems.push(`${what}: ${fields}`);
      } else problems.push(`${what}: ${(err as Error).message}`);
    }
  }
  if (problems.length) throw new ManifestError(file, problems);
  return out;
}

function checkServiceIP(svc: Service, what: string): void {
  const ip = svc.spec.clusterIP;
  if (ip === undefined || ip === 'None') return;
  if (!inCidr(ip, SERVICE_CIDR)) throw new ModelError(what, [{ path: 'spec.clusterIP', message: `${ip} is outside the Service CIDR ${SERVICE_CIDR}` }]);
}

export function readManifestFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
}

// ---------------------------------------------------------------------------
// Applying

export interface ClusterTarget {
  name: string;
  /** Node names of the cluster, in order. */
  nodes: string[];
  kv: KvClient;
  /** The manifest's file name, for errors. */
  file?: string;
}

export interface ApplyLine {
  /** e.g. 'deployment.apps/echo', 'pod/client', 'service/echo'. */
  ref: string;
  action: 'created' | 'configured' | 'unchanged' | 'deleted' | 'scaled' | 'not found';
  detail?: string;
}

const deploymentKey = (ns: string, name: string): string => `${LAB_DEPLOYMENT_PREFIX}${ns}/${name}`;

async function listPods(kv: KvClient): Promise<Pod[]> {
  return await new StoreWriter(kv).list('Pod');
}

/** The node with the fewest pods (ties: the first in order). */
function pickNode(nodes: readonly string[], pods: readonly Pod[]): string {
  let best = nodes[0]!;
  let bestCount = Infinity;
  for (const n of nodes) {
    const count = pods.filter((p) => p.spec.nodeName === n).length;
    if (count < bestCount) {
      best = n;
      bestCount = count;
    }
  }
  return best;
}

async function allocateClusterIP(kv: KvClient, taken: Set<string>): Promise<string> {
  const services = await new StoreWriter(kv).list('Service');
  for (const s of services) if (s.spec.clusterIP && s.spec.clusterIP !== 'None') taken.add(s.spec.clusterIP);
  const base = ipToInt('10.96.0.0');
  for (let i = 11; i < 65535; i++) {
    const ip = intToIp(base + i);
    if (!taken.has(ip) && !RESERVED_SERVICE_IPS.has(ip)) return ip;
  }
  throw new Error(`no free ClusterIP left in ${SERVICE_CIDR}`);
}

const refOf = (kind: string, name: string): string => `${kind === 'Deployment' ? 'deployment.apps' : kind.toLowerCase()}/${name}`;

/** Applies validated objects in a safe order (namespaces first); returns one line per object. */
export async function applyObjects(target: ClusterTarget, objs: readonly ManifestObject[]): Promise<ApplyLine[]> {
  const writer = new StoreWriter(target.kv);
  // Namespaces the objects live in must exist (or be created by this file).
  const existingNs = new Set((await writer.list('Namespace')).map((n) => n.metadata.name));
  for (const o of objs) if (o.kind === 'Namespace') existingNs.add(o.object.metadata.name);
  const missing = objs.filter((o) => o.kind !== 'Namespace' && !existingNs.has((o.object.metadata as { namespace: string }).namespace));
  if (missing.length) {
    throw new ManifestError(target.file ?? 'the file', missing.map((x) => {
      const xns = (x.object.metadata as { namespace: string }).namespace;
      return `document ${x.doc} (${x.kind} ${xns}/${x.object.metadata.name}): field metadata.namespace: namespace '${xns}' does not exist in ${target.name}; add a Namespace document or apply one first`;
    }));
  }
  // What only the cluster can tell (its nodes, its ClusterIPs), checked before anything is written.
  const problems: string[] = [];
  const services = await writer.list('Service');
  const fileIPs = new Map<string, string>();
  for (const o of objs) {
    const what = `document ${o.doc} (${o.kind} ${(o.object.metadata as { namespace?: string }).namespace ?? ''}/${o.object.metadata.name})`;
    if (o.kind === 'Pod') {
      const node = (o.object as Pod).spec.nodeName;
      if (node && !target.nodes.includes(node)) problems.push(`${what}: field spec.nodeName: no node '${node}' in ${target.name} (its nodes: ${target.nodes.join(', ')})`);
    }
    if (o.kind === 'Service') {
      const svc = o.object as Service;
      const ip = svc.spec.clusterIP;
      if (!ip || ip === 'None') continue;
      const owner = services.find((x) => x.spec.clusterIP === ip && !(x.metadata.namespace === svc.metadata.namespace && x.metadata.name === svc.metadata.name));
      const other = fileIPs.get(ip);
      if (owner || other) problems.push(`${what}: field spec.clusterIP: ${ip} is already the ClusterIP of ${owner ? `${owner.metadata.namespace}/${owner.metadata.name}` : other} in ${target.name}; leave it out to get a free one`);
      fileIPs.set(ip, `${svc.metadata.namespace}/${svc.metadata.name}`);
    }
  }
  if (problems.length) throw new ManifestError(target.file ?? 'the file', problems);
  const order: Record<ManifestKind, number> = { Namespace: 0, NetworkPolicy: 1, CiliumNetworkPolicy: 1, Service: 2, Deployment: 3, Pod: 3 };
  const sorted = [...objs].sort((a, b) => order[a.kind] - order[b.kind] || a.doc - b.doc);
  const out: ApplyLine[] = [];
  const takenIPs = new Set<string>();
  for (const o of sorted) {
    if (o.kind === 'Deployment') {
      out.push(...(await applyDeployment(target, o.object)));
      continue;
    }
    const obj = structuredClone(o.object) as ClusterObject;
    const key = storeKey(obj.kind, obj.metadata as { name: string; namespace?: string });
    const existing = await target.kv.get(key);
    const prev = existing ? (JSON.parse(existing.value) as { status?: unknown; spec?: { clusterIP?: string; nodeName?: string } }) : undefined;
    if (obj.kind === 'Service' && !obj.spec.clusterIP) {
      obj.spec.clusterIP = prev?.spec?.clusterIP ?? (await allocateClusterIP(target.kv, takenIPs));
      takenIPs.add(obj.spec.clusterIP);
    } else if (obj.kind === 'Service' && obj.spec.clusterIP !== 'None') {
      takenIPs.add(obj.spec.clusterIP!);
    }
    if (obj.kind === 'Pod') {
      // A pod stays where it runs; a new one goes to the node with the fewest pods.
      obj.spec.nodeName = obj.spec.nodeName ?? prev?.spec?.nodeName ?? pickNode(target.nodes, await listPods(target.kv));
      // Status belongs to the node's kubelet: kept across re-applies.
      if (prev?.status) (obj as { status: unknown }).status = prev.status;
    }
    const before = existing?.value;
    const stored = await writer.apply(obj);
    const ref = refOf(obj.kind, obj.metadata.name);
    const detail = obj.kind === 'Service' ? `clusterIP ${obj.spec.clusterIP}` : obj.kind === 'Pod' ? `node ${obj.spec.nodeName}` : undefined;
    out.push({ ref, action: before === undefined ? 'created' : before === encodeStoreObject(stored) ? 'unchanged' : 'configured', ...(detail ? { detail } : {}) });
  }
  return out;
}

/** Writes the Deployment and makes its pods match: replicas, template (pods of another template are replaced). */
export async function applyDeployment(target: ClusterTarget, d: Deployment): Promise<ApplyLine[]> {
  const key = deploymentKey(d.metadata.namespace, d.metadata.name);
  const existing = await target.kv.get(key);
  const value = JSON.stringify(d);
  if (existing?.value !== value) await target.kv.put(key, value);
  const changes = await reconcileDeployment(target, d);
  return [{ ref: refOf('Deployment', d.metadata.name), action: existing === undefined ? 'created' : existing.value === value ? 'unchanged' : 'configured', detail: `${d.spec.replicas} replicas${changes ? `; ${changes}` : ''}` }];
}

export async function getDeployment(kv: KvClient, namespace: string, name: string): Promise<Deployment | undefined> {
  const p = await kv.get(deploymentKey(namespace, name));
  return p ? deploymentSchema.parse(JSON.parse(p.value)) : undefined;
}

export async function listDeployments(kv: KvClient): Promise<Deployment[]> {
  const res = await kv.list(LAB_DEPLOYMENT_PREFIX);
  return res.pairs.map((p) => deploymentSchema.parse(JSON.parse(p.value)));
}

function podsOf(d: Deployment, pods: readonly Pod[]): Pod[] {
  return pods.filter((p) => p.metadata.namespace === d.metadata.namespace && p.metadata.annotations[DEPLOYMENT_ANNOTATION] === d.metadata.name);
}

/** Creates and deletes pods of the deployment until it has `replicas` of the current template; says what it did. */
export async function reconcileDeployment(target: ClusterTarget, d: Deployment): Promise<string> {
  const writer = new StoreWriter(target.kv);
  const all = await listPods(target.kv);
  const hash = templateHash(d);
  const mine = podsOf(d, all);
  const stale = mine.filter((p) => p.metadata.annotations[TEMPLATE_HASH_ANNOTATION] !== hash);
  let current = mine.filter((p) => !stale.includes(p));
  let deleted = 0;
  let created = 0;
  for (const p of stale) {
    await writer.deleteObject(p);
    deleted++;
  }
  // Scale down: remove from the node with the most pods of this deployment first, newest names last.
  while (current.length > d.spec.replicas) {
    const counts = new Map<string, number>();
    for (const p of current) counts.set(p.spec.nodeName ?? '', (counts.get(p.spec.nodeName ?? '') ?? 0) + 1);
    const busiest = [...counts.entries()].sort((a, b) => b[1] - a[1])[0]![0];
    const victim = current.filter((p) => (p.spec.nodeName ?? '') === busiest).sort((a, b) => b.metadata.name.localeCompare(a.metadata.name))[0]!;
    await writer.deleteObject(victim);
    current = current.filter((p) => p !== victim);
    deleted++;
  }
  // Every pod of the cluster that stays, for spreading.
  const live = all.filter((p) => !mine.includes(p) || current.includes(p));
  while (current.length < d.spec.replicas) {
    // Spread this deployment first, then the cluster's pods as a whole.
    const nodeCounts = (n: string): [number, number] => [current.filter((p) => p.spec.nodeName === n).length, live.filter((p) => p.spec.nodeName === n).length];
    const node = [...target.nodes].sort((a, b) => {
      const [ma, la] = nodeCounts(a);
      const [mb, lb] = nodeCounts(b);
      return ma - mb || la - lb;
    })[0]!;
    const name = `${d.metadata.name}-${randomBytes(3).toString('hex').slice(0, 5)}`;
    const stored = (await writer.apply(templatePod(d, name, node))) as Pod;
    current.push(stored);
    live.push(stored);
    created++;
  }
  return [created ? `${created} pods created` : '', deleted ? `${deleted} pods deleted` : ''].filter(Boolean).join(', ');
}

/** Deletes what the documents name (a Deployment with its pods). */
export async function deleteObjects(target: ClusterTarget, objs: readonly ManifestObject[]): Promise<ApplyLine[]> {
  const writer = new StoreWriter(target.kv);
  const out: ApplyLine[] = [];
  const order: Record<ManifestKind, number> = { Pod: 0, Deployment: 0, Service: 1, NetworkPolicy: 1, CiliumNetworkPolicy: 1, Namespace: 2 };
  for (const o of [...objs].sort((a, b) => order[a.kind] - order[b.kind] || a.doc - b.doc)) {
    const name = o.object.metadata.name;
    if (o.kind === 'Deployment') {
      const d = o.object;
      const existed = await target.kv.delete(deploymentKey(d.metadata.namespace, name));
      const pods = podsOf(d, await listPods(target.kv));
      for (const p of pods) await writer.deleteObject(p);
      out.push({ ref: refOf('Deployment', name), action: existed || pods.length ? 'deleted' : 'not found', ...(pods.length ? { detail: `${pods.length} pods` } : {}) });
      continue;
    }
    const existed = await writer.deleteObject(o.object);
    out.push({ ref: refOf(o.kind, name), action: existed ? 'deleted' : 'not found' });
  }
  return out;
}

/** `lab scale deployment/NAME --replicas N`. */
export async function scaleDeployment(target: ClusterTarget, namespace: string, name: string, replicas: number): Promise<ApplyLine> {
  const d = await getDeployment(target.kv, namespace, name);
  if (!d) throw new Error(`no deployment ${namespace}/${name} in ${target.name}; see: clustermesh lab get pods --cluster ${target.name}`);
  d.spec.replicas = replicas;
  await target.kv.put(deploymentKey(namespace, name), JSON.stringify(d));
  const changes = await reconcileDeployment(target, d);
  return { ref: refOf('Deployment', name), action: 'scaled', detail: `${replicas} replicas${changes ? `; ${changes}` : ''}` };
}
