/**
 * A Kubernetes-API-compatible server for the lab (test-bed code: production
 * code never imports src/lab). Real `kubectl` and `@kubernetes/client-node`
 * talk to it; it stores objects in an etcd (in a lab, the cluster's Kubernetes
 * etcd: its own, not the mesh's; see src/lab/kube-api-procs.ts).
 *
 * Design
 * - Storage (store.ts): one etcd key per object under its own prefix
 *   (default `clustermesh/kube/`): `<prefix><group|core>/<plural>/[<ns>/]<name>`.
 *   resourceVersion = the key's etcd mod revision; a list's resourceVersion =
 *   the etcd revision it was read at, so a watch continues from it exactly.
 *   All access goes through the project's KvClient (mutual TLS).
 * - Watch: one etcd watch per request from resourceVersion+1; ADDED/MODIFIED
 *   from the stored envelope's op, DELETED with the last state; label/field
 *   selectors turn objects leaving or entering the selection into
 *   DELETED/ADDED. A compacted revision ends the stream with an ERROR event
 *   carrying a 410 Expired Status (what client-go and client-node re-list on);
 *   BOOKMARK events when `allowWatchBookmarks=true`.
 * - Semantics of a real apiserver where clients see them: uid,
 *   creationTimestamp, generation (bumped by spec changes), optimistic
 *   concurrency (409 Conflict on a stale resourceVersion), the status
 *   subresource, finalizers and deletionTimestamp, namespace deletion (a
 *   namespace controller removes its contents, then the namespace), garbage
 *   collection of objects whose ownerReferences name a deleted object, CRDs
 *   whose kinds are served as soon as they are created, dryRun=All (kubectl
 *   diff), JSON merge, JSON and strategic merge patches (kubectl apply), an
 *   approximate server-side apply (no field ownership), Service cluster IPs.
 * - kubectl: discovery (/api, /apis, group-version resource lists), server-side
 *   printing (meta.k8s.io Table with the columns of a real cluster, so
 *   `get -o wide` looks familiar), OpenAPI v3 documents that advertise
 *   `fieldValidation`, so `kubectl apply` (validate=strict) leaves validation to
 *   this server (validate.ts), and `Status` error bodies (errors.ts).
 * - Auth: HTTPS with client certificates of the server's CA (the certificate's
 *   CN is the user), or service-account bearer tokens (tokens.ts: ES256 JWTs
 *   signed with the cluster's `sa.key`, issued by serviceaccounts/NAME/token,
 *   checked on every request). Every authenticated user may do everything:
 *   no RBAC (Roles and bindings are stored, not enforced).
 *
 * Simplifications: every watch request lists its prefix once (to know the
 * last state of objects it may see deleted), there is no shared watch cache;
 * `continue` pages read the current state, not the first page's revision;
 * the `resourceVersion` of a list request is ignored (always the latest).
 *
 * Controllers (Deployment, EndpointSlice) are clients of this server, in
 * src/lab/controllers; `lab up` runs both per cluster (src/lab/kube-apiserver.ts).
 *
 * Not (yet): RBAC enforcement,
 * protobuf, aggregated discovery, OpenAPI v2, field ownership (managedFields),
 * graceful pod deletion, multiple versions of one CRD with conversion.
 */

