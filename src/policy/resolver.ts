// Resolution: policies × the identities known in the whole mesh → for each
// local endpoint and direction, whether it is enforced and which
// (remote identity, protocol, port range) are allowed or denied.
//
// Incremental in the manner of Cilium's selector cache: every distinct peer
// selector is cached with the set of identities it selects, and knows the
// rules using it. An identity appearing is tested only against the selectors
// anchored on one of its labels (plus the few that cannot be anchored); each
// selector that matches adds that identity's entries for exactly the
// endpoints its rules apply to. Every entry counts its contributions, so a
// key disappears only when the last rule producing it does, and every change
// returns the exact delta of the desired policy map.
//
// Named ports: ingress resolves a name against the local pod's container
// ports. Egress resolves it against the destination: the union of the named
// ports of local endpoints with that identity and of the `namedPorts` lookup
// (the mesh's wire format carries no container ports, so a remote pod's
// named port resolves only if the lookup knows it; otherwise the rule admits
// nothing for that identity — it fails closed). When the lookup's answer
// changes, call refreshNamedPorts(identity).
//
// Inputs are independent: identities (number → label set, the whole mesh),
// local endpoints (with their own label set, which the policy subjects are
// matched against, and their named ports) and policies; any order works and
// the result is the same.
//
// CIDR peers (ipBlock, toCIDR/fromCIDR(Set)) select addresses, not
// identities, and match every address in the block: outside the mesh, and
// pods and nodes of any cluster (issue 19; Kubernetes semantics, per
// address, not per identity: pods sharing an identity may lie on both sides
// of an `except`). Each prefix a peer names (its block minus its excepts, as
// disjoint prefixes; 0.0.0.0/0 included) gets a CIDR identity from the
// injected allocator, and a CIDR peer for prefix P selects the CIDR
// identities of every named prefix inside P. The agent puts each of
// cidrIdentities() into the datapath's cm_policy_cidr, which classifies a
// peer address by the longest named prefix containing it; the datapath
// checks that CIDR identity besides the peer's own identity (what it is: a
// pod, the host, world), so an address matches P's rule exactly when P
// contains it (bpf/lib/policy.h). CIDR identities carry only their `cidr:`
// label: the `world` entity selects reserved:world, which every address
// outside the mesh has, and not CIDR identities (a pod in a named block is
// not world). decide() takes both identities.
import { K8S_SOURCE, POLICY_CLUSTER_LABEL, parseLabelString } from '../identity/labels.ts';
import { IDENTITY_MAX, MIN_ALLOCATED_IDENTITY, RESERVED_IDENTITY_LABELS, ReservedIdentity } from '../model/index.ts';
import { LOCAL_IDENTITY_MAX, LOCAL_IDENTITY_MIN, isLocalIdentity, parsePrefix, prefixContains, formatPrefix, type Prefix } from './cidr.ts';
import { decide, type Decision, type PacketQuery } from './decide.ts';
import {
  ANY_SOURCE,
  CIDR_SOURCE,
  LabelView,
  RESERVED_SOURCE,
  clusterRequirement,
  namesCluster,
  namesReserved,
  requirement,
  compileSelector,
  selectorString,
  withRequirement,
  type IdentityLabel,
} from './selector.ts';
import {
  ANY_IDENTITY,
  DIRECTIONS,
  PROTOCOL_NUMBERS,
  emptyDelta,
  policyKey,
  type Direction,
  type EnforcementChange,
  type LabelSelector,
  type LocalEndpoint,
  type NamedPort,
  type Peer,
  type Policy,
  type PolicyDelta,
  type PolicyMapEntry,
  type PolicyMapKey,
  type PolicyRule,
  type PortSpec,
  type ProtocolNumber,
  type Verdict,
} from './types.ts';

export interface PolicyResolverOptions {
  /** The local cluster's name (selectors without a cluster label match it). */
  clusterName: string;
  /**
   * true (default; Cilium's `policy-default-local-cluster`): an endpoint
   * selector that does not name `io.cilium.k8s.policy.cluster` matches the
   * local cluster only. false: it matches endpoints of every cluster.
   */
  policyDefaultLocalCluster?: boolean;
  /**
   * A local identity number for a CIDR prefix (`a.b.c.d/len`) a policy names;
   * never a number in use. The agent gives node-local ones (cidr.ts,
   * LOCAL_IDENTITY_SCOPE | n); 1..IDENTITY_MAX is accepted too (tests).
   */
  allocateCidrIdentity: (prefix: string) => number;
  /** Called when no policy names the prefix any longer. */
  releaseCidrIdentity?: (prefix: string, identity: number) => void;
  /** Named ports of the pods with this identity, for egress rules with named ports (see the file comment). */
  namedPorts?: (identity: number) => readonly NamedPort[];
}

interface ResolvedOptions {
  clusterName: string;
  policyDefaultLocalCluster: boolean;
  allocateCidrIdentity: (prefix: string) => number;
  releaseCidrIdentity: (prefix: string, identity: number) => void;
  namedPorts: (identity: number) => readonly NamedPort[];
}

/** Reserved identities the `cluster` entity contains besides the local cluster's endpoints. */
const CLUSTER_ENTITY_RESERVED = new Set(['host', 'remote-node', 'health', 'init', 'unmanaged', 'kube-apiserver', 'ingress']);

