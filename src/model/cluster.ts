// Cluster identity rules (ARCHITECTURE §3): names, IDs, and the identity range
// a cluster allocates from.
import { z } from 'zod';
import { MIN_ALLOCATED_IDENTITY } from './identity.ts';

export const MAX_CLUSTER_NAME_LENGTH = 32;
const CLUSTER_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Why `name` is not a valid cluster name, or undefined when it is. */
export function validateClusterName(name: string): string | undefined {
  if (name.length === 0) return 'cluster name must not be empty';
  if (name.length > MAX_CLUSTER_NAME_LENGTH)
    return `cluster name "${name}" is ${name.length} characters, at most ${MAX_CLUSTER_NAME_LENGTH} allowed`;
  if (!CLUSTER_NAME.test(name))
    return `cluster name "${name}" must consist of lowercase alphanumerics and "-", and start and end with an alphanumeric`;
  return undefined;
}

export const clusterNameSchema = z.string().superRefine((name, ctx) => {
  const problem = validateClusterName(name);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

/** How many clusters a mesh may hold; decides how many identity bits name the cluster. */
export type MaxConnectedClusters = 255 | 511;
export const MAX_CONNECTED_CLUSTERS_VALUES: readonly MaxConnectedClusters[] = [255, 511];
export const maxConnectedClustersSchema = z.union([z.literal(255), z.literal(511)]);

/** Bit position of the cluster ID inside an identity: 16 for 255 clusters, 15 for 511. */
export function clusterIdShift(max: MaxConnectedClusters): number {
  return max === 255 ? 16 : 15;
}

/** Why `id` is not a valid cluster ID (0 = not meshed, else 1..max), or undefined. */
export function validateClusterId(id: number, max: MaxConnectedClusters = 255): string | undefined {
  if (!Number.isInteger(id) || id < 0 || id > max)
    return `cluster ID ${id} is out of range: 1..${max} (or 0 for a cluster outside any mesh)`;
  return undefined;
}

export interface IdentityRange {
  /** First allocatable identity, inclusive. */
  first: number;
  /** Last allocatable identity, inclusive. */
  last: number;
}

/**
 * Identities cluster `clusterId` allocates: [c<<shift, ((c+1)<<shift)-1];
 * cluster 0 starts at 256 to stay clear of the reserved identities.
 */
export function identityRange(clusterId: number, max: MaxConnectedClusters = 255): IdentityRange {
  const problem = validateClusterId(clusterId, max);
  if (problem) throw new RangeError(problem);
  const shift = clusterIdShift(max);
  const first = clusterId * 2 ** shift;
  const last = (clusterId + 1) * 2 ** shift - 1;
  return { first: clusterId === 0 ? MIN_ALLOCATED_IDENTITY : first, last };
}

/** The cluster ID an identity belongs to. */
export function clusterIdOfIdentity(id: number, max: MaxConnectedClusters = 255): number {
  return Math.floor(id / 2 ** clusterIdShift(max));
}

export function isIdentityInClusterRange(id: number, clusterId: number, max: MaxConnectedClusters = 255): boolean {
  const r = identityRange(clusterId, max);
  return Number.isInteger(id) && id >= r.first && id <= r.last;
}
