// The wire format of the mesh kvstore (ARCHITECTURE §4): value types, zod
// schemas, encoders and validating decoders.
//
// STABLE API, read by other clusters.
//
// WRITERS (the apiserver): encode every value you publish with the `encode*`
// functions below and build its key with `src/clustermesh/keys.ts`. Never
// JSON.stringify a value by hand: the encoders check the same schema the
// readers check, fix the field order, and throw `WireEncodeError` for a value
// that every reader would reject. `encode*` does not know which cluster the
// writer is; in tests, decode what you wrote with `decode*` and your own
// `WireSource` to prove other clusters will accept it (right cluster name and
// ID in the value, identities from your range with your cluster label).
//
// READERS (remote-cluster import): decode every remote value with the
// `decode*` functions and a `WireSource` describing the cluster the value came
// from. They never throw; they return `{ ok: true, value }` or
// `{ ok: false, reason, detail }`. A value is believed only when:
//   - it is at most `maxValueBytes` bytes of UTF-8 and well-formed JSON;
//   - it matches the schema;
//   - the cluster name and ID it carries are those of the source cluster;
//   - its key is the key the content implies (node name, ns/name, IP, id);
//   - identities lie in the source cluster's range (255 clusters: id >> 16,
//     511 clusters: id >> 15) and carry exactly one
//     `k8s:io.cilium.k8s.policy.cluster` label naming the source cluster;
//   - an ip entry's identity lies in the source cluster's range.

import { isIP } from 'node:net';
import { z } from 'zod';
import {
  MAX_CONNECTED_CLUSTERS_VALUES,
  identityRange as modelIdentityRange,
  isIdentityInClusterRange,
  validateClusterId,
  validateClusterName,
  type MaxConnectedClusters,
} from '../model/cluster.ts';
import { clusterConfigKey, identitiesPrefix, identityKey, ipKey, nodeKey, serviceKey } from './keys.ts';

// ---------------------------------------------------------------------------
// Cluster names, IDs and identity ranges (ARCHITECTURE §3)

// The rules themselves live in src/model/cluster.ts; these are the shapes the
// decoders below use.
export { clusterIdShift, clusterIdOfIdentity, type MaxConnectedClusters } from '../model/cluster.ts';
export const MAX_CONNECTED_CLUSTERS: readonly MaxConnectedClusters[] = MAX_CONNECTED_CLUSTERS_VALUES;

/** At most 32 chars, lowercase alphanumerics and '-', starting and ending alphanumeric. */
export function isValidClusterName(name: string): boolean {
  return validateClusterName(name) === undefined;
}

/** Cluster IDs of a mesh: 1..255 or 1..511 (0 means "not meshed"). */
export function isValidClusterId(id: number, max: MaxConnectedClusters): boolean {
  return id !== 0 && validateClusterId(id, max) === undefined;
}

export const IDENTITY_MAX = 0xffffff; // 24 bits on the wire

/** The identity range cluster `clusterId` allocates from, inclusive. */
export function identityRange(clusterId: number, max: MaxConnectedClusters): { min: number; max: number } {
  const r = modelIdentityRange(clusterId, max);
  return { min: r.first, max: r.last };
}

export function identityInClusterRange(id: number, clusterId: number, max: MaxConnectedClusters): boolean {
  return isIdentityInClusterRange(id, clusterId, max);
}

// ---------------------------------------------------------------------------
// Results

/** Why a remote value was rejected. Each is counted separately. */
export type RejectReason =
  | 'too-large'
  | 'malformed-json'
  | 'invalid-schema'
  | 'cluster-mismatch'
  | 'key-mismatch'
  | 'identity-out-of-range'
  | 'identity-cluster-label'
  | 'invalid-labels';

export const REJECT_REASONS: readonly RejectReason[] = [
  'too-large',
  'malformed-json',
  'invalid-schema',
  'cluster-mismatch',
  'key-mismatch',
  'identity-out-of-range',
  'identity-cluster-label',
  'invalid-labels',
];

export type Decoded<T> = { ok: true; value: T } | { ok: false; reason: RejectReason; detail: string };

const reject = <T>(reason: RejectReason, detail: string): Decoded<T> => ({ ok: false, reason, detail });

/** The cluster a value was read from: what it must agree with. */
export interface WireSource {
  cluster: string;
  clusterId: number;
  maxConnectedClusters: MaxConnectedClusters;
  /** Largest accepted value in bytes (UTF-8); default DEFAULT_MAX_VALUE_BYTES. */
  maxValueBytes?: number;
}

