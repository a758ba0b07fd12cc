// What the apiserver does per kind on create and update: defaults, status
// reset, generation, and the validation that makes a bad object a 422
// `Invalid` with the field named (the part kubectl users see).

import { isIPv4 } from 'node:net';

import { invalid } from './errors.ts';
import { clone, isObject, jsonEqual, meta, rfc3339, type JsonObject } from './json.ts';
import type { ResourceType } from './resources.ts';
import { schemaProblems } from './validate.ts';

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** Kinds whose names must be DNS-1123 labels (no dots). */
const LABEL_NAMED = new Set(['Namespace', 'Service']);

type Cause = { field: string; type: string; message: string };

function nameProblems(r: ResourceType, name: string): Cause[] {
  const label = LABEL_NAMED.has(r.kind) && r.group === '';
  const max = label ? 63 : 253;
  const re = label ? DNS1123_LABEL : DNS1123_SUBDOMAIN;
  if (name.length > max || !re.test(name)) {
    const what = label
      ? "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
      : "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
    return [{ field: 'metadata.name', type: 'Invalid value', message: `"${name}": ${what}` }];
  }
  return [];
}

function labelProblems(o: JsonObject): Cause[] {
  const out: Cause[] = [];
  const labels = meta(o).labels;
  if (labels === undefined) return out;
  if (!isObject(labels)) return [{ field: 'metadata.labels', type: 'Invalid value', message: 'must be a map of strings' }];
  for (const [k, v] of Object.entries(labels)) {
    if (typeof v !== 'string') out.push({ field: `metadata.labels`, type: 'Invalid value', message: `"${k}": label values must be strings` });
    else if (v.length > 63 || !/^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/.test(v)) {
      out.push({ field: 'metadata.labels', type: 'Invalid value', message: `"${v}": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character` });
    }
  }
  return out;
}

const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

