// NetworkPolicy and CiliumNetworkPolicy objects → normalised Policy values.
// Errors are ModelErrors naming the file, the object and the field; a file
// either parses completely or yields nothing.
import { parseAllDocuments } from 'yaml';
import { K8S_SOURCE, NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL } from '../identity/labels.ts';
import { ModelError, describeRaw, parseWith } from '../model/index.ts';
import { formatPrefix, parsePrefix, subtractPrefixes } from './cidr.ts';
import {
  ciliumClusterwideNetworkPolicyObjectSchema,
  ciliumNetworkPolicyObjectSchema,
  networkPolicyObjectSchema,
  splitCiliumKey,
  type CiliumEgressRule,
  type CiliumIngressRule,
  type CiliumPort,
  type CiliumRule,
  type K8sPeer,
  type NetworkPolicyObject,
  type K8sPort,
  type RawSelector,
} from './schema.ts';
import { namesNamespace, namesReserved, namespaceRequirement, normalizeSelector, requirement } from './selector.ts';
import {
  ALL_PORTS,
  PROTOCOL_NUMBERS,
  type Direction,
  type Entity,
  type LabelSelector,
  type Peer,
  type Policy,
  type PolicyKind,
  type PolicyRule,
  type PolicySection,
  type PortSpec,
  type Requirement,
  type Verdict,
} from './types.ts';

export const POLICY_KINDS: readonly PolicyKind[] = ['NetworkPolicy', 'CiliumNetworkPolicy', 'CiliumClusterwideNetworkPolicy'];

export function isPolicyKind(kind: unknown): kind is PolicyKind {
  return typeof kind === 'string' && (POLICY_KINDS as readonly string[]).includes(kind);
}

// ---------------------------------------------------------------------------
// Selectors

/** Requirements of a raw selector; `mapKey` turns a written key into source and key. */
function requirementsOf(raw: RawSelector | undefined, mapKey: (k: string) => { source: string; key: string }): Requirement[] {
  const out: Requirement[] = [];
  for (const [k, v] of Object.entries(raw?.matchLabels ?? {})) {
    const { source, key } = mapKey(k);
    out.push(requirement(source, key, 'In', [v]));
  }
  for (const e of raw?.matchExpressions ?? []) {
    const { source, key } = mapKey(e.key);
    out.push(requirement(source, key, e.operator, e.values ?? []));
  }
  return out;
}

const k8sKey = (k: string) => ({ source: K8S_SOURCE, key: k });
const namespaceLabelKey = (k: string) => ({ source: K8S_SOURCE, key: NAMESPACE_LABELS_PREFIX + k });

// ---------------------------------------------------------------------------
// Peers and ports shared by both kinds

function cidrPeer(cidr: string, except: readonly string[] = []): Peer {
  const p = parsePrefix(cidr);
  if (!p) return { kind: 'cidr', cidr, except: [...except], prefixes: [] }; // IPv6: nothing in an IPv4 datapath
  const ex = except.map(parsePrefix).filter((e): e is NonNullable<typeof e> => e !== undefined);
  return { kind: 'cidr', cidr: formatPrefix(p), except: ex.map(formatPrefix), prefixes: subtractPrefixes(p, ex).map(formatPrefix) };
}

function k8sPort(p: K8sPort): PortSpec {
  const protocol = PROTOCOL_NUMBERS[p.protocol ?? 'TCP'];
  if (p.port === undefined) return { kind: 'range', protocol, port: 0, portEnd: 65535 };
  if (typeof p.port === 'string') return { kind: 'named', protocol, name: p.port };
  return { kind: 'range', protocol, port: p.port, portEnd: p.endPort ?? p.port };
}

function ciliumPort(p: CiliumPort): PortSpec {
  const protocol = PROTOCOL_NUMBERS[p.protocol ?? 'ANY'];
  if (p.port === undefined || p.port === '0') return { kind: 'range', protocol, port: 0, portEnd: 65535 };
  if (!/^\d+$/.test(p.port)) return { kind: 'named', protocol, name: p.port };
  const port = Number(p.port);
  return { kind: 'range', protocol, port, portEnd: p.endPort && p.endPort > port ? p.endPort : port };
}

// ---------------------------------------------------------------------------
// networking.k8s.io/v1 NetworkPolicy

