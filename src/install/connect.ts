// `clustermesh connect / disconnect --context C1 --destination-context C2`:
// clusters installed with `clustermesh install`, connected through their
// Kubernetes APIs. Each side's remote-cluster entry goes into the other
// side's Secret `clustermesh-remotes`, in Cilium's layout (one key per remote
// cluster holding its etcd client config, and `<cluster>.etcd-client-ca.crt`,
// `<cluster>.etcd-client.crt`, `<cluster>.etcd-client.key` beside it). The
// agents mount that Secret as their remote-cluster directory and watch it, so
// nothing restarts.
//
// Everything is read and checked before the first write: both installs
// (names, IDs, maxConnectedClusters), the remotes each side already has (no
// two with one ID), and that the endpoints answer with the expected cluster's
// cluster-config when dialled with the very certificates the agents will use
// (so an unreachable endpoint, or a CA that does not verify the server, is a
// refusal naming what was tried). The two Secrets are then written one after
// the other; if the second write fails, the first is put back.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, KubernetesObjectApi, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { CliError, EXIT_ERROR } from '../cli/common.ts';
import { connectProblem, verifyClusterConfig } from '../cli/clustermesh-config.ts';
import { KvClient } from '../kvstore/client.ts';
import { apiMessage, describe, read } from './apply.ts';
import { ETCD_PORT, NAMES, PATHS, etcdServiceNames } from './manifests.ts';

/** The Secret keys of one remote cluster in `clustermesh-remotes`. */
export function remoteKeys(cluster: string): { config: string; ca: string; cert: string; key: string } {
  return { config: cluster, ca: `${cluster}.etcd-client-ca.crt`, cert: `${cluster}.etcd-client.crt`, key: `${cluster}.etcd-client.key` };
}

/** What connect knows of one installed cluster. */
export interface InstalledCluster {
  context: string;
  kc: KubeConfig;
  namespace: string;
  name: string;
  id: number;
  maxConnectedClusters: number;
  /** How other clusters reach its etcd. */
  endpoints: string[];
  /** The TLS name to verify when dialling those endpoints (the Service's name when the endpoints are node addresses). */
  serverName: string | undefined;
  /** PEM of the `remote` user's client certificate and its CA. */
  remote: { ca: string; cert: string; key: string };
  /** The Secret `clustermesh-remotes` as read (data base64). */
  remotes: KubernetesObject & { data?: Record<string, string> };
}

const decode = (s: string | undefined): string => Buffer.from(s ?? '', 'base64').toString('utf8');

/**
 * Reads an install of `namespace` through `kc`; `endpoints` overrides what
 * the Service says (looked up only when `resolveEndpoints`: disconnect needs
 * none). Errors name the context and what is missing.
 */
