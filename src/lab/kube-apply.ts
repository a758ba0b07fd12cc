// `clustermesh lab apply|delete|scale`: a client of the cluster's Kubernetes
// API like kubectl (a shortcut: kubectl with the lab's kubeconfig does the
// same). Every YAML document is sent as it is (the server validates and
// defaults, as for kubectl), first all of them as a server dry run (a refused
// one stops the apply before anything changed), then for real: created when
// absent, else JSON-merge-patched ("configured", or "unchanged" when the
// server's object did not change). Delete removes what
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

/**
 * Creates or merge-patches every document, in order. The server checks every
 * document first (dryRun=All: validated and admitted, nothing stored), so a file
 * with one refused object changes nothing; the first refusal stops with the
 * object and the server's message. An object whose namespace or kind the same
 * file creates (a Namespace, or a CRD before its resources) cannot be checked
 * before that exists: it is checked when it is applied.
 */
export async function applyToApi(kc: KubeConfig, docs: KubernetesObject[]): Promise<ApplyLine[]> {
  const api = KubernetesObjectApi.makeApiClient(kc);
  const namespacesInFile = new Set(docs.filter((o) => o.kind === 'Namespace').map((o) => o.metadata!.name!));
  const kindsInFile = new Set(
    docs.filter((o) => o.kind === 'CustomResourceDefinition').map((o) => (o as { spec?: { names?: { kind?: string } } }).spec?.names?.kind),
  );
  const later = (o: KubernetesObject): boolean => namespacesInFile.has(o.metadata?.namespace ?? '') || kindsInFile.has(o.kind);
  for (const o of docs) {
    try {
      await applyOne(api, o, true);
    } catch (err) {
      if (!later(o)) throw err;
    }
  }
  const lines: ApplyLine[] = [];
  for (const o of docs) lines.push({ ref: refOf(o), action: await applyOne(api, o, false) });
  return lines;
}

/** Creates `o` when absent, else merge-patches it; with `dryRun` the server only checks. */
async function applyOne(api: KubernetesObjectApi, o: KubernetesObject, dryRun: boolean): Promise<'created' | 'configured' | 'unchanged'> {
  const dry = dryRun ? 'All' : undefined;
  try {
    let current: KubernetesObject | undefined;
    try {
      current = await api.read(o as KubernetesObject & { metadata: { name: string } });
    } catch (err) {
      if (code(err) !== 404) throw err;
    }
    if (current === undefined) {
      await api.create(o, undefined, dry);
      return 'created';
    }
    const after = await api.patch(o, undefined, dry, 'clustermesh-lab', undefined, PatchStrategy.MergePatch);
    return after.metadata?.resourceVersion === current.metadata?.resourceVersion ? 'unchanged' : 'configured';
  } catch (err) {
    throw refused(err) ? new ManifestError(`${refOf(o)}: ${message(err)}`) : new Error(`${refOf(o)}: ${message(err)}`);
  }
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
