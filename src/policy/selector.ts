// Label selectors over identity label sets: matching, a canonical string, and
// the scoping requirements the policy semantics add (namespace, cluster).
import {
  K8S_SOURCE,
  NAMESPACE_LABELS_PREFIX,
  POD_NAMESPACE_LABEL,
  POLICY_CLUSTER_LABEL,
} from '../identity/labels.ts';
import type { LabelSelector, Requirement, SelectorOperator } from './types.ts';

export interface IdentityLabel {
  source: string;
  key: string;
  value: string;
}

/** Source that matches a label of any source. */
export const ANY_SOURCE = 'any';
export const RESERVED_SOURCE = 'reserved';
export const CIDR_SOURCE = 'cidr';
/**
 * Kubernetes puts this label on every namespace (its value is the namespace
 * name); identities made from namespace objects that lack it still match it.
 */
export const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';

/** An identity's labels indexed for matching. */
export class LabelView {
  /** `source:key` → value. */
  readonly bySourceKey = new Map<string, string>();
  /** key → values of every source. */
  readonly byKey = new Map<string, string[]>();
  readonly labels: readonly IdentityLabel[];

  constructor(labels: readonly IdentityLabel[]) {
    const all = [...labels];
    const ns = labels.find((l) => l.source === K8S_SOURCE && l.key === POD_NAMESPACE_LABEL);
    const nsNameKey = NAMESPACE_LABELS_PREFIX + NAMESPACE_NAME_LABEL;
    if (ns && !labels.some((l) => l.source === K8S_SOURCE && l.key === nsNameKey)) {
      all.push({ source: K8S_SOURCE, key: nsNameKey, value: ns.value });
    }
    this.labels = all;
    for (const l of all) {
      this.bySourceKey.set(`${l.source}:${l.key}`, l.value);
      const vs = this.byKey.get(l.key);
      if (vs) vs.push(l.value);
      else this.byKey.set(l.key, [l.value]);
    }
  }

  /** Values of `key` from `source` (`any`: from every source). */
  values(source: string, key: string): readonly string[] {
    if (source === ANY_SOURCE) return this.byKey.get(key) ?? NONE;
    const v = this.bySourceKey.get(`${source}:${key}`);
    return v === undefined ? NONE : [v];
  }

  get(source: string, key: string): string | undefined {
    return this.values(source, key)[0];
  }
}
const NONE: readonly string[] = [];

export function requirementMatches(r: Requirement, view: LabelView): boolean {
  const vs = view.values(r.source, r.key);
  switch (r.operator) {
    case 'Exists':
      return vs.length > 0;
    case 'DoesNotExist':
      return vs.length === 0;
    case 'In':
      return vs.some((v) => r.values.includes(v));
    case 'NotIn':
      return !vs.some((v) => r.values.includes(v));
  }
}

export function selectorMatches(sel: LabelSelector, view: LabelView): boolean {
  for (const r of sel.requirements) if (!requirementMatches(r, view)) return false;
  return true;
}

/** selectorMatches() with lookups prepared once: for selectors tested against many label sets. */
export function compileSelector(sel: LabelSelector): (view: LabelView) => boolean {
  const tests = sel.requirements.map((r): ((view: LabelView) => boolean) => {
    const values = new Set(r.values);
    if (r.source === ANY_SOURCE) {
      const key = r.key;
      switch (r.operator) {
        case 'Exists':
          return (v) => v.byKey.has(key);
        case 'DoesNotExist':
          return (v) => !v.byKey.has(key);
        case 'In':
          return (v) => v.byKey.get(key)?.some((x) => values.has(x)) ?? false;
        case 'NotIn':
          return (v) => !(v.byKey.get(key)?.some((x) => values.has(x)) ?? false);
      }
    }
    const sk = `${r.source}:${r.key}`;
    switch (r.operator) {
      case 'Exists':
        return (v) => v.bySourceKey.has(sk);
      case 'DoesNotExist':
        return (v) => !v.bySourceKey.has(sk);
      case 'In': {
        if (values.size === 1) {
          const only = r.values[0];
          return (v) => v.bySourceKey.get(sk) === only;
        }
        return (v) => {
          const x = v.bySourceKey.get(sk);
          return x !== undefined && values.has(x);
        };
      }
      case 'NotIn':
        return (v) => {
          const x = v.bySourceKey.get(sk);
          return x === undefined || !values.has(x);
        };
    }
  });
  return (view) => {
    for (const t of tests) if (!t(view)) return false;
    return true;
  };
}

export function requirement(source: string, key: string, operator: SelectorOperator, values: readonly string[] = []): Requirement {
  return { source, key, operator, values: [...new Set(values)].sort() };
}

/** The selector with requirements sorted and duplicates dropped. */
export function normalizeSelector(requirements: readonly Requirement[]): LabelSelector {
  const byString = new Map<string, Requirement>();
  for (const r of requirements) byString.set(requirementString(r), r);
  return { requirements: [...byString].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, r]) => r) };
}

export function requirementString(r: Requirement): string {
  const k = `${r.source}:${r.key}`;
  switch (r.operator) {
    case 'Exists':
      return k;
    case 'DoesNotExist':
      return `!${k}`;
    case 'In':
      return r.values.length === 1 ? `${k}=${r.values[0]}` : `${k} in (${r.values.join(',')})`;
    case 'NotIn':
      return `${k} notin (${r.values.join(',')})`;
  }
}

/** Canonical, human-readable form: `{k8s:app=web,k8s:io.kubernetes.pod.namespace=default}`; `{}` selects all. */
export function selectorString(sel: LabelSelector): string {
  return `{${sel.requirements.map(requirementString).join(',')}}`;
}

const isK8sOrAny = (r: Requirement): boolean => r.source === K8S_SOURCE || r.source === ANY_SOURCE;

export function namesNamespace(sel: LabelSelector): boolean {
  return sel.requirements.some((r) => isK8sOrAny(r) && r.key === POD_NAMESPACE_LABEL);
}

export function namesCluster(sel: LabelSelector): boolean {
  return sel.requirements.some((r) => isK8sOrAny(r) && r.key === POLICY_CLUSTER_LABEL);
}

export function namesReserved(sel: LabelSelector): boolean {
  return sel.requirements.some((r) => r.source === RESERVED_SOURCE);
}

export function withRequirement(sel: LabelSelector, r: Requirement): LabelSelector {
  return normalizeSelector([...sel.requirements, r]);
}

export const namespaceRequirement = (namespace: string): Requirement => requirement(K8S_SOURCE, POD_NAMESPACE_LABEL, 'In', [namespace]);
export const clusterRequirement = (cluster: string): Requirement => requirement(K8S_SOURCE, POLICY_CLUSTER_LABEL, 'In', [cluster]);
