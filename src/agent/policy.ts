// Network policy in the agent (issue 5): the local cluster's NetworkPolicies
// and CiliumNetworkPolicies, the identities of the whole mesh and this node's
// endpoints feed one incremental PolicyResolver (src/policy/); its result is
// written into cm_policy, cm_policy_enforce and cm_policy_cidr through three
// reconcilers (src/datapath/maps/policy-entries.ts turns verdicts into keys).
//
//   inputs                                 → resolver
//   NetworkPolicy / CiliumNetworkPolicy    upsertPolicy / removePolicy (an object that fails to parse is
//                                          logged and counted; the previous good version stays)
//   Endpoint objects of the local source   identities (ref-counted: many endpoints share one)
//   this node's endpoints                  identities, and the local endpoints policies apply to
//                                          (labels of the identity, named ports from the Pod object)
//   ClusterMesh.identities                 remote identities
//   Pod objects of the local source        named ports: ingress against the local pod, egress against
//                                          pods of this cluster
//   ClusterMesh.ipcache                    named ports of remote pods (their ip entries carry them):
//                                          egress against pods of other clusters
//   (reserved identities)                  seeded by the resolver itself
//   CIDR peers                             node-local identities (1<<24 | n, src/policy/cidr.ts) from
//                                          this node's pool, each prefix put into cm_policy_cidr: the
//                                          datapath classifies every peer address by the longest named
//                                          prefix around it, pods and nodes of any cluster included, and
//                                          checks that CIDR identity besides the peer's own (per address,
//                                          bpf/lib/policy.h); they never leave the node. A new one enters
//                                          cm_policy_cidr after phase A below; after a restart each
//                                          prefix gets its pinned number again
//
// Never a hole (an order per batch of changed endpoints):
//   A. every cm_policy key the new state has is written (new and changed values);
//   B. then cm_policy_enforce: ACTIVE and the directions on — or off, for an
//      endpoint that lost its policy (its entries are still there);
//   C. then the keys the new state no longer has are deleted.
// So an endpoint's ACTIVE flag goes on only after its entries are in the map,
// and a policy going away clears the flags before its entries are deleted.
//
// The endpoint manager's writes of the endpoints map pass through a tap
// (tapEndpointsMap) that tells this manager a local endpoint changed, and whose
// whenApplied() also waits for the endpoint's policy to be applied: the CNI
// add returns only once the new pod's policy is in the maps.
//
// Restart without loss: the maps are pinned; nothing is written until the
// local policy kinds have been listed; then the whole desired state is
// computed and the reconcilers start with a full pass that writes only
// differences. Pruning waits for every source (the agent's pruneBlocker).
import { systemClock, type Clock, type TimerHandle } from '../util/clock.ts';
import type { ObservableMap } from '../clustermesh/cache.ts';
import type { RemoteIdentity, RemoteIpEntry } from '../clustermesh/clustermesh.ts';
import * as policyMap from '../datapath/maps/policy.ts';
import type { MapHandle } from '../datapath/maps/codec.ts';
import { monotonicSeconds } from '../datapath/maps/ct.ts';
import type { NodeDatapath } from '../datapath/node.ts';
import { RESERVED_IDENTITY_LABELS, type CiliumClusterwideNetworkPolicy, type CiliumNetworkPolicy, type Endpoint, type NetworkPolicy, type Pod } from '../model/index.ts';
import {
  PolicyResolver,
  parseCiliumClusterwideNetworkPolicy,
  parseCiliumNetworkPolicy,
  parseNetworkPolicy,
  policyKey,
  type Direction,
  type LocalEndpoint,
  type NamedPort,
  type PolicyDelta,
  type PolicyKind,
  type Verdict,
} from '../policy/index.ts';
import { LOCAL_IDENTITY_MAX, LOCAL_IDENTITY_MIN, isLocalIdentity } from '../policy/cidr.ts';
import { toPolicyMaps } from '../datapath/maps/policy-entries.ts';
import type { Resource, Unsubscribe } from '../sources/index.ts';
import type { Logger } from './endpoints.ts';
import { Reconciler, type ReconcileTarget, type ReconcilerStatus } from './reconciler.ts';

// ---------------------------------------------------------------------------
// Map keys as reconciler keys

/** `endpoint/direction/protocol/identity/port/prefixLen`: one cm_policy key. */
export function policyKeyString(k: policyMap.Key): string {
  return `${k.endpointId}/${k.direction}/${k.protocol}/${k.identity}/${k.port}/${k.portPrefixLen}`;
}

export function parsePolicyKeyString(s: string): policyMap.Key {
  const [ep, dir, proto, id, port, len, ...rest] = s.split('/');
  if (rest.length || (dir !== 'ingress' && dir !== 'egress')) throw new RangeError(`policy map key ${JSON.stringify(s)} is malformed`);
  const n = [ep, proto, id, port, len].map(Number);
  if (n.some((x) => !Number.isInteger(x))) throw new RangeError(`policy map key ${JSON.stringify(s)} is malformed`);
  return { endpointId: n[0]!, direction: dir, protocol: n[1]!, identity: n[2]!, port: n[3]!, portPrefixLen: n[4]! };
}

const enforceKeyString = (endpointId: number): string => String(endpointId);

