// What the apiserver publishes per prefix: the desired keys of one prefix,
// derived from the cluster source and handed to a KeySink (the kvstore
// SyncStore). Keys found under the prefix at start that are not desired once
// the source has synced are deleted before the synced canary is written, so a
// restarted apiserver neither loses nor keeps stale keys.
import type { Logger } from 'pino';
import { nodeKey, serviceKey } from '../clustermesh/keys.ts';
import { encodeIpEntry, encodeNode, encodeService, ipEntryKey } from '../clustermesh/wire.ts';
import {
  isIdentityInClusterRange,
  type Endpoint,
  type MaxConnectedClusters,
  type Node,
  type Pod,
  type Service,
} from '../model/index.ts';
import { LocalBackendIndex, refKey, type Resource, type ServiceBackendInput, type Unsubscribe } from '../sources/index.ts';
import { ipEntryValue, nodeValue, serviceValue } from './convert.ts';
import { derivedServiceName, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL as MCS_SERVICE_NAME_LABEL } from '../mcs/plan.ts';

/** Where desired keys go (the kvstore SyncStore has this shape). */
export interface KeySink {
  upsert(key: string, value: string): void;
  delete(key: string): void;
  /** The whole initial set has been handed over; write the synced canary once it is written. */
  markInitialSyncDone(): void;
}

export interface ExportCluster {
  name: string;
  id: number;
  maxConnectedClusters: MaxConnectedClusters;
}

/** The desired keys of one prefix. */
export class PrefixExport {
  private readonly desired = new Map<string, string>();
  private initialDone = false;
  /** Source objects that could not be converted into a value of this prefix. */
  errors = 0;
  private resolveInitial!: () => void;
  /** Resolves once the initial set (and the pruning of stale keys) was handed to the sink. */
  readonly initialSyncDone = new Promise<void>((r) => (this.resolveInitial = r));

  constructor(
    readonly name: string,
    private readonly sink: KeySink,
    /** Keys under the prefix when the apiserver started (candidates for pruning). */
    private readonly existing: ReadonlySet<string> = new Set(),
  ) {}

  set(key: string, value: string): void {
    if (this.desired.get(key) === value) return;
    this.desired.set(key, value);
    this.sink.upsert(key, value);
  }

  remove(key: string): void {
    // After a restart a key may be in etcd without being desired yet: delete it too.
    if (this.desired.delete(key) || (!this.initialDone && this.existing.has(key))) this.sink.delete(key);
  }

  markInitialSyncDone(): void {
    if (this.initialDone) return;
    this.initialDone = true;
    for (const key of this.existing) if (!this.desired.has(key)) this.sink.delete(key);
    this.sink.markInitialSyncDone();
    this.resolveInitial();
  }

  keys(): string[] {
    return [...this.desired.keys()];
  }

