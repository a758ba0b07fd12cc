// The backends a Service has in this cluster, per port, from one of two
// origins (pure functions; the agent and the apiserver's export both use them,
// so a remote cluster is offered the backends the local agents use):
//
//   endpointslices  the Service's EndpointSlices (label kubernetes.io/service-name),
//                   as kube-proxy and Cilium read them: the source's Kubernetes
//                   controllers decide membership, readiness and termination;
//                   a Service without a selector works with slices written by hand.
//   selectors       the Service's selector run over the cluster's Pods (the
//                   store source, which has no EndpointSlice controller).
//
// Conditions of a slice endpoint (per Service port; kube-proxy's rule):
//   - ready (absent = ready): takes new connections;
//   - not ready, serving and terminating: takes new connections only while no
//     endpoint of the port is ready (graceful termination: a Service whose
//     pods are all shutting down keeps answering while they still serve);
//   - otherwise: kept (its connections go on), flagged, no new connections.
// A ready endpoint that is also terminating counts as ready (the Ready
// condition decides, as in kube-proxy).
import { type EndpointSlice, type SliceBackend, sliceBackends } from './endpointslice.ts';
import { isPodReady, type Pod } from './pod.ts';
import { servicePods, servicePortTarget, type Service } from './service.ts';

/** Where a Service's local backends come from (see the head of this file). */
export type ServiceBackendsFrom = 'endpointslices' | 'selectors';

/** One backend of one Service port in this cluster. */
export interface LocalBackend {
  ip: string;
  port: number;
  /** Takes new connections (ready, or serving while terminating and nothing of the port is ready). */
  ready: boolean;
  /** Shutting down and not taking new connections (its existing ones go on). */
  terminating: boolean;
  /** The node it runs on, when known. */
  nodeName?: string | undefined;
}

/** The backends of each port of `svc` (same index as svc.spec.ports) picked by its selector from `pods`. */
export function selectorBackends(svc: Service, pods: Iterable<Pod>): LocalBackend[][] {
  const selected = servicePods(svc, pods);
  return svc.spec.ports.map((sp) => {
    const out: LocalBackend[] = [];
    for (const pod of selected) {
      const port = servicePortTarget(sp, pod);
      if (port === undefined) continue;
      out.push({ ip: pod.status.podIP!, port, ready: isPodReady(pod), terminating: false, nodeName: pod.spec.nodeName });
    }
    return out;
  });
}

/**
 * The backends of one Service port from its slices' endpoints (already
 * matched by port name and protocol): the conditions rule of the head comment.
 */
export function applyEndpointConditions(endpoints: readonly SliceBackend[]): LocalBackend[] {
  const anyReady = endpoints.some((e) => e.ready);
  return endpoints.map((e) => {
    const used = e.ready || (!anyReady && e.serving && e.terminating);
    return { ip: e.ip, port: e.port, ready: used, terminating: e.terminating && !used, nodeName: e.nodeName };
  });
}

/**
 * The backends of each port of `svc` (same index as svc.spec.ports) from
 * `slices` (the slices labelled with its name, in its namespace; several are
 * merged). A slice port maps to the Service port of the same name ('' for an
 * unnamed one) and protocol.
 */
export function endpointSliceBackends(svc: Service, slices: Iterable<EndpointSlice>): LocalBackend[][] {
  const list = [...slices];
  return svc.spec.ports.map((sp) => applyEndpointConditions(sliceBackends(list, sp.name ?? '').filter((b) => b.protocol === sp.protocol)));
}
