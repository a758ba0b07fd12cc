// The wire format of the mesh kvstore (ARCHITECTURE §4): Cilium's key layout
// and JSON, so that a Cilium cluster and a clustermesh cluster can import each
// other's exports. Value types, schemas, encoders and validating decoders.
//
// STABLE API, read by other clusters (ours and Cilium's). The JSON is Go's
// encoding/json of Cilium's types: cluster-config (CiliumClusterConfig), nodes
// (pkg/node/types Node: CIDRs as {"IP","Mask"} with a base64 mask), ip entries
// (identity.IPIdentityPair: Mask omitted for a host entry, base64 otherwise),
// services (ClusterService). Readers behave as Go's json.Unmarshal does: a
// field they do not know is ignored, a missing field or null is the zero value,
// a field of the wrong type refuses that value (and only that value).
//
// WRITERS (the apiserver): encode every value you publish with the `encode*`
// functions below and build its key with `src/clustermesh/keys.ts`. Never
// JSON.stringify a value by hand: the encoders write Cilium's field names,
// order and omissions, run their output through the readers' checks, and
// throw `WireEncodeError` for a value that every reader would reject.
//
// READERS (remote-cluster import): decode every remote value with the
// `decode*` functions and a `WireSource` describing the cluster the value came
// from. They never throw; they return `{ ok: true, value }` or
// `{ ok: false, reason, detail }`. A value is believed only when:
//   - it is at most `maxValueBytes` bytes of UTF-8 and well-formed JSON;
//   - it matches the schema;
//   - the cluster name and ID it carries are those of the source cluster;
//   - its key is the key the content implies (node name, ns/name, ip[/len], id);
//   - identities lie in the source cluster's range (255 clusters: id >> 16,
//     511 clusters: id >> 15) and carry exactly one
//     `k8s:io.cilium.k8s.policy.cluster` label naming the source cluster;
//   - an ip entry's identity is reserved (1..255) or in the source cluster's range.

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
// Go encoding/json, as Cilium's types marshal: a missing field or null is the
// zero value; unknown fields are ignored (forward compatibility); a field of
// the wrong JSON type refuses the value (Go's json.Unmarshal fails too).

const clusterName = z.string().refine(isValidClusterName, 'invalid cluster name');
const ipString = z.string().refine((s) => isIP(s) !== 0, 'not an IP address');
/** Go's net.IP: "" is the nil address. */
const goIp = z
  .string()
  .refine((s) => s === '' || isIP(s) !== 0, 'not an IP address')
  .nullish()
  .transform((v) => v ?? '');
const goString = (max = 4096) =>
  z
    .string()
    .max(max)
    .nullish()
    .transform((v) => v ?? '');
const goBool = z
  .boolean()
  .nullish()
  .transform((v) => v ?? false);
const goUint = (max: number) =>
  z
    .number()
    .int()
    .min(0)
    .max(max)
    .nullish()
    .transform((v) => v ?? 0);
const goStringMap = z
  .record(z.string().max(317), z.string().max(4096))
  .nullish()
  .transform((v) => v ?? {});
/** Kubernetes DNS-1123 subdomain (node names). */
const dnsSubdomain = z
  .string()
  .max(253)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, 'invalid DNS subdomain');
/** Kubernetes DNS-1123 label (namespaces, service names). */
const dnsLabel = z
  .string()
  .max(63)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'invalid DNS label');
/** Go's []byte: standard base64 with padding. */
const base64Bytes = z.string().regex(/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/, 'not base64');

// ---- netmasks (Go's net.IPMask: the mask bytes, base64 in JSON)

/** Prefix length of a netmask of `family` given as its bytes, or an error. */
export function maskBytesToLength(bytes: Uint8Array, family: 4 | 6): number | string {
  let b = bytes;
  // Go may carry an IPv4 mask in 16 bytes (v4-in-v6 form).
  if (family === 4 && b.length === 16 && b.subarray(0, 12).every((x) => x === 0xff)) b = b.subarray(12);
  if (b.length !== (family === 4 ? 4 : 16)) return `a mask of ${b.length} bytes for an IPv${family} address`;
  const bits = [...b].map((x) => x.toString(2).padStart(8, '0')).join('');
  if (!/^1*0*$/.test(bits)) return 'a non-contiguous mask';
  return bits.indexOf('0') < 0 ? bits.length : bits.indexOf('0');
}