/** Reconcile targets over the node's pinned policy maps, and the GC of cm_policy_conn. */
export function policyTargets(dp: NodeDatapath): {
  policy: ReconcileTarget<policyMap.Value>;
  enforce: ReconcileTarget<policyMap.EnforceValue>;
  cidr: ReconcileTarget<policyMap.CidrValue>;
  gcPolicyCt: () => number;
} {
  // Every write changes the revision (after it), so the verdicts the
  // datapath cached per connection stop holding (bpf/lib/policy.h).
  // (A lookup and an update each: read-modify-write, so that no other
  // writer's bump is ever undone by a counter of this process.)
  const bumped = <T>(r: T): T => {
    policyMap.bumpRevision(dp.maps.policyRev);
    return r;
  };
  return {
    policy: {
      list: () => [...policyMap.entries(dp.maps.policy)].map(([k, v]) => [policyKeyString(k), v] as const),
      update: (k, v) => bumped(policyMap.update(dp.maps.policy, parsePolicyKeyString(k), v)),
      delete: (k) => bumped(policyMap.remove(dp.maps.policy, parsePolicyKeyString(k))),
    },
    enforce: {
      // An array: every slot exists; only those with a flag count as entries.
      list: () => policyMap.enforcedSlots(dp.maps.policyEnforce).map(([id, v]) => [enforceKeyString(id), v] as const),
      update: (k, v) => bumped(policyMap.enforce.update(dp.maps.policyEnforce, { endpointId: Number(k) }, v)),
      delete: (k) => bumped(policyMap.clearEnforce(dp.maps.policyEnforce, [Number(k)])),
    },
    cidr: {
      list: () => [...policyMap.cidr.entries(dp.maps.policyCidr)].map(([k, v]) => [policyMap.formatCidrKey(k), v] as const),
      update: (k, v) => bumped(policyMap.cidr.update(dp.maps.policyCidr, policyMap.parseCidrKey(k), v)),
      delete: (k) => bumped(policyMap.cidr.remove(dp.maps.policyCidr, policyMap.parseCidrKey(k))),
    },
    gcPolicyCt: () => gcPolicyCt(dp.maps.policyCt),
  };
}

/**
 * The CIDR identities in the node's pinned cm_policy_cidr (prefix,
 * identity): PolicyManagerOptions.restoredCidrIdentities, read before the
 * policy reconcilers start.
 */
export function restoredCidrIdentities(dp: Pick<NodeDatapath, 'maps'>): Array<[string, number]> {
  return [...policyMap.cidr.entries(dp.maps.policyCidr)].flatMap(([k, v]): Array<[string, number]> => (isLocalIdentity(v.identity) ? [[policyMap.formatCidrKey(k), v.identity]] : []));
}

/** Deletes expired cm_policy_conn entries (the datapath ignores them already; this frees their room). Collects first, deletes after. */
export function gcPolicyCt(map: MapHandle, now = monotonicSeconds()): number {
  return policyMap.removeExpiredConnections(map, now);
}

// ---------------------------------------------------------------------------
// Inputs and outputs

/** The parts of the local cluster source policy reads. */
export interface PolicySource {
  networkPolicies: Resource<NetworkPolicy>;
  ciliumNetworkPolicies: Resource<CiliumNetworkPolicy>;
  ciliumClusterwideNetworkPolicies: Resource<CiliumClusterwideNetworkPolicy>;
  endpoints: Resource<Endpoint>;
  pods: Resource<Pod>;
}

/** What policy needs of one of this node's endpoints (EndpointInfo has it). */
export interface LocalEndpointView {
  containerID: string;
  namespace: string;
  podName: string;
  endpointID: number;
  identity: number | null;
  /** `source:key=value` */
  identityLabels: readonly string[];
}

/** The reconciler surface the tap wraps (EndpointManager uses upsert, remove, whenApplied). */
type Tappable<V> = Pick<Reconciler<V>, 'upsert' | 'remove' | 'whenApplied'>;

export interface PolicyManagerOptions {
  clusterName: string;
  /** Selectors without a cluster label match the local cluster only (default true). */
  policyDefaultLocalCluster?: boolean;
  source: PolicySource;
  remoteIdentities: ObservableMap<number, RemoteIdentity>;
  /** Endpoints of remote clusters (ClusterMesh.ipcache): the named ports of their pods. */
  remoteEndpoints?: ObservableMap<string, RemoteIpEntry>;
  /** This node's endpoints (EndpointManager.list). */
  localEndpoints: () => readonly LocalEndpointView[];
  /** cm_policy, cm_policy_enforce and cm_policy_cidr (prefix → CIDR identity). */
  targets: { policy: ReconcileTarget<policyMap.Value>; enforce: ReconcileTarget<policyMap.EnforceValue>; cidr: ReconcileTarget<policyMap.CidrValue> };
  /** Why pruning must wait (the agent's: sources not synced), or null. */
  pruneBlocker?: () => string | null;
  /**
   * Whether the maps may be written yet besides the local policy kinds being
   * listed (the agent: every source synced, or the initial sync timed out), so
   * that the first write is the complete desired state. Polled; default always.
   */
  canWrite?: () => boolean;
  log: Logger;
  clock?: Clock;
  fullSyncIntervalMs?: number;
  onReconcileError?: (name: string) => (key: string | null, err: unknown, attempt: number) => void;
  /** Deletes expired cm_policy_conn entries; called every gcIntervalMs (default 30 s). */
  gcPolicyCt?: () => number;
  gcIntervalMs?: number;
  /** How long one phase waits for the maps before going on (default 5 s). */
  applyTimeoutMs?: number;
  /** How long the endpoint tap's whenApplied waits for policy (default 5 s; then the add goes on). */
  endpointWaitMs?: number;
  /**
   * Identities for CIDR peers, inclusive, inside the node-local scope
   * (default: all of it, LOCAL_IDENTITY_MIN..LOCAL_IDENTITY_MAX; in practice
   * cm_policy_cidr's 65536 entries are the limit).
   */
  cidrIdentityRange?: readonly [number, number];
  /**
   * Node-local CIDR identities found in the pinned cm_policy_cidr at start
   * (prefix, identity; restoredCidrIdentities()):
   * after a restart each prefix gets its old number again, so no address
   * changes identity and nothing is rewritten.
   */
  restoredCidrIdentities?: Iterable<readonly [string, number]>;
  /** Schedules a flush "soon" (default setImmediate). */
  defer?: (fn: () => void) => void;
}

