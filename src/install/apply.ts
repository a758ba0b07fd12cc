// Applying and removing an install through the Kubernetes API
// (@kubernetes/client-node). Two passes: every object is first sent with
// dryRun=All, so the server validates the whole set before anything is
// written; a refusal names the object and changes nothing. Then the writes,
// in order. Objects that hold state (certificates, the remote-cluster files
// `connect` writes, CRDs) are created when absent and left alone otherwise;
// the rest is replaced with what this version renders.
import type { Agent as HttpAgent } from 'node:http';
import type { AgentOptions } from 'node:https';
import { ApiException, KubeConfig, KubernetesObjectApi, type Cluster, type KubernetesObject } from '@kubernetes/client-node';
import { CliError } from '../cli/common.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import { COMMON_LABELS, CREATED_BY_ANNOTATION, NAMES, createOnly, type KubeObject } from './manifests.ts';

/** The cluster of `context` (default: the current one) from --kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster; errors say which file and what is missing. */
export function loadKubeConfig(opts: { kubeconfig?: string | undefined; context?: string | undefined }): KubeConfig {
  try {
    return reuseConnections(loadKubeConnection(opts).kubeConfig);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
}

/**
 * Makes `kc`'s API clients share kept-alive connections. client-node makes a
 * new agent for every request (KubeConfig.createAgent), so every request of an
 * install (some sixty: reads, dry runs, writes) paid a TLS handshake on both
 * sides; with this, one per cluster and credentials. The sockets do not hold
 * the process: CLI commands end with process.exit (src/cli/common.ts).
 */
export function reuseConnections(kc: KubeConfig): KubeConfig {
  const k = kc as unknown as { createAgent(cluster: Cluster | null, o: AgentOptions): HttpAgent };
  const make = k.createAgent.bind(kc);
  const agents = new Map<string, HttpAgent>();
  k.createAgent = (cluster, o) => {
    // What the agent's connections depend on (a token is a header, not part of it).
    const key = JSON.stringify([cluster?.server, cluster?.proxyUrl, o.servername, o.rejectUnauthorized, String(o.ca ?? ''), String(o.cert ?? ''), String(o.key ?? '')]);
    let a = agents.get(key);
    if (!a) agents.set(key, (a = make(cluster, { ...o, keepAlive: true })));
    return a;
  };
  return kc;
}

/** `kind/name` as kubectl prints it. */
export function describe(o: Pick<KubeObject, 'kind' | 'metadata'>): string {
  return `${o.kind.toLowerCase()}/${o.metadata.name}`;
}

/** The HTTP status of a client-node error, or undefined for other errors. */
export function statusOf(err: unknown): number | undefined {
  return err instanceof ApiException ? err.code : undefined;
}

/** The server's message of a client-node error (its Status body), else the error's. */
export function apiMessage(err: unknown): string {
  if (err instanceof ApiException) {
    const body = err.body as unknown;
    let parsed: { message?: string } | undefined;
    try {
      parsed = typeof body === 'string' ? (JSON.parse(body) as { message?: string }) : (body as { message?: string });
    } catch {
      parsed = undefined;
    }
    return `${err.code}: ${parsed?.message ?? String(body)}`;
  }
  return (err as Error).message ?? String(err);
}

export async function read(api: KubernetesObjectApi, o: KubeObject): Promise<KubernetesObject | undefined> {
  try {
    return await api.read({ apiVersion: o.apiVersion, kind: o.kind, metadata: { name: o.metadata.name, ...(o.metadata.namespace ? { namespace: o.metadata.namespace } : {}) } });
  } catch (err) {
    if (statusOf(err) === 404) return undefined;
    throw new CliError(`reading ${describe(o)}: ${apiMessage(err)}`);
  }
}

export type ApplyResult = 'created' | 'configured' | 'kept';

/** What install finds of an earlier install in `namespace`: its settings and CA (PEM), or undefined. */
export async function readExisting(kc: KubeConfig, namespace: string): Promise<{ clusterName?: string; clusterID?: string; ca?: { cert: string; key: string } } | undefined> {
  const api = KubernetesObjectApi.makeApiClient(kc);
  // No namespace, nothing in it (one request instead of two on a fresh cluster).
  if (!(await read(api, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } }))) return undefined;
  const [cm, ca] = (await Promise.all([
    read(api, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: NAMES.config, namespace } }),
    read(api, { apiVersion: 'v1', kind: 'Secret', metadata: { name: NAMES.ca, namespace } }),
  ])) as Array<{ data?: Record<string, string> } | undefined>;
  if (!cm && !ca) return undefined;
  const dec = (s: string | undefined) => (s === undefined ? undefined : Buffer.from(s, 'base64').toString('utf8'));
  const caCert = dec(ca?.data?.['ca.crt']);
  const caKey = dec(ca?.data?.['ca.key']);
  return {
    ...(cm?.data?.['cluster-name'] !== undefined ? { clusterName: cm.data['cluster-name'] } : {}),
    ...(cm?.data?.['cluster-id'] !== undefined ? { clusterID: cm.data['cluster-id'] } : {}),
    ...(caCert && caKey ? { ca: { cert: caCert, key: caKey } } : {}),
  };
}