import { chmod, mkdir, rename, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';

import { createCA, issueCert, type CertFiles, type CertificateAuthority } from '../../kvstore/pki.ts';
import type { KvClient } from '../../kvstore/index.ts';
import { KubeApiServer, type KubeApiServerOptions } from './server.ts';
import { newServiceAccountKey } from './tokens.ts';

export { KubeApiServer, SERVER_VERSION } from './server.ts';
export type { KubeApiServerOptions } from './server.ts';
export { ApiError } from './errors.ts';
export { ResourceRegistry, BUILTIN_RESOURCES } from './resources.ts';
export type { ResourceType } from './resources.ts';
export { mergePatch, jsonPatch, strategicMergePatch } from './patch.ts';
export { parseLabelSelector, labelsMatch } from './selectors.ts';

/** The default etcd key prefix of the lab's Kubernetes objects (in each cluster's Kubernetes etcd, not the mesh's). */
export const KUBE_PREFIX = 'clustermesh/kube/';

export interface KubeApiPki {
  ca: CertificateAuthority;
  server: CertFiles;
  /** Client certificate of the `admin` user (kubectl). */
  admin: CertFiles;
  /** The key service-account tokens are signed with (`sa.key`, PEM; see tokens.ts). */
  serviceAccountKeyFile: string;
}

/**
 * The CA, server certificate (localhost, kubernetes.default…, 127.0.0.1 and
 * `ipAddresses`), an `admin` client certificate and the service-account
 * signing key, in `dir` (kept when present).
 */
export async function createKubeApiPki(dir: string, opts: { clusterName: string; ipAddresses?: string[]; dnsNames?: string[] }): Promise<KubeApiPki> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const caFile = join(dir, 'ca.crt');
  const ca: CertificateAuthority = existsSync(caFile) && existsSync(join(dir, 'ca.key'))
    ? { commonName: `clustermesh-${opts.clusterName}-kube-ca`, certFile: caFile, keyFile: join(dir, 'ca.key') }
    : await createCA(dir, `clustermesh-${opts.clusterName}-kube-ca`);
  const existing = (name: string): CertFiles | undefined =>
    existsSync(join(dir, `${name}.crt`)) && existsSync(join(dir, `${name}.key`)) ? { certFile: join(dir, `${name}.crt`), keyFile: join(dir, `${name}.key`), caFile: ca.certFile } : undefined;
  const [server, admin] = await Promise.all([
    existing('apiserver') ??
      issueCert(ca, {
        commonName: 'kube-apiserver',
        dnsNames: ['localhost', 'kubernetes', 'kubernetes.default', 'kubernetes.default.svc', 'kubernetes.default.svc.cluster.local', ...(opts.dnsNames ?? [])],
        ipAddresses: ['127.0.0.1', ...(opts.ipAddresses ?? [])],
        usage: 'server',
        outDir: dir,
        name: 'apiserver',
      }),
    existing('admin') ?? issueCert(ca, { commonName: 'admin', usage: 'client', outDir: dir, name: 'admin' }),
  ]);
  const serviceAccountKeyFile = join(dir, 'sa.key');
  if (!existsSync(serviceAccountKeyFile)) {
    await writeFile(`${serviceAccountKeyFile}.tmp`, newServiceAccountKey(), { mode: 0o600 });
    await chmod(`${serviceAccountKeyFile}.tmp`, 0o600);
    await rename(`${serviceAccountKeyFile}.tmp`, serviceAccountKeyFile);
  }
  return { ca, server, admin, serviceAccountKeyFile };
}

export interface KubeconfigCluster {
  /** Cluster and context name. */
  name: string;
  server: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  /** Default namespace of the context. */
  namespace?: string;
}

/** Writes a kubeconfig with one context per cluster (the first is current). */
export async function writeKubeconfig(path: string, clusters: KubeconfigCluster[]): Promise<void> {
  if (clusters.length === 0) throw new Error('kubeconfig: no clusters');
  const doc = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: clusters.map((c) => ({ name: c.name, cluster: { server: c.server, 'certificate-authority': resolve(c.caFile) } })),
    users: clusters.map((c) => ({ name: `${c.name}-admin`, user: { 'client-certificate': resolve(c.certFile), 'client-key': resolve(c.keyFile) } })),
    contexts: clusters.map((c) => ({ name: c.name, context: { cluster: c.name, user: `${c.name}-admin`, ...(c.namespace !== undefined ? { namespace: c.namespace } : {}) } })),
    'current-context': clusters[0]!.name,
    preferences: {},
  };
  await writeFile(path, stringify(doc), { mode: 0o600 });
}

export interface StartKubeApiOptions extends Omit<KubeApiServerOptions, 'tls' | 'prefix'> {
  kv: KvClient;
  /** Directory for the PKI and the kubeconfig. */
  dir: string;
  clusterName: string;
  prefix?: string;
}

/** Creates the PKI, starts the server and writes `<dir>/kubeconfig` for it. */
export async function startKubeApi(opts: StartKubeApiOptions): Promise<{ server: KubeApiServer; pki: KubeApiPki; kubeconfig: string }> {
  const pki = await createKubeApiPki(join(opts.dir, 'pki'), { clusterName: opts.clusterName, ...(opts.host !== undefined && opts.host !== '127.0.0.1' ? { ipAddresses: [opts.host] } : {}) });
  const server = new KubeApiServer({ serviceAccountKeyFile: pki.serviceAccountKeyFile, ...opts, prefix: opts.prefix ?? KUBE_PREFIX, tls: { certFile: pki.server.certFile, keyFile: pki.server.keyFile, caFile: pki.ca.certFile } });
  await server.start();
  const kubeconfig = join(opts.dir, 'kubeconfig');
  await writeKubeconfig(kubeconfig, [{ name: opts.clusterName, server: server.url, caFile: pki.ca.certFile, certFile: pki.admin.certFile, keyFile: pki.admin.keyFile }]);
  return { server, pki, kubeconfig };
}
