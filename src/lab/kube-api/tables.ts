// Server-side printing: `kubectl get` asks for a meta.k8s.io/v1 Table and
// prints its columns as they come (`-o wide` adds the columns of priority 1).
// The columns here are those a real cluster prints for the built-in kinds;
// a CRD's come from its additionalPrinterColumns.

import { atPath, isObject, type JsonObject } from './json.ts';
import type { PrinterColumn, ResourceType } from './resources.ts';

interface Column {
  name: string;
  type: string;
  format?: string;
  priority: number;
  description: string;
  cell: (o: JsonObject) => string | number | null;
}

/** kubectl's short durations: 45s, 3m12s, 17m, 5h3m, 30h, 3d4h, 120d, 2y30d. */
export function humanDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 10) return s % 60 === 0 ? `${m}m` : `${m}m${s % 60}s`;
  if (m < 180) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 8) return m % 60 === 0 ? `${h}h` : `${h}h${m % 60}m`;
  if (h < 48) return `${h}h`;
  const d = Math.floor(h / 24);
  if (h < 24 * 8) return h % 24 === 0 ? `${d}d` : `${d}d${h % 24}h`;
  if (d < 365 * 2) return `${d}d`;
  const y = Math.floor(d / 365);
  if (d < 365 * 8) return d % 365 === 0 ? `${y}y` : `${y}y${d % 365}d`;
  return `${y}y`;
}

const str = (v: unknown): string => (v === undefined || v === null ? '' : String(v));
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const obj = (v: unknown): JsonObject => (isObject(v) ? v : {});
const none = (s: string): string => (s === '' ? '<none>' : s);

function age(o: JsonObject, path = 'metadata.creationTimestamp'): string {
  const t = Date.parse(str(atPath(o, path)));
  return Number.isNaN(t) ? '<unknown>' : humanDuration(Date.now() - t);
}

function selectorString(sel: unknown): string {
  const s = obj(sel);
  const parts = Object.entries(obj(s.matchLabels)).map(([k, v]) => `${k}=${str(v)}`);
  for (const e of arr(s.matchExpressions)) {
    const x = obj(e);
    const op = str(x.operator);
    const values = arr(x.values).map(str).join(',');
    if (op === 'In') parts.push(`${str(x.key)} in (${values})`);
    else if (op === 'NotIn') parts.push(`${str(x.key)} notin (${values})`);
    else if (op === 'Exists') parts.push(str(x.key));
    else if (op === 'DoesNotExist') parts.push(`!${str(x.key)}`);
  }
  return parts.join(',');
}

const mapString = (m: unknown): string => Object.entries(obj(m)).map(([k, v]) => `${k}=${str(v)}`).join(',');

const col = (name: string, cell: Column['cell'], priority = 0, type = 'string'): Column => ({
  name,
  type,
  priority,
  description: '',
  cell,
  ...(name === 'Name' ? { format: 'name' } : {}),
});
const NAME = col('Name', (o) => str(atPath(o, 'metadata.name')));
const AGE = col('Age', (o) => age(o));

function podStatus(o: JsonObject): string {
  if (atPath(o, 'metadata.deletionTimestamp') !== undefined) return 'Terminating';
  const status = obj(o.status);
  if (str(status.reason) !== '') return str(status.reason);
  // Init containers first, as kubectl shows them: Init:<reason> for a failing one, Init:N/M while one runs.
  const inits = arr(status.initContainerStatuses);
  for (const [i, cs] of inits.entries()) {
    const st = obj(obj(cs).state);
    const term = obj(st.terminated);
    if (st.terminated !== undefined && Number(term.exitCode ?? 0) === 0) continue;
    if (st.terminated !== undefined) return str(term.reason) !== '' ? `Init:${str(term.reason)}` : `Init:ExitCode:${String(term.exitCode)}`;
    const waiting = str(obj(st.waiting).reason);
    if (waiting !== '' && waiting !== 'PodInitializing') return `Init:${waiting}`;
    return `Init:${i}/${arr(atPath(o, 'spec.initContainers')).length}`;
  }
  for (const cs of arr(status.containerStatuses)) {
    const st = obj(obj(cs).state);
    const waiting = str(obj(st.waiting).reason);
    if (waiting !== '' && waiting !== 'ContainerCreating') return waiting;
    const term = str(obj(st.terminated).reason);
    if (term !== '' && str(status.phase) !== 'Running') return term;
  }
  return str(status.phase) || 'Pending';
}

