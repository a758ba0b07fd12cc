import { z } from 'zod';
import { cidrV4Schema, clusterObjectMetaSchema, ipv4Schema } from './meta.ts';

export const nodeAddressSchema = z.object({
  type: z.enum(['InternalIP', 'ExternalIP', 'Hostname']),
  address: z.string().min(1),
});

export const nodeSchema = z
  .object({
    kind: z.literal('Node'),
    apiVersion: z.string().optional(),
    metadata: clusterObjectMetaSchema,
    spec: z.object({
      podCIDR: cidrV4Schema.optional(),
      /** Every IPv4 pod CIDR of the node (Kubernetes' spec.podCIDRs); the first is podCIDR. */
      podCIDRs: z.array(cidrV4Schema).optional(),
    }).default({}),
    status: z.object({
      addresses: z.array(nodeAddressSchema).default([]),
    }).default({ addresses: [] }),
  })
  .superRefine((node, ctx) => {
    node.status.addresses.forEach((a, i) => {
      if (a.type !== 'Hostname' && !ipv4Schema.safeParse(a.address).success)
        ctx.addIssue({ code: 'custom', path: ['status', 'addresses', i, 'address'], message: `${a.type} must be an IPv4 address` });
    });
  });
export type Node = z.infer<typeof nodeSchema>;

/** The node's first InternalIP: the underlay address tunnels are sent to. */
export function nodeInternalIP(node: Node): string | undefined {
  return node.status.addresses.find((a) => a.type === 'InternalIP')?.address;
}

/** The node's IPv4 pod CIDRs: spec.podCIDRs, else spec.podCIDR. */
export function nodePodCIDRs(node: Node): string[] {
  if (node.spec.podCIDRs && node.spec.podCIDRs.length > 0) return node.spec.podCIDRs;
  return node.spec.podCIDR ? [node.spec.podCIDR] : [];
}