export const DEFAULT_MAX_VALUE_BYTES = 64 * 1024;

export class WireEncodeError extends Error {
  constructor(
    readonly kind: string,
    message: string,
  ) {
    super(`wire: cannot encode ${kind}: ${message}`);
    this.name = 'WireEncodeError';
  }
}

// ---------------------------------------------------------------------------
// Schemas

const clusterName = z.string().refine(isValidClusterName, 'invalid cluster name');
const ipString = z.string().refine((s) => isIP(s) !== 0, 'not an IP address');
const uint = z.number().int().nonnegative();
/** Kubernetes DNS-1123 subdomain (node names, service accounts). */
const dnsSubdomain = z
  .string()
  .max(253)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, 'invalid DNS subdomain');
/** Kubernetes DNS-1123 label (namespaces, service names). */
const dnsLabel = z
  .string()
  .max(63)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'invalid DNS label');
const stringMap = z.record(z.string().max(317), z.string().max(253));

function isCidr(s: string): boolean {
  const slash = s.indexOf('/');
  if (slash < 0) return false;
  const ip = s.slice(0, slash);
  const len = s.slice(slash + 1);
  const fam = isIP(ip);
  if (fam === 0 || !/^\d{1,3}$/.test(len)) return false;
  return Number(len) <= (fam === 4 ? 32 : 128);
}

export const clusterConfigSchema = z.object({
  id: uint.max(511),
  capabilities: z.object({
    syncedCanaries: z.boolean(),
    maxConnectedClusters: z.union([z.literal(255), z.literal(511)]),
  }),
});
export type ClusterConfig = z.infer<typeof clusterConfigSchema>;

export const nodeAddressTypes = ['InternalIP', 'ExternalIP', 'CiliumInternalIP'] as const;
export type NodeAddressType = (typeof nodeAddressTypes)[number];

export const nodeSchema = z.object({
  Name: dnsSubdomain,
  Cluster: clusterName,
  ClusterID: uint.max(511),
  IPAddresses: z.array(z.object({ Type: z.enum(nodeAddressTypes), IP: ipString })).max(64),
  IPv4AllocCIDR: z
    .string()
    .refine((s) => isCidr(s) && isIP(s.slice(0, s.indexOf('/'))) === 4, 'not an IPv4 CIDR')
    .nullable(),
  IPv6AllocCIDR: z
    .string()
    .refine((s) => isCidr(s) && isIP(s.slice(0, s.indexOf('/'))) === 6, 'not an IPv6 CIDR')
    .nullable()
    .optional(),
  Labels: stringMap,
});
export type NodeValue = z.infer<typeof nodeSchema>;

/** A netmask in address notation ("255.255.255.0", "ffff:ffff::"), or null for a host entry. */
function isMask(s: string): boolean {
  const fam = isIP(s);
  if (fam === 0) return false;
  const bits = fam === 4 ? ipv4Bits(s) : ipv6Bits(s);
  return bits !== null && /^1*0*$/.test(bits);
}
function ipv4Bits(s: string): string {
  return s
    .split('.')
    .map((o) => Number(o).toString(2).padStart(8, '0'))
    .join('');
}
function ipv6Bits(s: string): string | null {
  if (s.includes('.')) return null; // embedded IPv4 is not a mask
  const [head = '', tail] = s.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const fill = tail === undefined ? 0 : 8 - h.length - t.length;
  const groups = [...h, ...Array<string>(fill).fill('0'), ...t];
  if (groups.length !== 8) return null;
  return groups.map((g) => parseInt(g, 16).toString(2).padStart(16, '0')).join('');
}

export const ipEntrySchema = z
  .object({
    IP: ipString,
    Mask: z.string().refine(isMask, 'not a netmask').nullable(),
    HostIP: ipString,
    ID: uint.max(IDENTITY_MAX),
    Key: uint.max(255),
    K8sNamespace: z.string().max(63),
    K8sPodName: z.string().max(253),
  })
  .refine((e) => e.Mask === null || isIP(e.Mask) === isIP(e.IP), {
    message: 'Mask and IP are of different families',
    path: ['Mask'],
  });
export type IpEntryValue = z.infer<typeof ipEntrySchema>;