/** The mask bytes of a prefix length, base64 as Go writes net.IPMask. */
export function maskLengthToBase64(len: number, family: 4 | 6): string {
  const bytes = Buffer.alloc(family === 4 ? 4 : 16);
  for (let i = 0; i < len; i++) bytes[i >> 3]! |= 0x80 >> (i & 7);
  return bytes.toString('base64');
}

const familyOf = (ip: string): 4 | 6 => (isIP(ip) === 6 ? 6 : 4);

/** Go's *net.IPNet / cilium cidr.CIDR in JSON: {"IP":"10.0.0.0","Mask":"////AA=="}, or null. */
const ipNetJson = z.object({ IP: ipString, Mask: base64Bytes });
type IpNetJson = z.infer<typeof ipNetJson>;

/** "10.0.0.0/24" from the JSON form, or an error. */
function ipNetToCidr(n: IpNetJson, family: 4 | 6): string | { error: string } {
  if (familyOf(n.IP) !== family) return { error: `${n.IP} is not an IPv${family} address` };
  const len = maskBytesToLength(Buffer.from(n.Mask, 'base64'), family);
  return typeof len === 'string' ? { error: len } : `${n.IP}/${len}`;
}

function cidrToIpNet(cidr: string): IpNetJson {
  const slash = cidr.indexOf('/');
  const ip = cidr.slice(0, slash);
  return { IP: ip, Mask: maskLengthToBase64(Number(cidr.slice(slash + 1)), familyOf(ip)) };
}

function isCidr(s: string, family: 4 | 6): boolean {
  const slash = s.indexOf('/');
  if (slash < 0) return false;
  const len = s.slice(slash + 1);
  return isIP(s.slice(0, slash)) === family && /^\d{1,3}$/.test(len) && Number(len) <= (family === 4 ? 32 : 128);
}

// ---------------------------------------------------------------------------
// cluster-config: cilium/cluster-config/<cluster> (Cilium CiliumClusterConfig).
// Every capability is optional; a missing maxConnectedClusters means 255.

const clusterConfigJson = z.object({
  id: goUint(511),
  capabilities: z
    .object({
      syncedCanaries: goBool,
      cached: goBool,
      maxConnectedClusters: goUint(0xffffffff),
      serviceExportsEnabled: z.boolean().nullish(),
    })
    .nullish(),
});

export interface ClusterConfig {
  id: number;
  capabilities: {
    /** Writes a synced canary per prefix (readers wait for them). */
    syncedCanaries: boolean;
    maxConnectedClusters: MaxConnectedClusters;
    /** The data is a kvstoremesh cache under cilium/cache/ (not read by this importer). */
    cached: boolean;
    /** MCS-API ServiceExports: true/false, or null when the writer does not say (no support). */
    serviceExportsEnabled: boolean | null;
  };
}
/** What a writer states; left-out capabilities take their defaults (false, 255, null). */
export interface ClusterConfigInput {
  id: number;
  capabilities?: Partial<ClusterConfig['capabilities']>;
}

// ---------------------------------------------------------------------------
// nodes: cilium/state/nodes/v1/<cluster>/<node> (Cilium pkg/node/types Node).

export const nodeAddressTypes = ['InternalIP', 'ExternalIP', 'CiliumInternalIP'] as const;
export type NodeAddressType = (typeof nodeAddressTypes)[number];

