// Merging the exports of one namespaced name from every cluster of the
// clusterset into what a ServiceImport says (KEP-1645, "Constraints and
// Conflict Resolution"):
// - precedence: the oldest export wins (exportCreationTimestamp), ties broken
//   by cluster name, so every cluster computes the same result from the same
//   exports;
// - ports: the union of every export's ports; a port name used with another
//   number, protocol or appProtocol, or a number/protocol pair under two
//   names, is a PortConflict and the older definition stays;
// - type, session affinity and its timeout: the oldest export's; any export
//   that differs is a TypeConflict / SessionAffinityConflict /
//   SessionAffinityConfigConflict;
// - a conflict sets the Conflict condition on every export of the name (the
//   KEP's recommendation), with the reasons comma-joined and a message naming
//   which clusters differ in what.
import type { ExportPort, ExportSpec, ImportType } from './export.ts';

export type ConflictReason = 'PortConflict' | 'TypeConflict' | 'SessionAffinityConflict' | 'SessionAffinityConfigConflict';

export interface Conflict {
  reason: ConflictReason;
  /** The clusters whose export differs from what was kept. */
  clusters: string[];
  message: string;
}

export interface MergedImport {
  namespace: string;
  name: string;
  type: ImportType;
  ports: ExportPort[];
  sessionAffinity: 'None' | 'ClientIP';
  /** ClientIP timeout (seconds) of the winning export, when it set one. */
  affinityTimeoutSeconds?: number;
  /** Exporting clusters in precedence order (oldest export first). */
  clusters: string[];
  conflicts: Conflict[];
}

export interface Condition {
  type: 'Conflict';
  status: 'True' | 'False';
  reason: string;
  message: string;
}

const ts = (s: ExportSpec): number => Date.parse(s.exportCreationTimestamp);

/** Precedence order: oldest export first, then cluster name. */
export function byPrecedence(a: ExportSpec, b: ExportSpec): number {
  return ts(a) - ts(b) || (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0);
}

const portText = (p: ExportPort): string => `${p.port}/${p.protocol}${p.appProtocol ? ` (appProtocol ${p.appProtocol})` : ''}`;
const samePort = (a: ExportPort, b: ExportPort): boolean => a.port === b.port && a.protocol === b.protocol && (a.appProtocol ?? '') === (b.appProtocol ?? '');
const timeoutOf = (s: ExportSpec): number | undefined => s.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? undefined;

/**
 * Merges the exports of one namespaced name (at least one; all of the same
 * namespace/name, one per cluster) into the import every cluster derives.
 */
