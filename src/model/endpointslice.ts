import { z } from 'zod';
import { dns1123Label, dns1123Subdomain, ipv4Schema, objectMetaSchema } from './meta.ts';
import { protocolSchema } from './pod.ts';

/** The label that names the Service an EndpointSlice belongs to. */
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

export const endpointConditionsSchema = z.object({
  /** Absent means unknown, which consumers read as ready (Kubernetes' rule). */
  ready: z.boolean().optional(),
  /** Like ready, but also true while terminating; absent means "same as ready". */
  serving: z.boolean().optional(),
  terminating: z.boolean().optional(),
});
export type EndpointConditions = z.infer<typeof endpointConditionsSchema>;

export const sliceEndpointSchema = z.object({
  /** IPv4 addresses (the model carries IPv4 slices only). */
  addresses: z.array(ipv4Schema).min(1, 'at least one address'),
  conditions: endpointConditionsSchema.default({}),
  /** The pod's hostname (set for a pod whose spec.hostname is set and spec.subdomain names the Service). */
  hostname: dns1123Label.optional(),
  nodeName: dns1123Subdomain.optional(),
  zone: z.string().optional(),
  targetRef: z
    .object({
      kind: z.string().optional(),
      namespace: z.string().optional(),
      name: z.string().optional(),
      uid: z.string().optional(),
    })
    .optional(),
});
export type SliceEndpoint = z.infer<typeof sliceEndpointSchema>;

export const slicePortSchema = z.object({
  /** The Service port's name ('' or absent for a single unnamed port). */
  name: z.string().max(63).optional(),
  /** Absent: every port (Kubernetes' meaning); such a port maps nothing here. */
  port: z.number().int().min(1).max(65535).optional(),
  protocol: protocolSchema.default('TCP'),
  appProtocol: z.string().optional(),
});
export type SlicePort = z.infer<typeof slicePortSchema>;

/** discovery.k8s.io/v1 EndpointSlice, IPv4 only: the backends of a Service as Kubernetes publishes them. */
export const endpointSliceSchema = z.object({
  kind: z.literal('EndpointSlice'),
  apiVersion: z.string().optional(),
  metadata: objectMetaSchema,
  addressType: z.literal('IPv4'),
  endpoints: z.array(sliceEndpointSchema).default([]),
  ports: z.array(slicePortSchema).default([]),
});
export type EndpointSlice = z.infer<typeof endpointSliceSchema>;

/** The Service this slice belongs to (its `kubernetes.io/service-name` label). */
export function sliceServiceName(slice: EndpointSlice): string | undefined {
  return slice.metadata.labels[SERVICE_NAME_LABEL] || undefined;
}

/** Ready: absent counts as ready (Kubernetes: "nil should be interpreted as true"). */
export function endpointReady(e: SliceEndpoint): boolean {
  return e.conditions.ready ?? true;
}

/** Serving: absent falls back to ready. */
export function endpointServing(e: SliceEndpoint): boolean {
  return e.conditions.serving ?? endpointReady(e);
}

export function endpointTerminating(e: SliceEndpoint): boolean {
  return e.conditions.terminating ?? false;
}

/** One backend address of a Service port, from its EndpointSlices. */
export interface SliceBackend {
  ip: string;
  port: number;
  protocol: z.infer<typeof protocolSchema>;
  nodeName: string | undefined;
  ready: boolean;
  serving: boolean;
  terminating: boolean;
}

/**
 * The backends of the Service port named `portName` ('' for an unnamed port)
 * in `slices` (all slices of one Service), one per address, deduplicated by
 * ip:port/protocol. A backend listed twice (an endpoint moving between slices)
 * is as available as its best listing: ready or serving if either says so,
 * terminating only if both do.
 */
export function sliceBackends(slices: Iterable<EndpointSlice>, portName: string): SliceBackend[] {
  const out = new Map<string, SliceBackend>();
  for (const s of slices) {
    for (const p of s.ports) {
      if ((p.name ?? '') !== portName || p.port === undefined) continue;
      for (const e of s.endpoints) {
        for (const ip of e.addresses) {
          const key = `${ip}:${p.port}/${p.protocol}`;
          const seen = out.get(key);
          if (seen) {
            seen.ready ||= endpointReady(e);
            seen.serving ||= endpointServing(e);
            seen.terminating &&= endpointTerminating(e);
            continue;
          }
          out.set(key, {
            ip,
            port: p.port,
            protocol: p.protocol,
            nodeName: e.nodeName,
            ready: endpointReady(e),
            serving: endpointServing(e),
            terminating: endpointTerminating(e),
          });
        }
      }
    }
  }
  return [...out.values()];
}