function podReady(o: JsonObject): string {
  const total = arr(atPath(o, 'spec.containers')).length;
  const ready = arr(atPath(o, 'status.containerStatuses')).filter((c) => obj(c).ready === true).length;
  return `${ready}/${total}`;
}

function containerList(o: JsonObject, path: string, field: 'name' | 'image'): string {
  return arr(atPath(o, path)).map((c) => str(obj(c)[field])).join(',');
}

function servicePorts(o: JsonObject): string {
  const ports = arr(atPath(o, 'spec.ports')).map((p) => {
    const x = obj(p);
    return `${str(x.port)}${x.nodePort !== undefined ? `:${str(x.nodePort)}` : ''}/${str(x.protocol) || 'TCP'}`;
  });
  return none(ports.join(','));
}

function externalIps(o: JsonObject): string {
  const ips = [...arr(atPath(o, 'status.loadBalancer.ingress')).map((i) => str(obj(i).ip) || str(obj(i).hostname)), ...arr(atPath(o, 'spec.externalIPs')).map(str)];
  if (ips.length > 0) return ips.join(',');
  return str(atPath(o, 'spec.type')) === 'LoadBalancer' ? '<pending>' : '<none>';
}

function nodeStatus(o: JsonObject): string {
  const ready = arr(atPath(o, 'status.conditions')).map(obj).find((c) => c.type === 'Ready');
  const parts = [ready === undefined ? 'Unknown' : ready.status === 'True' ? 'Ready' : 'NotReady'];
  if (atPath(o, 'spec.unschedulable') === true) parts.push('SchedulingDisabled');
  return parts.join(',');
}

function nodeRoles(o: JsonObject): string {
  const roles = Object.keys(obj(atPath(o, 'metadata.labels')))
    .filter((k) => k.startsWith('node-role.kubernetes.io/'))
    .map((k) => k.slice('node-role.kubernetes.io/'.length));
  return none(roles.join(','));
}

function nodeAddress(o: JsonObject, type: string): string {
  const a = arr(atPath(o, 'status.addresses')).map(obj).find((x) => x.type === type);
  return a === undefined ? '<none>' : str(a.address);
}

function dataCount(o: JsonObject): number {
  return Object.keys(obj(o.data)).length + Object.keys(obj(o.binaryData)).length;
}

function eventObject(o: JsonObject): string {
  const io = obj(o.involvedObject);
  return `${str(io.kind).toLowerCase()}/${str(io.name)}`;
}

function eventTime(o: JsonObject, which: 'last' | 'first'): string {
  const path = which === 'last' ? ['lastTimestamp', 'eventTime', 'metadata.creationTimestamp'] : ['firstTimestamp', 'eventTime', 'metadata.creationTimestamp'];
  for (const p of path) if (str(atPath(o, p)) !== '') return age(o, p);
  return '<unknown>';
}

function endpointSlicePorts(o: JsonObject): string {
  const ports = arr(o.ports).map((p) => str(obj(p).port));
  return ports.length === 0 ? '<unset>' : ports.join(',');
}

function endpointSliceEndpoints(o: JsonObject): string {
  const addrs = arr(o.endpoints).flatMap((e) => arr(obj(e).addresses).map(str));
  if (addrs.length === 0) return '<unset>';
  return addrs.length > 3 ? `${addrs.slice(0, 3).join(',')} + ${addrs.length - 3} more...` : addrs.join(',');
}