export async function readInstalledCluster(kc: KubeConfig, namespace: string, endpoints: string[] | undefined, flag: string, resolveEndpoints = true): Promise<InstalledCluster> {
  const context = kc.getCurrentContext();
  const api = KubernetesObjectApi.makeApiClient(kc);
  const where = `${flag} ${context}`;
  const get = async (kind: string, name: string) => {
    const o = await read(api, { apiVersion: 'v1', kind, metadata: { name, namespace } });
    if (!o) throw new CliError(`${where}: no ${kind.toLowerCase()}/${name} in namespace ${namespace}: clustermesh is not installed there (run clustermesh install --context ${context} first)`);
    return o as KubernetesObject & { data?: Record<string, string>; spec?: Record<string, unknown>; status?: Record<string, unknown> };
  };
  const cm = await get('ConfigMap', NAMES.config);
  const name = cm.data?.['cluster-name'];
  const id = Number(cm.data?.['cluster-id']);
  const max = Number(cm.data?.['max-connected-clusters'] ?? 255);
  if (!name || !Number.isInteger(id)) throw new CliError(`${where}: configmap/${NAMES.config} lacks cluster-name or cluster-id (re-run clustermesh install)`);
  const secret = await get('Secret', NAMES.client('remote'));
  const remote = { ca: decode(secret.data?.['ca.crt']), cert: decode(secret.data?.['tls.crt']), key: decode(secret.data?.['tls.key']) };
  const remotes = await get('Secret', NAMES.remotes);
  let eps = endpoints;
  let serverName: string | undefined;
  if (!eps?.length && resolveEndpoints) {
    const svc = await get('Service', NAMES.apiserver);
    const spec = svc.spec as { type?: string; ports?: Array<{ port?: number; nodePort?: number }> };
    serverName = etcdServiceNames({ namespace })[2];
    if (spec.type === 'NodePort') {
      const port = spec.ports?.[0]?.nodePort;
      const nodes = await kc.makeApiClient(CoreV1Api).listNode();
      const ips = nodes.items.flatMap((n) => (n.status?.addresses ?? []).filter((a) => a.type === 'InternalIP').map((a) => a.address));
      if (!port || ips.length === 0) throw new CliError(`${where}: service/${NAMES.apiserver} is a NodePort but ${!port ? 'has no node port yet' : 'the cluster lists no node with an InternalIP'}; give the endpoint with ${flag === '--context' ? '--endpoint' : '--destination-endpoint'}`);
      eps = ips.map((ip) => `https://${ip}:${port}`);
    } else if (spec.type !== 'LoadBalancer') {
      throw new CliError(`${where}: service/${NAMES.apiserver} is ${spec.type ?? 'ClusterIP'}: other clusters cannot reach this cluster's etcd; expose it with clustermesh enable --context ${context} (or give the endpoint with ${flag === '--context' ? '--endpoint' : '--destination-endpoint'})`);
    } else {
      const ingress = ((svc.status as { loadBalancer?: { ingress?: Array<{ ip?: string; hostname?: string }> } } | undefined)?.loadBalancer?.ingress ?? []).map((i) => i.ip ?? i.hostname).filter((x): x is string => !!x);
      if (ingress.length === 0) throw new CliError(`${where}: service/${NAMES.apiserver} (LoadBalancer) has no address yet; wait for it or give the endpoint with ${flag === '--context' ? '--endpoint' : '--destination-endpoint'}`);
      eps = ingress.map((h) => `https://${h}:${ETCD_PORT}`);
    }
  }
  eps ??= [];
  for (const e of eps) if (!/^https:\/\/[^/\s]+$/.test(e.replace(/\/$/, ''))) throw new CliError(`${flag === '--context' ? '--endpoint' : '--destination-endpoint'} ${e}: must be https://host:port`);
  return { context, kc, namespace, name, id, maxConnectedClusters: max, endpoints: eps.map((e) => e.replace(/\/$/, '')), serverName, remote, remotes };
}

/** Annotation of `clustermesh-remotes`: the IDs of the clusters it holds (Cilium's layout has no place for them). */
export const REMOTE_IDS_ANNOTATION = 'clustermesh.io/remote-cluster-ids';

function remoteIds(c: InstalledCluster): Record<string, number> {
  try {
    return JSON.parse(c.remotes.metadata?.annotations?.[REMOTE_IDS_ANNOTATION] ?? '{}') as Record<string, number>;
  } catch {
    return {};
  }
}

/** The remote clusters an install's Secret holds, with their IDs where connect recorded them. */
function configuredRemotes(c: InstalledCluster): Map<string, number | undefined> {
  const ids = remoteIds(c);
  const out = new Map<string, number | undefined>();
  for (const key of Object.keys(c.remotes.data ?? {})) if (!key.includes('.')) out.set(key, ids[key]);
  return out;
}

/**
 * Dials `c`'s endpoints with its `remote` certificate, as another cluster's
 * agents will, and checks its cluster-config names `c` with its ID. At least
 * one endpoint must answer; the error lists every one tried.
 */
