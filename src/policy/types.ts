// Domain types of network policy: what the parsers produce from
// NetworkPolicy / CiliumNetworkPolicy objects, and what the resolver produces
// for the datapath's `policy` map. Plain data throughout; no bytes here.

export type Direction = 'ingress' | 'egress';
export const DIRECTIONS: readonly Direction[] = ['ingress', 'egress'];
export type Verdict = 'allow' | 'deny';

/** IP protocol numbers the policy map knows; 0 = any of them. */
export const PROTO_ANY = 0;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_SCTP = 132;
export type ProtocolNumber = 0 | 6 | 17 | 132;
export const PROTOCOL_NUMBERS: Readonly<Record<'ANY' | 'TCP' | 'UDP' | 'SCTP', ProtocolNumber>> = {
  ANY: PROTO_ANY,
  TCP: PROTO_TCP,
  UDP: PROTO_UDP,
  SCTP: PROTO_SCTP,
};

/** Remote identity 0 in a policy-map key: any identity. */
export const ANY_IDENTITY = 0;

// ---------------------------------------------------------------------------
// Label selectors, normalised

export type SelectorOperator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';

/**
 * One requirement on an identity label. `source` is the label source the key
 * must come from (`k8s`, `reserved`, ...) or `any`; Kubernetes selectors use
 * `k8s`, Cilium selectors say it with a prefix (`k8s:app`) or mean `any`.
 */
export interface Requirement {
  source: string;
  key: string;
  operator: SelectorOperator;
  /** Sorted, without duplicates; empty for Exists / DoesNotExist. */
  values: readonly string[];
}

/** All requirements must hold; no requirement selects everything. */
export interface LabelSelector {
  requirements: readonly Requirement[];
}

// ---------------------------------------------------------------------------
// Policies, normalised

/** Cilium entities (`fromEntities` / `toEntities`). */
export type Entity =
  | 'all'
  | 'world'
  | 'world-ipv4'
  | 'world-ipv6'
  | 'cluster'
  | 'host'
  | 'remote-node'
  | 'kube-apiserver'
  | 'health'
  | 'init'
  | 'unmanaged'
  | 'ingress';
export const ENTITIES: readonly Entity[] = [
  'all',
  'world',
  'world-ipv4',
  'world-ipv6',
  'cluster',
  'host',
  'remote-node',
  'kube-apiserver',
  'health',
  'init',
  'unmanaged',
  'ingress',
];

/**
 * The peers of a rule. A rule's peer list is a union; an empty list selects
 * no peer (Cilium's `ingress: [{}]`).
 */
export type Peer =
  /** Every identity: the rule resolves to remote identity 0. */
  | { kind: 'all' }
  /**
   * Endpoints (pods) by their identity labels. Namespace scoping is already
   * in the selector; cluster scoping is added by the resolver (option
   * `policyDefaultLocalCluster`) unless the selector names the cluster label
   * or a `reserved:` label.
   */
  | { kind: 'endpoints'; selector: LabelSelector }
  /** A Cilium entity other than `all` (which is `{kind: 'all'}`). */
  | { kind: 'entity'; entity: Exclude<Entity, 'all'> }
  /**
   * Addresses outside the mesh. `prefixes` is `cidr` minus `except`, as
   * normalised IPv4 prefixes; each becomes a CIDR identity, and the peer also
   * selects every narrower CIDR identity inside one of them. An IPv6 CIDR is
   * kept with no prefixes (the datapath is IPv4-only) and selects nothing.
   */
  | { kind: 'cidr'; cidr: string; except: readonly string[]; prefixes: readonly string[] };

/** A destination port: a numeric range or a container port name. */
export type PortSpec =
  | { kind: 'range'; protocol: ProtocolNumber; port: number; portEnd: number }
  | { kind: 'named'; protocol: ProtocolNumber; name: string };

/** All ports of all protocols (a rule without ports). */
export const ALL_PORTS: PortSpec = { kind: 'range', protocol: PROTO_ANY, port: 0, portEnd: 65535 };

export interface PolicyRule {
  direction: Direction;
  verdict: Verdict;
  peers: readonly Peer[];
  /** Never empty: a rule without ports carries ALL_PORTS. */
  ports: readonly PortSpec[];
}

/** The endpoints a part of a policy applies to, whether it makes them default-deny, and its rules. */
export interface PolicySection {
  /** Selects local endpoints; namespace scoping included. */
  subject: LabelSelector;
  /** Endpoints selected become default-deny in these directions. */
  enforce: { ingress: boolean; egress: boolean };
  rules: readonly PolicyRule[];
}

export type PolicyKind = 'NetworkPolicy' | 'CiliumNetworkPolicy' | 'CiliumClusterwideNetworkPolicy';

export interface Policy {
  kind: PolicyKind;
  /** '' for a clusterwide policy. */
  namespace: string;
  name: string;
  /** One for a NetworkPolicy; one per `spec` / `specs[i]` of a CiliumNetworkPolicy. */
  sections: readonly PolicySection[];
}

/** `Kind/namespace/name`: one policy object. */
export function policyKey(p: Pick<Policy, 'kind' | 'namespace' | 'name'>): string {
  return `${p.kind}/${p.namespace}/${p.name}`;
}

// ---------------------------------------------------------------------------
// Resolution input and output

/** A container port with a name, as `spec.containers[].ports[]` carries it. */
export interface NamedPort {
  name: string;
  port: number;
  protocol: 'TCP' | 'UDP' | 'SCTP';
}

/** An endpoint on this node. */
export interface LocalEndpoint {
  /** The agent's endpoint id; the policy map is keyed by it. */
  endpointId: number;
  identity: number;
  /** The identity's label set (`identityLabels()`), which the policy subjects are matched against. */
  labels: readonly { source: string; key: string; value: string }[];
  /** Named container ports of the pod (ingress named ports resolve against these). */
  namedPorts: readonly NamedPort[];
}

/**
 * One key of the policy map. Ports are the destination port range
 * [port, portEnd] (all ports: 0..65535); protocol 0 is any protocol;
 * remoteIdentity 0 is any identity. For ingress the remote is the source,
 * for egress the destination.
 */
export interface PolicyMapKey {
  endpointId: number;
  direction: Direction;
  remoteIdentity: number;
  protocol: ProtocolNumber;
  port: number;
  portEnd: number;
}

export interface PolicyMapEntry extends PolicyMapKey {
  verdict: Verdict;
}

export interface EnforcementChange {
  endpointId: number;
  direction: Direction;
  enforced: boolean;
}

/**
 * What one change did to the desired policy map: keys to write (`added`, and
 * `changed` where only the verdict flipped), keys to delete, and per
 * (endpoint, direction) enforcement switched on or off. Sorted.
 */
export interface PolicyDelta {
  added: PolicyMapEntry[];
  changed: PolicyMapEntry[];
  removed: PolicyMapKey[];
  enforcement: EnforcementChange[];
}

export function emptyDelta(): PolicyDelta {
  return { added: [], changed: [], removed: [], enforcement: [] };
}

export function isEmptyDelta(d: PolicyDelta): boolean {
  return d.added.length === 0 && d.changed.length === 0 && d.removed.length === 0 && d.enforcement.length === 0;
}