const portSchema = z.object({
  Protocol: z.enum(['TCP', 'UDP', 'SCTP']),
  Port: z.number().int().min(1).max(65535),
});
export type WirePort = z.infer<typeof portSchema>;
/** ip → port name → port. The port name may be "". */
const portsByIp = z
  .record(ipString, z.record(z.string().max(63), portSchema))
  .refine((m) => Object.keys(m).length <= 4096, 'too many addresses');

export const serviceSchema = z.object({
  cluster: clusterName,
  namespace: dnsLabel,
  name: dnsLabel,
  frontends: portsByIp,
  backends: portsByIp,
  labels: stringMap,
  selector: stringMap,
  shared: z.boolean(),
  includeExternal: z.boolean(),
  clusterID: uint.max(511),
});
export type ServiceValue = z.infer<typeof serviceSchema>;

// ---------------------------------------------------------------------------
// Identity labels: "source:key=value;" repeated, sorted by source:key.

export interface Label {
  source: string;
  key: string;
  value: string;
}
export type LabelSet = readonly Label[];

export const CLUSTER_LABEL_KEY = 'io.cilium.k8s.policy.cluster';
/** Sources a remote identity may use; reserved/cidr/fqdn identities are local-only. */
export const REMOTE_LABEL_SOURCES: readonly string[] = ['k8s', 'container', 'unspec'];

const LABEL_SOURCE_RE = /^[a-z][a-z0-9-]{0,31}$/;
const LABEL_KEY_RE = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,315}[A-Za-z0-9])?$/;
const LABEL_VALUE_RE = /^[A-Za-z0-9._-]{0,253}$/;

const labelSortKey = (l: Label): string => `${l.source}:${l.key}`;

/** Sorts, checks and serializes a label set. Throws WireEncodeError on an invalid label. */
export function formatLabels(labels: Iterable<Label>): string {
  const list = [...labels].sort((a, b) => (labelSortKey(a) < labelSortKey(b) ? -1 : labelSortKey(a) > labelSortKey(b) ? 1 : 0));
  let prev = '';
  let out = '';
  for (const l of list) {
    const problem = labelProblem(l);
    if (problem) throw new WireEncodeError('identity', problem);
    const k = labelSortKey(l);
    if (k === prev) throw new WireEncodeError('identity', `duplicate label ${k}`);
    prev = k;
    out += `${l.source}:${l.key}=${l.value};`;
  }
  return out;
}

function labelProblem(l: Label): string | null {
  if (!LABEL_SOURCE_RE.test(l.source)) return `invalid label source ${JSON.stringify(l.source)}`;
  if (!LABEL_KEY_RE.test(l.key)) return `invalid label key ${JSON.stringify(l.key)}`;
  if (!LABEL_VALUE_RE.test(l.value)) return `invalid value of label ${l.source}:${l.key}`;
  return null;
}