function kindProblems(r: ResourceType, o: JsonObject): Cause[] {
  const out: Cause[] = [];
  const spec = isObject(o.spec) ? o.spec : {};
  const required = (cond: boolean, field: string): void => {
    if (!cond) out.push({ field, type: 'Required value', message: '' });
  };
  switch (r.group === '' || r.group === 'apps' ? r.kind : '') {
    case 'Pod':
      containersProblems(spec, 'spec', out);
      break;
    case 'Deployment':
    case 'DaemonSet': {
      required(isObject(spec.selector), 'spec.selector');
      const tmpl = isObject(spec.template) ? spec.template : {};
      const tspec = isObject(tmpl.spec) ? tmpl.spec : {};
      containersProblems(tspec, 'spec.template.spec', out);
      const sel = isObject(spec.selector) && isObject(spec.selector.matchLabels) ? spec.selector.matchLabels : {};
      const labels = isObject(tmpl.metadata) && isObject(tmpl.metadata.labels) ? tmpl.metadata.labels : {};
      if (Object.entries(sel).some(([k, v]) => labels[k] !== v)) {
        out.push({ field: 'spec.template.metadata.labels', type: 'Invalid value', message: '`selector` does not match template `labels`' });
      }
      if (r.kind === 'Deployment' && spec.replicas !== undefined && (!Number.isInteger(spec.replicas) || (spec.replicas as number) < 0)) {
        out.push({ field: 'spec.replicas', type: 'Invalid value', message: `${JSON.stringify(spec.replicas)}: must be greater than or equal to 0` });
      }
      break;
    }
    case 'Service': {
      const ports = arr(spec.ports);
      const type = spec.type ?? 'ClusterIP';
      if (spec.clusterIP !== 'None' && type !== 'ExternalName') required(ports.length > 0, 'spec.ports');
      ports.forEach((p, i) => {
        const port = isObject(p) ? p.port : undefined;
        if (!Number.isInteger(port) || (port as number) < 1 || (port as number) > 65535) {
          out.push({ field: `spec.ports[${i}].port`, type: port === undefined ? 'Required value' : 'Invalid value', message: port === undefined ? '' : `${JSON.stringify(port)}: must be between 1 and 65535, inclusive` });
        }
        if (ports.length > 1 && !(isObject(p) && typeof p.name === 'string' && p.name !== '')) out.push({ field: `spec.ports[${i}].name`, type: 'Required value', message: '' });
      });
      break;
    }
    case 'Node':
      for (const [i, c] of arr(spec.podCIDRs).entries()) {
        if (typeof c !== 'string' || !/^[0-9a-fA-F:.]+\/\d+$/.test(c)) out.push({ field: `spec.podCIDRs[${i}]`, type: 'Invalid value', message: `${JSON.stringify(c)}: must be a valid CIDR` });
      }
      break;
  }
  if (r.group === 'apiextensions.k8s.io') {
    const names = isObject(spec.names) ? spec.names : {};
    required(typeof spec.group === 'string' && spec.group !== '', 'spec.group');
    required(typeof names.plural === 'string' && names.plural !== '', 'spec.names.plural');
    required(typeof names.kind === 'string' && names.kind !== '', 'spec.names.kind');
    required(arr(spec.versions).length > 0, 'spec.versions');
    if (typeof spec.group === 'string' && typeof names.plural === 'string' && meta(o).name !== `${names.plural}.${spec.group}`) {
      out.push({ field: 'metadata.name', type: 'Invalid value', message: `"${String(meta(o).name)}": must be spec.names.plural+"."+spec.group` });
    }
    if (!['Namespaced', 'Cluster'].includes(String(spec.scope))) out.push({ field: 'spec.scope', type: 'Unsupported value', message: `${JSON.stringify(spec.scope ?? '')}: supported values: "Cluster", "Namespaced"` });
  }
  if (r.kind === 'EndpointSlice' && r.group === 'discovery.k8s.io') {
    if (!['IPv4', 'IPv6', 'FQDN'].includes(String(o.addressType))) out.push({ field: 'addressType', type: 'Unsupported value', message: `${JSON.stringify(o.addressType ?? '')}: supported values: "FQDN", "IPv4", "IPv6"` });
  }
  return out;
}

function containersProblems(spec: JsonObject, path: string, out: Cause[]): void {
  const cs = arr(spec.containers);
  if (cs.length === 0) out.push({ field: `${path}.containers`, type: 'Required value', message: '' });
  const seen = new Set<string>();
  cs.forEach((c, i) => {
    const name = isObject(c) ? c.name : undefined;
    if (typeof name !== 'string' || name === '') out.push({ field: `${path}.containers[${i}].name`, type: 'Required value', message: '' });
    else if (seen.has(name)) out.push({ field: `${path}.containers[${i}].name`, type: 'Duplicate value', message: JSON.stringify(name) });
    else seen.add(name);
    // `image` is not required: the lab runs programs of the machine, not images.
  });
}

/** Throws a 422 Invalid naming every bad field. */
export function validateObject(r: ResourceType, o: JsonObject): void {
  const name = String(meta(o).name ?? '');
  const causes = [...nameProblems(r, name), ...labelProblems(o), ...kindProblems(r, o), ...schemaProblems(r, o)];
  if (causes.length > 0) throw invalid(r.group, r.kind, name, causes);
}

