// Test support: the kvstore values a Cilium clustermesh-apiserver writes, built
// here independently of wire.ts, and a checker of Cilium's Go types as their
// JSON looks (field names exact, JSON types as Go's encoding/json marshals
// them). Used by the wire fixtures test and the Cilium-remote integration test.
//
// The shapes (learned from Cilium's types, written down here in our words):
//   cluster-config  {id, capabilities{syncedCanaries, cached, maxConnectedClusters, serviceExportsEnabled}}
//   node            {Name, Cluster, IPAddresses[{Type, IP}], IPv4AllocCIDR{IP, Mask(base64)}|null, ...}
//   ip entry        {IP, Mask(base64, omitted for a host), HostIP, ID, Key, Metadata, K8s..., NamedPorts[{Name, Port, Protocol}]}
//   service         {cluster, namespace, name, frontends{ip{name{Protocol, Port}}}, backends, hostnames{ip: hostname}, zones, labels, selector, includeExternal, shared, clusterID}

/** A Go type as it appears in JSON. */
export type GoType =
  | 'string'
  | 'bool'
  | 'uint'
  | 'ip' // net.IP: a string, "" for nil
  | 'bytes' // []byte: base64, or null
  | { struct: Record<string, GoType> }
  | { ptr: GoType } // null or the value
  | { slice: GoType } // null or an array
  | { map: GoType }; // null or an object

const ipNet: GoType = { ptr: { struct: { IP: 'ip', Mask: 'bytes' } } };
const stringMap: GoType = { map: 'string' };
const l4Addr: GoType = { ptr: { struct: { Protocol: 'string', Port: 'uint' } } };

export const CILIUM_TYPES = {
  clusterConfig: {
    struct: {
      id: 'uint',
      capabilities: { struct: { syncedCanaries: 'bool', cached: 'bool', maxConnectedClusters: 'uint', serviceExportsEnabled: { ptr: 'bool' } } },
    },
  },
  node: {
    struct: {
      Name: 'string',
      Cluster: 'string',
      IPAddresses: { slice: { struct: { Type: 'string', IP: 'ip' } } },
      IPv4AllocCIDR: ipNet,
      IPv4SecondaryAllocCIDRs: { slice: ipNet },
      IPv6AllocCIDR: ipNet,
      IPv6SecondaryAllocCIDRs: { slice: ipNet },
      IPv4HealthIP: 'ip',
      IPv6HealthIP: 'ip',
      IPv4IngressIP: 'ip',
      IPv6IngressIP: 'ip',
      ClusterID: 'uint',
      Source: 'string',
      EncryptionKey: 'uint',
      Labels: stringMap,
      Annotations: stringMap,
      NodeIdentity: 'uint',
      WireguardPubKey: 'string',
      BootID: 'string',
    },
  },
  ipEntry: {
    struct: {
      IP: 'ip',
      Mask: 'bytes',
      HostIP: 'ip',
      ID: 'uint',
      Key: 'uint',
      Metadata: 'string',
      K8sNamespace: 'string',
      K8sPodName: 'string',
      K8sPodUID: 'string',
      K8sServiceAccount: 'string',
      NamedPorts: { slice: { struct: { Name: 'string', Port: 'uint', Protocol: 'string' } } },
    },
  },
  service: {
    struct: {
      cluster: 'string',
      namespace: 'string',
      name: 'string',
      frontends: { map: { map: l4Addr } },
      backends: { map: { map: l4Addr } },
      hostnames: stringMap,
      zones: { map: { struct: { zone: 'string', forZones: { slice: { struct: { name: 'string' } } } } } },
      labels: stringMap,
      selector: stringMap,
      includeExternal: 'bool',
      shared: 'bool',
      clusterID: 'uint',
    },
  },
} satisfies Record<string, GoType>;

/**
 * Problems of `v` read as Go type `t`: a field name Cilium's type does not have
 * (exact case), or a JSON type Go's decoder would refuse. [] when it fits.
 */