/** Parses a label string. Accepts "source:key" (empty value) and a missing final ';'. */
export function parseLabels(s: string): { ok: true; labels: Label[] } | { ok: false; detail: string } {
  const parts = s.split(';');
  if (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();
  if (parts.length === 0) return { ok: false, detail: 'empty label set' };
  const labels: Label[] = [];
  const seen = new Set<string>();
  for (const part of parts) {
    const colon = part.indexOf(':');
    if (colon <= 0) return { ok: false, detail: `label without source: ${JSON.stringify(part.slice(0, 80))}` };
    const source = part.slice(0, colon);
    const rest = part.slice(colon + 1);
    const eq = rest.indexOf('=');
    const label: Label = eq < 0 ? { source, key: rest, value: '' } : { source, key: rest.slice(0, eq), value: rest.slice(eq + 1) };
    const problem = labelProblem(label);
    if (problem) return { ok: false, detail: problem };
    const k = labelSortKey(label);
    if (seen.has(k)) return { ok: false, detail: `duplicate label ${k}` };
    seen.add(k);
    labels.push(label);
  }
  labels.sort((a, b) => (labelSortKey(a) < labelSortKey(b) ? -1 : 1));
  return { ok: true, labels };
}

// ---------------------------------------------------------------------------
// Domain values produced by the decoders

export interface RemoteIdentity {
  id: number;
  cluster: string;
  labels: LabelSet;
}

// ---------------------------------------------------------------------------
// Encoders (writers)

function encodeWith<T>(kind: string, schema: z.ZodType<T>, value: unknown, order: (v: T) => unknown): string {
  const r = schema.safeParse(value);
  if (!r.success) throw new WireEncodeError(kind, formatIssues(r.error));
  return JSON.stringify(order(r.data));
}

export function encodeClusterConfig(cfg: ClusterConfig): string {
  return encodeWith('cluster-config', clusterConfigSchema, cfg, (c) => ({
    id: c.id,
    capabilities: { syncedCanaries: c.capabilities.syncedCanaries, maxConnectedClusters: c.capabilities.maxConnectedClusters },
  }));
}

export function encodeNode(node: NodeValue): string {
  return encodeWith('node', nodeSchema, node, (n) => ({
    Name: n.Name,
    Cluster: n.Cluster,
    ClusterID: n.ClusterID,
    IPAddresses: n.IPAddresses.map((a) => ({ Type: a.Type, IP: a.IP })),
    IPv4AllocCIDR: n.IPv4AllocCIDR,
    ...(n.IPv6AllocCIDR !== undefined ? { IPv6AllocCIDR: n.IPv6AllocCIDR } : {}),
    Labels: sortedRecord(n.Labels),
  }));
}

/** The value of `identityKey(id)`: the label string. */
export function encodeIdentity(labels: Iterable<Label>): string {
  return formatLabels(labels);
}

export function encodeIpEntry(entry: IpEntryValue): string {
  return encodeWith('ip entry', ipEntrySchema, entry, (e) => ({
    IP: e.IP,
    Mask: e.Mask,
    HostIP: e.HostIP,
    ID: e.ID,
    Key: e.Key,
    K8sNamespace: e.K8sNamespace,
    K8sPodName: e.K8sPodName,
  }));
}

export function encodeService(svc: ServiceValue): string {
  const ports = (m: ServiceValue['frontends']) =>
    Object.fromEntries(
      Object.keys(m)
        .sort()
        .map((ip) => [ip, Object.fromEntries(Object.entries(m[ip] ?? {}).sort(([a], [b]) => (a < b ? -1 : 1)).map(([n, p]) => [n, { Protocol: p.Protocol, Port: p.Port }]))]),
    );
  return encodeWith('service', serviceSchema, svc, (s) => ({
    cluster: s.cluster,
    namespace: s.namespace,
    name: s.name,
    frontends: ports(s.frontends),
    backends: ports(s.backends),
    labels: sortedRecord(s.labels),
    selector: sortedRecord(s.selector),
    shared: s.shared,
    includeExternal: s.includeExternal,
    clusterID: s.clusterID,
  }));
}

function sortedRecord(r: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : 1)));
}

// ---------------------------------------------------------------------------
// Decoders (readers)

function formatIssues(err: z.ZodError): string {
  return err.issues
    .slice(0, 3)
    .map((i) => `${i.path.length ? i.path.map(String).join('.') : '(value)'}: ${i.message}`)
    .join('; ');
}

function sizeOk(src: WireSource, raw: string): Decoded<never> | null {
  const limit = src.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES;
  // string length (UTF-16 units) <= bytes, so only measure when it could matter
  if (raw.length > limit || (raw.length * 3 > limit && Buffer.byteLength(raw, 'utf8') > limit)) {
    return reject('too-large', `value of ${Buffer.byteLength(raw, 'utf8')} bytes exceeds the limit of ${limit}`);
  }
  return null;
}

function parseJson<T>(src: WireSource, raw: string, schema: z.ZodType<T>): Decoded<T> {
  const big = sizeOk(src, raw);
  if (big) return big;
  let data: unknown;
  try {
    data = JSON.parse(raw);
  } catch (e) {
    return reject('malformed-json', (e as Error).message);
  }
  const r = schema.safeParse(data);
  if (!r.success) return reject('invalid-schema', formatIssues(r.error));
  return { ok: true, value: r.data };
}

/**
 * The cluster-config of a remote cluster. Only checks the value itself; whether
 * the ID clashes with ours or another remote's is the caller's business.
 */
export function decodeClusterConfig(cluster: string, key: string, raw: string, maxValueBytes?: number): Decoded<ClusterConfig> {
  if (!isValidClusterName(cluster)) return reject('invalid-schema', `invalid cluster name ${JSON.stringify(cluster)}`);
  if (key !== clusterConfigKey(cluster)) return reject('key-mismatch', `key ${key} is not ${clusterConfigKey(cluster)}`);
  const src: WireSource = { cluster, clusterId: 0, maxConnectedClusters: 255, ...(maxValueBytes !== undefined ? { maxValueBytes } : {}) };
  const r = parseJson(src, raw, clusterConfigSchema);
  if (!r.ok) return r;
  if (!isValidClusterId(r.value.id, r.value.capabilities.maxConnectedClusters)) {
    return reject('invalid-schema', `cluster ID ${r.value.id} is outside 1..${r.value.capabilities.maxConnectedClusters}`);
  }
  return r;
}