export interface PolicyParseError {
  kind: PolicyKind;
  namespace: string;
  name: string;
  error: string;
  at: string;
}

export interface PolicyStatus {
  /** The local policy kinds (and endpoints, pods) have been listed and the maps are being written. */
  synced: boolean;
  policyDefaultLocalCluster: boolean;
  /** Policy objects in the source / applied (parsed) by the resolver. */
  policies: { objects: number; applied: number };
  parseErrors: PolicyParseError[];
  identities: number;
  selectors: number;
  cidrIdentities: number;
  endpoints: { local: number; enforced: number; ingressEnforced: number; egressEnforced: number };
  /** Resolver entries (port ranges) and the cm_policy keys they became. */
  entries: number;
  mapEntries: number;
  /** Changes waiting to be written. */
  pending: number;
  flushes: number;
  lastFlushAt: string | null;
  /** Phases that went on after applyTimeoutMs without their writes confirmed. */
  applyTimeouts: number;
  policyCtGc: { runs: number; deleted: number; lastRunAt: string | null };
}

export type ProtocolName = 'ANY' | 'TCP' | 'UDP' | 'SCTP';

export interface PolicyEntryView {
  direction: Direction;
  /** Remote identity; 0 = any. */
  identity: number;
  /** Its labels (`source:key=value`); ['(any)'] for 0, [] when not known here. */
  labels: string[];
  protocol: ProtocolName;
  port: number;
  portEnd: number;
  verdict: Verdict;
}

export interface PolicyEndpointView {
  endpointID: number;
  containerID: string;
  namespace: string;
  podName: string;
  identity: number;
  enforced: { ingress: boolean; egress: boolean };
  entries: PolicyEntryView[];
}

/** GET /v1/policy */
export interface PolicyInspect {
  cluster: string;
  policyDefaultLocalCluster: boolean;
  synced: boolean;
  endpoints: PolicyEndpointView[];
  cidrIdentities: Array<{ prefix: string; identity: number }>;
  parseErrors: PolicyParseError[];
}

const PROTO_NAMES: Readonly<Record<number, ProtocolName>> = { 0: 'ANY', 6: 'TCP', 17: 'UDP', 132: 'SCTP' };

/** `source:key=value` strings → labels (a string without ':' is a k8s label). */
export function parseLabelStrings(list: readonly string[]): Array<{ source: string; key: string; value: string }> {
  return list.map((s) => {
    const colon = s.indexOf(':');
    const eq = s.indexOf('=', colon + 1);
    const source = colon > 0 ? s.slice(0, colon) : 'k8s';
    const key = eq >= 0 ? s.slice(colon + 1, eq) : s.slice(colon + 1);
    return { source, key, value: eq >= 0 ? s.slice(eq + 1) : '' };
  });
}

/** Named container ports of a pod (those with a name). */
export function podNamedPorts(pod: Pod | undefined): NamedPort[] {
  const out: NamedPort[] = [];
  for (const c of pod?.spec.containers ?? []) for (const p of c.ports) if (p.name) out.push({ name: p.name, port: p.containerPort, protocol: p.protocol });
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.port - b.port));
}

const REMOTE_REF = 'remote';
const objectRef = (namespace: string, name: string): string => `object/${namespace}/${name}`;
const localRef = (containerID: string): string => `local/${containerID}`;

interface Written {
  keys: Map<string, policyMap.Value>;
  enforce: policyMap.EnforceValue | undefined;
}

const sameValue = (a: policyMap.Value | undefined, b: policyMap.Value): boolean => a !== undefined && a.allow === b.allow && a.deny === b.deny;
const sameEnforce = (a: policyMap.EnforceValue | undefined, b: policyMap.EnforceValue): boolean =>
  a !== undefined && a.active === b.active && a.ingress === b.ingress && a.egress === b.egress;

/** Kinds of the local source that must be listed before policy is written. */
const POLICY_KINDS = ['networkPolicies', 'ciliumNetworkPolicies', 'ciliumClusterwideNetworkPolicies', 'endpoints', 'pods'] as const;

export class PolicyManager {
  readonly resolver: PolicyResolver;
  readonly policyRec: Reconciler<policyMap.Value>;
  readonly enforceRec: Reconciler<policyMap.EnforceValue>;
  readonly cidrRec: Reconciler<policyMap.CidrValue>;
  private readonly o: PolicyManagerOptions;
  private readonly clock: Clock;
  private readonly defaultLocal: boolean;
  private readonly defer: (fn: () => void) => void;

