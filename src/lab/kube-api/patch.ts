// The three patch types a Kubernetes API server applies:
//   application/merge-patch+json            RFC 7386 JSON merge patch
//   application/json-patch+json             RFC 6902 JSON patch
//   application/strategic-merge-patch+json  Kubernetes strategic merge patch:
//     lists of objects with a merge key (containers by name, ports by port…)
//     merge element by element; `$patch: delete|replace`, `$setElementOrder/…`,
//     `$deleteFromPrimitiveList/…` and `$retainKeys` directives.
// The strategic merge keys are those of the built-in kinds this server serves
// (the patch metadata kubectl computes `kubectl apply` patches with).

import { badRequest } from './errors.ts';
import { clone, isObject, jsonEqual, type Json, type JsonObject } from './json.ts';

/** RFC 7386. */
export function mergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject(patch)) return clone(patch);
  const out: JsonObject = isObject(target) ? clone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else if (v !== undefined) out[k] = mergePatch(out[k], v);
  }
  return out;
}

function unescapePointer(s: string): string {
  return s.replace(/~1/g, '/').replace(/~0/g, '~');
}

/** RFC 6902. */
export function jsonPatch(doc: Json, ops: unknown): Json {
  if (!Array.isArray(ops)) throw badRequest('json patch: the patch must be an array of operations');
  let root: Json = clone(doc);
  const parse = (path: unknown): string[] => {
    if (typeof path !== 'string' || (path !== '' && !path.startsWith('/'))) throw badRequest(`json patch: bad path ${JSON.stringify(path)}`);
    return path === '' ? [] : path.slice(1).split('/').map(unescapePointer);
  };
  const get = (parts: string[]): Json | undefined => {
    let cur: Json | undefined = root;
    for (const p of parts) {
      if (Array.isArray(cur)) cur = cur[Number(p)];
      else if (isObject(cur)) cur = cur[p];
      else return undefined;
    }
    return cur;
  };
  const parentOf = (parts: string[], op: string): [Json, string] => {
    const parent = get(parts.slice(0, -1));
    if (!Array.isArray(parent) && !isObject(parent)) throw badRequest(`json patch: ${op}: no parent for /${parts.join('/')}`);
    return [parent, parts[parts.length - 1]!];
  };
  const remove = (parts: string[], op: string): Json => {
    const [parent, last] = parentOf(parts, op);
    if (Array.isArray(parent)) {
      const i = Number(last);
      if (!Number.isInteger(i) || i < 0 || i >= parent.length) throw badRequest(`json patch: ${op}: index ${last} out of range`);
      return parent.splice(i, 1)[0]!;
    }
    const obj = parent as JsonObject;
    if (!Object.hasOwn(obj, last)) throw badRequest(`json patch: ${op}: /${parts.join('/')} does not exist`);
    const v = obj[last]!;
    delete obj[last];
    return v;
  };
  const add = (parts: string[], value: Json, op: string): void => {
    if (parts.length === 0) {
      root = value;
      return;
    }
    const [parent, last] = parentOf(parts, op);
    if (Array.isArray(parent)) {
      const i = last === '-' ? parent.length : Number(last);
      if (!Number.isInteger(i) || i < 0 || i > parent.length) throw badRequest(`json patch: ${op}: index ${last} out of range`);
      parent.splice(i, 0, value);
    } else (parent as JsonObject)[last] = value;
  };
  for (const raw of ops) {
    if (!isObject(raw)) throw badRequest('json patch: every operation must be an object');
    const op = String(raw.op);
    const path = parse(raw.path);
    switch (op) {
      case 'add':
        add(path, clone(raw.value as Json), op);
        break;
      case 'remove':
        remove(path, op);
        break;
      case 'replace':
        remove(path, op);
        add(path, clone(raw.value as Json), op);
        break;
      case 'move': {
        const v = remove(parse(raw.from), op);
        add(path, v, op);
        break;
      }
      case 'copy': {
        const v = get(parse(raw.from));
        if (v === undefined) throw badRequest(`json patch: copy: ${String(raw.from)} does not exist`);
        add(path, clone(v), op);
        break;
      }
      case 'test':
        if (!jsonEqual(get(path), raw.value)) throw badRequest(`json patch: test failed at ${String(raw.path)}`);
        break;
      default:
        throw badRequest(`json patch: unknown operation ${JSON.stringify(op)}`);
    }
  }
  return root;
}

