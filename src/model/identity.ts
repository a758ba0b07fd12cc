import { z } from 'zod';

/** Identities are 24 bits on the wire (they ride in the VXLAN VNI). */
export const IDENTITY_MAX = 0xffffff;
export const identityIdSchema = z.number().int().min(0).max(IDENTITY_MAX);
export type IdentityId = number;

/** Reserved identities (ARCHITECTURE §3); never allocated, the same in every cluster. */
export const ReservedIdentity = {
  unknown: 0,
  host: 1,
  world: 2,
  unmanaged: 3,
  health: 4,
  init: 5,
  remoteNode: 6,
  kubeApiserver: 7,
  ingress: 8,
} as const;
export type ReservedIdentityName = keyof typeof ReservedIdentity;

/** The `reserved:` label each reserved identity stands for. */
export const RESERVED_IDENTITY_LABELS: Readonly<Record<number, string>> = {
  0: 'reserved:unknown',
  1: 'reserved:host',
  2: 'reserved:world',
  3: 'reserved:unmanaged',
  4: 'reserved:health',
  5: 'reserved:init',
  6: 'reserved:remote-node',
  7: 'reserved:kube-apiserver',
  8: 'reserved:ingress',
};

/** Identities below this are reserved; cluster 0 allocates from here. */
export const MIN_ALLOCATED_IDENTITY = 256;

export function isReservedIdentity(id: number): boolean {
  return id >= 0 && id < MIN_ALLOCATED_IDENTITY;
}

/** A security identity: a number for a set of labels (`source:key=value`, sorted). */
export const identitySchema = z.object({
  id: identityIdSchema,
  labels: z.array(z.string().min(1)),
});
export type Identity = z.infer<typeof identitySchema>;
