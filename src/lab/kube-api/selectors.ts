// Label selectors (`app=web,tier!=db,env in (a,b),!canary`) and field
// selectors (`metadata.name=x,spec.nodeName!=n1`) of list and watch requests.

import { ApiError, badRequest } from './errors.ts';
import { atPath, isObject, type JsonObject } from './json.ts';

type LabelRequirement =
  | { op: 'in' | 'notin'; key: string; values: string[] }
  | { op: 'exists' | '!'; key: string }
  | { op: 'gt' | 'lt'; key: string; value: number };

export type Matcher = (obj: JsonObject) => boolean;

const KEY = /^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?\/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?$/;
const VALUE = /^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?)?$/;

/** Splits on commas that are not inside parentheses. */
function splitTop(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out.map((p) => p.trim()).filter((p) => p !== '');
}

function checkKey(key: string, sel: string): string {
  if (!KEY.test(key)) throw badRequest(`unable to parse requirement: invalid label key "${key}" in selector "${sel}"`);
  return key;
}

function checkValue(v: string, sel: string): string {
  if (!VALUE.test(v) || v.length > 63) throw badRequest(`unable to parse requirement: invalid label value "${v}" in selector "${sel}"`);
  return v;
}

export function parseLabelSelector(sel: string): LabelRequirement[] {
  const reqs: LabelRequirement[] = [];
  for (const part of splitTop(sel)) {
    let m: RegExpMatchArray | null;
    if ((m = part.match(/^(\S+)\s+(in|notin)\s*\((.*)\)$/))) {
      const values = m[3]!.split(',').map((v) => checkValue(v.trim(), sel));
      reqs.push({ op: m[2] as 'in' | 'notin', key: checkKey(m[1]!, sel), values });
    } else if ((m = part.match(/^([^=!<>\s]+)\s*(==|=|!=)\s*(\S*)$/))) {
      const v = checkValue(m[3]!, sel);
      reqs.push({ op: m[2] === '!=' ? 'notin' : 'in', key: checkKey(m[1]!, sel), values: [v] });
    } else if ((m = part.match(/^([^=!<>\s]+)\s*([<>])\s*(-?\d+)$/))) {
      reqs.push({ op: m[2] === '>' ? 'gt' : 'lt', key: checkKey(m[1]!, sel), value: Number(m[3]) });
    } else if ((m = part.match(/^!\s*(\S+)$/))) {
      reqs.push({ op: '!', key: checkKey(m[1]!, sel) });
    } else if (KEY.test(part)) {
      reqs.push({ op: 'exists', key: part });
    } else {
      throw badRequest(`unable to parse requirement: invalid label selector "${sel}" at "${part}"`);
    }
  }
  return reqs;
}

export function labelsMatch(labels: Record<string, string>, reqs: LabelRequirement[]): boolean {
  return reqs.every((r) => {
    const has = Object.hasOwn(labels, r.key);
    const v = labels[r.key];
    switch (r.op) {
      case 'in':
        return has && r.values.includes(v!);
      case 'notin':
        return !has || !r.values.includes(v!);
      case 'exists':
        return has;
      case '!':
        return !has;
      case 'gt':
        return has && /^-?\d+$/.test(v!) && Number(v) > r.value;
      case 'lt':
        return has && /^-?\d+$/.test(v!) && Number(v) < r.value;
    }
  });
}

export function labelMatcher(sel: string | null): Matcher {
  if (sel === null || sel.trim() === '') return () => true;
  const reqs = parseLabelSelector(sel);
  return (obj) => {
    const labels = isObject(obj.metadata) && isObject(obj.metadata.labels) ? (obj.metadata.labels as Record<string, string>) : {};
    return labelsMatch(labels, reqs);
  };
}

/** Fields every kind can be selected by. */
const COMMON_FIELDS = ['metadata.name', 'metadata.namespace'];

/** Further selectable fields, by kind (what the real apiserver offers for them). */
const KIND_FIELDS: Record<string, string[]> = {
  Pod: ['spec.nodeName', 'spec.restartPolicy', 'spec.schedulerName', 'spec.serviceAccountName', 'spec.hostNetwork', 'status.phase', 'status.podIP', 'status.nominatedNodeName'],
  Event: ['involvedObject.kind', 'involvedObject.namespace', 'involvedObject.name', 'involvedObject.uid', 'involvedObject.apiVersion', 'involvedObject.resourceVersion', 'involvedObject.fieldPath', 'reason', 'reportingComponent', 'source', 'type'],
  Secret: ['type'],
  Node: ['spec.unschedulable'],
  Namespace: ['status.phase'],
  Service: ['spec.clusterIP', 'spec.type'],
};

function fieldString(obj: JsonObject, field: string): string {
  if (field === 'source') return String(atPath(obj, 'source.component') ?? '');
  const v = atPath(obj, field);
  if (v === undefined || v === null) return field === 'spec.hostNetwork' || field === 'spec.unschedulable' ? 'false' : '';
  return String(v);
}

export function fieldMatcher(sel: string | null, kind: string, qualified: string): Matcher {
  if (sel === null || sel.trim() === '') return () => true;
  const allowed = [...COMMON_FIELDS, ...(KIND_FIELDS[kind] ?? [])];
  const reqs = sel.split(',').map((part) => {
    const m = part.trim().match(/^([^=!]+?)\s*(==|=|!=)\s*(.*)$/);
    if (!m) throw badRequest(`invalid selector: '${sel}'; can't understand '${part}'`);
    const field = m[1]!.trim();
    if (!allowed.includes(field)) {
      throw new ApiError('BadRequest', `field label not supported: ${field}`, { kind: qualified });
    }
    return { field, negate: m[2] === '!=', value: m[3]!.trim() };
  });
  return (obj) => reqs.every((r) => (fieldString(obj, r.field) === r.value) !== r.negate);
}