function k8sPeer(peer: K8sPeer, namespace: string): Peer {
  if (peer.ipBlock) return cidrPeer(peer.ipBlock.cidr, peer.ipBlock.except ?? []);
  const reqs = requirementsOf(peer.podSelector, k8sKey);
  if (peer.namespaceSelector) {
    // Pods (never reserved or CIDR identities) of the namespaces selected.
    reqs.push(requirement(K8S_SOURCE, POD_NAMESPACE_LABEL, 'Exists'));
    reqs.push(...requirementsOf(peer.namespaceSelector, namespaceLabelKey));
  } else {
    reqs.push(namespaceRequirement(namespace));
  }
  return { kind: 'endpoints', selector: normalizeSelector(reqs) };
}

function k8sRules(
  direction: Direction,
  rules: readonly { from?: K8sPeer[] | undefined; to?: K8sPeer[] | undefined; ports?: K8sPort[] | undefined }[],
  namespace: string,
): PolicyRule[] {
  return rules.map((r) => {
    const peers = (direction === 'ingress' ? r.from : r.to) ?? [];
    return {
      direction,
      verdict: 'allow' as const,
      // An empty or missing from/to: every peer. An empty or missing ports: every port.
      peers: peers.length === 0 ? [{ kind: 'all' as const }] : peers.map((p) => k8sPeer(p, namespace)),
      ports: r.ports && r.ports.length > 0 ? r.ports.map(k8sPort) : [ALL_PORTS],
    };
  });
}

/** Parses a NetworkPolicy (raw input or the model's object); throws ModelError. */
export function parseNetworkPolicy(input: unknown, context?: string): Policy {
  const np = parseWith(networkPolicyObjectSchema, 'NetworkPolicy', input, context);
  const ns = np.metadata.namespace;
  const spec: Partial<NonNullable<NetworkPolicyObject['spec']>> = np.spec ?? {};
  const ingress = spec.ingress ?? [];
  const egress = spec.egress ?? [];
  // Kubernetes defaulting: Ingress always, Egress when there are egress rules.
  const types =
    spec.policyTypes && spec.policyTypes.length > 0 ? spec.policyTypes : egress.length > 0 ? ['Ingress', 'Egress'] : ['Ingress'];
  const enforce = { ingress: types.includes('Ingress'), egress: types.includes('Egress') };
  const section: PolicySection = {
    subject: normalizeSelector([...requirementsOf(spec.podSelector, k8sKey), namespaceRequirement(ns)]),
    enforce,
    // Rules of a direction the policy does not declare are ignored, as Kubernetes does.
    rules: [...(enforce.ingress ? k8sRules('ingress', ingress, ns) : []), ...(enforce.egress ? k8sRules('egress', egress, ns) : [])],
  };
  return { kind: 'NetworkPolicy', namespace: ns, name: np.metadata.name, sections: [section] };
}

// ---------------------------------------------------------------------------
// cilium.io/v2 CiliumNetworkPolicy

const ENTITY_ALL: Entity = 'all';

/** `namespace` undefined: a clusterwide policy (its selectors are not scoped to a namespace). */
function ciliumPeers(
  r: CiliumIngressRule | CiliumEgressRule,
  direction: Direction,
  namespace: string | undefined,
): Peer[] {
  const ing = direction === 'ingress' ? (r as CiliumIngressRule) : undefined;
  const eg = direction === 'egress' ? (r as CiliumEgressRule) : undefined;
  const endpoints = (ing ? ing.fromEndpoints : eg?.toEndpoints) ?? [];
  const entities = (ing ? ing.fromEntities : eg?.toEntities) ?? [];
  const cidrs = (ing ? ing.fromCIDR : eg?.toCIDR) ?? [];
  const cidrSets = (ing ? ing.fromCIDRSet : eg?.toCIDRSet) ?? [];
  const peers: Peer[] = [];
  for (const sel of endpoints) {
    let s: LabelSelector = normalizeSelector(requirementsOf(sel, splitCiliumKey));
    // Scope to the policy's namespace unless the selector names one (or is about reserved identities).
    if (namespace !== undefined && !namesNamespace(s) && !namesReserved(s)) s = normalizeSelector([...s.requirements, namespaceRequirement(namespace)]);
    peers.push({ kind: 'endpoints', selector: s });
  }
  for (const e of entities as Entity[]) peers.push(e === ENTITY_ALL ? { kind: 'all' } : { kind: 'entity', entity: e as Exclude<Entity, 'all'> });
  for (const c of cidrs) peers.push(cidrPeer(c));
  for (const c of cidrSets) peers.push(cidrPeer(c.cidr, c.except ?? []));
  // No L3 peer at all: a rule with ports applies to every peer; an empty rule ({}) to none.
  if (endpoints.length + entities.length + cidrs.length + cidrSets.length === 0) {
    return (r.toPorts ?? []).length > 0 ? [{ kind: 'all' }] : [];
  }
  return peers;
}