const BUILTIN_COLUMNS: Record<string, Column[]> = {
  Namespace: [NAME, col('Status', (o) => str(atPath(o, 'status.phase'))), AGE],
  Pod: [
    NAME,
    col('Ready', podReady),
    col('Status', podStatus),
    col('Restarts', (o) => arr(atPath(o, 'status.containerStatuses')).reduce<number>((n, c) => n + Number(obj(c).restartCount ?? 0), 0), 0, 'integer'),
    AGE,
    col('IP', (o) => none(str(atPath(o, 'status.podIP'))), 1),
    col('Node', (o) => none(str(atPath(o, 'spec.nodeName'))), 1),
    col('Nominated Node', (o) => none(str(atPath(o, 'status.nominatedNodeName'))), 1),
    col('Readiness Gates', (o) => none(arr(atPath(o, 'spec.readinessGates')).map((g) => str(obj(g).conditionType)).join(',')), 1),
  ],
  Service: [
    NAME,
    col('Type', (o) => str(atPath(o, 'spec.type')) || 'ClusterIP'),
    col('Cluster-IP', (o) => none(str(atPath(o, 'spec.clusterIP')))),
    col('External-IP', externalIps),
    col('Port(s)', servicePorts),
    AGE,
    col('Selector', (o) => none(mapString(atPath(o, 'spec.selector'))), 1),
  ],
  Node: [
    NAME,
    col('Status', nodeStatus),
    col('Roles', nodeRoles),
    AGE,
    col('Version', (o) => str(atPath(o, 'status.nodeInfo.kubeletVersion'))),
    col('Internal-IP', (o) => nodeAddress(o, 'InternalIP'), 1),
    col('External-IP', (o) => nodeAddress(o, 'ExternalIP'), 1),
    col('OS-Image', (o) => none(str(atPath(o, 'status.nodeInfo.osImage'))), 1),
    col('Kernel-Version', (o) => none(str(atPath(o, 'status.nodeInfo.kernelVersion'))), 1),
    col('Container-Runtime', (o) => none(str(atPath(o, 'status.nodeInfo.containerRuntimeVersion'))), 1),
  ],
  ConfigMap: [NAME, col('Data', dataCount, 0, 'integer'), AGE],
  Secret: [NAME, col('Type', (o) => str(o.type)), col('Data', dataCount, 0, 'integer'), AGE],
  ServiceAccount: [NAME, col('Secrets', (o) => arr(o.secrets).length, 0, 'integer'), AGE],
  Event: [
    col('Last Seen', (o) => eventTime(o, 'last')),
    col('Type', (o) => str(o.type)),
    col('Reason', (o) => str(o.reason)),
    col('Object', eventObject),
    col('Subobject', (o) => str(atPath(o, 'involvedObject.fieldPath')), 1),
    col('Source', (o) => [str(atPath(o, 'source.component')) || str(o.reportingComponent), str(atPath(o, 'source.host'))].filter((s) => s !== '').join(', '), 1),
    col('Message', (o) => str(o.message)),
    col('First Seen', (o) => eventTime(o, 'first'), 1),
    col('Count', (o) => Number(o.count ?? 1), 1, 'integer'),
    col('Name', (o) => str(atPath(o, 'metadata.name')), 1),
  ],
  Deployment: [
    NAME,
    col('Ready', (o) => `${Number(atPath(o, 'status.readyReplicas') ?? 0)}/${Number(atPath(o, 'spec.replicas') ?? 0)}`),
    col('Up-to-date', (o) => Number(atPath(o, 'status.updatedReplicas') ?? 0), 0, 'integer'),
    col('Available', (o) => Number(atPath(o, 'status.availableReplicas') ?? 0), 0, 'integer'),
    AGE,
    col('Containers', (o) => containerList(o, 'spec.template.spec.containers', 'name'), 1),
    col('Images', (o) => containerList(o, 'spec.template.spec.containers', 'image'), 1),
    col('Selector', (o) => none(selectorString(atPath(o, 'spec.selector'))), 1),
  ],
  DaemonSet: [
    NAME,
    col('Desired', (o) => Number(atPath(o, 'status.desiredNumberScheduled') ?? 0), 0, 'integer'),
    col('Current', (o) => Number(atPath(o, 'status.currentNumberScheduled') ?? 0), 0, 'integer'),
    col('Ready', (o) => Number(atPath(o, 'status.numberReady') ?? 0), 0, 'integer'),
    col('Up-to-date', (o) => Number(atPath(o, 'status.updatedNumberScheduled') ?? 0), 0, 'integer'),
    col('Available', (o) => Number(atPath(o, 'status.numberAvailable') ?? 0), 0, 'integer'),
    col('Node Selector', (o) => none(mapString(atPath(o, 'spec.template.spec.nodeSelector')))),
    AGE,
    col('Containers', (o) => containerList(o, 'spec.template.spec.containers', 'name'), 1),
    col('Images', (o) => containerList(o, 'spec.template.spec.containers', 'image'), 1),
    col('Selector', (o) => none(selectorString(atPath(o, 'spec.selector'))), 1),
  ],
  EndpointSlice: [NAME, col('AddressType', (o) => str(o.addressType)), col('Ports', endpointSlicePorts), col('Endpoints', endpointSliceEndpoints), AGE],
  NetworkPolicy: [NAME, col('Pod-Selector', (o) => none(selectorString(atPath(o, 'spec.podSelector')))), AGE],
  CustomResourceDefinition: [NAME, col('Created At', (o) => str(atPath(o, 'metadata.creationTimestamp')), 0, 'date')],
};