interface IdentityInfo {
  id: number;
  view: LabelView;
  /** Canonical label string, to tell a real change from a repeat. */
  labelKey: string;
  /** The prefix of a CIDR identity. */
  cidr: Prefix | undefined;
  /** `host` for reserved:host etc. */
  reserved: string | undefined;
  indexKeys: string[];
}

type SelectorKind = 'label' | 'cidr' | 'other';

interface CachedSelector {
  key: string;
  kind: SelectorKind;
  match: (info: IdentityInfo) => boolean;
  /** Label-index keys of which an identity must carry one; null: test every identity (of its kind). */
  anchors: string[] | null;
  selected: Set<number>;
  users: Set<PeerUse>;
  refs: number;
}

interface InstalledPolicy {
  key: string;
  policy: Policy;
  sections: InstalledSection[];
  cidrPrefixes: string[];
}

interface InstalledSection {
  policy: InstalledPolicy;
  subject: (view: LabelView) => boolean;
  enforce: { ingress: boolean; egress: boolean };
  uses: PeerUse[];
  endpoints: Set<EndpointState>;
}

/** One peer of one rule, with the ports it applies to. */
interface PeerUse {
  uid: number;
  section: InstalledSection;
  direction: Direction;
  dir: 0 | 1;
  verdict: Verdict;
  /** Added to an entry's count per contribution: 1 for allow, DENY_UNIT for deny. */
  weight: number;
  /** null: every identity, as remote identity 0. */
  selector: CachedSelector | null;
  /** Port-tuple ids of the numeric ports, deduplicated. */
  rangeKeys: number[];
  named: { name: string; protocol: ProtocolNumber }[];
}

/**
 * Per direction (0 ingress, 1 egress): port-tuple id → remote identity →
 * count = (allow contributions) + DENY_UNIT × (deny contributions). Keys and
 * counts stay small integers (unboxed); an endpoint has few distinct tuples.
 */
type EntryTable = Map<number, Map<number, number>>;

interface EndpointState {
  ep: LocalEndpoint;
  view: LabelView;
  sections: Set<InstalledSection>;
  enforce: { ingress: number; egress: number };
  entries: [EntryTable, EntryTable];
  size: number;
  /**
   * Egress named-port contributions as resolved when added (`uid` → remote →
   * port-tuple ids): they depend on the named-port lookup, which may have
   * changed by the time they are removed. Every other contribution is recomputed.
   */
  egressNamed: Map<number, Map<number, number[]>>;
  /** The session that created this state: its keys had no entry before it. */
  createdIn: Session | null;
}

/** Verdict encoded: 0 none, 1 allow, 2 deny. */
type Code = 0 | 1 | 2;

interface Session {
  /** endpointId → direction → entry key → verdict code before the session's first change to it. */
  touched: Map<number, [Map<number, Code>, Map<number, Code>]>;
  /** Endpoint ids whose state was created in this session. */
  created: Set<number>;
  /** `${endpointId}|${direction}` → enforced before. */
  enforcement: Map<string, { endpointId: number; direction: Direction; before: boolean }>;
  /** Identities whose egress named ports are re-resolved at the end of the session. */
  refresh: Set<number>;
}

const DENY_UNIT = 2 ** 20;
const DIR_NAMES: readonly [Direction, Direction] = ['ingress', 'egress'];
const codeOf = (count: number | undefined): Code => (count === undefined || count === 0 ? 0 : count >= DENY_UNIT ? 2 : 1);
const VERDICT_OF_CODE: readonly [undefined, Verdict, Verdict] = [undefined, 'allow', 'deny'];

const PROTO_INDEX: Readonly<Record<number, number>> = { 0: 0, 6: 1, 17: 2, 132: 3 };
const PROTO_OF_INDEX: readonly ProtocolNumber[] = [0, 6, 17, 132];
/** (protocol, port, portEnd) as one number that sorts like the tuple. */
const portKey = (protocol: number, port: number, portEnd: number): number => PROTO_INDEX[protocol]! * 2 ** 32 + port * 65536 + portEnd;

/**
 * Port tuples get small ids so that (remote identity, tuple) is one exact
 * number: remote × TUPLE_SPACE + id < 2^53. Remote identities go up to
 * LOCAL_IDENTITY_MAX (node-local CIDR identities, < 2^25), so TUPLE_SPACE
 * is 2^28. Ids are never reused; there are as many as distinct port tuples
 * ever resolved.
 */
const TUPLE_SPACE = 2 ** 28;

class PortTuples {
  private readonly ids = new Map<number, number>();
  /** id → portKey(). */
  readonly keys: number[] = [];

  id(protocol: number, port: number, portEnd: number): number {
    const pk = portKey(protocol, port, portEnd);
    let id = this.ids.get(pk);
    if (id === undefined) {
      id = this.keys.length;
      if (id >= TUPLE_SPACE) throw new RangeError('too many distinct port tuples');
      this.ids.set(pk, id);
      this.keys.push(pk);
    }
    return id;
  }

  /** The map key of an entry key of `endpointId` and direction `dir`. */
  mapKey(endpointId: number, dir: 0 | 1, key: number): PolicyMapKey {
    const remote = Math.floor(key / TUPLE_SPACE);
    const pk = this.keys[key - remote * TUPLE_SPACE]!;
    return {
      endpointId,
      direction: DIR_NAMES[dir],
      remoteIdentity: remote,
      protocol: PROTO_OF_INDEX[Math.floor(pk / 2 ** 32)]!,
      port: Math.floor(pk / 65536) % 65536,
      portEnd: pk % 65536,
    };
  }

