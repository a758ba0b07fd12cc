import { z } from 'zod';
import { clusterObjectMetaSchema, objectMetaSchema } from './meta.ts';

/** Policies are stored and watched now; their spec is interpreted by src/policy/ later. */
const opaqueSpec = z.record(z.string(), z.unknown());

export const networkPolicySchema = z.object({
  kind: z.literal('NetworkPolicy'),
  apiVersion: z.string().optional(),
  metadata: objectMetaSchema,
  spec: opaqueSpec.default({}),
});
export type NetworkPolicy = z.infer<typeof networkPolicySchema>;

export const ciliumNetworkPolicySchema = z.object({
  kind: z.literal('CiliumNetworkPolicy'),
  apiVersion: z.string().optional(),
  metadata: objectMetaSchema,
  spec: opaqueSpec.optional(),
  specs: z.array(opaqueSpec).optional(),
});
export type CiliumNetworkPolicy = z.infer<typeof ciliumNetworkPolicySchema>;

/** cilium.io/v2 CiliumClusterwideNetworkPolicy: a CiliumNetworkPolicy without a namespace. */
export const ciliumClusterwideNetworkPolicySchema = z.object({
  kind: z.literal('CiliumClusterwideNetworkPolicy'),
  apiVersion: z.string().optional(),
  metadata: clusterObjectMetaSchema,
  spec: opaqueSpec.optional(),
  specs: z.array(opaqueSpec).optional(),
});
export type CiliumClusterwideNetworkPolicy = z.infer<typeof ciliumClusterwideNetworkPolicySchema>;