const nodeJson = z.object({
  Name: dnsSubdomain,
  Cluster: clusterName,
  IPAddresses: z
    .array(z.object({ Type: z.string().max(64), IP: ipString }))
    .max(64)
    .nullish()
    .transform((v) => v ?? []),
  IPv4AllocCIDR: ipNetJson.nullish(),
  IPv4SecondaryAllocCIDRs: z.array(ipNetJson).max(64).nullish(),
  IPv6AllocCIDR: ipNetJson.nullish(),
  IPv6SecondaryAllocCIDRs: z.array(ipNetJson).max(64).nullish(),
  IPv4HealthIP: goIp,
  IPv6HealthIP: goIp,
  IPv4IngressIP: goIp,
  IPv6IngressIP: goIp,
  ClusterID: goUint(511),
  Source: goString(64),
  EncryptionKey: goUint(255),
  Labels: goStringMap,
  Annotations: goStringMap,
  WireguardPubKey: goString(256),
  BootID: goString(256),
});

/** A node as the importer sees it: CIDRs as "ip/len" strings. */
export interface NodeValue {
  Name: string;
  Cluster: string;
  ClusterID: number;
  /** Addresses of the known types (others are skipped on read). */
  IPAddresses: { Type: NodeAddressType; IP: string }[];
  IPv4AllocCIDR: string | null;
  IPv6AllocCIDR: string | null;
  IPv4HealthIP: string;
  IPv6HealthIP: string;
  Labels: Record<string, string>;
  Annotations: Record<string, string>;
  EncryptionKey: number;
  Source: string;
  BootID: string;
}
/** What a writer provides; the rest takes Go's zero values. */
export type NodeInput = Pick<NodeValue, 'Name' | 'Cluster' | 'ClusterID' | 'IPAddresses' | 'IPv4AllocCIDR' | 'Labels'> & Partial<NodeValue>;

// ---------------------------------------------------------------------------
// ip entries: cilium/state/ip/v1/default/<ip> or .../<ip>/<len> (Cilium
// identity.IPIdentityPair). No Mask: a host entry. ID may be a reserved
// identity (< 256); named ports and the service account are carried.

const namedPortJson = z.object({ Name: goString(63), Port: goUint(65535), Protocol: goString(16) });
const ipEntryJson = z.object({
  IP: ipString,
  Mask: base64Bytes.nullish(),
  HostIP: goIp,
  ID: z.number().int().min(0).max(IDENTITY_MAX),
  Key: goUint(255),
  Metadata: goString(),
  K8sNamespace: goString(63),
  K8sPodName: goString(253),
  K8sPodUID: goString(128),
  K8sServiceAccount: goString(253),
  NamedPorts: z
    .array(namedPortJson)
    .max(1024)
    .nullish()
    .transform((v) => v ?? []),
});

export type WireProtocol = 'TCP' | 'UDP' | 'SCTP';
const PROTOCOLS: readonly string[] = ['TCP', 'UDP', 'SCTP'];
export interface WireNamedPort {
  Name: string;
  Port: number;
  Protocol: WireProtocol;
}

export interface IpEntryValue {
  IP: string;
  /** Prefix length, or null for a host entry (no Mask on the wire). */
  Mask: number | null;
  /** The node hosting the IP (tunnel endpoint); "" when none. */
  HostIP: string;
  ID: number;
  /** Encryption key index. */
  Key: number;
  Metadata: string;
  K8sNamespace: string;
  K8sPodName: string;
  K8sPodUID: string;
  K8sServiceAccount: string;
  /** Named container ports of the pod (those of an unknown protocol or port 0 are skipped on read). */
  NamedPorts: WireNamedPort[];
}
export type IpEntryInput = Pick<IpEntryValue, 'IP' | 'HostIP' | 'ID'> & Partial<IpEntryValue>;

/** The key of an ip entry: ip/v1/default/<ip>, or <ip>/<len> with a mask. */
export const ipEntryKey = (e: Pick<IpEntryValue, 'IP' | 'Mask'>): string => ipKey(e.Mask === null ? e.IP : `${e.IP}/${e.Mask}`);

// ---------------------------------------------------------------------------
// services: cilium/state/services/v1/<cluster>/<ns>/<name> (Cilium ClusterService).

const portSchema = z.object({
  Protocol: z.enum(['TCP', 'UDP', 'SCTP']),
  Port: z.number().int().min(1).max(65535),
});
export type WirePort = z.infer<typeof portSchema>;
/** ip → port name → port. The port name may be "". */
const portsByIp = z
  .record(ipString, z.record(z.string().max(63), portSchema).nullish().transform((v) => v ?? {}))
  .refine((m) => Object.keys(m).length <= 4096, 'too many addresses')
  .nullish()
  .transform((v) => v ?? {});