function clusterMatches(src: WireSource, cluster: string, clusterId: number, what: string): Decoded<never> | null {
  if (cluster !== src.cluster) return reject('cluster-mismatch', `${what} names cluster ${JSON.stringify(cluster)}, read from ${src.cluster}`);
  if (clusterId !== src.clusterId) return reject('cluster-mismatch', `${what} carries cluster ID ${clusterId}, ${src.cluster} has ${src.clusterId}`);
  return null;
}

export function decodeNode(src: WireSource, key: string, raw: string): Decoded<NodeValue> {
  const r = parseJson(src, raw, nodeSchema);
  if (!r.ok) return r;
  const bad = clusterMatches(src, r.value.Cluster, r.value.ClusterID, `node ${r.value.Name}`);
  if (bad) return bad;
  const want = nodeKey(src.cluster, r.value.Name);
  if (key !== want) return reject('key-mismatch', `key ${key} holds node ${r.value.Name} (expected key ${want})`);
  return r;
}

/** The numeric id in an identity key, or null. */
export function identityIdFromKey(key: string): number | null {
  if (!key.startsWith(identitiesPrefix)) return null;
  const s = key.slice(identitiesPrefix.length);
  if (!/^(0|[1-9]\d{0,7})$/.test(s)) return null;
  const n = Number(s);
  return n <= IDENTITY_MAX ? n : null;
}

export function decodeIdentity(src: WireSource, key: string, raw: string): Decoded<RemoteIdentity> {
  const big = sizeOk(src, raw);
  if (big) return big;
  const id = identityIdFromKey(key);
  if (id === null || key !== identityKey(id)) return reject('key-mismatch', `${key} is not an identity key`);
  if (!identityInClusterRange(id, src.clusterId, src.maxConnectedClusters)) {
    const r = identityRange(src.clusterId, src.maxConnectedClusters);
    return reject('identity-out-of-range', `identity ${id} is outside ${src.cluster}'s range ${r.min}..${r.max}`);
  }
  const parsed = parseLabels(raw);
  if (!parsed.ok) return reject('invalid-labels', `identity ${id}: ${parsed.detail}`);
  const clusterLabels = parsed.labels.filter((l) => l.key === CLUSTER_LABEL_KEY);
  if (clusterLabels.length !== 1 || clusterLabels[0]?.source !== 'k8s' || clusterLabels[0].value !== src.cluster) {
    const named = clusterLabels.map((l) => `${l.source}:${l.value}`).join(',') || 'none';
    return reject('identity-cluster-label', `identity ${id} has cluster label ${named}, read from ${src.cluster}`);
  }
  const foreign = parsed.labels.find((l) => !REMOTE_LABEL_SOURCES.includes(l.source));
  if (foreign) return reject('invalid-labels', `identity ${id}: label source ${foreign.source} is not allowed from a remote cluster`);
  return { ok: true, value: { id, cluster: src.cluster, labels: parsed.labels } };
}

export function decodeIpEntry(src: WireSource, key: string, raw: string): Decoded<IpEntryValue> {
  const r = parseJson(src, raw, ipEntrySchema);
  if (!r.ok) return r;
  const want = ipKey(r.value.IP);
  if (key !== want) return reject('key-mismatch', `key ${key} holds ip entry ${r.value.IP}`);
  if (!identityInClusterRange(r.value.ID, src.clusterId, src.maxConnectedClusters)) {
    const range = identityRange(src.clusterId, src.maxConnectedClusters);
    return reject('identity-out-of-range', `ip ${r.value.IP} has identity ${r.value.ID}, outside ${src.cluster}'s range ${range.min}..${range.max}`);
  }
  return r;
}

export function decodeService(src: WireSource, key: string, raw: string): Decoded<ServiceValue> {
  const r = parseJson(src, raw, serviceSchema);
  if (!r.ok) return r;
  const v = r.value;
  const bad = clusterMatches(src, v.cluster, v.clusterID, `service ${v.namespace}/${v.name}`);
  if (bad) return bad;
  const want = serviceKey(src.cluster, v.namespace, v.name);
  if (key !== want) return reject('key-mismatch', `key ${key} holds service ${v.namespace}/${v.name} (expected key ${want})`);
  return r;
}
