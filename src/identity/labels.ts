// The label set of a security identity (ARCHITECTURE §3) and its canonical
// string, exactly as it appears as the value of `cilium/state/identities/v1/id/<id>`.
import { CLUSTER_LABEL_KEY, formatLabels, parseLabels, type Label } from '../clustermesh/wire.ts';
import type { Labels, Namespace, Pod } from '../model/index.ts';

export type { Label };

export const K8S_SOURCE = 'k8s';
export const POD_NAMESPACE_LABEL = 'io.kubernetes.pod.namespace';
export const POLICY_CLUSTER_LABEL = CLUSTER_LABEL_KEY; // 'io.cilium.k8s.policy.cluster'
export const POLICY_SERVICEACCOUNT_LABEL = 'io.cilium.k8s.policy.serviceaccount';
export const NAMESPACE_LABELS_PREFIX = 'io.cilium.k8s.namespace.labels.';

export interface IdentityLabelInput {
  cluster: string;
  namespace: string;
  serviceAccount: string;
  podLabels: Labels;
  /** Labels of the pod's namespace; absent when the namespace object is not known (yet). */
  namespaceLabels?: Labels;
}

/**
 * The identity label set of a pod: its labels with the `k8s:` source, plus
 * namespace, cluster, service account and the namespace's labels. The derived
 * labels win over pod labels of the same key. Returned sorted.
 */
export function identityLabels(input: IdentityLabelInput): Label[] {
  const byKey = new Map<string, string>();
  for (const [k, v] of Object.entries(input.podLabels)) byKey.set(k, v);
  for (const [k, v] of Object.entries(input.namespaceLabels ?? {})) byKey.set(`${NAMESPACE_LABELS_PREFIX}${k}`, v);
  byKey.set(POD_NAMESPACE_LABEL, input.namespace);
  byKey.set(POLICY_CLUSTER_LABEL, input.cluster);
  byKey.set(POLICY_SERVICEACCOUNT_LABEL, input.serviceAccount);
  return sortLabels([...byKey].map(([key, value]) => ({ source: K8S_SOURCE, key, value })));
}

/** identityLabels() for a pod object and its namespace object. */
export function podIdentityLabels(cluster: string, pod: Pod, namespace?: Namespace): Label[] {
  return identityLabels({
    cluster,
    namespace: pod.metadata.namespace,
    serviceAccount: pod.spec.serviceAccountName,
    podLabels: pod.metadata.labels,
    ...(namespace ? { namespaceLabels: namespace.metadata.labels } : {}),
  });
}

const sortKey = (l: Label): string => `${l.source}:${l.key}`;

export function sortLabels(labels: Iterable<Label>): Label[] {
  return [...labels].sort((a, b) => (sortKey(a) < sortKey(b) ? -1 : sortKey(a) > sortKey(b) ? 1 : 0));
}

/**
 * The canonical label string: sorted by `source:key`, each `source:key=value;`
 * (trailing ';'). Throws WireEncodeError on a label no reader would accept.
 */
export function labelString(labels: Iterable<Label>): string {
  return formatLabels(labels);
}

/** Parses a canonical label string; throws on malformed input. */
export function parseLabelString(s: string): Label[] {
  const r = parseLabels(s);
  if (!r.ok) throw new Error(`invalid label string ${JSON.stringify(s.slice(0, 120))}: ${r.detail}`);
  return r.labels;
}

/** `source:key=value` for each label (the form an Endpoint carries). */
export function labelStrings(labels: Iterable<Label>): string[] {
  return sortLabels(labels).map((l) => `${l.source}:${l.key}=${l.value}`);
}