export async function probeCluster(c: InstalledCluster): Promise<string[]> {
  const dir = await mkdtemp(join(tmpdir(), 'clustermesh-connect-'));
  try {
    const files = { caFile: join(dir, 'ca.crt'), certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key') };
    await writeFile(files.caFile, c.remote.ca);
    await writeFile(files.certFile, c.remote.cert);
    await writeFile(files.keyFile, c.remote.key, { mode: 0o600 });
    const ok: string[] = [];
    const failed: string[] = [];
    for (const e of c.endpoints) {
      const kv = new KvClient({ endpoints: [e], ...files, timeoutMs: 5000, ...(c.serverName ? { serverName: c.serverName } : {}) });
      try {
        await verifyClusterConfig(kv, c.name, e, c.id);
        ok.push(e);
      } catch (err) {
        failed.push(`${e}: ${(err as Error).message}`);
      } finally {
        await kv.close();
      }
    }
    if (ok.length === 0) {
      throw new CliError(`cluster ${c.name} (${c.context}) cannot be reached as its remote clusters' agents would reach it (client certificate 'remote', CA of its install${c.serverName ? `, TLS name ${c.serverName}` : ''}); tried:\n  ${failed.join('\n  ')}`, EXIT_ERROR);
    }
    return ok;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The Secret data that makes `remote` a remote cluster (base64 values). */
function remoteEntry(remote: InstalledCluster): Record<string, string> {
  const k = remoteKeys(remote.name);
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const config = stringify({
    endpoints: remote.endpoints,
    'trusted-ca-file': `${PATHS.remotes}/${k.ca}`,
    'cert-file': `${PATHS.remotes}/${k.cert}`,
    'key-file': `${PATHS.remotes}/${k.key}`,
    ...(remote.serverName ? { 'server-name': remote.serverName } : {}),
  });
  return { [k.config]: b64(config), [k.ca]: b64(remote.remote.ca), [k.cert]: b64(remote.remote.cert), [k.key]: b64(remote.remote.key) };
}

function without(data: Record<string, string> | undefined, cluster: string): Record<string, string> {
  const keys = new Set(Object.values(remoteKeys(cluster)));
  return Object.fromEntries(Object.entries(data ?? {}).filter(([k]) => !keys.has(k)));
}

/** Replaces the data of each Secret in order; when a write fails, the ones already written get their old data back. */
async function writeAll(changes: Array<{ c: InstalledCluster; data: Record<string, string>; ids: Record<string, number> }>): Promise<void> {
  const written: Array<{ c: InstalledCluster; old: Record<string, string> | undefined }> = [];
  for (const { c, data, ids } of changes) {
    const api = KubernetesObjectApi.makeApiClient(c.kc);
    const metadata = { ...c.remotes.metadata, annotations: { ...(c.remotes.metadata?.annotations ?? {}), [REMOTE_IDS_ANNOTATION]: JSON.stringify(ids) } };
    try {
      await api.replace({ ...c.remotes, metadata, data });
      written.push({ c, old: c.remotes.data });
    } catch (err) {
      const undone: string[] = [];
      for (const w of written.reverse()) {
        const wapi = KubernetesObjectApi.makeApiClient(w.c.kc);
        try {
          const now = await read(wapi, w.c.remotes as never);
          await wapi.replace({ ...(now ?? w.c.remotes), metadata: { ...(now ?? w.c.remotes).metadata, annotations: w.c.remotes.metadata?.annotations ?? {} }, data: w.old ?? {} } as never);
          undone.push(`${w.c.name}: restored`);
        } catch (e2) {
          undone.push(`${w.c.name}: could not restore (${apiMessage(e2)}); check ${describe(w.c.remotes as never)} there`);
        }
      }
      throw new CliError(`writing ${describe(c.remotes as never)} in ${c.context}: ${apiMessage(err)}${undone.length ? ` (${undone.join('; ')})` : ''}`);
    }
  }
}

/** Connects `a` and `b` both ways, or only a → b (`a` imports `b`) when `unicast`. */
export async function connectInstalled(a: InstalledCluster, b: InstalledCluster, unicast: boolean): Promise<Array<[string, string]>> {
  return connectInstalledPairs(unicast ? [[a, b]] : [[a, b], [b, a]]);
}

/** Every ordered pair of `clusters` (`--connection-mode mesh`). */
export function meshPairs(clusters: readonly InstalledCluster[]): Array<[InstalledCluster, InstalledCluster]> {
  return clusters.flatMap((s) => clusters.filter((d) => d !== s).map((d): [InstalledCluster, InstalledCluster] => [s, d]));
}

/**
 * Makes each pair's destination a remote cluster of its source. Every pair is
 * checked first (one maxConnectedClusters among all, names and IDs unique,
 * also against the remotes each source already has and those this call adds),
 * every destination is probed as its importers' agents will dial it; only
 * then is each source's Secret written once, all of a source's new entries
 * together.
 */
export async function connectInstalledPairs(pairs: ReadonlyArray<readonly [InstalledCluster, InstalledCluster]>): Promise<Array<[string, string]>> {
  const all = [...new Set(pairs.flat())];
  const max = new Map(all.map((c) => [c.maxConnectedClusters, c] as const));
  if (max.size > 1) {
    const [x, y] = [...max.values()] as [InstalledCluster, InstalledCluster];
    throw new CliError(`clusters ${x.name} and ${y.name} have different maxConnectedClusters (${x.maxConnectedClusters} and ${y.maxConnectedClusters}); a mesh needs one value (re-install one with --max-connected-clusters)`, EXIT_ERROR);
  }
  for (const [i, c] of all.entries()) {
    for (const o of all.slice(i + 1)) {
      if (c.name === o.name) throw new CliError(`contexts ${c.context} and ${o.context} both hold cluster ${c.name}; names must be unique in a mesh`, EXIT_ERROR);
      if (c.id === o.id) throw new CliError(`clusters ${c.name} and ${o.name} both have cluster ID ${c.id}; IDs must be unique in a mesh (re-install one with another --cluster-id)`, EXIT_ERROR);
    }
  }
  // What each source will have: its remotes now, plus this call's destinations, checked one by one.
  const plan = new Map<InstalledCluster, { remotes: Map<string, number | undefined>; add: InstalledCluster[] }>();
  for (const [s, d] of pairs) {
    const p = plan.get(s) ?? { remotes: configuredRemotes(s), add: [] };
    plan.set(s, p);
    const problem = connectProblem({ name: s.name, id: s.id }, { name: d.name, id: d.id }, p.remotes);
    if (problem) throw new CliError(problem, EXIT_ERROR);
    p.remotes.set(d.name, d.id);
    p.add.push(d);
  }
  for (const d of new Set(pairs.map(([, d]) => d))) await probeCluster(d);
  await writeAll(
    [...plan].map(([s, p]) => {
      let data = s.remotes.data ?? {};
      for (const d of p.add) data = { ...without(data, d.name), ...remoteEntry(d) };
      return { c: s, data, ids: { ...remoteIds(s), ...Object.fromEntries(p.add.map((d) => [d.name, d.id])) } };
    }),
  );
  return pairs.map(([s, d]) => [s.name, d.name]);
}

/** Removes each side's entry of the other (or only b from a when `unicast`); returns the pairs that had one. */
export async function disconnectInstalled(a: InstalledCluster, b: InstalledCluster, unicast: boolean): Promise<Array<[string, string, boolean]>> {
  return disconnectInstalledPairs(unicast ? [[a, b]] : [[a, b], [b, a]]);
}

/** Removes each pair's destination from its source's Secret (each Secret written once); returns the pairs that had one. */
export async function disconnectInstalledPairs(pairs: ReadonlyArray<readonly [InstalledCluster, InstalledCluster]>): Promise<Array<[string, string, boolean]>> {
  const had = pairs.map(([s, d]) => (s.remotes.data ?? {})[remoteKeys(d.name).config] !== undefined);
  const plan = new Map<InstalledCluster, string[]>();
  for (const [i, [s, d]] of pairs.entries()) if (had[i]) plan.set(s, [...(plan.get(s) ?? []), d.name]);
  await writeAll(
    [...plan].map(([s, names]) => ({
      c: s,
      data: names.reduce((data, n) => without(data, n), s.remotes.data ?? {}),
      ids: Object.fromEntries(Object.entries(remoteIds(s)).filter(([n]) => !names.includes(n))),
    })),
  );
  return pairs.map(([s, d], i) => [s.name, d.name, had[i]!]);
}