/**
 * A CRD printer column's jsonPath: fields, indexes and the equality filter
 * printer columns use for conditions (`.spec.replicas`,
 * `.status.conditions[0].type`, `.status.conditions[?(@.type=="Ready")].status`;
 * a filter takes the first element that matches).
 */
function jsonPathCell(o: JsonObject, c: PrinterColumn): string | number | null {
  let cur: unknown = o;
  for (const m of c.jsonPath.matchAll(/\.([^.[\]]+)|\[(\d+)\]|\[\?\(@\.([\w.]+)\s*==\s*["']([^"']*)["']\)\]/g)) {
    if (m[1] !== undefined) cur = isObject(cur) ? cur[m[1]] : undefined;
    else if (m[2] !== undefined) cur = Array.isArray(cur) ? cur[Number(m[2])] : undefined;
    else cur = Array.isArray(cur) ? cur.find((el) => isObject(el) && str(atPath(el, m[3]!)) === m[4]) : undefined;
  }
  if (cur === undefined || cur === null) return null;
  if (c.type === 'date') {
    const t = Date.parse(str(cur));
    return Number.isNaN(t) ? str(cur) : humanDuration(Date.now() - t);
  }
  if (c.type === 'integer' || c.type === 'number') return Number(cur);
  return typeof cur === 'object' ? JSON.stringify(cur) : str(cur);
}

function columnsOf(r: ResourceType): Column[] {
  if (r.crd !== undefined) {
    const extra = r.crd.printerColumns.map((c) => ({
      name: c.name,
      type: c.type === 'date' ? 'string' : c.type,
      priority: c.priority ?? 0,
      description: c.description ?? '',
      cell: (o: JsonObject) => jsonPathCell(o, c),
    }));
    return extra.some((c) => c.name === 'Age') ? [NAME, ...extra] : [NAME, ...extra, AGE];
  }
  return BUILTIN_COLUMNS[r.kind] ?? [NAME, AGE];
}

export type IncludeObject = 'None' | 'Metadata' | 'Object';

export function toTable(r: ResourceType, items: JsonObject[], listMeta: JsonObject, include: IncludeObject): JsonObject {
  const cols = columnsOf(r);
  return {
    kind: 'Table',
    apiVersion: 'meta.k8s.io/v1',
    metadata: listMeta,
    columnDefinitions: cols.map((c) => ({ name: c.name, type: c.type, format: c.format ?? '', description: c.description, priority: c.priority })),
    rows: items.map((o) => ({
      cells: cols.map((c) => c.cell(o)),
      ...(include === 'None'
        ? {}
        : { object: include === 'Object' ? o : { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: o.metadata ?? {} } }),
    })),
  };
}