// ---- strategic merge patch -------------------------------------------------

/** How a list field merges: by a key of its elements, or as a set of primitives. */
type ListStrategy = { mergeKey: string } | { primitiveMerge: true };

/** Merge strategies by field path (list indices written `[]`), of the served built-in kinds. */
const PATH_STRATEGIES: [RegExp, ListStrategy][] = [
  [/(^|\.)(containers|initContainers|ephemeralContainers)$/, { mergeKey: 'name' }],
  [/(containers|initContainers|ephemeralContainers)\[\]\.ports$/, { mergeKey: 'containerPort' }],
  [/(containers|initContainers|ephemeralContainers)\[\]\.(env)$/, { mergeKey: 'name' }],
  [/(containers|initContainers|ephemeralContainers)\[\]\.volumeMounts$/, { mergeKey: 'mountPath' }],
  [/(containers|initContainers|ephemeralContainers)\[\]\.volumeDevices$/, { mergeKey: 'devicePath' }],
  [/(containers|initContainers|ephemeralContainers)\[\]\.resizePolicy$/, { mergeKey: 'resourceName' }],
  [/(^|\.)spec\.volumes$/, { mergeKey: 'name' }],
  [/(^|\.)spec\.imagePullSecrets$/, { mergeKey: 'name' }],
  [/(^|\.)spec\.hostAliases$/, { mergeKey: 'ip' }],
  [/(^|\.)spec\.topologySpreadConstraints$/, { mergeKey: 'topologyKey' }],
  [/(^|\.)spec\.resourceClaims$/, { mergeKey: 'name' }],
  [/(^|\.)spec\.schedulingGates$/, { mergeKey: 'name' }],
  [/^spec\.ports$/, { mergeKey: 'port' }], // Service
  [/^spec\.taints$/, { mergeKey: 'key' }], // Node
  [/^spec\.podCIDRs$/, { primitiveMerge: true }], // Node
  [/^status\.addresses$/, { mergeKey: 'type' }], // Node
  [/(^|\.)status\.conditions$/, { mergeKey: 'type' }],
  [/^status\.podIPs$/, { mergeKey: 'ip' }],
  [/(^|\.)metadata\.finalizers$/, { primitiveMerge: true }],
  [/(^|\.)metadata\.ownerReferences$/, { mergeKey: 'uid' }],
  [/^secrets$/, { mergeKey: 'name' }], // ServiceAccount
];

function strategyFor(path: string, kind: string): ListStrategy | undefined {
  // Kinds whose lists are all atomic (and whose field names would collide with the table above).
  if (['CustomResourceDefinition', 'EndpointSlice', 'NetworkPolicy', 'Event', 'ConfigMap', 'Secret'].includes(kind)) {
    return /(^|\.)metadata\.(finalizers|ownerReferences)$/.test(path) ? strategyFor(path, '') : undefined;
  }
  for (const [re, s] of PATH_STRATEGIES) if (re.test(path)) return s;
  return undefined;
}

const SET_ORDER = '$setElementOrder/';
const DELETE_PRIMITIVE = '$deleteFromPrimitiveList/';

/** Applies a strategic merge patch to `original` (an object of `kind`). */
export function strategicMergePatch(original: JsonObject, patch: unknown, kind: string): JsonObject {
  if (!isObject(patch)) throw badRequest('strategic merge patch: the patch must be a JSON object');
  return smpObject(original, patch, '', kind);
}

function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

