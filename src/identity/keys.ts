// Allocator keys in the cluster's etcd, besides the exported
// `cilium/state/identities/v1/id/<id>` (clustermesh/keys.ts identityKey).
// STABLE API: every agent and the apiserver of a cluster allocate through
// them. All live under `cilium/state/identities/`, where the `agent` role may write.
import { identitiesPrefix, identityKey } from '../clustermesh/keys.ts';

export { identitiesPrefix, identityKey };

/** `cilium/state/identities/v1/value/<label string>` → decimal id: the same labels get the same number. */
export const identityValuePrefix = 'cilium/state/identities/v1/value/';
export const identityValueKey = (labelString: string): string => `${identityValuePrefix}${labelString}`;

/** `cilium/state/identities/v1/refs/<id>/<user>`: one per user holding the identity, on that user's session lease. */
export const identityRefsPrefix = 'cilium/state/identities/v1/refs/';
export const identityRefsOfIdPrefix = (id: number): string => `${identityRefsPrefix}${id}/`;
export const identityRefKey = (id: number, user: string): string => `${identityRefsOfIdPrefix(id)}${user}`;

/** The id in a refs key, or undefined. */
export function idFromRefKey(key: string): number | undefined {
  if (!key.startsWith(identityRefsPrefix)) return undefined;
  const m = /^(\d{1,8})\//.exec(key.slice(identityRefsPrefix.length));
  return m?.[1] !== undefined ? Number(m[1]) : undefined;
}