function ciliumRules(direction: Direction, verdict: Verdict, rules: readonly (CiliumIngressRule | CiliumEgressRule)[], namespace: string | undefined): PolicyRule[] {
  return rules.map((r) => {
    const ports = (r.toPorts ?? []).flatMap((pr) => pr.ports ?? []).map(ciliumPort);
    return { direction, verdict, peers: ciliumPeers(r, direction, namespace), ports: ports.length > 0 ? ports : [ALL_PORTS] };
  });
}

function ciliumSection(rule: CiliumRule, namespace: string | undefined): PolicySection {
  const ingress = rule.ingress ?? [];
  const ingressDeny = rule.ingressDeny ?? [];
  const egress = rule.egress ?? [];
  const egressDeny = rule.egressDeny ?? [];
  return {
    // A CiliumNetworkPolicy selects endpoints of its own namespace only; a clusterwide one, of any.
    subject: normalizeSelector([...requirementsOf(rule.endpointSelector, splitCiliumKey), ...(namespace !== undefined ? [namespaceRequirement(namespace)] : [])]),
    enforce: {
      ingress: rule.enableDefaultDeny?.ingress ?? ingress.length + ingressDeny.length > 0,
      egress: rule.enableDefaultDeny?.egress ?? egress.length + egressDeny.length > 0,
    },
    rules: [
      ...ciliumRules('ingress', 'allow', ingress, namespace),
      ...ciliumRules('ingress', 'deny', ingressDeny, namespace),
      ...ciliumRules('egress', 'allow', egress, namespace),
      ...ciliumRules('egress', 'deny', egressDeny, namespace),
    ],
  };
}

/** Parses a CiliumNetworkPolicy (raw input or the model's object); throws ModelError. */
export function parseCiliumNetworkPolicy(input: unknown, context?: string): Policy {
  const cnp = parseWith(ciliumNetworkPolicyObjectSchema, 'CiliumNetworkPolicy', input, context);
  const ns = cnp.metadata.namespace;
  const rules = [...(cnp.spec ? [cnp.spec] : []), ...(cnp.specs ?? [])];
  return { kind: 'CiliumNetworkPolicy', namespace: ns, name: cnp.metadata.name, sections: rules.map((r) => ciliumSection(r, ns)) };
}

/**
 * Parses a CiliumClusterwideNetworkPolicy: the rules of a CiliumNetworkPolicy
 * without a namespace, so its endpointSelector and peer selectors match in
 * every namespace (as in Cilium). Its namespace in the Policy is ''.
 */
export function parseCiliumClusterwideNetworkPolicy(input: unknown, context?: string): Policy {
  const ccnp = parseWith(ciliumClusterwideNetworkPolicyObjectSchema, 'CiliumClusterwideNetworkPolicy', input, context);
  const rules = [...(ccnp.spec ? [ccnp.spec] : []), ...(ccnp.specs ?? [])];
  return { kind: 'CiliumClusterwideNetworkPolicy', namespace: '', name: ccnp.metadata.name, sections: rules.map((r) => ciliumSection(r, undefined)) };
}

/** Parses any policy kind, by its `kind` field; throws ModelError. */
export function parsePolicy(input: unknown, context?: string): Policy {
  const kind = (input as { kind?: unknown } | null)?.kind;
  if (kind === 'NetworkPolicy') return parseNetworkPolicy(input, context);
  if (kind === 'CiliumNetworkPolicy') return parseCiliumNetworkPolicy(input, context);
  if (kind === 'CiliumClusterwideNetworkPolicy') return parseCiliumClusterwideNetworkPolicy(input, context);
  const what = describeRaw(typeof kind === 'string' ? kind : 'object', input);
  throw new ModelError(context ? `${context}: ${what}` : what, [
    { path: 'kind', message: `${typeof kind === 'string' ? `"${kind}"` : 'missing'}: not a policy kind (${POLICY_KINDS.join(', ')})` },
  ]);
}