  entry(endpointId: number, dir: 0 | 1, key: number, verdict: Verdict): PolicyMapEntry {
    const k = this.mapKey(endpointId, dir, key) as PolicyMapEntry;
    k.verdict = verdict;
    return k;
  }

  /** Entry keys in map-key order: by remote identity, then protocol, port, portEnd. */
  sort(keys: Iterable<number>): Float64Array {
    const a = Float64Array.from(keys).sort();
    let i = 0;
    while (i < a.length) {
      const remote = Math.floor(a[i]! / TUPLE_SPACE);
      let j = i + 1;
      while (j < a.length && Math.floor(a[j]! / TUPLE_SPACE) === remote) j++;
      if (j - i > 1) {
        const base = remote * TUPLE_SPACE;
        a.subarray(i, j).sort((x, y) => this.keys[x - base]! - this.keys[y - base]!);
      }
      i = j;
    }
    return a;
  }
}

const byNumber = (a: number, b: number): number => a - b;

export function compareKeys(a: PolicyMapKey, b: PolicyMapKey): number {
  return (
    a.endpointId - b.endpointId ||
    (a.direction === b.direction ? 0 : a.direction === 'ingress' ? -1 : 1) ||
    a.remoteIdentity - b.remoteIdentity ||
    a.protocol - b.protocol ||
    a.port - b.port ||
    a.portEnd - b.portEnd
  );
}

const labelIndexKeys = (labels: readonly IdentityLabel[]): string[] => {
  const out = new Set<string>();
  for (const l of labels) {
    out.add(`${l.source}:${l.key}=${l.value}`);
    out.add(`${ANY_SOURCE}:${l.key}=${l.value}`);
  }
  return [...out];
};

/** Anchoring on these says little: prefer any other equality requirement. */
const WEAK_ANCHOR_KEYS = new Set(['io.kubernetes.pod.namespace', POLICY_CLUSTER_LABEL, 'io.cilium.k8s.policy.serviceaccount']);

export class PolicyResolver {
  private readonly opts: ResolvedOptions;
  private readonly identities = new Map<number, IdentityInfo>();
  private readonly labelIndex = new Map<string, Set<number>>();
  /** CIDR identities (the only ones CIDR selectors can select). */
  private readonly cidrIdentityIds = new Set<number>();
  private readonly selectors = new Map<string, CachedSelector>();
  private readonly anchored = new Map<string, Set<CachedSelector>>();
  /** Selectors tested against every identity. */
  private readonly unanchored = new Set<CachedSelector>();
  /** CIDR selectors, tested against CIDR identities only. */
  private readonly cidrSelectors = new Set<CachedSelector>();
  private readonly identitySelectors = new Map<number, Set<CachedSelector>>();
  private readonly policies = new Map<string, InstalledPolicy>();
  private readonly sections = new Set<InstalledSection>();
  private readonly endpoints = new Map<number, EndpointState>();
  private readonly localByIdentity = new Map<number, Set<EndpointState>>();
  private readonly cidrs = new Map<string, { id: number; refs: number }>();
  private readonly tuples = new PortTuples();
  /** namedPortsOf() per identity, until an endpoint of it changes or refreshNamedPorts(). */
  private readonly namedPortCache = new Map<number, NamedPort[]>();
  private session: Session | null = null;
  private nextUid = 1;

  constructor(options: PolicyResolverOptions) {
    this.opts = {
      clusterName: options.clusterName,
      policyDefaultLocalCluster: options.policyDefaultLocalCluster ?? true,
      allocateCidrIdentity: options.allocateCidrIdentity,
      releaseCidrIdentity: options.releaseCidrIdentity ?? (() => {}),
      namedPorts: options.namedPorts ?? (() => []),
    };
    for (const [id, label] of Object.entries(RESERVED_IDENTITY_LABELS)) {
      const n = Number(id);
      if (n === ReservedIdentity.unknown) continue;
      this.addIdentityInfo(this.makeInfo(n, parseLabelString(label), undefined));
    }
  }

  // -------------------------------------------------------------------------
  // Public changes; each returns the delta of the desired policy map.

  /**
   * Several changes, one delta (e.g. the initial sync). Changes made inside
   * return empty deltas; their effect is in the one returned here.
   */
  batch(fn: () => void): PolicyDelta {
    return this.run(fn);
  }

  /** An identity of the mesh (local or remote), with its label set; a changed label set replaces the old. */
  upsertIdentity(id: number, labels: readonly IdentityLabel[] | string): PolicyDelta {
    if (!Number.isInteger(id) || id < MIN_ALLOCATED_IDENTITY || id > IDENTITY_MAX)
      throw new RangeError(`identity ${id}: only allocated identities (${MIN_ALLOCATED_IDENTITY}..${IDENTITY_MAX}) can be upserted`);
    if (this.cidrIdentityIds.has(id)) throw new RangeError(`identity ${id} is a CIDR identity of this resolver`);
    const info = this.makeInfo(id, typeof labels === 'string' ? parseLabelString(labels) : labels, undefined);
    const old = this.identities.get(id);
    if (old && old.labelKey === info.labelKey) return emptyDelta();
    return this.run(() => {
      if (old) this.removeIdentityInfo(id);
      this.addIdentityInfo(info);
    });
  }