/** Throws a 422 when an immutable field changed. */
export function validateUpdate(r: ResourceType, old: JsonObject, o: JsonObject): void {
  const immutable: string[] = [];
  if (r.group === '' && r.kind === 'Service') immutable.push('spec.clusterIP');
  if (r.group === 'apps') immutable.push('spec.selector');
  if (r.group === '' && r.kind === 'Pod') immutable.push('spec.containers', 'spec.nodeName');
  if (r.group === 'apiextensions.k8s.io') immutable.push('spec.group', 'spec.names.plural');
  const causes: Cause[] = [];
  for (const path of immutable) {
    const get = (x: JsonObject): unknown => path.split('.').reduce<unknown>((cur, k) => (isObject(cur) ? cur[k] : undefined), x);
    const before = get(old);
    const after = get(o);
    // A field set for the first time (a pod bound to a node) is not a change.
    if (before !== undefined && before !== '' && !jsonEqual(before, after)) {
      if (r.kind === 'Pod' && path === 'spec.containers' && sameExceptImages(before, after)) continue;
      causes.push({ field: path, type: 'Invalid value', message: `${JSON.stringify(after)}: field is immutable` });
    }
  }
  if (causes.length > 0) throw invalid(r.group, r.kind, String(meta(o).name ?? ''), causes);
}

function sameExceptImages(a: unknown, b: unknown): boolean {
  const strip = (x: unknown): unknown => arr(x).map((c) => (isObject(c) ? { ...c, image: undefined } : c));
  return jsonEqual(strip(a), strip(b));
}

export interface CreateContext {
  /** Allocates a Service's cluster IP. */
  allocateClusterIP: () => Promise<string>;
}

/** Defaults the apiserver fills in on every write (idempotent). */
export function applyDefaults(r: ResourceType, o: JsonObject): void {
  const spec = isObject(o.spec) ? o.spec : undefined;
  if (r.group === '') {
    if (r.kind === 'Pod' && spec !== undefined) podSpecDefaults(spec);
    if (r.kind === 'Service' && spec !== undefined) {
      spec.type ??= 'ClusterIP';
      spec.sessionAffinity ??= 'None';
      for (const p of arr(spec.ports)) {
        if (!isObject(p)) continue;
        p.protocol ??= 'TCP';
        p.targetPort ??= p.port ?? null;
      }
      if (spec.type !== 'ExternalName' && spec.clusterIP !== undefined) {
        spec.ipFamilies ??= ['IPv4'];
        spec.ipFamilyPolicy ??= 'SingleStack';
        spec.internalTrafficPolicy ??= 'Cluster';
      }
    }
    if (r.kind === 'Secret') {
      o.type ??= 'Opaque';
      // stringData is write-only: merged into data (base64), as a real apiserver does.
      if (isObject(o.stringData)) {
        const data = isObject(o.data) ? o.data : {};
        for (const [k, v] of Object.entries(o.stringData)) if (typeof v === 'string') data[k] = Buffer.from(v).toString('base64');
        o.data = data;
      }
      delete o.stringData;
    }
  } else if (r.group === 'apps' && spec !== undefined) {
    const tmpl = isObject(spec.template) ? spec.template : {};
    if (isObject(tmpl.spec)) podSpecDefaults(tmpl.spec);
    spec.revisionHistoryLimit ??= 10;
    if (r.kind === 'Deployment') {
      spec.replicas ??= 1;
      spec.progressDeadlineSeconds ??= 600;
      if (!isObject(spec.strategy) || spec.strategy.type === undefined) spec.strategy = { type: 'RollingUpdate', rollingUpdate: { maxSurge: '25%', maxUnavailable: '25%' } };
    } else if (!isObject(spec.updateStrategy) || spec.updateStrategy.type === undefined) {
      spec.updateStrategy = { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } };
    }
  }
}

/** Whether objects of the kind carry metadata.generation (as on a real cluster). */
export function hasGeneration(r: ResourceType): boolean {
  return r.crd !== undefined || ['apps', 'networking.k8s.io', 'apiextensions.k8s.io'].includes(r.group);
}