/** Validates every object with the server (dry run), then writes them in order. Calls `report` per object. */
export async function applyObjects(kc: KubeConfig, objects: readonly KubeObject[], report: (o: KubeObject, r: ApplyResult) => void): Promise<void> {
  const api = KubernetesObjectApi.makeApiClient(kc);
  // A CRD is looked up by name whoever made it; the namespace of a fresh install does not exist yet, and
  // nothing in it does: what is not cluster-scoped is read only when its namespace exists (a fresh install
  // reads a handful of objects instead of every one).
  const absent = new Set<string>();
  const plan: Array<{ o: KubeObject; existing: KubernetesObject | undefined }> = [];
  for (const o of objects) {
    const existing = o.metadata.namespace && absent.has(o.metadata.namespace) ? undefined : await read(api, o);
    if (o.kind === 'Namespace' && !existing) absent.add(o.metadata.name);
    plan.push({ o, existing });
  }
  const namespaceIsNew = absent.size > 0;
  /** Created by this run: removed again if a later write fails, so a failed install leaves nothing behind. */
  const created: KubeObject[] = [];
  for (const dryRun of ['All', undefined] as const) {
    for (const { o, existing } of plan) {
      // The server cannot dry-run a namespaced object into a namespace that a dry run did not create.
      if (dryRun && namespaceIsNew && o.metadata.namespace) continue;
      if (existing && createOnly(o)) {
        if (!dryRun) report(o, 'kept');
        continue;
      }
      try {
        if (!existing) await api.create(o, undefined, dryRun);
        else await api.replace(carryOver(o, existing), undefined, dryRun);
      } catch (err) {
        const what = `${describe(o)}${o.metadata.namespace ? ` in namespace ${o.metadata.namespace}` : ''}: ${apiMessage(err)}`;
        if (dryRun) throw new CliError(`the server refused ${what} (nothing was written)`);
        const undone = await undo(api, created);
        throw new CliError(`writing ${what}; removed again what this run had created (${undone})`);
      }
      if (!dryRun) {
        if (!existing) created.push(o);
        report(o, existing ? 'configured' : 'created');
      }
    }
  }
}

/** Deletes `created` in reverse order; says how it went. */
async function undo(api: KubernetesObjectApi, created: readonly KubeObject[]): Promise<string> {
  const failed: string[] = [];
  for (const o of [...created].reverse()) {
    try {
      await api.delete(o);
    } catch (err) {
      if (statusOf(err) !== 404) failed.push(`${describe(o)}: ${apiMessage(err)}`);
    }
  }
  return failed.length === 0 ? `${created.length} objects` : `could not remove ${failed.join('; ')}`;
}

/** The update of `existing` to `o`: its resourceVersion, and what the server allocated that `o` leaves unset (a Service's cluster IPs). */
function carryOver(o: KubeObject, existing: KubernetesObject): KubeObject {
  const out: KubeObject = { ...o, metadata: { ...o.metadata, resourceVersion: existing.metadata?.resourceVersion } as KubeObject['metadata'] };
  if (o.kind === 'Service') {
    const spec = (existing as { spec?: { clusterIP?: string; clusterIPs?: string[] } }).spec;
    out.spec = { ...(o.spec as object), ...(spec?.clusterIP ? { clusterIP: spec.clusterIP } : {}), ...(spec?.clusterIPs ? { clusterIPs: spec.clusterIPs } : {}) };
  }
  return out;
}

/**
 * Deletes what `objects` names, in reverse order, where it exists and
 * carries the install's labels; CRDs only when install created them; the
 * namespace only when install created it (it carries the labels then).
 */
export async function deleteObjects(kc: KubeConfig, objects: readonly KubeObject[], report: (o: KubeObject) => void): Promise<void> {
  const api = KubernetesObjectApi.makeApiClient(kc);
  for (const o of [...objects].reverse()) {
    const existing = await read(api, o);
    if (!existing) continue;
    const labels = existing.metadata?.labels ?? {};
    const ours = Object.entries(COMMON_LABELS).every(([k, v]) => labels[k] === v);
    if (!ours) continue;
    if (o.kind === 'CustomResourceDefinition' && existing.metadata?.annotations?.[CREATED_BY_ANNOTATION] === undefined) continue;
    try {
      await api.delete(o);
    } catch (err) {
      if (statusOf(err) === 404) continue;
      throw new CliError(`deleting ${describe(o)}: ${apiMessage(err)}`);
    }
    report(o);
  }
}