  removeIdentity(id: number): PolicyDelta {
    if (this.cidrIdentityIds.has(id) || id < MIN_ALLOCATED_IDENTITY) throw new RangeError(`identity ${id} is not removable (reserved or CIDR)`);
    if (!this.identities.has(id)) return emptyDelta();
    return this.run(() => this.removeIdentityInfo(id));
  }

  /** An endpoint on this node; a repeat with other labels, identity or named ports replaces it. */
  upsertEndpoint(ep: LocalEndpoint): PolicyDelta {
    return this.run(() => {
      const old = this.endpoints.get(ep.endpointId);
      if (old) this.removeEndpointState(old);
      this.addEndpointState(ep);
    });
  }

  removeEndpoint(endpointId: number): PolicyDelta {
    const st = this.endpoints.get(endpointId);
    if (!st) return emptyDelta();
    return this.run(() => this.removeEndpointState(st));
  }

  /** Adds or replaces a policy (by kind, namespace and name). */
  upsertPolicy(policy: Policy): PolicyDelta {
    return this.run(() => {
      const key = policyKey(policy);
      // Acquire the new policy's CIDR identities before releasing the old
      // one's, so prefixes both name keep their identity.
      const prefixes = [...new Set(policy.sections.flatMap((s) => s.rules.flatMap((r) => r.peers.flatMap(cidrPrefixesOf))))];
      const acquired: string[] = [];
      try {
        for (const p of prefixes) {
          this.acquireCidr(p);
          acquired.push(p);
        }
      } catch (err) {
        for (const p of acquired) this.releaseCidr(p);
        throw err;
      }
      const old = this.policies.get(key);
      if (old) this.uninstall(old);
      this.install(key, policy, prefixes);
    });
  }

  removePolicy(ref: Pick<Policy, 'kind' | 'namespace' | 'name'> | string): PolicyDelta {
    const key = typeof ref === 'string' ? ref : policyKey(ref);
    const old = this.policies.get(key);
    if (!old) return emptyDelta();
    return this.run(() => this.uninstall(old));
  }

  /** The `namedPorts` lookup's answer for this identity changed: re-resolve egress named ports to it. */
  refreshNamedPorts(identity: number): PolicyDelta {
    return this.run(() => this.namedPortsChanged(identity));
  }

  /** Egress rules towards `identity` re-resolve their named ports at the end of the session. */
  private namedPortsChanged(identity: number): void {
    this.namedPortCache.delete(identity);
    this.session?.refresh.add(identity);
  }

  // -------------------------------------------------------------------------
  // Reading the desired state

  /** Desired policy-map entries, of one endpoint or of all; sorted. */
  entries(endpointId?: number): PolicyMapEntry[] {
    const out: PolicyMapEntry[] = [];
    const ids = endpointId === undefined ? [...this.endpoints.keys()].sort(byNumber) : [endpointId];
    for (const id of ids) {
      const st = this.endpoints.get(id);
      if (!st) continue;
      for (const dir of [0, 1] as const) {
        const table = st.entries[dir];
        for (const k of this.tuples.sort(entryKeys(table))) out.push(this.tuples.entry(id, dir, k, VERDICT_OF_CODE[codeOf(countOf(table, k))]!));
      }
    }
    return out;
  }

  entryCount(): number {
    let n = 0;
    for (const st of this.endpoints.values()) n += st.size;
    return n;
  }

  isEnforced(endpointId: number, direction: Direction): boolean {
    const st = this.endpoints.get(endpointId);
    return st !== undefined && st.enforce[direction] > 0;
  }

  /** Every (endpoint, direction) that is enforced. */
  enforcement(): EnforcementChange[] {
    const out: EnforcementChange[] = [];
    for (const st of [...this.endpoints.values()].sort((a, b) => a.ep.endpointId - b.ep.endpointId))
      for (const d of DIRECTIONS) if (st.enforce[d] > 0) out.push({ endpointId: st.ep.endpointId, direction: d, enforced: true });
    return out;
  }

  /** What the datapath must decide for a packet of this endpoint (see decide()). */
  decide(endpointId: number, q: PacketQuery): Decision {
    return decide(this.entries(endpointId), this.isEnforced(endpointId, q.direction), q);
  }

  /** CIDR identities policies name; the agent puts each prefix into cm_policy_cidr with its identity. */
  cidrIdentities(): { prefix: string; identity: number }[] {
    return [...this.cidrs].map(([prefix, c]) => ({ prefix, identity: c.id })).sort((a, b) => a.identity - b.identity);
  }

  /** Identities each cached peer selector currently selects (for `inspect`). */
  selectorCache(): { selector: string; identities: number[]; users: number }[] {
    return [...this.selectors.values()]
      .map((s) => ({ selector: s.key, identities: [...s.selected].sort(byNumber), users: s.users.size }))
      .sort((a, b) => (a.selector < b.selector ? -1 : 1));
  }

  stats(): { identities: number; policies: number; selectors: number; endpoints: number; entries: number; cidrIdentities: number } {
    return {
      identities: this.identities.size,
      policies: this.policies.size,
      selectors: this.selectors.size,
      endpoints: this.endpoints.size,
      entries: this.entryCount(),
      cidrIdentities: this.cidrs.size,
    };
  }

  // -------------------------------------------------------------------------
  // Sessions and deltas