/** Defaults, allocations and status reset of a new object (what the apiserver's strategies do). */
export async function prepareForCreate(r: ResourceType, o: JsonObject, ctx: CreateContext): Promise<void> {
  if (r.statusSubresource && !(r.group === '' && r.kind === 'Node')) delete o.status;
  const hadSpec = isObject(o.spec);
  const spec = (isObject(o.spec) ? o.spec : (o.spec = {})) as JsonObject;
  if (r.group === '') {
    switch (r.kind) {
      case 'Namespace':
        spec.finalizers = ['kubernetes'];
        o.status = { phase: 'Active' };
        meta(o).labels = { ...(isObject(meta(o).labels) ? (meta(o).labels as JsonObject) : {}), 'kubernetes.io/metadata.name': String(meta(o).name) };
        break;
      case 'Pod':
        o.status = { phase: 'Pending', qosClass: 'BestEffort' };
        break;
      case 'Service':
        if ((spec.type ?? 'ClusterIP') !== 'ExternalName') {
          if (spec.clusterIP === undefined || spec.clusterIP === '') spec.clusterIP = await ctx.allocateClusterIP();
          else if (spec.clusterIP !== 'None' && !isIPv4(String(spec.clusterIP))) {
            throw invalid('', 'Service', String(meta(o).name), [{ field: 'spec.clusterIP', type: 'Invalid value', message: `${JSON.stringify(spec.clusterIP)}: must be a valid IP address or "None"` }]);
          }
          spec.clusterIPs = [spec.clusterIP];
        }
        o.status = { loadBalancer: {} };
        break;
      case 'Secret':
        if (isObject(o.stringData)) {
          const data = (isObject(o.data) ? o.data : (o.data = {})) as JsonObject;
          for (const [k, v] of Object.entries(o.stringData)) data[k] = Buffer.from(String(v)).toString('base64');
          delete o.stringData;
        }
        break;
    }
  } else if (r.group === 'apps') {
    o.status = {};
  } else if (r.group === 'apiextensions.k8s.io') {
    const names = isObject(spec.names) ? clone(spec.names) : {};
    names.singular ??= String(names.kind ?? '').toLowerCase();
    names.listKind ??= `${String(names.kind ?? '')}List`;
    spec.names = names;
    o.status = crdStatus(spec);
  }
  // Kinds without a spec (ConfigMap, EndpointSlice, …) keep none.
  if (!hadSpec && Object.keys(spec).length === 0) delete o.spec;
  applyDefaults(r, o);
}

function podSpecDefaults(spec: JsonObject): void {
  spec.restartPolicy ??= 'Always';
  spec.dnsPolicy ??= 'ClusterFirst';
  spec.schedulerName ??= 'default-scheduler';
  spec.terminationGracePeriodSeconds ??= 30;
  spec.enableServiceLinks ??= true;
  spec.securityContext ??= {};
  for (const c of arr(spec.containers)) {
    if (!isObject(c)) continue;
    c.terminationMessagePath ??= '/dev/termination-log';
    c.terminationMessagePolicy ??= 'File';
    c.resources ??= {};
    for (const p of arr(c.ports)) if (isObject(p)) p.protocol ??= 'TCP';
  }
}

export function crdStatus(spec: JsonObject): JsonObject {
  const now = rfc3339();
  const cond = (type: string, reason: string, message: string): JsonObject => ({ type, status: 'True', lastTransitionTime: now, reason, message });
  return {
    acceptedNames: clone(spec.names ?? {}),
    conditions: [cond('NamesAccepted', 'NoConflicts', 'no conflicts found'), cond('Established', 'InitialNamesAccepted', 'the initial names have been accepted')],
    storedVersions: arr(spec.versions).filter((v) => isObject(v) && v.storage === true).map((v) => (isObject(v) ? v.name : '')) as string[],
  };
}

/** Whether the change from `old` to `o` bumps metadata.generation: any change outside
 * metadata (and outside status, for kinds with a status subresource). */
export function specChanged(r: ResourceType, old: JsonObject, o: JsonObject): boolean {
  const strip = (x: JsonObject): JsonObject => {
    const c: JsonObject = { ...x };
    delete c.metadata;
    if (r.statusSubresource) delete c.status;
    return c;
  };
  return !jsonEqual(strip(old), strip(o));
}