export function goTypeProblems(t: GoType, v: unknown, path = '$'): string[] {
  const isObj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);
  if (typeof t === 'string') {
    switch (t) {
      case 'string':
        return typeof v === 'string' ? [] : [`${path}: not a string`];
      case 'bool':
        return typeof v === 'boolean' ? [] : [`${path}: not a bool`];
      case 'uint':
        return typeof v === 'number' && Number.isInteger(v) && v >= 0 ? [] : [`${path}: not an unsigned integer`];
      case 'ip':
        return typeof v === 'string' && (v === '' || /^[0-9a-f.:]+$/i.test(v)) ? [] : [`${path}: not an IP string`];
      case 'bytes':
        return v === null || (typeof v === 'string' && /^[A-Za-z0-9+/]*={0,2}$/.test(v) && v.length % 4 === 0) ? [] : [`${path}: not base64`];
    }
  }
  if ('ptr' in t) return v === null ? [] : goTypeProblems(t.ptr, v, path);
  if ('slice' in t) {
    if (v === null) return [];
    return Array.isArray(v) ? v.flatMap((x, i) => goTypeProblems(t.slice, x, `${path}[${i}]`)) : [`${path}: not an array`];
  }
  if ('map' in t) {
    if (v === null) return [];
    return isObj(v) ? Object.entries(v).flatMap(([k, x]) => goTypeProblems(t.map, x, `${path}.${k}`)) : [`${path}: not an object`];
  }
  if (!isObj(v)) return [`${path}: not an object`];
  return Object.entries(v).flatMap(([k, x]) => (k in t.struct ? goTypeProblems(t.struct[k]!, x, `${path}.${k}`) : [`${path}.${k}: no such field in Cilium's type`]));
}

// ---- values as a Cilium clustermesh-apiserver writes them (json.Marshal: compact, struct order)

/** A netmask of `len` bits as Go's net.IPMask marshals (base64 of the bytes). */
function maskBase64(len: number, bytes: number): string {
  const b = new Uint8Array(bytes);
  for (let i = 0; i < len; i++) b[Math.floor(i / 8)]! |= 1 << (7 - (i % 8));
  return Buffer.from(b).toString('base64');
}

export const ciliumClusterConfig = (id: number): string =>
  JSON.stringify({ id, capabilities: { syncedCanaries: true, maxConnectedClusters: 255, serviceExportsEnabled: false } });

export interface CiliumNodeSpec {
  name: string;
  cluster: string;
  clusterId: number;
  internalIP: string;
  ciliumInternalIP: string;
  podCIDR: string; // IPv4 "a.b.c.d/len"
  healthIP?: string;
  labels?: Record<string, string> | null;
  bootID?: string;
}

export function ciliumNode(n: CiliumNodeSpec): string {
  const [ip, len] = n.podCIDR.split('/') as [string, string];
  return JSON.stringify({
    Name: n.name,
    Cluster: n.cluster,
    IPAddresses: [
      { Type: 'InternalIP', IP: n.internalIP },
      { Type: 'CiliumInternalIP', IP: n.ciliumInternalIP },
    ],
    IPv4AllocCIDR: { IP: ip, Mask: maskBase64(Number(len), 4) },
    IPv4SecondaryAllocCIDRs: null,
    IPv6AllocCIDR: null,
    IPv6SecondaryAllocCIDRs: null,
    IPv4HealthIP: n.healthIP ?? '',
    IPv6HealthIP: '',
    IPv4IngressIP: '',
    IPv6IngressIP: '',
    ClusterID: n.clusterId,
    Source: 'custom-resource',
    EncryptionKey: 0,
    Labels: n.labels === undefined ? { 'kubernetes.io/hostname': n.name } : n.labels,
    Annotations: null,
    WireguardPubKey: '',
    BootID: n.bootID ?? '',
  });
}

export interface CiliumIpEntrySpec {
  ip: string;
  hostIP: string;
  id: number;
  namespace?: string;
  pod?: string;
  podUID?: string;
  serviceAccount?: string;
  namedPorts?: { name: string; port: number; protocol: string }[];
  /** A prefix entry: mask length (the key is then ip/len). */
  maskLen?: number;
}

export function ciliumIpEntry(e: CiliumIpEntrySpec): string {
  const o: Record<string, unknown> = { IP: e.ip };
  if (e.maskLen !== undefined) o.Mask = maskBase64(e.maskLen, e.ip.includes(':') ? 16 : 4);
  Object.assign(o, { HostIP: e.hostIP, ID: e.id, Key: 0, Metadata: '' });
  if (e.namespace) o.K8sNamespace = e.namespace;
  if (e.pod) o.K8sPodName = e.pod;
  if (e.podUID) o.K8sPodUID = e.podUID;
  if (e.serviceAccount) o.K8sServiceAccount = e.serviceAccount;
  if (e.namedPorts?.length) o.NamedPorts = e.namedPorts.map((p) => ({ Name: p.name, Port: p.port, Protocol: p.protocol }));
  return JSON.stringify(o);
}

/** An identity's value: its labels, `source:key=value;` sorted. */
export const ciliumIdentity = (labels: Record<string, string>): string =>
  Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]};`)
    .join('');