/**
 * backend ip → the backend's hostname (Cilium's `hostnames`, what its
 * EndpointSlice sync and the MCS API's per-endpoint DNS names use). Go reads
 * any string map here, so a pair that is not an IP → DNS label is dropped
 * rather than the whole service refused.
 */
const hostnamesByIp = z
  .record(z.string().max(64), z.string().max(253))
  .refine((m) => Object.keys(m).length <= 4096, 'too many addresses')
  .nullish()
  .transform((v) => Object.fromEntries(Object.entries(v ?? {}).filter(([ip, h]) => isIP(ip) !== 0 && dnsLabel.safeParse(h).success)));

const serviceJson = z.object({
  cluster: clusterName,
  namespace: dnsLabel,
  name: dnsLabel,
  frontends: portsByIp,
  backends: portsByIp,
  hostnames: hostnamesByIp,
  labels: goStringMap,
  selector: goStringMap,
  includeExternal: goBool,
  shared: goBool,
  clusterID: goUint(511),
});
export type ServiceValue = z.output<typeof serviceJson>;
/** What encodeService takes: `hostnames` may be left out (none). */
export type ServiceInput = Omit<ServiceValue, 'hostnames'> & { hostnames?: Record<string, string> };

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
// From the JSON form to the values above, with the checks that do not depend
// on the source cluster. Encoders run their output through these, so what we
// write is exactly what every reader accepts.

type Checked<T> = { ok: true; value: T } | { ok: false; detail: string };

function formatIssues(err: z.ZodError): string {
  return err.issues
    .slice(0, 3)
    .map((i) => `${i.path.length ? i.path.map(String).join('.') : '(value)'}: ${i.message}`)
    .join('; ');
}

function parseWith<S extends z.ZodTypeAny>(schema: S, data: unknown): Checked<z.output<S>> {
  const r = schema.safeParse(data);
  return r.success ? { ok: true, value: r.data } : { ok: false, detail: formatIssues(r.error) };
}

function clusterConfigFromJson(data: unknown): Checked<ClusterConfig> {
  const r = parseWith(clusterConfigJson, data);
  if (!r.ok) return r;
  const caps = r.value.capabilities;
  const max = caps?.maxConnectedClusters || 255; // 0 (left out) means Cilium's default
  if (max !== 255 && max !== 511) return { ok: false, detail: `capabilities.maxConnectedClusters: ${max} is neither 255 nor 511` };
  if (!isValidClusterId(r.value.id, max)) return { ok: false, detail: `id: cluster ID ${r.value.id} is outside 1..${max}` };
  return {
    ok: true,
    value: {
      id: r.value.id,
      capabilities: {
        syncedCanaries: caps?.syncedCanaries ?? false,
        maxConnectedClusters: max,
        cached: caps?.cached ?? false,
        serviceExportsEnabled: caps?.serviceExportsEnabled ?? null,
      },
    },
  };
}

const isKnownAddressType = (t: string): t is NodeAddressType => (nodeAddressTypes as readonly string[]).includes(t);

function nodeFromJson(data: unknown): Checked<NodeValue> {
  const r = parseWith(nodeJson, data);
  if (!r.ok) return r;
  const n = r.value;
  const cidr = (field: 'IPv4AllocCIDR' | 'IPv6AllocCIDR', family: 4 | 6): string | null | { error: string } => {
    const v = n[field];
    if (v === null || v === undefined) return null;
    const c = ipNetToCidr(v, family);
    return typeof c === 'string' ? c : { error: `${field}: ${c.error}` };
  };
  const v4 = cidr('IPv4AllocCIDR', 4);
  if (v4 !== null && typeof v4 === 'object') return { ok: false, detail: v4.error };
  const v6 = cidr('IPv6AllocCIDR', 6);
  if (v6 !== null && typeof v6 === 'object') return { ok: false, detail: v6.error };
  return {
    ok: true,
    value: {
      Name: n.Name,
      Cluster: n.Cluster,
      ClusterID: n.ClusterID,
      IPAddresses: n.IPAddresses.filter((a): a is { Type: NodeAddressType; IP: string } => isKnownAddressType(a.Type)).map((a) => ({ Type: a.Type, IP: a.IP })),
      IPv4AllocCIDR: v4,
      IPv6AllocCIDR: v6,
      IPv4HealthIP: n.IPv4HealthIP,
      IPv6HealthIP: n.IPv6HealthIP,
      Labels: n.Labels,
      Annotations: n.Annotations,
      EncryptionKey: n.EncryptionKey,
      Source: n.Source,
      BootID: n.BootID,
    },
  };
}

