import { z } from 'zod';
import { ipv4Schema, labelsSchema, objectMetaSchema } from './meta.ts';
import { findNamedPort, portNumberSchema, protocolSchema, type Pod } from './pod.ts';

export const servicePortSchema = z.object({
  name: z.string().max(63).regex(/^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$/, 'lowercase alphanumerics and "-"').optional(),
  port: portNumberSchema,
  /** A port number, or the name of a container port. Defaults to `port`. */
  targetPort: z.union([portNumberSchema, z.string().min(1).max(15)]).optional(),
  protocol: protocolSchema.default('TCP'),
});
export type ServicePort = z.infer<typeof servicePortSchema>;

export const serviceSchema = z
  .object({
    kind: z.literal('Service'),
    apiVersion: z.string().optional(),
    metadata: objectMetaSchema,
    spec: z.object({
      type: z.enum(['ClusterIP', 'NodePort', 'LoadBalancer']).default('ClusterIP'),
      /** The VIP, or 'None' for a headless service; absent until allocated. */
      clusterIP: z.union([ipv4Schema, z.literal('None')]).optional(),
      ports: z.array(servicePortSchema).default([]),
      /** Pods whose labels include all of these back the service; absent = no automatic backends. */
      selector: labelsSchema.optional(),
      sessionAffinity: z.enum(['None', 'ClientIP']).default('None'),
      sessionAffinityConfig: z
        .object({ clientIP: z.object({ timeoutSeconds: z.number().int().min(1).max(86400).default(10800) }) })
        .optional(),
    }),
  })
  .superRefine((svc, ctx) => {
    const ports = svc.spec.ports;
    if (ports.length > 1) {
      ports.forEach((p, i) => {
        if (!p.name) ctx.addIssue({ code: 'custom', path: ['spec', 'ports', i, 'name'], message: 'required when a service has more than one port' });
      });
    }
    const seen = new Set<string>();
    ports.forEach((p, i) => {
      if (p.name === undefined) return;
      if (seen.has(p.name)) ctx.addIssue({ code: 'custom', path: ['spec', 'ports', i, 'name'], message: `duplicate port name "${p.name}"` });
      seen.add(p.name);
    });
  });
export type Service = z.infer<typeof serviceSchema>;

/** Annotations that make a service part of the mesh (current and legacy spelling), and opt out of sharing backends. */
export const GLOBAL_SERVICE_ANNOTATION = 'service.cilium.io/global';
export const LEGACY_GLOBAL_SERVICE_ANNOTATION = 'io.cilium/global-service';
export const SHARED_SERVICE_ANNOTATION = 'service.cilium.io/shared';
export const LEGACY_SHARED_SERVICE_ANNOTATION = 'io.cilium/shared-service';

/** True when the service is annotated global (`service.cilium.io/global` or the legacy `io.cilium/global-service`). */
export function isGlobalService(svc: Service): boolean {
  const a = svc.metadata.annotations;
  return (a[GLOBAL_SERVICE_ANNOTATION] ?? a[LEGACY_GLOBAL_SERVICE_ANNOTATION])?.toLowerCase() === 'true';
}

/** A global service shares its backends unless annotated `shared: "false"`. */
export function isSharedService(svc: Service): boolean {
  const a = svc.metadata.annotations;
  return (a[SHARED_SERVICE_ANNOTATION] ?? a[LEGACY_SHARED_SERVICE_ANNOTATION])?.toLowerCase() !== 'false';
}

/** True when every selector label is on the pod (an empty selector selects nothing, as in Kubernetes Services). */
export function selects(selector: Record<string, string> | undefined, pod: Pod): boolean {
  if (!selector) return false;
  const entries = Object.entries(selector);
  if (entries.length === 0) return false;
  return entries.every(([k, v]) => pod.metadata.labels[k] === v);
}

/**
 * Pods selected by `svc` that could serve it: same namespace, selected, with
 * an IP, not terminated; ready or not (a not-ready pod keeps the connections
 * it has but takes no new ones).
 */
export function servicePods(svc: Service, pods: Iterable<Pod>): Pod[] {
  const out: Pod[] = [];
  for (const p of pods) {
    if (p.metadata.namespace !== svc.metadata.namespace) continue;
    if (!selects(svc.spec.selector, p)) continue;
    if (!p.status.podIP) continue;
    if (p.status.phase === 'Succeeded' || p.status.phase === 'Failed') continue;
    out.push(p);
  }
  return out;
}

/**
 * The port on `pod` a service port sends to: a numeric targetPort (default
 * the port itself), or the pod's container port of that name and protocol;
 * undefined when the pod has no such named port.
 */
export function servicePortTarget(sp: ServicePort, pod: Pod): number | undefined {
  const target = sp.targetPort ?? sp.port;
  return typeof target === 'number' ? target : findNamedPort(pod, target, sp.protocol)?.containerPort;
}
