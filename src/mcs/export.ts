// A ServiceExport as it travels through the mesh kvstore (issue 18): one key
// per exporting cluster, `cilium/state/serviceexports/v1/<cluster>/<ns>/<name>`,
// whose value is the JSON Cilium's operator writes there (its MCSAPIServiceSpec),
// so a mesh mixing Cilium and clustermesh clusters shares its exports.
//
// STABLE API: other clusters read these values. Unknown fields are kept out of
// our view but never rejected (a newer Cilium adds fields); a value that lacks
// what the merge needs is refused with the field named.
import { z } from 'zod';
import { dns1123Label } from '../model/meta.ts';
import { portNumberSchema, protocolSchema } from '../model/pod.ts';
import type { Service } from '../model/service.ts';
import { clusterConfigKey } from '../clustermesh/keys.ts';
import { decodeClusterConfig } from '../clustermesh/wire.ts';

export const serviceExportsPrefix = 'cilium/state/serviceexports/v1/';
export const serviceExportsClusterPrefix = (cluster: string): string => `${serviceExportsPrefix}${cluster}/`;
/** The synced canary a cluster writes once its first complete set of exports is in the kvstore. */
export const serviceExportsSyncedKey = (cluster: string): string => `cilium/synced/${cluster}/${serviceExportsPrefix.slice(0, -1)}`;
export const serviceExportKey = (cluster: string, namespace: string, name: string): string =>
  `${serviceExportsClusterPrefix(cluster)}${namespace}/${name}`;

/** ServiceImport types of the MCS API (v1alpha1). */
export const importTypeSchema = z.enum(['ClusterSetIP', 'Headless']);
export type ImportType = z.infer<typeof importTypeSchema>;

export const exportPortSchema = z.object({
  name: z.string().optional(),
  protocol: protocolSchema.default('TCP'),
  appProtocol: z.string().optional(),
  port: portNumberSchema,
});
export type ExportPort = z.infer<typeof exportPortSchema>;

/** RFC 3339 time, as Go's metav1.Time marshals it (nanoseconds allowed). */
const rfc3339 = z.string().refine((s) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(s) && !Number.isNaN(Date.parse(s)), 'an RFC 3339 time');

export const exportSpecSchema = z.object({
  cluster: dns1123Label,
  namespace: dns1123Label,
  name: dns1123Label,
  exportCreationTimestamp: rfc3339,
  ports: z.array(exportPortSchema).nullish().transform((p) => p ?? []),
  type: importTypeSchema,
  sessionAffinity: z.enum(['None', 'ClientIP']),
  sessionAffinityConfig: z
    .object({ clientIP: z.object({ timeoutSeconds: z.number().int().min(1).max(86400).optional() }).optional() })
    .nullish(),
});
export type ExportSpec = z.infer<typeof exportSpecSchema>;

export class ExportSpecError extends Error {}

/**
 * Parses a value read under `key`. The key's cluster/namespace/name must be
 * the value's own (a remote cannot publish an export under another name), and
 * when `expectCluster` is given, the value's cluster must be it.
 */
export function parseExportSpec(key: string, raw: string | Uint8Array, expectCluster?: string): ExportSpec {
  const where = `serviceexport ${key}`;
  let json: unknown;
  try {
    json = JSON.parse(typeof raw === 'string' ? raw : Buffer.from(raw).toString('utf8'));
  } catch (err) {
    throw new ExportSpecError(`${where}: not JSON (${(err as Error).message})`);
  }
  const r = exportSpecSchema.safeParse(json);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new ExportSpecError(`${where}: ${i.path.join('.') || '(value)'}: ${i.message}`);
  }
  const s = r.data;
  const want = key.startsWith(serviceExportsPrefix) ? key.slice(serviceExportsPrefix.length) : key;
  if (want !== `${s.cluster}/${s.namespace}/${s.name}`) throw new ExportSpecError(`${where}: the value names ${s.cluster}/${s.namespace}/${s.name}, not the key's ${want}`);
  if (expectCluster !== undefined && s.cluster !== expectCluster) throw new ExportSpecError(`${where}: cluster is ${s.cluster}, expected ${expectCluster}`);
  return s;
}

/** The value written for an export (Cilium's field names). */
export function encodeExportSpec(s: ExportSpec): string {
  return JSON.stringify({
    cluster: s.cluster,
    name: s.name,
    namespace: s.namespace,
    exportCreationTimestamp: s.exportCreationTimestamp,
    ports: s.ports.map((p) => ({ ...(p.name ? { name: p.name } : {}), protocol: p.protocol, ...(p.appProtocol ? { appProtocol: p.appProtocol } : {}), port: p.port })),
    type: s.type,
    sessionAffinity: s.sessionAffinity,
    ...(s.sessionAffinityConfig ? { sessionAffinityConfig: s.sessionAffinityConfig } : {}),
  });
}

/**
 * What a cluster exports for a Service named by a ServiceExport created at
 * `exportCreated` (the export's creationTimestamp, used for conflicts).
 */
export function exportSpecOf(cluster: string, svc: Service, exportCreated: string): ExportSpec {
  return {
    cluster,
    namespace: svc.metadata.namespace,
    name: svc.metadata.name,
    exportCreationTimestamp: exportCreated,
    ports: svc.spec.ports.map((p) => ({ ...(p.name ? { name: p.name } : {}), protocol: p.protocol, port: p.port })),
    type: svc.spec.clusterIP === 'None' ? 'Headless' : 'ClusterSetIP',
    sessionAffinity: svc.spec.sessionAffinity,
    ...(svc.spec.sessionAffinityConfig ? { sessionAffinityConfig: { clientIP: { timeoutSeconds: svc.spec.sessionAffinityConfig.clientIP.timeoutSeconds } } } : {}),
  };
}

/**
 * Whether a remote cluster's exports may be merged: its cluster-config
 * (`cilium/cluster-config/<cluster>`, raw value or undefined when absent)
 * advertises serviceExportsEnabled and its serviceexports synced canary is
 * present. Until then a reader keeps the remote's last merged set (none at
 * first), since what is under the prefix may be partial or not ours to read.
 */
export function remoteExportsReadiness(cluster: string, clusterConfig: string | undefined, canaryPresent: boolean): { ready: true } | { ready: false; why: string } {
  if (clusterConfig === undefined) return { ready: false, why: `no cluster-config (${clusterConfigKey(cluster)})` };
  const cfg = decodeClusterConfig(cluster, clusterConfigKey(cluster), clusterConfig);
  if (!cfg.ok) return { ready: false, why: `cluster-config does not parse: ${cfg.detail}` };
  if (cfg.value.capabilities.serviceExportsEnabled !== true) return { ready: false, why: 'cluster-config does not advertise serviceExportsEnabled' };
  if (!canaryPresent) return { ready: false, why: `serviceexports not synced yet (no ${serviceExportsSyncedKey(cluster)})` };
  return { ready: true };
}
