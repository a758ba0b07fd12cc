import { z } from 'zod';
import { clusterObjectMetaSchema, dns1123Label } from './meta.ts';

export const namespaceSchema = z.object({
  kind: z.literal('Namespace'),
  apiVersion: z.string().optional(),
  metadata: clusterObjectMetaSchema.extend({ name: dns1123Label }),
});
export type Namespace = z.infer<typeof namespaceSchema>;
