// What `clustermesh status` and `inspect services` show of the Multi-Cluster
// Services API (issue 18): a cluster's ServiceExports with their conditions
// and its ServiceImports (type, VIP, ports, exporting clusters), read from its
// Kubernetes API.
import { KubeApiError, KubeHttp } from '../sources/kubernetes/http.ts';
import { MCS_API_VERSION } from './plan.ts';

export interface McsExportView {
  namespace: string;
  name: string;
  /** type → status/reason/message. */
  conditions: Array<{ type: string; status: string; reason: string; message: string }>;
}
export interface McsImportView {
  namespace: string;
  name: string;
  type: string;
  ips: string[];
  ports: string[];
  clusters: string[];
}
export interface McsView {
  exports: McsExportView[];
  imports: McsImportView[];
}

type Obj = Record<string, unknown>;
const rec = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const s = (v: unknown): string => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '');
const byName = (a: { namespace: string; name: string }, b: { namespace: string; name: string }): number => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`);

/** The cluster's exports and imports; null when the MCS CRDs are not served there. */
export async function readMcsView(kube: KubeHttp, timeoutMs = 5000): Promise<McsView | null> {
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const [ex, im] = await Promise.all([kube.list(`/apis/${MCS_API_VERSION}/serviceexports`, {}, signal, timeoutMs), kube.list(`/apis/${MCS_API_VERSION}/serviceimports`, {}, signal, timeoutMs)]);
    return {
      exports: ex.items
        .map((o) => ({
          namespace: s(rec(rec(o).metadata).namespace),
          name: s(rec(rec(o).metadata).name),
          conditions: arr(rec(rec(o).status).conditions).map((c) => ({ type: s(rec(c).type), status: s(rec(c).status), reason: s(rec(c).reason), message: s(rec(c).message) })),
        }))
        .sort(byName),
      imports: im.items
        .map((o) => {
          const spec = rec(rec(o).spec);
          return {
            namespace: s(rec(rec(o).metadata).namespace),
            name: s(rec(rec(o).metadata).name),
            type: s(spec.type),
            ips: arr(spec.ips).map(s),
            ports: arr(spec.ports).map((p) => `${s(rec(p).name) ? `${s(rec(p).name)}:` : ''}${s(rec(p).port)}/${s(rec(p).protocol) || 'TCP'}`),
            clusters: arr(rec(rec(o).status).clusters).map((c) => s(rec(c).cluster)),
          };
        })
        .sort(byName),
    };
  } catch (err) {
    if (err instanceof KubeApiError && err.code === 404) return null;
    throw err;
  }
}

const ORDER = ['Valid', 'Ready', 'Conflict'];

/** One line per export and per import (indented by `indent`), conflicts and invalid exports with their reason. */
export function formatMcsView(v: McsView, indent = '  '): string[] {
  const out: string[] = [];
  for (const e of v.exports) {
    const conds = [...e.conditions].sort((a, b) => ORDER.indexOf(a.type) - ORDER.indexOf(b.type));
    const bad = conds.filter((c) => (c.type === 'Conflict' ? c.status === 'True' : c.status !== 'True'));
    out.push(`${indent}export ${e.namespace}/${e.name}  ${conds.map((c) => `${c.type}=${c.status}`).join(' ') || '(no conditions yet)'}${bad.length ? `  (${bad.map((c) => `${c.reason}: ${c.message}`).join('; ')})` : ''}`);
  }
  for (const i of v.imports) out.push(`${indent}import ${i.namespace}/${i.name}  ${i.type} ${i.ips.join(',') || '-'}  ports ${i.ports.join(',') || '-'}  from ${i.clusters.join(',') || '-'}`);
  if (out.length === 0) out.push(`${indent}(no ServiceExports or ServiceImports)`);
  return out;
}