export function mergeExports(exports: readonly ExportSpec[]): MergedImport {
  if (exports.length === 0) throw new Error('mergeExports: no exports');
  const { namespace, name } = exports[0]!;
  const seen = new Set<string>();
  for (const e of exports) {
    if (e.namespace !== namespace || e.name !== name) throw new Error(`mergeExports: ${e.cluster} exports ${e.namespace}/${e.name}, not ${namespace}/${name}`);
    if (seen.has(e.cluster)) throw new Error(`mergeExports: two exports from cluster ${e.cluster}`);
    seen.add(e.cluster);
  }
  const ordered = [...exports].sort(byPrecedence);
  const first = ordered[0]!;
  const conflicts = new Map<ConflictReason, { clusters: Set<string>; details: string[] }>();
  const conflict = (reason: ConflictReason, cluster: string, detail: string): void => {
    const c = conflicts.get(reason) ?? { clusters: new Set(), details: [] };
    c.clusters.add(cluster);
    c.details.push(detail);
    conflicts.set(reason, c);
  };

  const ports: Array<ExportPort & { from: string }> = [];
  for (const e of ordered) {
    for (const p of e.ports) {
      const pname = p.name ?? '';
      const byName = ports.find((q) => (q.name ?? '') === pname);
      if (byName) {
        if (!samePort(byName, p)) conflict('PortConflict', e.cluster, `port ${pname ? `"${pname}"` : '(unnamed)'} is ${portText(p)} in ${e.cluster} but ${portText(byName)} in ${byName.from}`);
        continue;
      }
      const byNumber = ports.find((q) => q.port === p.port && q.protocol === p.protocol);
      if (byNumber) {
        conflict('PortConflict', e.cluster, `${p.port}/${p.protocol} is named ${pname ? `"${pname}"` : '(unnamed)'} in ${e.cluster} but ${byNumber.name ? `"${byNumber.name}"` : '(unnamed)'} in ${byNumber.from}`);
        continue;
      }
      ports.push({ ...p, from: e.cluster });
    }
  }
  for (const e of ordered.slice(1)) {
    if (e.type !== first.type) conflict('TypeConflict', e.cluster, `type is ${e.type} in ${e.cluster} but ${first.type} in ${first.cluster}`);
    if (e.sessionAffinity !== first.sessionAffinity) conflict('SessionAffinityConflict', e.cluster, `sessionAffinity is ${e.sessionAffinity} in ${e.cluster} but ${first.sessionAffinity} in ${first.cluster}`);
    else if (first.sessionAffinity === 'ClientIP' && timeoutOf(e) !== timeoutOf(first))
      conflict('SessionAffinityConfigConflict', e.cluster, `the ClientIP timeout is ${timeoutOf(e) ?? 'unset'} in ${e.cluster} but ${timeoutOf(first) ?? 'unset'} in ${first.cluster}`);
  }

  const order: ConflictReason[] = ['PortConflict', 'TypeConflict', 'SessionAffinityConflict', 'SessionAffinityConfigConflict'];
  const firstTimeout = timeoutOf(first);
  return {
    namespace,
    name,
    type: first.type,
    ports: ports.map(({ from: _from, ...p }) => p),
    sessionAffinity: first.sessionAffinity,
    ...(first.sessionAffinity === 'ClientIP' && firstTimeout !== undefined ? { affinityTimeoutSeconds: firstTimeout } : {}),
    clusters: ordered.map((e) => e.cluster),
    conflicts: order.flatMap((reason) => {
      const c = conflicts.get(reason);
      return c ? [{ reason, clusters: [...c.clusters].sort(), message: c.details.join('; ') }] : [];
    }),
  };
}

/** The Conflict condition each export of the merged name carries (the same for all of them). */
export function conflictCondition(m: MergedImport): Condition {
  if (m.conflicts.length === 0) return { type: 'Conflict', status: 'False', reason: 'NoConflicts', message: `exported by ${m.clusters.join(', ')} without conflict` };
  return {
    type: 'Conflict',
    status: 'True',
    reason: m.conflicts.map((c) => c.reason).join(','),
    message: `${m.conflicts.map((c) => c.message).join('; ')}; the oldest export (${m.clusters[0]}) decides`,
  };
}

/** Groups exports by namespace/name and merges each group (names in sorted order). */
export function mergeAll(exports: Iterable<ExportSpec>): Map<string, MergedImport> {
  const groups = new Map<string, ExportSpec[]>();
  for (const e of exports) {
    const k = `${e.namespace}/${e.name}`;
    groups.set(k, [...(groups.get(k) ?? []), e]);
  }
  return new Map([...groups.keys()].sort().map((k) => [k, mergeExports(groups.get(k)!)]));
}

export interface ValidCondition {
  type: 'Valid';
  status: 'True' | 'False';
  reason: 'Valid' | 'NoService' | 'ServiceType';
  message: string;
}

/**
 * Whether a cluster can export its Service of that name: it must exist and
 * not be an ExternalName Service (nothing to balance to). `serviceType` is the
 * Service's spec.type as stored, or undefined when there is no such Service.
 */
export function exportValidity(namespace: string, name: string, serviceType: string | undefined): ValidCondition {
  if (serviceType === undefined) return { type: 'Valid', status: 'False', reason: 'NoService', message: `no Service ${namespace}/${name} in this cluster` };
  if (serviceType === 'ExternalName') return { type: 'Valid', status: 'False', reason: 'ServiceType', message: `Service ${namespace}/${name} is of type ExternalName, which cannot be exported` };
  return { type: 'Valid', status: 'True', reason: 'Valid', message: `Service ${namespace}/${name} is exported` };
}