  private run(fn: () => void): PolicyDelta {
    if (this.session) {
      fn();
      return emptyDelta();
    }
    const s: Session = { touched: new Map(), created: new Set(), enforcement: new Map(), refresh: new Set() };
    this.session = s;
    try {
      fn();
      // Named ports re-resolved once per identity, after every other change of the session.
      for (const id of s.refresh) this.refreshEgressNamedPorts(id);
    } finally {
      this.session = null;
    }
    return this.finish(s);
  }

  private finish(s: Session): PolicyDelta {
    const d = emptyDelta();
    const ids = new Set([...s.touched.keys(), ...s.created]);
    for (const id of [...ids].sort(byNumber)) {
      const st = this.endpoints.get(id);
      const rec = s.touched.get(id);
      const created = st !== undefined && s.created.has(id);
      for (const dir of [0, 1] as const) {
        const before = rec?.[dir];
        const now = st?.entries[dir];
        // A state created in this session had no entries before; its keys not touched before it existed are all new.
        let keys: Iterable<number>;
        if (!created) keys = before?.keys() ?? [];
        else if (!before) keys = entryKeys(now!);
        else keys = new Set([...before.keys(), ...entryKeys(now!)]);
        for (const k of this.tuples.sort(keys)) {
          const was = before?.get(k) ?? 0;
          const is = codeOf(now ? countOf(now, k) : undefined);
          if (was === is) continue;
          if (was === 0) d.added.push(this.tuples.entry(id, dir, k, VERDICT_OF_CODE[is]!));
          else if (is === 0) d.removed.push(this.tuples.mapKey(id, dir, k));
          else d.changed.push(this.tuples.entry(id, dir, k, VERDICT_OF_CODE[is]!));
        }
      }
    }
    for (const { endpointId, direction, before } of s.enforcement.values()) {
      const st = this.endpoints.get(endpointId);
      const after = st !== undefined && st.enforce[direction] > 0;
      if (after !== before) d.enforcement.push({ endpointId, direction, enforced: after });
    }
    d.enforcement.sort((a, b) => a.endpointId - b.endpointId || (a.direction < b.direction ? -1 : a.direction > b.direction ? 1 : 0));
    return d;
  }

  /** Remembers an entry's verdict before the session first changes it (not needed for states the session created). */
  private touch(st: EndpointState, dir: 0 | 1, remote: number, tuple: number, count: number | undefined): void {
    const s = this.session;
    if (!s || st.createdIn === s) return;
    let rec = s.touched.get(st.ep.endpointId);
    if (!rec) s.touched.set(st.ep.endpointId, (rec = [new Map(), new Map()]));
    const key = remote * TUPLE_SPACE + tuple;
    if (!rec[dir].has(key)) rec[dir].set(key, codeOf(count));
  }

  private touchEnforcement(st: EndpointState, direction: Direction): void {
    const s = this.session;
    if (!s) return;
    const k = `${st.ep.endpointId}|${direction}`;
    if (!s.enforcement.has(k)) s.enforcement.set(k, { endpointId: st.ep.endpointId, direction, before: st.createdIn === s ? false : st.enforce[direction] > 0 });
  }

  // -------------------------------------------------------------------------
  // Identities

  private makeInfo(id: number, labels: readonly IdentityLabel[], cidr: Prefix | undefined): IdentityInfo {
    const view = new LabelView(labels);
    const reserved = labels.find((l) => l.source === RESERVED_SOURCE)?.key;
    const labelKey = [...labels].map((l) => `${l.source}:${l.key}=${l.value}`).sort().join(';');
    return { id, view, labelKey, cidr, reserved, indexKeys: labelIndexKeys(view.labels) };
  }

  private addIdentityInfo(info: IdentityInfo): void {
    this.identities.set(info.id, info);
    if (info.cidr) this.cidrIdentityIds.add(info.id);
    for (const k of info.indexKeys) {
      let s = this.labelIndex.get(k);
      if (!s) this.labelIndex.set(k, (s = new Set()));
      s.add(info.id);
    }
    const candidates = new Set<CachedSelector>(this.unanchored);
    if (info.cidr) for (const sel of this.cidrSelectors) candidates.add(sel);
    for (const k of info.indexKeys) for (const sel of this.anchored.get(k) ?? []) candidates.add(sel);
    for (const sel of candidates) {
      if (!sel.match(info)) continue;
      this.select(sel, info.id);
      for (const pu of sel.users) for (const st of pu.section.endpoints) this.addContribution(st, pu, info.id);
    }
  }

  private removeIdentityInfo(id: number): void {
    const info = this.identities.get(id);
    if (!info) return;
    for (const sel of this.identitySelectors.get(id) ?? []) {
      for (const pu of sel.users) for (const st of pu.section.endpoints) this.removeContribution(st, pu, id);
      sel.selected.delete(id);
    }
    this.identitySelectors.delete(id);
    for (const k of info.indexKeys) {
      const s = this.labelIndex.get(k);
      s?.delete(id);
      if (s && s.size === 0) this.labelIndex.delete(k);
    }
    this.identities.delete(id);
    this.cidrIdentityIds.delete(id);
  }

  private select(sel: CachedSelector, id: number): void {
    sel.selected.add(id);
    let s = this.identitySelectors.get(id);
    if (!s) this.identitySelectors.set(id, (s = new Set()));
    s.add(sel);
  }