// ---------------------------------------------------------------------------
// Files

/** Some objects of a file are invalid; none of the file was taken. */
export class PolicyFileError extends Error {
  constructor(
    readonly file: string,
    readonly errors: readonly ModelError[],
  ) {
    super(`${file}: nothing applied, ${errors.length} error${errors.length === 1 ? '' : 's'}:\n${errors.map((e) => `  ${e.message}`).join('\n')}`);
    this.name = 'PolicyFileError';
  }
}

export interface PolicyFileOptions {
  /** Namespace of objects that name none (what `kubectl apply` without `-n` does). Default `default`. */
  defaultNamespace?: string;
  /** Objects of other kinds: an error (default) or skipped. */
  otherKinds?: 'error' | 'skip';
}

/** Every object of the documents, with `kind: List` expanded. */
function flatten(docs: readonly unknown[]): unknown[] {
  const out: unknown[] = [];
  for (const d of docs) {
    if (d === null || d === undefined) continue;
    const o = d as { kind?: unknown; items?: unknown };
    if (o.kind === 'List' && Array.isArray(o.items)) out.push(...flatten(o.items));
    else out.push(d);
  }
  return out;
}

function withDefaultNamespace(input: unknown, ns: string): unknown {
  const o = input as { kind?: unknown; metadata?: unknown } | null;
  if (typeof o !== 'object' || o === null || typeof o.metadata !== 'object' || o.metadata === null) return input;
  if (o.kind === 'CiliumClusterwideNetworkPolicy') return input; // cluster-scoped
  const meta = o.metadata as { namespace?: unknown };
  return meta.namespace === undefined || meta.namespace === null ? { ...o, metadata: { ...meta, namespace: ns } } : input;
}

/**
 * Parses already-loaded documents of one file: all policies, or a
 * PolicyFileError listing every invalid object (and duplicates).
 */
export function parsePolicyDocuments(docs: readonly unknown[], file: string, opts: PolicyFileOptions = {}): Policy[] {
  const ns = opts.defaultNamespace ?? 'default';
  const errors: ModelError[] = [];
  const policies: Policy[] = [];
  const seen = new Set<string>();
  for (const raw of flatten(docs)) {
    const kind = (raw as { kind?: unknown } | null)?.kind;
    if (!isPolicyKind(kind) && opts.otherKinds === 'skip') continue;
    const input = withDefaultNamespace(raw, ns);
    try {
      const p = parsePolicy(input, file);
      const key = `${p.kind}/${p.namespace}/${p.name}`;
      if (seen.has(key)) {
        errors.push(new ModelError(`${file}: ${p.kind} ${p.namespace}/${p.name}`, [{ path: 'metadata.name', message: 'appears twice in the file' }]));
      }
      seen.add(key);
      policies.push(p);
    } catch (err) {
      if (err instanceof ModelError) errors.push(err);
      else throw err;
    }
  }
  if (errors.length > 0) throw new PolicyFileError(file, errors);
  return policies;
}

/** Parses a YAML (or JSON) file of one or more documents; all or nothing, see parsePolicyDocuments. */
export function parsePolicyFile(text: string, file: string, opts: PolicyFileOptions = {}): Policy[] {
  const docs = parseAllDocuments(text, { prettyErrors: true });
  const list = Array.isArray(docs) ? docs : [];
  const syntax: ModelError[] = [];
  for (const [i, d] of list.entries()) {
    for (const e of d.errors) {
      const at = e.linePos?.[0];
      const message = (e.message.split('\n')[0] ?? e.message).replace(/ at line \d+, column \d+:?$/, '');
      syntax.push(new ModelError(`${file}: document ${i + 1}`, [{ path: at ? `line ${at.line}, column ${at.col}` : '', message }]));
    }
  }
  if (syntax.length > 0) throw new PolicyFileError(file, syntax);
  return parsePolicyDocuments(
    list.map((d) => d.toJS() as unknown),
    file,
    opts,
  );
}