function ipEntryFromJson(data: unknown): Checked<IpEntryValue> {
  const r = parseWith(ipEntryJson, data);
  if (!r.ok) return r;
  const e = r.value;
  let mask: number | null = null;
  if (e.Mask !== null && e.Mask !== undefined) {
    const len = maskBytesToLength(Buffer.from(e.Mask, 'base64'), familyOf(e.IP));
    if (typeof len === 'string') return { ok: false, detail: `Mask: ${len}` };
    mask = len;
  }
  return {
    ok: true,
    value: {
      IP: e.IP,
      Mask: mask,
      HostIP: e.HostIP,
      ID: e.ID,
      Key: e.Key,
      Metadata: e.Metadata,
      K8sNamespace: e.K8sNamespace,
      K8sPodName: e.K8sPodName,
      K8sPodUID: e.K8sPodUID,
      K8sServiceAccount: e.K8sServiceAccount,
      NamedPorts: e.NamedPorts.filter((p) => p.Name !== '' && p.Port > 0 && PROTOCOLS.includes(p.Protocol)).map((p) => ({
        Name: p.Name,
        Port: p.Port,
        Protocol: p.Protocol as WireProtocol,
      })),
    },
  };
}

const serviceFromJson = (data: unknown): Checked<ServiceValue> => parseWith(serviceJson, data);

// ---------------------------------------------------------------------------
// Encoders (writers): Cilium's field names, order and omissions.

function encodeChecked<T>(kind: string, json: unknown, check: (data: unknown) => Checked<T>): string {
  const text = JSON.stringify(json);
  const r = check(JSON.parse(text));
  if (!r.ok) throw new WireEncodeError(kind, r.detail);
  return text;
}

export function encodeClusterConfig(cfg: ClusterConfigInput): string {
  const c = cfg.capabilities ?? {};
  return encodeChecked(
    'cluster-config',
    {
      id: cfg.id,
      capabilities: {
        ...(c.syncedCanaries ? { syncedCanaries: true } : {}),
        ...(c.cached ? { cached: true } : {}),
        maxConnectedClusters: c.maxConnectedClusters ?? 255,
        ...(c.serviceExportsEnabled !== undefined && c.serviceExportsEnabled !== null ? { serviceExportsEnabled: c.serviceExportsEnabled } : {}),
      },
    },
    clusterConfigFromJson,
  );
}

export function encodeNode(node: NodeInput): string {
  for (const [field, family] of [['IPv4AllocCIDR', 4], ['IPv6AllocCIDR', 6]] as const) {
    const v = node[field];
    if (v !== null && v !== undefined && !isCidr(v, family)) throw new WireEncodeError('node', `${field}: ${JSON.stringify(v)} is not an IPv${family} CIDR`);
  }
  const bad = node.IPAddresses.find((a) => !isKnownAddressType(a.Type));
  if (bad) throw new WireEncodeError('node', `IPAddresses: unknown address type ${JSON.stringify(bad.Type)}`);
  const annotations = node.Annotations ?? {};
  return encodeChecked(
    'node',
    {
      Name: node.Name,
      Cluster: node.Cluster,
      IPAddresses: node.IPAddresses.map((a) => ({ Type: a.Type, IP: a.IP })),
      IPv4AllocCIDR: node.IPv4AllocCIDR ? cidrToIpNet(node.IPv4AllocCIDR) : null,
      IPv4SecondaryAllocCIDRs: null,
      IPv6AllocCIDR: node.IPv6AllocCIDR ? cidrToIpNet(node.IPv6AllocCIDR) : null,
      IPv6SecondaryAllocCIDRs: null,
      IPv4HealthIP: node.IPv4HealthIP ?? '',
      IPv6HealthIP: node.IPv6HealthIP ?? '',
      IPv4IngressIP: '',
      IPv6IngressIP: '',
      ClusterID: node.ClusterID,
      Source: node.Source ?? '',
      EncryptionKey: node.EncryptionKey ?? 0,
      Labels: sortedRecord(node.Labels),
      Annotations: Object.keys(annotations).length > 0 ? sortedRecord(annotations) : null,
      WireguardPubKey: '',
      BootID: node.BootID ?? '',
    },
    nodeFromJson,
  );
}

