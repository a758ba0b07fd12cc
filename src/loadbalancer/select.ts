// Which of a service's backends take new connections, per frontend: the
// readiness of each backend and the global service's topology affinity
// (annotation service.cilium.io/affinity).
//
//   none   every usable backend, local and remote alike. (A literal "none"
//          must not lose the remote backends, as in Cilium's bug #46623.)
//   local  the usable backends of this cluster; while there is none, the
//          usable remote ones.
//   remote the mirror image.
//
// Usable means ready, not terminating, and not in a cluster that announced
// it is gone. The choice is per backend, not per cluster: as local backends
// go one by one the remaining ones keep taking everything, and only when the
// last one goes do new connections move to the other side (and back as soon
// as one returns). Backends that are not usable stay in cm_backends with
// flags, so the connections they already have keep working.

export type TopologyAffinity = 'local' | 'remote' | 'none';

export const AFFINITY_ANNOTATION = 'service.cilium.io/affinity';

/** The annotation's value; absent, empty or unknown values mean 'none'. */
export function parseTopologyAffinity(value: string | undefined): TopologyAffinity {
  const v = value?.trim().toLowerCase();
  return v === 'local' || v === 'remote' ? v : 'none';
}

export interface BackendCandidate {
  /** cm_backends id, > 0. */
  id: number;
  ip: string;
  port: number;
  /** Cluster of the backend. */
  clusterId: number;
  /** In the cluster this node belongs to. */
  local: boolean;
  ready: boolean;
  terminating: boolean;
  /** Its cluster announced it is gone: never chosen for a new connection. */
  clusterGone: boolean;
}

/** Which group the active backends came from. */
export type SelectionTier = 'all' | 'local' | 'remote' | 'local-fallback' | 'remote-fallback' | 'none';

export interface Selection {
  /** Backends for new connections, sorted by id. */
  active: BackendCandidate[];
  /**
   * all: affinity none; local/remote: the preferred side; local-fallback:
   * affinity remote but no remote backend is usable (and the mirror image);
   * none: no usable backend at all.
   */
  tier: SelectionTier;
}

export function usable(b: BackendCandidate): boolean {
  return b.ready && !b.terminating && !b.clusterGone;
}

export function selectBackends(candidates: readonly BackendCandidate[], affinity: TopologyAffinity): Selection {
  const ok = candidates.filter(usable).sort((a, b) => a.id - b.id);
  if (ok.length === 0) return { active: [], tier: 'none' };
  if (affinity === 'none') return { active: ok, tier: 'all' };
  const preferLocal = affinity === 'local';
  const preferred = ok.filter((b) => b.local === preferLocal);
  if (preferred.length > 0) return { active: preferred, tier: affinity };
  return { active: ok, tier: preferLocal ? 'remote-fallback' : 'local-fallback' };
}
