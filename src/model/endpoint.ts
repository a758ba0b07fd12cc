import { z } from 'zod';
import { dns1123Subdomain, ipv4Schema, objectMetaSchema } from './meta.ts';
import { identityIdSchema } from './identity.ts';

/**
 * What an agent publishes per pod (the role of a CiliumEndpoint). metadata
 * name/namespace are the pod's, metadata.labels the pod's labels.
 */
export const endpointSchema = z.object({
  kind: z.literal('Endpoint'),
  apiVersion: z.string().optional(),
  metadata: objectMetaSchema,
  status: z.object({
    /** The agent's local endpoint id on its node. */
    endpointId: z.number().int().min(0).max(0xffff).optional(),
    identity: z.object({
      id: identityIdSchema,
      /** The identity's label set, `source:key=value`, sorted. */
      labels: z.array(z.string()).default([]),
    }),
    networking: z.object({
      podIP: ipv4Schema,
      nodeName: dns1123Subdomain,
      /** The node's underlay IP: the tunnel endpoint for this pod. */
      nodeIP: ipv4Schema,
    }),
  }),
});
export type Endpoint = z.infer<typeof endpointSchema>;
