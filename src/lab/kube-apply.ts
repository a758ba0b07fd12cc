// `clustermesh lab apply|delete|scale`: a client of the cluster's Kubernetes
// API like kubectl (a shortcut: kubectl with the lab's kubeconfig does the
// same). Every YAML document is sent as it is (the server validates and
// defaults, as for kubectl): created when absent, else JSON-merge-patched ("configured",
// or "unchanged" when the server's object did not change). Delete removes what
// the documents name, in reverse order; a Deployment's pods go with it
// (ownerReferences). Scale patches spec.replicas.
import { AppsV1Api, ApiException, KubernetesObjectApi, PatchStrategy, setHeaderOptions, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';

/** What `lab apply|delete|scale` did to one object. */
export interface ApplyLine {
  /** e.g. 'deployment.apps/echo', 'pod/client', 'service/echo'. */
  ref: string;
  action: 'created' | 'configured' | 'unchanged' | 'deleted' | 'scaled' | 'not found';
  detail?: string;
}

/** Input refused: a document that is no object, or an object the server rejected (4xx); the CLI exits 1 for it. */
export class ManifestError extends Error {
  override name = 'ManifestError';
}

export function readManifestFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
}

const code = (err: unknown): number | undefined => (err instanceof ApiException ? err.code : undefined);

function message(err: unknown): string {
  if (err instanceof ApiException) {
    const body = typeof err.body === 'string' ? (() => { try { return JSON.parse(err.body as string) as { message?: string }; } catch { return undefined; } })() : (err.body as { message?: string } | undefined);
    return body?.message ?? `HTTP ${err.code}`;
  }
  return (err as Error).message;
}

/** The documents of a manifest (empty ones skipped); each must have apiVersion, kind and metadata.name. */
export function manifestDocuments(text: string, file: string): KubernetesObject[] {
  const out: KubernetesObject[] = [];
  for (const [i, doc] of parseAllDocuments(text).entries()) {
    if (doc.errors.length) throw new ManifestError(`${file}: document ${i + 1}: ${doc.errors[0]!.message}`);
    const o = doc.toJS() as KubernetesObject | null;
    if (o === null || o === undefined) continue;
    if (typeof o !== 'object' || !o.apiVersion || !o.kind || !o.metadata?.name) throw new ManifestError(`${file}: document ${i + 1}: needs apiVersion, kind and metadata.name`);
    out.push(o);
  }
  return out;
}

const refOf = (o: KubernetesObject): string => {
  const group = o.apiVersion!.includes('/') ? `.${o.apiVersion!.split('/')[0]}` : '';
  return `${o.kind!.toLowerCase()}${group}/${o.metadata!.name}`;
};

/** Creates or merge-patches every document, in order; the first failure stops with the object and the server's message. */
export async function applyToApi(kc: KubeConfig, docs: KubernetesObject[]): Promise<ApplyLine[]> {
  const api = KubernetesObjectApi.makeApiClient(kc);
  const lines: ApplyLine[] = [];
  for (const o of docs) {
    const ref = refOf(o);
    try {
      let current: KubernetesObject | undefined;
      try {
        current = await api.read(o as KubernetesObject & { metadata: { name: string } });
      } catch (err) {
        if (code(err) !== 404) throw err;
      }
      if (current === undefined) {
        await api.create(o);
        lines.push({ ref, action: 'created' });
      } else {
        const after = await api.patch(o, undefined, undefined, 'clustermesh-lab', undefined, PatchStrategy.MergePatch);
        lines.push({ ref, action: after.metadata?.resourceVersion === current.metadata?.resourceVersion ? 'unchanged' : 'configured' });
      }
    } catch (err) {
      throw refused(err) ? new ManifestError(`${ref}: ${message(err)}`) : new Error(`${ref}: ${message(err)}`);
    }
  }
  return lines;
}

/** The server refused the object itself (bad request, invalid, unknown kind, conflict), not a failure to reach it. */
const refused = (err: unknown): boolean => {
  const c = code(err);
  return c !== undefined && c >= 400 && c < 500 && c !== 401 && c !== 403;
};

/** Deletes what the documents name (reverse order); absent ones are 'not found'. */
export async function deleteFromApi(kc: KubeConfig, docs: KubernetesObject[]): Promise<ApplyLine[]> {
  const api = KubernetesObjectApi.makeApiClient(kc);
  const lines: ApplyLine[] = [];
  for (const o of [...docs].reverse()) {
    const ref = refOf(o);
    try {
      await api.delete(o, undefined, undefined, undefined, undefined, 'Background');
      lines.push({ ref, action: 'deleted' });
    } catch (err) {
      if (code(err) === 404) lines.push({ ref, action: 'not found' });
      else throw new Error(`${ref}: ${message(err)}`);
    }
  }
  return lines;
}

/** Sets spec.replicas of a Deployment. */
export async function scaleInApi(kc: KubeConfig, namespace: string, name: string, replicas: number): Promise<ApplyLine> {
  const ref = `deployment.apps/${name}`;
  try {
    await kc.makeApiClient(AppsV1Api).patchNamespacedDeployment({ namespace, name, body: { spec: { replicas } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  } catch (err) {
    if (code(err) === 404) return { ref, action: 'not found' };
    throw new Error(`${ref}: ${message(err)}`);
  }
  return { ref, action: 'scaled', detail: `replicas ${replicas}` };
}
