import { z } from 'zod';
import { dns1123Label, dns1123Subdomain, ipv4Schema, objectMetaSchema } from './meta.ts';

export const protocolSchema = z.enum(['TCP', 'UDP', 'SCTP']);
export type Protocol = z.infer<typeof protocolSchema>;

export const portNumberSchema = z.number().int().min(1).max(65535);

export const containerPortSchema = z.object({
  /** IANA_SVC_NAME: at most 15 chars; a Service's targetPort may name it. */
  name: z.string().max(15).regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'lowercase alphanumerics and "-"').optional(),
  containerPort: portNumberSchema,
  protocol: protocolSchema.default('TCP'),
});
export type ContainerPort = z.infer<typeof containerPortSchema>;

export const containerSchema = z.object({
  name: dns1123Label,
  image: z.string().optional(),
  command: z.array(z.string()).optional(),
  args: z.array(z.string()).optional(),
  ports: z.array(containerPortSchema).default([]),
});
export type Container = z.infer<typeof containerSchema>;

export const podConditionSchema = z.object({
  type: z.string().min(1),
  status: z.enum(['True', 'False', 'Unknown']),
});

export const podSchema = z.object({
  kind: z.literal('Pod'),
  apiVersion: z.string().optional(),
  metadata: objectMetaSchema,
  spec: z.object({
    nodeName: dns1123Subdomain.optional(),
    serviceAccountName: dns1123Subdomain.default('default'),
    containers: z.array(containerSchema).default([]),
  }),
  status: z
    .object({
      phase: z.enum(['Pending', 'Running', 'Succeeded', 'Failed', 'Unknown']).default('Pending'),
      podIP: ipv4Schema.optional(),
      conditions: z.array(podConditionSchema).default([]),
    })
    .default({ phase: 'Pending', conditions: [] }),
});
export type Pod = z.infer<typeof podSchema>;

/** A pod is ready when its Ready condition is True (as Kubernetes decides for Endpoints). */
export function isPodReady(pod: Pod): boolean {
  return pod.status.conditions.some((c) => c.type === 'Ready' && c.status === 'True');
}

/** The container port named `name` (first match over all containers), as a Service's named targetPort resolves. */
export function findNamedPort(pod: Pod, name: string, protocol: Protocol): ContainerPort | undefined {
  for (const c of pod.spec.containers) {
    for (const p of c.ports) if (p.name === name && p.protocol === protocol) return p;
  }
  return undefined;
}