function smpObject(original: JsonObject | undefined, patch: JsonObject, path: string, kind: string): JsonObject {
  const directive = patch.$patch;
  if (directive === 'replace') {
    const out = clone(patch);
    delete out.$patch;
    return out;
  }
  if (directive === 'delete') return {};
  const out: JsonObject = isObject(original) ? clone(original) : {};
  if (Array.isArray(patch.$retainKeys)) {
    const keep = new Set((patch.$retainKeys as Json[]).map(String));
    for (const k of Object.keys(out)) if (!keep.has(k)) delete out[k];
  }
  for (const [k, v] of Object.entries(patch)) {
    if (k === '$patch' || k === '$retainKeys' || v === undefined) continue;
    if (k.startsWith(SET_ORDER) || k.startsWith(DELETE_PRIMITIVE)) continue;
    if (v === null) {
      delete out[k];
      continue;
    }
    const p = join(path, k);
    if (Array.isArray(v)) {
      out[k] = smpList(Array.isArray(out[k]) ? (out[k] as Json[]) : undefined, v, p, kind, patch[`${SET_ORDER}${k}`]);
    } else if (isObject(v)) {
      out[k] = smpObject(isObject(out[k]) ? (out[k] as JsonObject) : undefined, v, p, kind);
    } else {
      out[k] = v;
    }
  }
  for (const [k, v] of Object.entries(patch)) {
    if (!k.startsWith(DELETE_PRIMITIVE) || !Array.isArray(v)) continue;
    const field = k.slice(DELETE_PRIMITIVE.length);
    const cur = out[field];
    if (Array.isArray(cur)) out[field] = cur.filter((x) => !v.some((d) => jsonEqual(d, x)));
  }
  for (const [k, v] of Object.entries(patch)) {
    if (!k.startsWith(SET_ORDER) || !Array.isArray(v)) continue;
    const field = k.slice(SET_ORDER.length);
    if (Array.isArray(out[field])) out[field] = orderBy(out[field] as Json[], v, strategyFor(join(path, field), kind));
  }
  return out;
}

function elementKey(el: Json, s: ListStrategy): Json | undefined {
  if ('primitiveMerge' in s) return el;
  return isObject(el) ? el[s.mergeKey] : undefined;
}

/** Orders `list` as `order` says (elements not named there keep their place after). */
function orderBy(list: Json[], order: Json[], s: ListStrategy | undefined): Json[] {
  if (s === undefined) return list;
  const keyOf = (el: Json): Json | undefined => elementKey(el, s);
  const orderKey = (o: Json): Json | undefined => ('primitiveMerge' in s ? o : isObject(o) ? o[s.mergeKey] : o);
  const rank = (el: Json): number => {
    const i = order.findIndex((o) => jsonEqual(orderKey(o), keyOf(el)));
    return i < 0 ? order.length : i;
  };
  return list.map((el, i) => ({ el, i, r: rank(el) })).sort((a, b) => a.r - b.r || a.i - b.i).map((x) => x.el);
}

function smpList(original: Json[] | undefined, patch: Json[], path: string, kind: string, order: Json | undefined): Json[] {
  const s = strategyFor(path, kind);
  if (s === undefined) {
    // Atomic list: replaced; `$patch: replace` markers are dropped.
    return patch.filter((el) => !(isObject(el) && el.$patch !== undefined && Object.keys(el).length === 1)).map((el) => clone(el));
  }
  const elPath = `${path}[]`;
  if (patch.some((el) => isObject(el) && el.$patch === 'replace')) {
    return patch.filter((el) => !(isObject(el) && el.$patch === 'replace')).map((el) => clone(el));
  }
  const out: Json[] = original === undefined ? [] : clone(original);
  for (const el of patch) {
    if ('primitiveMerge' in s) {
      if (!out.some((x) => jsonEqual(x, el))) out.push(clone(el));
      continue;
    }
    if (!isObject(el)) throw badRequest(`strategic merge patch: ${path}: element ${JSON.stringify(el)} has no merge key ${s.mergeKey}`);
    const key = el[s.mergeKey];
    const i = out.findIndex((x) => isObject(x) && jsonEqual(x[s.mergeKey], key));
    if (el.$patch === 'delete') {
      if (i >= 0) out.splice(i, 1);
      continue;
    }
    if (i >= 0) out[i] = smpObject(out[i] as JsonObject, el, elPath, kind);
    else out.push(smpObject(undefined, el, elPath, kind));
  }
  return Array.isArray(order) ? orderBy(out, order, s) : out;
}