  /** id → ref → labels (`source:key=value`, as given). */
  private readonly identityRefs = new Map<number, Map<string, readonly string[]>>();
  /** The label set given to the resolver per identity (for inspect). */
  private readonly identityLabels = new Map<number, readonly string[]>();
  /** Local endpoints given to the resolver: endpointID → signature and view. */
  private readonly localEps = new Map<number, { sig: string; view: LocalEndpointView }>();
  private readonly parseErrors = new Map<string, PolicyParseError>();
  /** Endpoint objects of the local cluster: `object/<ns>/<name>` → identity. */
  private readonly objectIdentity = new Map<string, number>();
  private readonly cidrByPrefix = new Map<string, number>();
  private readonly cidrById = new Map<number, string>();
  /** CIDR identities allocated but not in cm_policy_cidr yet (see publishCidrIdentities). */
  private readonly cidrPending = new Map<string, number>();
  /** Numbers of CIDR prefixes from before a restart, held for their prefix until the first flush. */
  private readonly cidrRestored = new Map<string, number>();
  private readonly cidrRestoredIds = new Set<number>();
  /** Next CIDR identity to try: a released number is reused only after the pool went round. */
  private cidrNext = 0;
  private readonly written = new Map<number, Written>();
  private readonly dirty = new Set<number>();
  private readonly subs: Unsubscribe[] = [];
  /** identity → keys of remote endpoints (ClusterMesh.ipcache) of that identity that carry named ports. */
  private readonly remoteNamed = new Map<number, Set<string>>();
  private readonly idleWaiters = new Set<() => void>();
  private started = false;
  private stopped = false;
  private scheduled = false;
  private flushing: Promise<void> | undefined;
  private again = false;
  private syncingEndpoints = false;
  private flushes = 0;
  private lastFlushAt: number | null = null;
  private applyTimeouts = 0;
  private readonly gc = { runs: 0, deleted: 0, lastRunAt: null as string | null };
  private gcTimer: TimerHandle | undefined;
  private pruneTimer: TimerHandle | undefined;
  private wasPruneBlocked = true;

  constructor(opts: PolicyManagerOptions) {
    this.o = opts;
    this.clock = opts.clock ?? systemClock;
    this.defaultLocal = opts.policyDefaultLocalCluster ?? true;
    this.defer = opts.defer ?? ((fn) => void setImmediate(fn));
    const [lo, hi] = opts.cidrIdentityRange ?? [LOCAL_IDENTITY_MIN, LOCAL_IDENTITY_MAX];
    if (!isLocalIdentity(lo) || !isLocalIdentity(hi) || hi < lo)
      throw new RangeError(
        `PolicyManagerOptions.cidrIdentityRange ${lo}..${hi} is not a range of node-local identities; use numbers in ${LOCAL_IDENTITY_MIN}..${LOCAL_IDENTITY_MAX} (LOCAL_IDENTITY_SCOPE | n)`,
      );
    this.cidrNext = lo;
    for (const [prefix, id] of opts.restoredCidrIdentities ?? []) {
      if (id < lo || id > hi || this.cidrRestoredIds.has(id)) continue;
      this.cidrRestored.set(prefix, id);
      this.cidrRestoredIds.add(id);
    }
    this.resolver = new PolicyResolver({
      clusterName: opts.clusterName,
      policyDefaultLocalCluster: this.defaultLocal,
      allocateCidrIdentity: (prefix) => {
        // A restart: the number the prefix had, so the pinned cm_policy_cidr stays right.
        let id = this.cidrRestored.get(prefix);
        let restored = false;
        if (id !== undefined && !this.cidrById.has(id)) {
          this.cidrRestored.delete(prefix);
          this.cidrRestoredIds.delete(id);
          restored = true;
        } else {
          if (this.cidrById.size + this.cidrRestoredIds.size > hi - lo)
            throw new RangeError(`no free CIDR identity for ${prefix}: all ${hi - lo + 1} of ${lo}..${hi} are in use`);
          id = this.cidrNext;
          while (this.cidrById.has(id) || this.cidrRestoredIds.has(id)) id = id >= hi ? lo : id + 1;
          this.cidrNext = id >= hi ? lo : id + 1;
        }
        this.cidrByPrefix.set(prefix, id);
        this.cidrById.set(id, prefix);
        // A new number goes into cm_policy_cidr only once the policy entries naming it are written
        // (flush, after phase A); a restored one is already there with the entries of the last run.
        if (restored) this.setCidr(prefix, id);
        else this.cidrPending.set(prefix, id);
        return id;
      },
      // Pods of this cluster on other nodes: their Pod objects; pods of remote clusters: their ip entries.
      namedPorts: (identity) => {
        const out: NamedPort[] = [];
        for (const ref of this.identityRefs.get(identity)?.keys() ?? []) {
          if (!ref.startsWith('object/')) continue;
          const [, namespace, name] = ref.split('/') as [string, string, string];
          out.push(...podNamedPorts(this.o.source.pods.get({ namespace, name })));
        }
        for (const key of this.remoteNamed.get(identity) ?? []) out.push(...(this.o.remoteEndpoints?.get(key)?.namedPorts ?? []));
        return out;
      },
      releaseCidrIdentity: (prefix) => {
        const id = this.cidrByPrefix.get(prefix);
        if (id !== undefined) this.cidrById.delete(id);
        this.cidrByPrefix.delete(prefix);
        this.cidrPending.delete(prefix);
        this.cidrRec.remove(prefix);
      },
    });
    const pruneBlocker = opts.pruneBlocker ?? (() => null);
    const common = { clock: this.clock, fullSyncIntervalMs: opts.fullSyncIntervalMs ?? 0 };
    this.policyRec = new Reconciler<policyMap.Value>({
      name: 'policy',
      target: opts.targets.policy,
      // Entries are pruned only once the flags of their endpoints are right (see the file comment).
      pruneBlocker: () => pruneBlocker() ?? (this.enforceRec.status().started ? null : 'waiting for the policy enforcement map'),
      ...(opts.onReconcileError ? { onError: opts.onReconcileError('policy') } : {}),
      ...common,
    });
    this.enforceRec = new Reconciler<policyMap.EnforceValue>({
      name: 'policy-enforce',
      target: opts.targets.enforce,
      pruneBlocker,
      ...(opts.onReconcileError ? { onError: opts.onReconcileError('policy-enforce') } : {}),
      ...common,
    });
    this.cidrRec = new Reconciler<policyMap.CidrValue>({
      name: 'policy-cidr',
      target: opts.targets.cidr,
      pruneBlocker,
      ...(opts.onReconcileError ? { onError: opts.onReconcileError('policy-cidr') } : {}),
      ...common,
    });
  }