/** The value of `identityKey(id)`: the label string. */
export function encodeIdentity(labels: Iterable<Label>): string {
  return formatLabels(labels);
}

export function encodeIpEntry(entry: IpEntryInput): string {
  const mask = entry.Mask ?? null;
  if (mask !== null && !(Number.isInteger(mask) && mask >= 0 && mask <= (familyOf(entry.IP) === 4 ? 32 : 128))) {
    throw new WireEncodeError('ip entry', `Mask: ${mask} is not a prefix length for ${entry.IP}`);
  }
  const omitEmpty = (name: string, v: string | undefined) => (v ? { [name]: v } : {});
  const ports = entry.NamedPorts ?? [];
  return encodeChecked(
    'ip entry',
    {
      IP: entry.IP,
      ...(mask !== null ? { Mask: maskLengthToBase64(mask, familyOf(entry.IP)) } : {}),
      HostIP: entry.HostIP,
      ID: entry.ID,
      Key: entry.Key ?? 0,
      Metadata: entry.Metadata ?? '',
      ...omitEmpty('K8sNamespace', entry.K8sNamespace),
      ...omitEmpty('K8sPodName', entry.K8sPodName),
      ...omitEmpty('K8sPodUID', entry.K8sPodUID),
      ...omitEmpty('K8sServiceAccount', entry.K8sServiceAccount),
      ...(ports.length > 0 ? { NamedPorts: ports.map((p) => ({ Name: p.Name, Port: p.Port, Protocol: p.Protocol })) } : {}),
    },
    ipEntryFromJson,
  );
}

/**
 * A service in Cilium's JSON. `hostnames` (Cilium writes it after `backends`)
 * is written only when some backend has a hostname: a reader that predates
 * the field, or finds it absent, sees no hostnames either way.
 */
export function encodeService(svc: ServiceInput): string {
  const ports = (m: ServiceValue['frontends']) =>
    Object.fromEntries(
      Object.keys(m)
        .sort()
        .map((ip) => [ip, Object.fromEntries(Object.entries(m[ip] ?? {}).sort(([a], [b]) => (a < b ? -1 : 1)).map(([n, p]) => [n, { Protocol: p.Protocol, Port: p.Port }]))]),
    );
  return encodeChecked(
    'service',
    {
      cluster: svc.cluster,
      namespace: svc.namespace,
      name: svc.name,
      frontends: ports(svc.frontends),
      backends: ports(svc.backends),
      ...(svc.hostnames && Object.keys(svc.hostnames).length > 0 ? { hostnames: sortedRecord(svc.hostnames) } : {}),
      labels: sortedRecord(svc.labels),
      selector: sortedRecord(svc.selector),
      includeExternal: svc.includeExternal,
      shared: svc.shared,
      clusterID: svc.clusterID,
    },
    serviceFromJson,
  );
}

function sortedRecord(r: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : 1)));
}

// ---------------------------------------------------------------------------
// Decoders (readers)

function sizeOk(src: Pick<WireSource, 'maxValueBytes'>, raw: string): Decoded<never> | null {
  const limit = src.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES;
  // string length (UTF-16 units) <= bytes, so only measure when it could matter
  if (raw.length > limit || (raw.length * 3 > limit && Buffer.byteLength(raw, 'utf8') > limit)) {
    return reject('too-large', `value of ${Buffer.byteLength(raw, 'utf8')} bytes exceeds the limit of ${limit}`);
  }
  return null;
}