  private acquireCidr(prefix: string): void {
    const c = this.cidrs.get(prefix);
    if (c) {
      c.refs++;
      return;
    }
    const id = this.opts.allocateCidrIdentity(prefix);
    if (!Number.isInteger(id) || id <= 0 || (id > IDENTITY_MAX && !isLocalIdentity(id)) || this.identities.has(id))
      throw new RangeError(`CIDR identity ${id} for ${prefix} is invalid (neither 1..${IDENTITY_MAX} nor node-local ${LOCAL_IDENTITY_MIN}..${LOCAL_IDENTITY_MAX}) or already in use`);
    this.cidrs.set(prefix, { id, refs: 1 });
    this.addIdentityInfo(this.makeInfo(id, [{ source: CIDR_SOURCE, key: prefix, value: '' }], parsePrefix(prefix)));
  }

  private releaseCidr(prefix: string): void {
    const c = this.cidrs.get(prefix);
    if (!c || --c.refs > 0) return;
    this.cidrs.delete(prefix);
    this.removeIdentityInfo(c.id);
    this.opts.releaseCidrIdentity(prefix, c.id);
  }

  // -------------------------------------------------------------------------
  // Selectors

  private acquireSelector(key: string, kind: SelectorKind, match: (info: IdentityInfo) => boolean, anchorOf: () => string[] | null): CachedSelector {
    const existing = this.selectors.get(key);
    if (existing) {
      existing.refs++;
      return existing;
    }
    const anchors = kind === 'label' ? anchorOf() : null;
    const sel: CachedSelector = { key, kind, match, anchors, selected: new Set(), users: new Set(), refs: 1 };
    if (anchors) {
      const ids = new Set<number>();
      for (const a of anchors) for (const id of this.labelIndex.get(a) ?? []) ids.add(id);
      for (const id of ids) if (match(this.identities.get(id)!)) this.select(sel, id);
      for (const a of anchors) {
        let s = this.anchored.get(a);
        if (!s) this.anchored.set(a, (s = new Set()));
        s.add(sel);
      }
    } else if (kind === 'cidr') {
      for (const id of this.cidrIdentityIds) if (match(this.identities.get(id)!)) this.select(sel, id);
      this.cidrSelectors.add(sel);
    } else {
      for (const info of this.identities.values()) if (match(info)) this.select(sel, info.id);
      this.unanchored.add(sel);
    }
    this.selectors.set(key, sel);
    return sel;
  }

  private releaseSelector(sel: CachedSelector): void {
    if (--sel.refs > 0) return;
    this.selectors.delete(sel.key);
    if (sel.anchors) {
      for (const a of sel.anchors) {
        const s = this.anchored.get(a);
        s?.delete(sel);
        if (s && s.size === 0) this.anchored.delete(a);
      }
    } else {
      this.unanchored.delete(sel);
      this.cidrSelectors.delete(sel);
    }
    for (const id of sel.selected) this.identitySelectors.get(id)?.delete(sel);
  }

  /** The equality requirement with the fewest identities behind it (namespace/cluster only as a last resort). */
  private anchorOf(sel: LabelSelector): string[] | null {
    let best: { keys: string[]; size: number; weak: boolean } | null = null;
    for (const r of sel.requirements) {
      if (r.operator !== 'In') continue;
      const keys = r.values.map((v) => `${r.source}:${r.key}=${v}`);
      const size = keys.reduce((n, k) => n + (this.labelIndex.get(k)?.size ?? 0), 0);
      const weak = WEAK_ANCHOR_KEYS.has(r.key);
      if (!best || (weak ? 1 : 0) < (best.weak ? 1 : 0) || (weak === best.weak && size < best.size)) best = { keys, size, weak };
    }
    return best?.keys ?? null;
  }

  private labelSelector(sel: LabelSelector): CachedSelector {
    const key = selectorString(sel);
    const existing = this.selectors.get(key);
    if (existing) return this.acquireSelector(key, 'label', existing.match, () => null);
    const matches = compileSelector(sel);
    return this.acquireSelector(key, 'label', (info) => matches(info.view), () => this.anchorOf(sel));
  }

  /** The selectors a peer stands for; [null] = every identity as remote identity 0. */
  private peerSelectors(peer: Peer): (CachedSelector | null)[] {
    switch (peer.kind) {
      case 'all':
        return [null];
      case 'endpoints': {
        let sel = peer.selector;
        if (this.opts.policyDefaultLocalCluster && !namesCluster(sel) && !namesReserved(sel))
          sel = withRequirement(sel, clusterRequirement(this.opts.clusterName));
        return [this.labelSelector(sel)];
      }
      case 'cidr':
        return peer.prefixes.map((p) => this.cidrSelector(p));
      case 'entity':
        switch (peer.entity) {
          case 'world':
          case 'world-ipv4':
            // Addresses outside the mesh: reserved:world, whatever CIDR identity the address also has.
            return [this.labelSelector({ requirements: [requirement(RESERVED_SOURCE, 'world', 'In', [''])] })];
          case 'world-ipv6':
            return []; // IPv4-only datapath
          case 'cluster': {
            const cluster = this.opts.clusterName;
            return [
              this.acquireSelector(
                'entity:cluster',
                'other',
                (info) =>
                  (info.reserved !== undefined && CLUSTER_ENTITY_RESERVED.has(info.reserved)) ||
                  info.view.get(K8S_SOURCE, POLICY_CLUSTER_LABEL) === cluster,
                () => null,
              ),
            ];
          }
          default:
            return [this.labelSelector({ requirements: [requirement(RESERVED_SOURCE, peer.entity, 'In', [''])] })];
        }
    }
  }