  get reconcilers(): readonly Reconciler<unknown>[] {
    return [this.policyRec, this.enforceRec, this.cidrRec] as unknown as Reconciler<unknown>[];
  }

  /** Subscribes to the inputs; writing starts once the local policy kinds are listed. */
  start(): void {
    if (this.started) return;
    this.started = true;
    const s = this.o.source;
    this.subs.push(
      s.networkPolicies.watch((ev) => {
        if (ev.kind === 'synced') return this.schedule();
        this.policyEvent('NetworkPolicy', ev.kind, ev.object);
      }),
      s.ciliumNetworkPolicies.watch((ev) => {
        if (ev.kind === 'synced') return this.schedule();
        this.policyEvent('CiliumNetworkPolicy', ev.kind, ev.object);
      }),
      s.ciliumClusterwideNetworkPolicies.watch((ev) => {
        if (ev.kind === 'synced') return this.schedule();
        this.policyEvent('CiliumClusterwideNetworkPolicy', ev.kind, ev.object);
      }),
      s.endpoints.watch((ev) => {
        if (ev.kind === 'synced') return this.schedule();
        const { namespace, name } = ev.object.metadata;
        const ref = objectRef(namespace, name);
        const before = this.objectIdentity.get(ref);
        if (ev.kind === 'upsert') {
          const id = ev.object.status.identity.id;
          if (before !== undefined && before !== id) this.dropIdentityRef(ref, before);
          this.objectIdentity.set(ref, id);
          this.setIdentityRef(id, ref, ev.object.status.identity.labels);
        } else {
          this.objectIdentity.delete(ref);
          this.dropIdentityRef(ref);
        }
        // Egress named ports towards pods of this cluster resolve against their Pod objects.
        if (podNamedPorts(s.pods.get({ namespace, name })).length > 0) {
          for (const id of new Set([before, this.objectIdentity.get(ref)])) if (id !== undefined && id >= 256) this.apply(() => this.resolver.refreshNamedPorts(id));
        }
      }),
      s.pods.watch((ev) => {
        if (ev.kind === 'synced') return this.schedule();
        const { namespace, name } = ev.object.metadata;
        const id = this.objectIdentity.get(objectRef(namespace, name));
        if (id !== undefined && id >= 256) this.apply(() => this.resolver.refreshNamedPorts(id));
        for (const { view } of this.localEps.values()) {
          if (view.namespace === namespace && view.podName === name) {
            this.syncEndpoints();
            break;
          }
        }
      }),
      ...(this.o.remoteEndpoints
        ? [
            this.o.remoteEndpoints.subscribe((ev) => {
              const before = ev.previous?.namedPorts.length ? ev.previous.identity : undefined;
              const now = ev.kind === 'upsert' && ev.value.namedPorts.length ? ev.value.identity : undefined;
              if (before === undefined && now === undefined) return;
              if (before !== undefined) this.remoteNamed.get(before)?.delete(ev.key);
              if (now !== undefined) {
                let keys = this.remoteNamed.get(now);
                if (!keys) this.remoteNamed.set(now, (keys = new Set()));
                keys.add(ev.key);
              }
              if (before !== undefined && this.remoteNamed.get(before)?.size === 0) this.remoteNamed.delete(before);
              for (const id of new Set([before, now])) if (id !== undefined && id >= 256) this.apply(() => this.resolver.refreshNamedPorts(id));
            }),
          ]
        : []),
      this.o.remoteIdentities.subscribe((ev) => {
        const id = ev.kind === 'upsert' ? ev.value.id : ev.previous.id;
        if (ev.kind === 'upsert') this.setIdentityRef(id, REMOTE_REF, ev.value.labels.map((l) => `${l.source}:${l.key}=${l.value}`));
        else this.dropIdentityRef(REMOTE_REF, id);
      }),
    );
    this.syncEndpoints();
    this.armGc();
    this.armPruneWatch();
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const u of this.subs.splice(0)) u();
    if (this.gcTimer) this.clock.clearTimeout(this.gcTimer);
    if (this.pruneTimer) this.clock.clearTimeout(this.pruneTimer);
    await this.flushing?.catch(() => undefined);
    await Promise.all([this.policyRec.stop(), this.enforceRec.stop(), this.cidrRec.stop()]);
    for (const w of this.idleWaiters) w();
    this.idleWaiters.clear();
  }

  /** The local policy kinds (and endpoints, pods) are listed, and the agent lets policy be written. */
  get synced(): boolean {
    return POLICY_KINDS.every((k) => this.o.source[k].synced) && (this.o.canWrite?.() ?? true);
  }

  /**
   * Wraps the endpoints-map reconciler the EndpointManager writes through: a
   * change of a local endpoint is seen at once, and whenApplied() also waits
   * (at most endpointWaitMs) until the policy of the changed endpoints is in
   * the maps. Everything else goes to the wrapped reconciler.
   */
  tapEndpointsMap<T extends Tappable<V>, V>(rec: T): T {
    const onChange = (): void => this.syncEndpoints();
    const waitMs = this.o.endpointWaitMs ?? 5000;
    return new Proxy(rec, {
      get: (target, prop) => {
        if (prop === 'upsert')
          return (key: string, value: V) => {
            target.upsert(key, value);
            onChange();
          };
        if (prop === 'remove')
          return (key: string) => {
            target.remove(key);
            onChange();
          };
        if (prop === 'whenApplied')
          return async (key: string, timeoutMs?: number) => {
            // A delete drops the endpoint's record only after its remove(): look again.
            onChange();
            await target.whenApplied(key, timeoutMs);
            if (!(await this.whenIdle(waitMs)) && !this.stopped)
              this.o.log.warn({ key, waitMs }, 'endpoint programmed before its policy was confirmed in the maps; the policy reconcilers keep trying');
          };
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  /** Resolves true once nothing is waiting to be written (false after timeoutMs, or when not synced yet). */
  whenIdle(timeoutMs: number): Promise<boolean> {
    if (this.isIdle()) return Promise.resolve(true);
    return new Promise((resolve) => {
      let timer: TimerHandle | undefined;
      const done = (): void => {
        if (timer) this.clock.clearTimeout(timer);
        this.idleWaiters.delete(done);
        resolve(this.isIdle());
      };
      this.idleWaiters.add(done);
      timer = this.clock.setTimeout(done, timeoutMs);
    });
  }

  private isIdle(): boolean {
    return this.synced && this.dirty.size === 0 && this.cidrPending.size === 0 && !this.flushing && !this.scheduled;
  }

  // ---- inputs

  private policyEvent(kind: PolicyKind, ev: 'upsert' | 'delete', obj: NetworkPolicy | CiliumNetworkPolicy | CiliumClusterwideNetworkPolicy): void {
    const ref = { kind, namespace: obj.metadata.namespace ?? '', name: obj.metadata.name };
    const key = policyKey(ref);
    if (ev === 'delete') {
      this.parseErrors.delete(key);
      this.apply(() => this.resolver.removePolicy(ref), key);
      return;
    }
    let policy;
    try {
      policy = kind === 'NetworkPolicy' ? parseNetworkPolicy(obj) : kind === 'CiliumNetworkPolicy' ? parseCiliumNetworkPolicy(obj) : parseCiliumClusterwideNetworkPolicy(obj);
    } catch (err) {
      this.recordError(ref, err, 'is invalid; not applied (its previous version, if any, stays)');
      return;
    }
    if (this.apply(() => this.resolver.upsertPolicy(policy), key)) this.parseErrors.delete(key);
  }

  private recordError(ref: { kind: PolicyKind; namespace: string; name: string }, err: unknown, what: string): void {
    const message = (err as Error)?.message ?? String(err);
    this.parseErrors.set(policyKey(ref), { ...ref, error: message, at: new Date(this.clock.now()).toISOString() });
    this.o.log.warn({ policy: policyKey(ref), err: message }, `${ref.kind} ${ref.namespace}/${ref.name} ${what}`);
  }

  /** Runs one resolver change; marks what it touched. False when it threw (nothing applied). */
  private apply(fn: () => PolicyDelta, policy?: string): boolean {
    let d: PolicyDelta;
    try {
      d = fn();
    } catch (err) {
      if (policy) {
        const [kind, namespace, name] = policy.split('/') as [PolicyKind, string, string];
        this.recordError({ kind, namespace, name }, err, 'cannot be applied (its previous version, if any, stays)');
      } else this.o.log.error({ err: (err as Error).message }, 'policy resolution failed');
      return false;
    }
    for (const e of d.added) this.dirty.add(e.endpointId);
    for (const e of d.changed) this.dirty.add(e.endpointId);
    for (const e of d.removed) this.dirty.add(e.endpointId);
    for (const e of d.enforcement) this.dirty.add(e.endpointId);
    if (this.dirty.size > 0 || this.cidrPending.size > 0) this.schedule();
    return true;
  }

  private setIdentityRef(id: number, ref: string, labels: readonly string[]): void {
    if (!Number.isInteger(id) || id < 256) return; // reserved identities are the resolver's own
    let refs = this.identityRefs.get(id);
    if (!refs) this.identityRefs.set(id, (refs = new Map()));
    refs.set(ref, labels);
    this.pushIdentity(id);
  }

  /** Drops `ref` from `id` (or, without id, from the identity it holds). */
  private dropIdentityRef(ref: string, id?: number): void {
    const ids = id !== undefined ? [id] : [...this.identityRefs].filter(([, r]) => r.has(ref)).map(([i]) => i);
    for (const i of ids) {
      const refs = this.identityRefs.get(i);
      if (!refs?.delete(ref)) continue;
      if (refs.size === 0) this.identityRefs.delete(i);
      this.pushIdentity(i);
    }
  }

  private pushIdentity(id: number): void {
    const refs = this.identityRefs.get(id);
    if (!refs) {
      this.identityLabels.delete(id);
      this.apply(() => this.resolver.removeIdentity(id));
      return;
    }
    // Every holder should say the same; a remote's word or the newest claim wins otherwise.
    const labels = refs.get(REMOTE_REF) ?? [...refs.values()].at(-1)!;
    this.identityLabels.set(id, [...labels].sort());
    this.apply(() => this.resolver.upsertIdentity(id, parseLabelStrings(labels)));
  }

  /** Makes the resolver's local endpoints (and their identity references) match the endpoint manager's. */
  syncEndpoints(): void {
    if (!this.started || this.syncingEndpoints) return;
    this.syncingEndpoints = true;
    try {
      const seen = new Set<number>();
      for (const ep of this.o.localEndpoints()) {
        if (ep.identity === null) continue;
        seen.add(ep.endpointID);
        const namedPorts = podNamedPorts(this.o.source.pods.get({ namespace: ep.namespace, name: ep.podName }));
        const labels = [...ep.identityLabels];
        const sig = JSON.stringify([ep.containerID, ep.identity, labels, namedPorts]);
        const cur = this.localEps.get(ep.endpointID);
        if (cur?.sig === sig) continue;
        if (cur && cur.view.containerID !== ep.containerID) this.dropIdentityRef(localRef(cur.view.containerID));
        else if (cur && cur.view.identity !== ep.identity) this.dropIdentityRef(localRef(ep.containerID), cur.view.identity ?? undefined);
        this.localEps.set(ep.endpointID, { sig, view: { ...ep, identityLabels: labels } });
        this.setIdentityRef(ep.identity, localRef(ep.containerID), labels);
        const le: LocalEndpoint = { endpointId: ep.endpointID, identity: ep.identity, labels: parseLabelStrings(labels), namedPorts };
        this.apply(() => this.resolver.upsertEndpoint(le));
      }
      for (const [id, { view }] of [...this.localEps]) {
        if (seen.has(id)) continue;
        this.localEps.delete(id);
        this.apply(() => this.resolver.removeEndpoint(id));
        this.dropIdentityRef(localRef(view.containerID));
      }
    } finally {
      this.syncingEndpoints = false;
    }
  }

  // ---- output

  private schedule(): void {
    if (!this.started || this.stopped) return;
    if (this.flushing) {
      this.again = true;
      return;
    }
    if (this.scheduled) return;
    this.scheduled = true;
    this.defer(() => {
      this.scheduled = false;
      if (!this.synced || this.stopped) return this.notifyIdle();
      this.flushing = this.flushLoop().finally(() => {
        this.flushing = undefined;
        if (this.again || this.dirty.size > 0) this.schedule();
        this.notifyIdle();
      });
    });
  }

  private notifyIdle(): void {
    if (!this.isIdle()) return;
    for (const w of [...this.idleWaiters]) w();
  }

  private async flushLoop(): Promise<void> {
    do {
      this.again = false;
      const ids = [...this.dirty].sort((a, b) => a - b);
      this.dirty.clear();
      try {
        await this.flush(ids);
      } catch (err) {
        this.o.log.error({ err: (err as Error).stack }, 'writing policy failed; retrying those endpoints');
        for (const id of ids) this.dirty.add(id);
        await new Promise<void>((r) => this.clock.setTimeout(() => r(), 500));
      }
    } while (!this.stopped && this.dirty.size > 0);
  }

  /** Desired cm_policy keys and cm_policy_enforce value of one endpoint now. */
  private desiredOf(endpointId: number): Written {
    const maps = toPolicyMaps(this.resolver.entries(endpointId), [
      { endpointId, direction: 'ingress', enforced: this.resolver.isEnforced(endpointId, 'ingress') },
      { endpointId, direction: 'egress', enforced: this.resolver.isEnforced(endpointId, 'egress') },
    ]);
    return { keys: new Map(maps.policy.map(([k, v]) => [policyKeyString(k), v])), enforce: maps.enforce[0]?.[1] };
  }

  /** Phases A, B, C (file comment) for a batch of endpoints. */
  private async flush(endpointIds: number[]): Promise<void> {
    const plans = endpointIds.map((id) => ({ id, old: this.written.get(id) ?? { keys: new Map(), enforce: undefined }, now: this.desiredOf(id) }));

    // A: the new state's entries
    const written: string[] = [];
    for (const { old, now } of plans) {
      for (const [k, v] of now.keys) {
        if (sameValue(old.keys.get(k), v)) continue;
        this.policyRec.upsert(k, v);
        written.push(k);
      }
    }
    await this.settle(this.policyRec, written);
    await this.settle(this.cidrRec, this.publishCidrIdentities());

    // B: the flags
    const flags: string[] = [];
    for (const { id, old, now } of plans) {
      const k = enforceKeyString(id);
      if (now.enforce) {
        if (sameEnforce(old.enforce, now.enforce)) continue;
        this.enforceRec.upsert(k, now.enforce);
      } else if (old.enforce) {
        this.enforceRec.remove(k);
      } else continue;
      flags.push(k);
    }
    await this.settle(this.enforceRec, flags);

    // C: what the new state no longer has
    const stale: string[] = [];
    for (const { old, now } of plans) for (const k of old.keys.keys()) if (!now.keys.has(k)) stale.push(k);
    for (const k of stale) this.policyRec.remove(k);
    await this.settle(this.policyRec, stale);

    for (const { id, now } of plans) {
      if (now.keys.size === 0 && !now.enforce) this.written.delete(id);
      else this.written.set(id, now);
    }
    this.flushes++;
    this.lastFlushAt = this.clock.now();
  }

  /**
   * Puts new CIDR identities into cm_policy_cidr, after the policy entries
   * that name them (phase A): the moment an address is classified as a new
   * CIDR identity, every endpoint's verdicts for it are in cm_policy. The
   * other way round, an address would briefly meet default deny (or miss a
   * deny). A released identity leaves cm_policy_cidr at once: its addresses
   * fall back to the enclosing named prefix or none, whose entries are
   * current. Returns the prefixes written.
   */
  private publishCidrIdentities(): string[] {
    // After the first flush every policy is in: numbers restored for prefixes no policy names any more are free.
    this.cidrRestored.clear();
    this.cidrRestoredIds.clear();
    const written: string[] = [];
    for (const [prefix, id] of this.cidrPending) {
      if (this.cidrByPrefix.get(prefix) !== id) continue;
      this.setCidr(prefix, id);
      written.push(prefix);
    }
    this.cidrPending.clear();
    return written;
  }

  private setCidr(prefix: string, id: number): void {
    this.cidrRec.upsert(prefix, { identity: id });
  }

  /** Starts the reconciler with its first full pass (differences only), or waits until `keys` are applied. */
  private async settle<V>(rec: Reconciler<V>, keys: string[]): Promise<void> {
    if (this.stopped) return;
    if (!rec.status().started) {
      await rec.start().catch((err: unknown) => this.o.log.warn({ reconciler: rec.name, err: (err as Error).message }, 'first full pass failed; retrying'));
      return;
    }
    const t = this.o.applyTimeoutMs ?? 5000;
    const results = await Promise.allSettled(keys.map((k) => rec.whenApplied(k, t)));
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0 && !this.stopped) {
      this.applyTimeouts++;
      this.o.log.warn({ reconciler: rec.name, keys: failed.length, err: (failed[0]!.reason as Error).message }, 'policy writes not confirmed in time; going on (the reconciler keeps retrying)');
    }
  }

  private armGc(): void {
    const run = this.o.gcPolicyCt;
    if (!run || this.stopped) return;
    this.gcTimer = this.clock.setTimeout(() => {
      this.gcTimer = undefined;
      if (this.stopped) return;
      try {
        this.gc.deleted += run();
        this.gc.runs++;
        this.gc.lastRunAt = new Date(this.clock.now()).toISOString();
      } catch (err) {
        this.o.log.warn({ err: (err as Error).message }, 'cm_policy_conn garbage collection failed');
      }
      this.armGc();
    }, this.o.gcIntervalMs ?? 30_000);
  }

  /** A full pass of both maps (flags first) as soon as pruning is allowed, not a period later. */
  private armPruneWatch(): void {
    const blocker = this.o.pruneBlocker ?? ((): string | null => null);
    if (this.stopped) return;
    this.pruneTimer = this.clock.setTimeout(() => {
      this.pruneTimer = undefined;
      if (this.stopped) return;
      // canWrite() has no event of its own: a first flush held back by it starts here.
      if (this.flushes === 0 && !this.flushing && this.synced) this.schedule();
      const blocked = blocker() !== null;
      if (blocked) this.wasPruneBlocked = true;
      else if (this.wasPruneBlocked && this.enforceRec.status().started && this.policyRec.status().started) {
        this.wasPruneBlocked = false;
        void (async () => {
          await this.enforceRec.fullSync().catch(() => undefined);
          await this.policyRec.fullSync().catch(() => undefined);
        })();
      }
      this.armPruneWatch();
    }, 250);
  }

  // ---- reading

  private labelsOf(identity: number): string[] {
    if (identity === 0) return ['(any)'];
    const reserved = RESERVED_IDENTITY_LABELS[identity];
    if (reserved !== undefined) return reserved.split(';').filter(Boolean);
    const prefix = this.cidrById.get(identity);
    if (prefix !== undefined) return [`cidr:${prefix}`];
    return [...(this.identityLabels.get(identity) ?? [])];
  }

  status(): PolicyStatus {
    const st = this.resolver.stats();
    let ingress = 0;
    let egress = 0;
    let enforced = 0;
    for (const id of this.localEps.keys()) {
      const i = this.resolver.isEnforced(id, 'ingress');
      const e = this.resolver.isEnforced(id, 'egress');
      if (i) ingress++;
      if (e) egress++;
      if (i || e) enforced++;
    }
    let mapEntries = 0;
    for (const w of this.written.values()) mapEntries += w.keys.size;
    return {
      synced: this.synced,
      policyDefaultLocalCluster: this.defaultLocal,
      policies: { objects: this.o.source.networkPolicies.list().length + this.o.source.ciliumNetworkPolicies.list().length + this.o.source.ciliumClusterwideNetworkPolicies.list().length, applied: st.policies },
      parseErrors: [...this.parseErrors.values()].sort((a, b) => (a.namespace + a.name < b.namespace + b.name ? -1 : 1)),
      identities: st.identities,
      selectors: st.selectors,
      cidrIdentities: st.cidrIdentities,
      endpoints: { local: this.localEps.size, enforced, ingressEnforced: ingress, egressEnforced: egress },
      entries: st.entries,
      mapEntries,
      pending: this.dirty.size + this.cidrPending.size + (this.flushing ? 1 : 0),
      flushes: this.flushes,
      lastFlushAt: this.lastFlushAt === null ? null : new Date(this.lastFlushAt).toISOString(),
      applyTimeouts: this.applyTimeouts,
      policyCtGc: { ...this.gc },
    };
  }

  inspect(): PolicyInspect {
    const endpoints: PolicyEndpointView[] = [...this.localEps.entries()]
      .sort(([a], [b]) => a - b)
      .map(([id, { view }]) => ({
        endpointID: id,
        containerID: view.containerID,
        namespace: view.namespace,
        podName: view.podName,
        identity: view.identity ?? 0,
        enforced: { ingress: this.resolver.isEnforced(id, 'ingress'), egress: this.resolver.isEnforced(id, 'egress') },
        entries: this.resolver.entries(id).map((e) => ({
          direction: e.direction,
          identity: e.remoteIdentity,
          labels: this.labelsOf(e.remoteIdentity),
          protocol: PROTO_NAMES[e.protocol] ?? 'ANY',
          port: e.port,
          portEnd: e.portEnd,
          verdict: e.verdict,
        })),
      }));
    return {
      cluster: this.o.clusterName,
      policyDefaultLocalCluster: this.defaultLocal,
      synced: this.synced,
      endpoints,
      cidrIdentities: this.resolver.cidrIdentities(),
      parseErrors: this.status().parseErrors,
    };
  }
}