function parseJson<T>(src: Pick<WireSource, 'maxValueBytes'>, raw: string, fromJson: (data: unknown) => Checked<T>): Decoded<T> {
  const big = sizeOk(src, raw);
  if (big) return big;
  let data: unknown;
  try {
    data = JSON.parse(raw);
  } catch (e) {
    return reject('malformed-json', (e as Error).message);
  }
  const r = fromJson(data);
  return r.ok ? r : reject('invalid-schema', r.detail);
}

/**
 * The cluster-config of a remote cluster. Only checks the value itself; whether
 * the ID clashes with ours or another remote's is the caller's business.
 */
export function decodeClusterConfig(cluster: string, key: string, raw: string, maxValueBytes?: number): Decoded<ClusterConfig> {
  if (!isValidClusterName(cluster)) return reject('invalid-schema', `invalid cluster name ${JSON.stringify(cluster)}`);
  if (key !== clusterConfigKey(cluster)) return reject('key-mismatch', `key ${key} is not ${clusterConfigKey(cluster)}`);
  return parseJson(maxValueBytes !== undefined ? { maxValueBytes } : {}, raw, clusterConfigFromJson);
}

function clusterMatches(src: WireSource, cluster: string, clusterId: number, what: string): Decoded<never> | null {
  if (cluster !== src.cluster) return reject('cluster-mismatch', `${what} names cluster ${JSON.stringify(cluster)}, read from ${src.cluster}`);
  if (clusterId !== src.clusterId) return reject('cluster-mismatch', `${what} carries cluster ID ${clusterId}, ${src.cluster} has ${src.clusterId}`);
  return null;
}

export function decodeNode(src: WireSource, key: string, raw: string): Decoded<NodeValue> {
  const r = parseJson(src, raw, nodeFromJson);
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

/** Reserved identities (host, world, remote-node, health, ...) are the same in every cluster. */
export const RESERVED_IDENTITY_MAX = 255;

export function decodeIpEntry(src: WireSource, key: string, raw: string): Decoded<IpEntryValue> {
  const r = parseJson(src, raw, ipEntryFromJson);
  if (!r.ok) return r;
  const e = r.value;
  const want = ipEntryKey(e);
  if (key !== want) return reject('key-mismatch', `key ${key} holds ip entry ${e.IP}${e.Mask === null ? '' : `/${e.Mask}`} (expected key ${want})`);
  const reserved = e.ID >= 1 && e.ID <= RESERVED_IDENTITY_MAX;
  if (!reserved && !identityInClusterRange(e.ID, src.clusterId, src.maxConnectedClusters)) {
    const range = identityRange(src.clusterId, src.maxConnectedClusters);
    return reject('identity-out-of-range', `ip ${e.IP} has identity ${e.ID}, neither reserved (1..${RESERVED_IDENTITY_MAX}) nor in ${src.cluster}'s range ${range.min}..${range.max}`);
  }
  return r;
}

export function decodeService(src: WireSource, key: string, raw: string): Decoded<ServiceValue> {
  const r = parseJson(src, raw, serviceFromJson);
  if (!r.ok) return r;
  const v = r.value;
  const bad = clusterMatches(src, v.cluster, v.clusterID, `service ${v.namespace}/${v.name}`);
  if (bad) return bad;
  const want = serviceKey(src.cluster, v.namespace, v.name);
  if (key !== want) return reject('key-mismatch', `key ${key} holds service ${v.namespace}/${v.name} (expected key ${want})`);
  return r;
}

/**
 * The time in a heartbeat value (`cilium/.heartbeat`: Go time.RFC3339, with or
 * without fractions, any offset), in ms since the epoch; null when unreadable.
 * Readers judge liveness by when they saw the key change, not by this clock.
 */
export function decodeHeartbeat(raw: string): number | null {
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/.test(raw.trim())) return null;
  const ms = Date.parse(raw.trim().replace(/(\.\d{3})\d+/, '$1'));
  return Number.isFinite(ms) ? ms : null;
}