  /** CIDR identities of the named prefixes inside `prefix` (its addresses, wherever they are). */
  private cidrSelector(prefix: string): CachedSelector {
    const p = parsePrefix(prefix)!;
    return this.acquireSelector(
      `cidr:${formatPrefix(p)}`,
      'cidr',
      (info) => info.cidr !== undefined && prefixContains(p, info.cidr),
      () => null,
    );
  }

  private allIdentitiesSelector(): CachedSelector {
    return this.acquireSelector('*', 'other', () => true, () => null);
  }

  // -------------------------------------------------------------------------
  // Policies

  private install(key: string, policy: Policy, cidrPrefixes: string[]): void {
    const ip: InstalledPolicy = { key, policy, sections: [], cidrPrefixes };
    for (const s of policy.sections) {
      const sec: InstalledSection = { policy: ip, subject: compileSelector(s.subject), enforce: { ...s.enforce }, uses: [], endpoints: new Set() };
      for (const rule of s.rules) this.addUses(sec, rule);
      ip.sections.push(sec);
      this.sections.add(sec);
    }
    this.policies.set(key, ip);
    for (const st of this.endpoints.values()) for (const sec of ip.sections) if (sec.subject(st.view)) this.attach(st, sec);
  }

  private addUses(sec: InstalledSection, rule: PolicyRule): void {
    const named = rule.ports.filter((p) => p.kind === 'named');
    const numeric = rule.ports.filter((p) => p.kind === 'range');
    const use = (selector: CachedSelector | null, ports: readonly PortSpec[]): void => {
      const rangeKeys = new Set<number>();
      const namedPorts: PeerUse['named'] = [];
      for (const p of ports) {
        if (p.kind === 'range') rangeKeys.add(this.tuples.id(p.protocol, p.port, p.portEnd));
        else namedPorts.push({ name: p.name, protocol: p.protocol });
      }
      const pu: PeerUse = {
        uid: this.nextUid++,
        section: sec,
        direction: rule.direction,
        dir: rule.direction === 'ingress' ? 0 : 1,
        verdict: rule.verdict,
        weight: rule.verdict === 'deny' ? DENY_UNIT : 1,
        selector,
        rangeKeys: [...rangeKeys],
        named: namedPorts,
      };
      selector?.users.add(pu);
      sec.uses.push(pu);
    };
    for (const peer of rule.peers) {
      for (const selector of this.peerSelectors(peer)) {
        if (selector === null && rule.direction === 'egress' && named.length > 0) {
          // "Any destination on port <name>": a name only means something per
          // destination, so resolve it per identity; numeric ports stay wildcard.
          if (numeric.length > 0) use(null, numeric);
          use(this.allIdentitiesSelector(), named);
        } else {
          use(selector, rule.ports);
        }
      }
    }
  }

  private uninstall(ip: InstalledPolicy): void {
    for (const sec of ip.sections) {
      for (const st of [...sec.endpoints]) this.detach(st, sec);
      this.sections.delete(sec);
      for (const pu of sec.uses) {
        if (!pu.selector) continue;
        pu.selector.users.delete(pu);
        this.releaseSelector(pu.selector);
      }
    }
    this.policies.delete(ip.key);
    for (const p of ip.cidrPrefixes) this.releaseCidr(p);
  }

  // -------------------------------------------------------------------------
  // Endpoints and contributions

  private addEndpointState(ep: LocalEndpoint): void {
    const st: EndpointState = {
      ep: { ...ep, labels: [...ep.labels], namedPorts: [...ep.namedPorts] },
      view: new LabelView(ep.labels),
      sections: new Set(),
      enforce: { ingress: 0, egress: 0 },
      entries: [new Map(), new Map()],
      size: 0,
      egressNamed: new Map(),
      createdIn: this.session,
    };
    this.session?.created.add(ep.endpointId);
    this.endpoints.set(ep.endpointId, st);
    let byId = this.localByIdentity.get(ep.identity);
    if (!byId) this.localByIdentity.set(ep.identity, (byId = new Set()));
    byId.add(st);
    if (ep.namedPorts.length > 0) this.namedPortsChanged(ep.identity);
    for (const sec of this.sections) if (sec.subject(st.view)) this.attach(st, sec);
  }

  private removeEndpointState(st: EndpointState): void {
    for (const sec of [...st.sections]) this.detach(st, sec);
    this.endpoints.delete(st.ep.endpointId);
    this.session?.created.delete(st.ep.endpointId);
    const byId = this.localByIdentity.get(st.ep.identity);
    byId?.delete(st);
    if (byId && byId.size === 0) this.localByIdentity.delete(st.ep.identity);
    if (st.ep.namedPorts.length > 0) this.namedPortsChanged(st.ep.identity);
  }

  private attach(st: EndpointState, sec: InstalledSection): void {
    sec.endpoints.add(st);
    st.sections.add(sec);
    for (const d of DIRECTIONS) {
      if (!sec.enforce[d]) continue;
      this.touchEnforcement(st, d);
      st.enforce[d]++;
    }
    for (const pu of sec.uses) {
      if (!pu.selector) this.addContribution(st, pu, ANY_IDENTITY);
      else for (const id of pu.selector.selected) this.addContribution(st, pu, id);
    }
  }