  get size(): number {
    return this.desired.size;
  }
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** cilium/state/nodes/v1/<cluster>/<node> for every node. */
export function exportNodes(cluster: ExportCluster, nodes: Resource<Node>, out: PrefixExport, log: Logger): Unsubscribe {
  return nodes.watch((ev) => {
    if (ev.kind === 'synced') return out.markInitialSyncDone();
    const key = nodeKey(cluster.name, ev.object.metadata.name);
    if (ev.kind === 'delete') return out.remove(key);
    try {
      out.set(key, encodeNode(nodeValue(cluster, ev.object)));
    } catch (err) {
      out.errors++;
      log.warn({ node: ev.object.metadata.name, err: errMessage(err) }, 'node not exported');
      out.remove(key);
    }
  });
}

/**
 * cilium/state/ip/v1/default/<ip> for every endpoint IP, with the named ports
 * and service account of its Pod object. When two endpoints claim one IP (a pod
 * replaced before the old endpoint is gone) the latest claim is published; the
 * other takes over when it goes away. The initial set is complete once both
 * endpoints and pods are listed.
 */
export function exportIps(cluster: ExportCluster, endpoints: Resource<Endpoint>, pods: Resource<Pod>, out: PrefixExport, log: Logger): Unsubscribe {
  const ipKey = (ip: string): string => ipEntryKey({ IP: ip, Mask: null });
  const ipOf = new Map<string, string>(); // endpoint ref → ip
  const claims = new Map<string, Map<string, string>>(); // ip → endpoint ref → value (insertion order = age)
  const eps = new Map<string, Endpoint>(); // endpoint ref → endpoint
  let endpointsSynced = false;
  let podsSynced = false;
  const publish = (ip: string): void => {
    const c = claims.get(ip);
    const latest = c ? [...c.values()].pop() : undefined;
    if (latest === undefined) {
      claims.delete(ip);
      out.remove(ipKey(ip));
    } else out.set(ipKey(ip), latest);
  };
  const unclaim = (ref: string): void => {
    const ip = ipOf.get(ref);
    if (ip === undefined) return;
    ipOf.delete(ref);
    claims.get(ip)?.delete(ref);
    publish(ip);
  };
  const update = (ref: string, ep: Endpoint): void => {
    let value: string;
    try {
      if (!isIdentityInClusterRange(ep.status.identity.id, cluster.id, cluster.maxConnectedClusters))
        throw new Error(`identity ${ep.status.identity.id} is outside cluster ${cluster.name}'s range`);
      value = encodeIpEntry(ipEntryValue(ep, pods.get({ namespace: ep.metadata.namespace, name: ep.metadata.name })));
    } catch (err) {
      out.errors++;
      log.warn({ endpoint: ref, err: errMessage(err) }, 'endpoint IP not exported');
      return unclaim(ref);
    }
    const ip = ep.status.networking.podIP;
    if (ipOf.get(ref) !== ip) unclaim(ref);
    ipOf.set(ref, ip);
    let c = claims.get(ip);
    if (!c) claims.set(ip, (c = new Map()));
    c.delete(ref);
    c.set(ref, value);
    publish(ip);
  };
  const maybeSynced = (): void => {
    if (endpointsSynced && podsSynced) out.markInitialSyncDone();
  };
  const offPods = pods.watch((ev) => {
    if (ev.kind === 'synced') {
      podsSynced = true;
      for (const [ref, ep] of eps) update(ref, ep);
      return maybeSynced();
    }
    const ref = refKey(ev.object.metadata);
    const ep = eps.get(ref);
    if (ep && podsSynced) update(ref, ep);
  });
  const offEndpoints = endpoints.watch((ev) => {
    if (ev.kind === 'synced') {
      endpointsSynced = true;
      return maybeSynced();
    }
    const ref = refKey(ev.object.metadata);
    if (ev.kind === 'delete') {
      eps.delete(ref);
      return unclaim(ref);
    }
    eps.set(ref, ev.object);
    if (podsSynced) update(ref, ev.object);
  });
  return () => {
    offPods();
    offEndpoints();
  };
}

/**
 * cilium/state/services/v1/<cluster>/<ns>/<name> for every global service,
 * with the local backends that take new connections as backends (none when
 * not shared): from its EndpointSlices or its selector over the Pods, as the
 * source says (serviceBackendInput), the same rule as the agents'. The
 * `hostnames` of its backends come from its slices' endpoints; for the derived
 * Service of an MCS export (src/mcs/plan.ts) also from the exported Service's
 * slices: Kubernetes names an endpoint only in the slices of the Service its
 * pod's spec.subdomain names, and that is the exported one.
 */
export function exportServices(
  cluster: ExportCluster,
  services: Resource<Service>,
  backends: ServiceBackendInput,
  out: PrefixExport,
  log: Logger,
): Unsubscribe {
  const local = new LocalBackendIndex(backends);
  let servicesSynced = false;
  const recompute = (svc: Service): void => {
    const key = serviceKey(cluster.name, svc.metadata.namespace, svc.metadata.name);
    try {
      const { namespace, name, labels } = svc.metadata;
      const exported = labels[MANAGED_BY_LABEL] === MANAGED_BY ? labels[MCS_SERVICE_NAME_LABEL] : undefined;
      const hostnames = new Map([...(exported ? local.hostnames(namespace, exported) : []), ...local.hostnames(namespace, name)]);
      const value = serviceValue(cluster, svc, local.backends(svc), hostnames);
      if (value === undefined) out.remove(key);
      else out.set(key, encodeService(value));
    } catch (err) {
      out.errors++;
      log.warn({ service: refKey(svc.metadata), err: errMessage(err) }, 'service not exported');
      out.remove(key);
    }
  };
  const maybeSynced = (): void => {
    if (servicesSynced && local.synced) out.markInitialSyncDone();
  };
  const offBackends = local.watch(
    () => services.list(),
    (key) => {
      if (!local.synced) return; // the initial set is computed once, at synced
      const [namespace, name] = [key.slice(0, key.indexOf('/')), key.slice(key.indexOf('/') + 1)];
      const svc = services.get({ namespace, name });
      if (svc) recompute(svc);
      // An exported Service's slices also give its derived Service's hostnames.
      const derived = services.get({ namespace, name: derivedServiceName(name) });
      if (derived) recompute(derived);
    },
    () => {
      for (const svc of services.list()) recompute(svc);
      maybeSynced();
    },
  );
  const offServices = services.watch((ev) => {
    if (ev.kind === 'synced') {
      servicesSynced = true;
      return maybeSynced();
    }
    if (ev.kind === 'delete') return out.remove(serviceKey(cluster.name, ev.object.metadata.namespace, ev.object.metadata.name));
    if (local.synced) recompute(ev.object);
  });
  return () => {
    offBackends();
    offServices();
  };
}
