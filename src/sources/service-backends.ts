// The local backends of Services, kept current from a cluster source: from
// the EndpointSlices when the source has them (a Kubernetes API, whose
// EndpointSlice controller is the truth about membership and readiness), from
// the Services' selectors over the Pods otherwise (the store source). The
// agent's service programming and the apiserver's export of global services
// both read backends through this, so they agree on what a Service's local
// backends are. The rules per endpoint are in model/service-backends.ts.
import {
  SERVICE_NAME_LABEL,
  endpointSliceBackends,
  selectorBackends,
  selects,
  type EndpointSlice,
  type LocalBackend,
  type Pod,
  type Service,
  type ServiceBackendsFrom,
} from '../model/index.ts';
import type { ClusterSource, Resource, Unsubscribe } from './types.ts';

/** What LocalBackendIndex follows. */
export type ServiceBackendInput =
  | { from: 'selectors'; pods: Resource<Pod> }
  | { from: 'endpointslices'; endpointSlices: Resource<EndpointSlice> };

/** The input a source declares (ClusterSource.serviceBackends). */
export function serviceBackendInput(source: Pick<ClusterSource, 'serviceBackends' | 'pods' | 'endpointSlices'>): ServiceBackendInput {
  return source.serviceBackends === 'endpointslices' ? { from: 'endpointslices', endpointSlices: source.endpointSlices } : { from: 'selectors', pods: source.pods };
}

const svcKey = (namespace: string, name: string): string => `${namespace}/${name}`;

export class LocalBackendIndex {
  readonly from: ServiceBackendsFrom;
  private isSynced = false;
  /** selectors: namespace → pod name → pod. */
  private readonly podsByNs = new Map<string, Map<string, Pod>>();
  /** endpointslices: service key → slice name → slice. */
  private readonly slicesBySvc = new Map<string, Map<string, EndpointSlice>>();
  /** endpointslices: slice ns/name → the service key it was filed under. */
  private readonly svcOfSlice = new Map<string, string>();

  constructor(private readonly input: ServiceBackendInput) {
    this.from = input.from;
  }

  /** The followed resource delivered its initial list. */
  get synced(): boolean {
    return this.isSynced;
  }

  /**
   * Follows the pods or slices. `changed` gets the key (namespace/name) of each
   * Service whose backends may have changed (`services` lists the Services
   * known to the caller, for the selector path); `synced` is called once the
   * initial list is in.
   */
  watch(services: () => Iterable<Service>, changed: (serviceKey: string) => void, synced: () => void): Unsubscribe {
    const onSynced = (): void => {
      this.isSynced = true;
      synced();
    };
    if (this.input.from === 'endpointslices') {
      return this.input.endpointSlices.watch((ev) => {
        if (ev.kind === 'synced') return onSynced();
        const s = ev.object;
        const ref = svcKey(s.metadata.namespace, s.metadata.name);
        const before = this.svcOfSlice.get(ref);
        const owner = s.metadata.labels[SERVICE_NAME_LABEL];
        const after = ev.kind === 'upsert' && owner ? svcKey(s.metadata.namespace, owner) : undefined;
        if (before !== undefined && before !== after) {
          const m = this.slicesBySvc.get(before);
          m?.delete(s.metadata.name);
          if (m?.size === 0) this.slicesBySvc.delete(before);
          this.svcOfSlice.delete(ref);
          changed(before);
        }
        if (after !== undefined) {
          let m = this.slicesBySvc.get(after);
          if (!m) this.slicesBySvc.set(after, (m = new Map()));
          m.set(s.metadata.name, s);
          this.svcOfSlice.set(ref, after);
          changed(after);
        }
      });
    }
    return this.input.pods.watch((ev) => {
      if (ev.kind === 'synced') return onSynced();
      const ns = ev.object.metadata.namespace;
      let pods = this.podsByNs.get(ns);
      const old = pods?.get(ev.object.metadata.name);
      if (ev.kind === 'upsert') {
        if (!pods) this.podsByNs.set(ns, (pods = new Map()));
        pods.set(ev.object.metadata.name, ev.object);
      } else {
        pods?.delete(ev.object.metadata.name);
        if (pods?.size === 0) this.podsByNs.delete(ns);
      }
      for (const svc of services()) {
        if (svc.metadata.namespace !== ns) continue;
        const sel = svc.spec.selector;
        if ((old && selects(sel, old)) || selects(sel, ev.object)) changed(svcKey(ns, svc.metadata.name));
      }
    });
  }

  /**
   * ip → hostname of the endpoints of Service namespace/name that carry one
   * (EndpointSlice `hostname`); none from selectors (the store source's pods
   * carry no hostname).
   */
  hostnames(namespace: string, name: string): Map<string, string> {
    const out = new Map<string, string>();
    for (const s of this.slicesBySvc.get(svcKey(namespace, name))?.values() ?? []) {
      for (const e of s.endpoints) if (e.hostname) for (const ip of e.addresses) out.set(ip, e.hostname);
    }
    return out;
  }

  /** The local backends of each port of `svc` (same index as svc.spec.ports). */
  backends(svc: Service): LocalBackend[][] {
    if (this.from === 'endpointslices') return endpointSliceBackends(svc, this.slicesBySvc.get(svcKey(svc.metadata.namespace, svc.metadata.name))?.values() ?? []);
    return selectorBackends(svc, this.podsByNs.get(svc.metadata.namespace)?.values() ?? []);
  }
}