  private detach(st: EndpointState, sec: InstalledSection): void {
    for (const pu of sec.uses) {
      if (!pu.selector) this.removeContribution(st, pu, ANY_IDENTITY);
      else for (const id of pu.selector.selected) this.removeContribution(st, pu, id);
    }
    for (const d of DIRECTIONS) {
      if (!sec.enforce[d]) continue;
      this.touchEnforcement(st, d);
      st.enforce[d]--;
    }
    sec.endpoints.delete(st);
    st.sections.delete(sec);
  }

  /** Re-resolves egress named ports towards `identity`, changing only contributions whose ports differ. */
  private refreshEgressNamedPorts(identity: number): void {
    for (const sel of this.identitySelectors.get(identity) ?? []) {
      for (const pu of sel.users) {
        if (pu.dir !== 1 || pu.named.length === 0) continue;
        for (const st of pu.section.endpoints) {
          const byRemote = st.egressNamed.get(pu.uid);
          const old = byRemote?.get(identity) ?? [];
          const now = this.namedTuples(st, pu, identity);
          if (old.length === now.length && old.every((t, i) => t === now[i])) continue;
          for (const t of old) this.bump(st, 1, identity, t, -pu.weight);
          this.storeEgressNamed(st, pu, identity, now);
          for (const t of now) this.bump(st, 1, identity, t, pu.weight);
        }
      }
    }
  }

  private namedPortsOf(identity: number): NamedPort[] {
    let out = this.namedPortCache.get(identity);
    if (!out) {
      out = [];
      for (const st of this.localByIdentity.get(identity) ?? []) out.push(...st.ep.namedPorts);
      out.push(...this.opts.namedPorts(identity));
      this.namedPortCache.set(identity, out);
    }
    return out;
  }

  /** Port-tuple ids of the named ports of `pu`, against the local pod (ingress) or the destination identity (egress). */
  private namedTuples(st: EndpointState, pu: PeerUse, remote: number): number[] {
    const candidates = pu.dir === 0 ? st.ep.namedPorts : this.namedPortsOf(remote);
    if (candidates.length === 0) return NO_TUPLES;
    const out: number[] = [];
    for (const p of pu.named) {
      for (const np of candidates) {
        const proto = PROTOCOL_NUMBERS[np.protocol];
        if (np.name === p.name && (p.protocol === 0 || p.protocol === proto)) out.push(this.tuples.id(proto, np.port, np.port));
      }
    }
    return out;
  }

  private storeEgressNamed(st: EndpointState, pu: PeerUse, remote: number, tuples: number[]): void {
    let byRemote = st.egressNamed.get(pu.uid);
    if (tuples.length === 0) {
      byRemote?.delete(remote);
      if (byRemote && byRemote.size === 0) st.egressNamed.delete(pu.uid);
      return;
    }
    if (!byRemote) st.egressNamed.set(pu.uid, (byRemote = new Map()));
    byRemote.set(remote, tuples);
  }

  private bump(st: EndpointState, dir: 0 | 1, remote: number, tuple: number, by: number): void {
    let m = st.entries[dir].get(tuple);
    if (!m) st.entries[dir].set(tuple, (m = new Map()));
    const old = m.get(remote);
    this.touch(st, dir, remote, tuple, old);
    const now = (old ?? 0) + by;
    if (now === 0) {
      m.delete(remote);
      st.size--;
      if (m.size === 0) st.entries[dir].delete(tuple);
    } else {
      if (old === undefined) st.size++;
      m.set(remote, now);
    }
  }

  private addContribution(st: EndpointState, pu: PeerUse, remote: number): void {
    for (const t of pu.rangeKeys) this.bump(st, pu.dir, remote, t, pu.weight);
    if (pu.named.length === 0) return;
    const tuples = this.namedTuples(st, pu, remote);
    if (tuples.length === 0) return;
    if (pu.dir === 1) this.storeEgressNamed(st, pu, remote, tuples);
    for (const t of tuples) this.bump(st, pu.dir, remote, t, pu.weight);
  }

  /** Undoes addContribution: the same keys, recomputed (ranges, ingress named ports) or as stored (egress named ports). */
  private removeContribution(st: EndpointState, pu: PeerUse, remote: number): void {
    for (const t of pu.rangeKeys) this.bump(st, pu.dir, remote, t, -pu.weight);
    if (pu.named.length === 0) return;
    let tuples: number[];
    if (pu.dir === 1) {
      tuples = st.egressNamed.get(pu.uid)?.get(remote) ?? NO_TUPLES;
      if (tuples.length > 0) this.storeEgressNamed(st, pu, remote, NO_TUPLES);
    } else {
      tuples = this.namedTuples(st, pu, remote);
    }
    for (const t of tuples) this.bump(st, pu.dir, remote, t, -pu.weight);
  }
}

const NO_TUPLES: number[] = [];

/** Every entry key (remote × TUPLE_SPACE + tuple) of a table. */
function entryKeys(table: EntryTable): number[] {
  const out: number[] = [];
  for (const [tuple, m] of table) for (const remote of m.keys()) out.push(remote * TUPLE_SPACE + tuple);
  return out;
}

function countOf(table: EntryTable, key: number): number | undefined {
  const remote = Math.floor(key / TUPLE_SPACE);
  return table.get(key - remote * TUPLE_SPACE)?.get(remote);
}

function cidrPrefixesOf(peer: Peer): readonly string[] {
  return peer.kind === 'cidr' ? peer.prefixes : [];
}
