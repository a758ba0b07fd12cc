// The agent's configuration: a YAML file plus command-line overrides, checked
// once at start with zod and compiled into a fully-defaulted AgentConfig.
// Every error names the file and the setting:
//   agent config /x/y.yaml: clusterID: must be 1..255
//
//   clusterName: cluster1
//   clusterID: 1
//   maxConnectedClusters: 255          # or 511
//   nodeName: node1
//   nodeIP: 10.1.0.1                   # or underlayDevice: eth0 (its first IPv4 address);
//                                      # absent: the Node's InternalIP from the Kubernetes API
//   podCIDR: 10.101.1.0/24             # absent: the Node's spec.podCIDRs[0] from the Kubernetes API
//   tunnelPort: 8472
//   vxlanDevice: cm_vxlan
//   etcd: { endpoints: [https://10.1.0.250:2379], caFile: ca.crt, certFile: agent.crt, keyFile: agent.key }
//   clustermeshConfigDir: remote-clusters   # one file per remote cluster
//   clustermeshCache: false                 # true: read the remotes from this cluster's etcd, where the
//                                           # apiserver's cache tier (--kvstoremesh) writes them; one connection
//   stateDir: state                         # agent.sock and persisted endpoints
//   pinDir: /run/clustermesh/bpffs/<node>   # default <bpffs>/<clusterName>-<nodeName>
//   syncTimeoutSeconds: 30
//   fullSyncIntervalSeconds: 30
//   logLevel: info
//
// Relative paths resolve against the config file's directory. Optional extras:
// objectsDir (the BPF objects), traceForwards, redirectPeer, sessionTtlSeconds
// (of the etcd session the agent's identity references live on),
// remoteResyncGraceSeconds (3; see resync-grace.ts), serviceCacheTTLSeconds (0:
// how long an unreachable remote cluster's service backends are kept; 0 =
// until it is back or removed from the mesh), remoteHeartbeatStaleSeconds (180:
// a remote cluster whose cilium/.heartbeat has not changed for longer is
// reported stale in status, as Cilium does; sooner, after 2.5 of its
// heartbeat intervals, once the interval is known), policyDefaultLocalCluster (true:
// a policy selector that names no io.cilium.k8s.policy.cluster matches the
// local cluster only; false: every cluster), flowBufferSize (4096: how many
// flows of the node's datapath events the agent keeps for GET /v1/flows),
// traceNewConnections (true: the datapath reports each forwarded TCP SYN
// without ACK, the first packet of a connection, so forwarded flows are seen
// without traceForwards' event per packet), eventsRingBytes (4194304: size of
// the node's cm_events ring buffer, a power of two; at 10,000 events/s 4 MiB
// holds 6.5 s of events the agent has not read yet; a change replaces the
// ring on the next start), mapSizes ({ ipcache, endpoints, services, backends,
// conntrack }: max_entries of cm_ipcache (65536), cm_endpoints (16384),
// cm_services (131072), cm_backends (131072) and cm_ct (65536), each
// 16..16777216; a changed size replaces the map on the next start: the agent
// refills it, live conntrack entries are carried over as far as they fit; at
// capacity writes are refused and counted, never an old entry evicted: for
// cm_ct, a plain hash, a new service connection is dropped, DROP_CT_WRITE_FAILED),
// metricsAddress (127.0.0.1:9962: host:port of the Prometheus endpoint
// GET /metrics, in the node's network namespace and off the pod network; the
// node IP lets a scraper on the underlay in; '' for none), socketLBCgroup (a cgroup v2
// directory holding this node's pods: connect()/sendmsg() to a service are
// translated there once per connection, bpf/sock.bpf.c; absent: off, every
// packet is translated by from_container), kubeconfig (a kubeconfig file: the
// cluster's Namespaces, Pods, Services, EndpointSlices, Nodes and policies are
// read from that Kubernetes API (src/sources/kubernetes), its current context;
// the Endpoint objects, mesh state, stay in the cluster's etcd; absent:
// KUBECONFIG, else the in-cluster service account, else ~/.kube/config), routingMode (tunnel: every
// packet to a pod of another node goes through the VXLAN tunnel; native: the
// underlay routes pod addresses, so destinations inside nativeRoutingCIDRs
// leave unencapsulated and arrive on the underlay device, bpf/lib/native.h;
// the rest, e.g. clusters in tunnel mode, still through the tunnel),
// nativeRoutingCIDRs (native only, required there: 1..8 pod address ranges the
// underlay routes to their nodes, covering this node's podCIDR), tunnelEncap
// (bpf: the programs write and strip the tunnel's VXLAN headers, out of and
// into the underlay device, bpf/lib/encap.h; device: the kernel's VXLAN
// device does; the same packets on the wire, so nodes of either setting
// mesh), tcAttach
// (auto: the tc programs attached with tcx on Linux 6.6+, else as cls_bpf
// filters on a clsact qdisc; tcx or cls_bpf to insist, tcx failing the start
// on an older kernel; a start replaces what an earlier one attached the other
// way),
// nodeWaitTimeoutSeconds (300: with podCIDR or nodeIP absent, how long the
// agent waits for its Node, nodeName, to exist in the Kubernetes API with a
// pod CIDR (and an InternalIP) before it fails naming the node), cniConfDir
// (a directory, e.g. /host/etc/cni/net.d: once ready the agent writes its CNI
// network configuration there, atomically, rewrites it when its content would
// change and removes it on a clean stop; absent: no file is written),
// cniConfName (05-clustermesh.conflist: the file's name), cniBinaryName
// (clustermesh-cni: the plugin's `type`, the executable the runtime finds in
// its CNI bin directory; the install copies it there under this name),
// statusPod (<namespace>/<name> of the agent's own Pod: the agent keeps a
// summary of its status, its remote clusters' connection state, in that Pod's
// annotation clustermesh.io/agent-status, so `clustermesh status --context`
// reads it through the Kubernetes API (pod-status.ts); absent: not written),
// remoteApi (absent: off; { port, address (default: nodeIP), caFile, certFile,
// keyFile, clients (['observer']) }: the read-only part of the local API, GET of
// /v1/flows (and follow), /v1/status, /v1/endpoints, /v1/services,
// /v1/policy and /healthz, served over HTTPS on address:port to clients
// whose certificate caFile verifies and whose subject CN is one of clients;
// how `observe --context` and `ui --context` reach installed agents, api.ts).
//
// An etcd endpoint whose host is a Kubernetes Service name
// (<svc>.<ns>.svc[.cluster.local]) is resolved through the Kubernetes API, not
// DNS (etcd-service.ts); the certificate is verified against that name.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { DEFAULT_BPFFS_ROOT } from '../datapath/bpffs.ts';
import type { TcAttachPreference } from '../datapath/libbpf/tc.ts';
import { DEFAULT_TUNNEL_ENCAP, NATIVE_CIDRS_MAX, ROUTING_MODES, TUNNEL_ENCAPS, type RoutingMode, type TunnelEncap } from '../datapath/maps/config.ts';
import type { KvConnectionConfig } from '../kvstore/types.ts';
import { formatPath, validateClusterName, type MaxConnectedClusters } from '../model/index.ts';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The socket of the local API inside stateDir. */
export const AGENT_SOCKET_NAME = 'agent.sock';
/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

export interface AgentConfig {
  /** The file it was read from (absolute), or undefined when built from flags only. */
  file: string | undefined;
  clusterName: string;
  clusterID: number;
  maxConnectedClusters: MaxConnectedClusters;
  nodeName: string;
  /** The underlay address; resolved from underlayDevice when that was given instead. */
  nodeIP: string | undefined;
  underlayDevice: string | undefined;
  /** This node's pod range; undefined until read from the Node (resolveNodeConfig). */
  podCIDR: string | undefined;
  tunnelPort: number;
  vxlanDevice: string;
  etcd: KvConnectionConfig;
  clustermeshConfigDir: string;
  /** Read every remote from this cluster's cache tier (the apiserver's --kvstoremesh) through the etcd client, instead of dialing each remote; clustermeshConfigDir is then unused. */
  clustermeshCache?: boolean;
  stateDir: string;
  /** `<stateDir>/agent.sock` */
  socketPath: string;
  pinDir: string;
  syncTimeoutMs: number;
  fullSyncIntervalMs: number;
  logLevel: LogLevel;
  /** Directory of lxc.bpf.o / overlay.bpf.o; undefined = the datapath's default (bpf/build). */
  objectsDir: string | undefined;
  traceForwards: boolean;
  /** Report forwarded TCP connection openings (SYN without ACK) as events. */
  traceNewConnections: boolean;
  /** Bytes of the cm_events ring buffer; undefined = the datapath's default (4 MiB). */
  eventsRingBytes: number | undefined;
  /** max_entries of the sized maps; a missing key = the object's default. */
  mapSizes: MapSizes;
  /** Flows kept in memory for GET /v1/flows (the last N). */
  flowBufferSize: number;
  /** host:port of the Prometheus text endpoint (GET /metrics); '' = none. */
  metricsAddress: string;
  redirectPeer: boolean;
  /** TTL of the etcd session the agent's identity references live on. */
  sessionTtlSeconds: number;
  /** How long withdrawals of a remote's state are held back while it resyncs (resync-grace.ts); 0 = never. */
  remoteResyncGraceMs: number;
  /** How long an unreachable remote cluster's service backends stay in use; 0 = until it returns or is removed. */
  serviceCacheTTLMs: number;
  /** A remote whose heartbeat has not changed for longer is reported stale. */
  remoteHeartbeatStaleMs: number;
  /** A policy selector that names no cluster matches the local cluster only (Cilium's policy-default-local-cluster). */
  policyDefaultLocalCluster: boolean;
  /** cgroup v2 directory of this node's pods for socket-level load balancing; undefined = off. */
  socketLBCgroup: string | undefined;
  /** 'tunnel' or 'native' (destinations inside nativeRoutingCIDRs unencapsulated). */
  routingMode: RoutingMode;
  /** The pod ranges the underlay routes; [] in tunnel mode. */
  nativeRoutingCIDRs: string[];
  /** Who writes the tunnel's VXLAN headers: the kernel's device, or the programs (bpf). */
  tunnelEncap: TunnelEncap;
  /** How the tc programs are attached: auto (tcx on Linux 6.6+, else cls_bpf), tcx or cls_bpf. */
  tcAttach: TcAttachPreference;
  /** Kubeconfig of the cluster's Kubernetes API, the local source of every kind but Endpoint; undefined = KUBECONFIG, the in-cluster service account or ~/.kube/config. */
  kubeconfig?: string | undefined;
  /** How long to wait for the Node (its pod CIDR, its InternalIP) when podCIDR or nodeIP comes from it. */
  nodeWaitTimeoutMs: number;
  /** Where the CNI network configuration is written once ready; undefined = nowhere. */
  cniConfDir: string | undefined;
  /** File name of the CNI network configuration in cniConfDir. */
  cniConfName: string;
  /** The plugin's `type`: the executable's name in the runtime's CNI bin directory. */
  cniBinaryName: string;
  /** The agent's own Pod, whose annotation holds its status summary (pod-status.ts); undefined: none. */
  statusPod: { namespace: string; name: string } | undefined;
  /** The read-only API over mutual TLS on the node's address; undefined = off (the unix socket only). */
  remoteApi: RemoteApiConfig | undefined;
}

/** Where and to whom the agent serves its read-only API remotely (api.ts startRemoteApiServer). */
export interface RemoteApiConfig {
  /** Address to listen on; undefined = the node IP. */
  address: string | undefined;
  port: number;
  /** CA that client certificates must chain to (the install's CA). */
  caFile: string;
  /** The server's certificate and key. */
  certFile: string;
  keyFile: string;
  /** Subject CNs admitted (e.g. ['observer']): another certificate of the same CA (an etcd user's) is refused. */
  clients: string[];
}

/** The CN of the client certificate `clustermesh install` issues for observe/ui (Secret clustermesh-observer). */
export const OBSERVER_CLIENT_NAME = 'observer';

/** A config whose nodeIP and podCIDR are known. */
export type ResolvedAgentConfig = AgentConfig & { nodeIP: string; podCIDR: string };

/** The CNI network configuration file the agent writes (Cilium's is 05-cilium.conflist). */
export const DEFAULT_CNI_CONF_NAME = '05-clustermesh.conflist';
/** The plugin executable's name in /opt/cni/bin: what the install copies there and the conflist's `type`. */
export const DEFAULT_CNI_BINARY_NAME = 'clustermesh-cni';

export class AgentConfigError extends Error {
  constructor(
    /** The file (or `flags`), as it appears in the message. */
    readonly source: string,
    /** The setting, e.g. `clusterID` or `etcd.caFile`; null for the whole file. */
    readonly setting: string | null,
    readonly detail: string,
  ) {
    super(`agent config ${source}: ${setting ? `${setting}: ` : ''}${detail}`);
    this.name = 'AgentConfigError';
  }
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const ipv4 = z.string().regex(IPV4, 'must be an IPv4 address');
const ifName = z
  .string()
  .min(1)
  .max(15, 'at most 15 characters (a Linux device name)')
  .regex(/^[A-Za-z0-9_.:-]+$/, 'must be a device name');
const positiveInt = (what: string, min: number, max: number) =>
  z.number({ error: `must be a number (${what})` }).int('must be an integer').min(min, `must be ${min}..${max}`).max(max, `must be ${min}..${max}`);

/** The maps whose size the config sets (mapSizes key -> max_entries). */
export const MAP_SIZE_KEYS = ['ipcache', 'endpoints', 'services', 'backends', 'conntrack'] as const;
export type MapSizes = Partial<Record<(typeof MAP_SIZE_KEYS)[number], number>>;
const MAP_SIZE_MIN = 16;
const MAP_SIZE_MAX = 1 << 24;
const mapSizesSchema = z.strictObject(
  Object.fromEntries(MAP_SIZE_KEYS.map((k) => [k, positiveInt('max entries', MAP_SIZE_MIN, MAP_SIZE_MAX).optional()])) as Record<(typeof MAP_SIZE_KEYS)[number], z.ZodOptional<ReturnType<typeof positiveInt>>>,
  { error: `must be a mapping of ${MAP_SIZE_KEYS.join(', ')} to max entries` },
);

const cidrV4 = z.string().refine((s) => {
  const [addr, len, ...rest] = s.split('/');
  if (rest.length || addr === undefined || len === undefined || !IPV4.test(addr) || !/^\d{1,2}$/.test(len) || Number(len) > 32) return false;
  return true;
}, 'must be an IPv4 prefix a.b.c.d/len');

const etcdSchema = z.strictObject({
  endpoints: z
    .array(z.string().regex(/^https:\/\/[^/\s]+\/?$/, 'must be https://host:port (mutual TLS is required)'))
    .min(1, 'at least one endpoint is required'),
  caFile: z.string().min(1),
  certFile: z.string().min(1),
  keyFile: z.string().min(1),
  serverName: z.string().min(1).optional(),
  timeoutMs: z.number().int().positive().optional(),
});

const fileSchema = z.strictObject({
  clusterName: z.string().superRefine((name, ctx) => {
    const problem = validateClusterName(name);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
  clusterID: z.number({ error: 'must be a number' }).int('must be an integer'),
  maxConnectedClusters: z.union([z.literal(255), z.literal(511)], { error: 'must be 255 or 511' }).default(255),
  nodeName: z
    .string()
    .max(63, 'at most 63 characters')
    .regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'lowercase alphanumerics, "-" and ".", starting and ending alphanumeric'),
  nodeIP: ipv4.optional(),
  underlayDevice: ifName.optional(),
  podCIDR: cidrV4.optional(),
  tunnelPort: positiveInt('UDP port', 1, 65535).default(8472),
  vxlanDevice: ifName.default('cm_vxlan'),
  etcd: etcdSchema,
  clustermeshConfigDir: z.string().min(1),
  clustermeshCache: z.boolean({ error: 'must be true or false' }).default(false),
  stateDir: z.string().min(1),
  pinDir: z.string().min(1).optional(),
  syncTimeoutSeconds: z.number().positive('must be greater than 0').default(30),
  fullSyncIntervalSeconds: z.number().positive('must be greater than 0').default(30),
  logLevel: z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` }).default('info'),
  objectsDir: z.string().min(1).optional(),
  traceForwards: z.boolean().default(false),
  traceNewConnections: z.boolean({ error: 'must be true or false' }).default(true),
  flowBufferSize: positiveInt('flows kept', 1, 1_000_000).default(4096),
  eventsRingBytes: positiveInt('bytes', 4096, 1 << 30)
    .refine((n) => (n & (n - 1)) === 0, 'must be a power of two (e.g. 4194304 for 4 MiB)')
    .optional(),
  mapSizes: mapSizesSchema.default({}),
  metricsAddress: z
    .string()
    .refine((v) => v === '' || /^[^\s:]+:\d{1,5}$/.test(v) && Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, "must be host:port (e.g. 127.0.0.1:9962 or the node IP and a port), or '' for no metrics endpoint")
    .default('127.0.0.1:9962'),
  redirectPeer: z.boolean().default(true),
  sessionTtlSeconds: positiveInt('seconds', 5, 3600).default(15),
  remoteResyncGraceSeconds: z.number().min(0, 'must be 0 or more').max(600, 'at most 600').default(3),
  serviceCacheTTLSeconds: z.number().min(0, 'must be 0 (keep until the cluster returns) or more').max(86400 * 30, 'at most 2592000 (30 days)').default(0),
  remoteHeartbeatStaleSeconds: z.number().min(1, 'must be at least 1').max(86400, 'at most 86400 (a day)').default(180),
  policyDefaultLocalCluster: z.boolean({ error: 'must be true or false' }).default(true),
  socketLBCgroup: z.string().min(1).refine((p) => p.startsWith('/') && !p.split('/').includes('..'), 'must be an absolute path to a cgroup v2 directory, without ".."').optional(),
  routingMode: z.enum(ROUTING_MODES as [RoutingMode, ...RoutingMode[]], { error: `must be ${ROUTING_MODES.join(' or ')}` }).default('tunnel'),
  nativeRoutingCIDRs: z.array(cidrV4).max(NATIVE_CIDRS_MAX, `at most ${NATIVE_CIDRS_MAX} prefixes`).optional(),
  tunnelEncap: z.enum(TUNNEL_ENCAPS as [TunnelEncap, ...TunnelEncap[]], { error: `must be ${TUNNEL_ENCAPS.join(' or ')}` }).default(DEFAULT_TUNNEL_ENCAP),
  tcAttach: z.enum(['auto', 'tcx', 'cls_bpf'], { error: 'must be auto, tcx or cls_bpf' }).default('auto'),
  kubeconfig: z.string({ error: 'must be the path of a kubeconfig file' }).min(1, 'must be the path of a kubeconfig file').optional(),
  nodeWaitTimeoutSeconds: z.number({ error: 'must be a number (seconds)' }).positive('must be greater than 0').max(86400, 'at most 86400 (a day)').default(300),
  cniConfDir: z.string().min(1).optional(),
  cniConfName: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*\.(conflist|conf)$/, 'must be a file name ending in .conflist (e.g. 05-clustermesh.conflist)')
    .default(DEFAULT_CNI_CONF_NAME),
  cniBinaryName: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'must be the file name of an executable in the CNI bin directory (no "/")')
    .default(DEFAULT_CNI_BINARY_NAME),
  statusPod: z
    .string()
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?\/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be <namespace>/<pod name> (e.g. from the downward API: $(POD_NAMESPACE)/$(POD_NAME))')
    .optional(),
  remoteApi: z
    .strictObject({
      address: ipv4.optional(),
      port: positiveInt('TCP port', 1, 65535),
      caFile: z.string().min(1),
      certFile: z.string().min(1),
      keyFile: z.string().min(1),
      clients: z.array(z.string().min(1), { error: 'must be a list of certificate common names' }).min(1, 'at least one client name').default([OBSERVER_CLIENT_NAME]),
    })
    .optional(),
});

export type AgentConfigInput = z.input<typeof fileSchema>;

/** Command-line overrides (commander's camel-cased values; strings from the command line). */
export interface AgentFlagOverrides {
  clusterName?: string;
  clusterId?: string | number;
  maxConnectedClusters?: string | number;
  nodeName?: string;
  nodeIp?: string;
  underlayDevice?: string;
  podCidr?: string;
  tunnelPort?: string | number;
  vxlanDevice?: string;
  clustermeshConfigDir?: string;
  stateDir?: string;
  pinDir?: string;
  syncTimeoutSeconds?: string | number;
  fullSyncIntervalSeconds?: string | number;
  logLevel?: string;
  statusPod?: string;
}

/** flag name → config key, and whether the value is numeric. */
const FLAG_KEYS: Record<keyof AgentFlagOverrides, { key: keyof AgentConfigInput; numeric: boolean }> = {
  clusterName: { key: 'clusterName', numeric: false },
  clusterId: { key: 'clusterID', numeric: true },
  maxConnectedClusters: { key: 'maxConnectedClusters', numeric: true },
  nodeName: { key: 'nodeName', numeric: false },
  nodeIp: { key: 'nodeIP', numeric: false },
  underlayDevice: { key: 'underlayDevice', numeric: false },
  podCidr: { key: 'podCIDR', numeric: false },
  tunnelPort: { key: 'tunnelPort', numeric: true },
  vxlanDevice: { key: 'vxlanDevice', numeric: false },
  clustermeshConfigDir: { key: 'clustermeshConfigDir', numeric: false },
  stateDir: { key: 'stateDir', numeric: false },
  pinDir: { key: 'pinDir', numeric: false },
  syncTimeoutSeconds: { key: 'syncTimeoutSeconds', numeric: true },
  fullSyncIntervalSeconds: { key: 'fullSyncIntervalSeconds', numeric: true },
  logLevel: { key: 'logLevel', numeric: false },
  statusPod: { key: 'statusPod', numeric: false },
};

/** Merges flags over a parsed document (flags win); numeric flags are converted. */
export function applyFlagOverrides(doc: Record<string, unknown>, flags: AgentFlagOverrides): Record<string, unknown> {
  const out = { ...doc };
  for (const [flag, raw] of Object.entries(flags) as [keyof AgentFlagOverrides, unknown][]) {
    const spec = FLAG_KEYS[flag];
    if (!spec || raw === undefined) continue;
    if (spec.numeric && typeof raw === 'string') out[spec.key] = /^\s*-?\d+(\.\d+)?\s*$/.test(raw) ? Number(raw) : raw;
    else out[spec.key] = raw;
  }
  return out;
}

/**
 * Checks a parsed document (plus flags) and compiles it. `source` names it in
 * errors; relative paths resolve against `baseDir`. Throws AgentConfigError.
 */
export function compileAgentConfig(doc: unknown, opts: { source: string; baseDir: string; file?: string; flags?: AgentFlagOverrides }): AgentConfig {
  if (doc === null || doc === undefined) doc = {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new AgentConfigError(opts.source, null, 'must be a YAML mapping of settings');
  const merged = applyFlagOverrides(doc as Record<string, unknown>, opts.flags ?? {});
  const r = fileSchema.safeParse(merged);
  if (!r.success) {
    const i = r.error.issues[0]!;
    if (i.code === 'unrecognized_keys') {
      const base = formatPath(i.path);
      throw new AgentConfigError(opts.source, i.keys.map((k) => (base ? `${base}.${k}` : k)).join(', '), 'unknown setting');
    }
    const missing = i.code === 'invalid_type' && getPath(merged, i.path) === undefined;
    throw new AgentConfigError(opts.source, formatPath(i.path) || null, missing ? 'is required' : i.message);
  }
  const c = r.data;
  const fail = (setting: string, detail: string): never => {
    throw new AgentConfigError(opts.source, setting, detail);
  };
  if (c.clusterID < 1 || c.clusterID > c.maxConnectedClusters) fail('clusterID', `must be 1..${c.maxConnectedClusters}`);
  if (c.nodeIP !== undefined && c.underlayDevice !== undefined) fail('underlayDevice', 'give either nodeIP or underlayDevice, not both');
  if (c.vxlanDevice === c.underlayDevice) fail('vxlanDevice', 'must differ from underlayDevice');
  const nativeCidrs = c.nativeRoutingCIDRs ?? [];
  if (c.routingMode === 'tunnel' && nativeCidrs.length) fail('nativeRoutingCIDRs', 'only applies to routingMode native (routingMode is tunnel)');
  if (c.routingMode === 'native') {
    if (!nativeCidrs.length) fail('nativeRoutingCIDRs', 'is required with routingMode native: the pod address ranges the underlay routes to their nodes');
    for (const p of nativeCidrs) {
      const [a, l] = p.split('/') as [string, string];
      if (Number(l) === 0) fail('nativeRoutingCIDRs', `${p}: a /0 would route every address natively`);
      if (maskedAddr(a, Number(l)) !== a) fail('nativeRoutingCIDRs', `${p}: host bits are set; did you mean ${maskedAddr(a, Number(l))}/${l}?`);
    }
  }
  if (c.podCIDR !== undefined) checkPodCIDR(opts.source, c.podCIDR, 'podCIDR', c.routingMode, nativeCidrs);

  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(opts.baseDir, p));
  const stateDir = abs(c.stateDir);
  const socketPath = join(stateDir, AGENT_SOCKET_NAME);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) fail('stateDir', `${socketPath} is longer than a unix socket path may be (${MAX_SOCKET_PATH} bytes); use a shorter stateDir`);
  // bpffs refuses names with a '.'
  const pinDir = c.pinDir !== undefined ? abs(c.pinDir) : join(DEFAULT_BPFFS_ROOT, `${c.clusterName}-${c.nodeName.replace(/\./g, '-')}`);
  if (basename(pinDir).includes('.')) fail('pinDir', `${pinDir}: a bpffs does not allow "." in names`);
  const kubeconfig = c.kubeconfig !== undefined ? abs(c.kubeconfig) : undefined;
  if (kubeconfig !== undefined && !existsSync(kubeconfig)) fail('kubeconfig', `${kubeconfig}: no such file`);
  return {
    file: opts.file,
    clusterName: c.clusterName,
    clusterID: c.clusterID,
    maxConnectedClusters: c.maxConnectedClusters,
    nodeName: c.nodeName,
    nodeIP: c.nodeIP,
    underlayDevice: c.underlayDevice,
    podCIDR: c.podCIDR,
    tunnelPort: c.tunnelPort,
    vxlanDevice: c.vxlanDevice,
    etcd: {
      endpoints: c.etcd.endpoints.map((e) => e.replace(/\/$/, '')),
      caFile: abs(c.etcd.caFile),
      certFile: abs(c.etcd.certFile),
      keyFile: abs(c.etcd.keyFile),
      ...(c.etcd.serverName !== undefined ? { serverName: c.etcd.serverName } : {}),
      ...(c.etcd.timeoutMs !== undefined ? { timeoutMs: c.etcd.timeoutMs } : {}),
    },
    clustermeshConfigDir: abs(c.clustermeshConfigDir),
    clustermeshCache: c.clustermeshCache,
    stateDir,
    socketPath,
    pinDir,
    syncTimeoutMs: Math.round(c.syncTimeoutSeconds * 1000),
    fullSyncIntervalMs: Math.round(c.fullSyncIntervalSeconds * 1000),
    logLevel: c.logLevel,
    objectsDir: c.objectsDir !== undefined ? abs(c.objectsDir) : undefined,
    traceForwards: c.traceForwards,
    traceNewConnections: c.traceNewConnections,
    flowBufferSize: c.flowBufferSize,
    eventsRingBytes: c.eventsRingBytes,
    mapSizes: Object.fromEntries(Object.entries(c.mapSizes).filter(([, v]) => v !== undefined)),
    metricsAddress: c.metricsAddress,
    redirectPeer: c.redirectPeer,
    sessionTtlSeconds: c.sessionTtlSeconds,
    remoteResyncGraceMs: Math.round(c.remoteResyncGraceSeconds * 1000),
    serviceCacheTTLMs: Math.round(c.serviceCacheTTLSeconds * 1000),
    remoteHeartbeatStaleMs: Math.round(c.remoteHeartbeatStaleSeconds * 1000),
    policyDefaultLocalCluster: c.policyDefaultLocalCluster,
    socketLBCgroup: c.socketLBCgroup,
    routingMode: c.routingMode,
    nativeRoutingCIDRs: nativeCidrs,
    tunnelEncap: c.tunnelEncap,
    tcAttach: c.tcAttach,
    ...(kubeconfig !== undefined ? { kubeconfig } : {}),
    nodeWaitTimeoutMs: Math.round(c.nodeWaitTimeoutSeconds * 1000),
    cniConfDir: c.cniConfDir !== undefined ? abs(c.cniConfDir) : undefined,
    cniConfName: c.cniConfName,
    cniBinaryName: c.cniBinaryName,
    statusPod: c.statusPod !== undefined ? { namespace: c.statusPod.split('/')[0]!, name: c.statusPod.split('/')[1]! } : undefined,
    remoteApi:
      c.remoteApi === undefined
        ? undefined
        : { address: c.remoteApi.address, port: c.remoteApi.port, caFile: abs(c.remoteApi.caFile), certFile: abs(c.remoteApi.certFile), keyFile: abs(c.remoteApi.keyFile), clients: c.remoteApi.clients },
  };
}

/**
 * The checks of a pod CIDR, wherever it came from (`setting` names the origin
 * in errors: the config's podCIDR, or the Node's spec.podCIDRs): no host bits,
 * and in native routing covered by a nativeRoutingCIDRs prefix.
 */
function checkPodCIDR(source: string, podCIDR: string, setting: string, routingMode: RoutingMode, nativeCidrs: readonly string[]): void {
  const fail = (s: string, detail: string): never => {
    throw new AgentConfigError(source, s, detail);
  };
  const [cidrAddr, cidrLen] = podCIDR.split('/') as [string, string];
  if (maskedAddr(cidrAddr, Number(cidrLen)) !== cidrAddr) fail(setting, `${setting === 'podCIDR' ? '' : `${podCIDR}: `}host bits are set; did you mean ${maskedAddr(cidrAddr, Number(cidrLen))}/${cidrLen}?`);
  if (routingMode !== 'native') return;
  const covers = (p: string): boolean => {
    const [a, l] = p.split('/') as [string, string];
    return Number(cidrLen) >= Number(l) && maskedAddr(cidrAddr, Number(l)) === a;
  };
  if (!nativeCidrs.some(covers)) fail('nativeRoutingCIDRs', `none covers this node's podCIDR ${podCIDR}${setting === 'podCIDR' ? '' : ` (from ${setting})`}: the other native nodes would tunnel to it while this one routes natively`);
}

/** Reads, parses and compiles the config file (flags win). Throws AgentConfigError. */
export async function loadAgentConfig(file: string, flags: AgentFlagOverrides = {}): Promise<AgentConfig> {
  const path = resolve(file);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new AgentConfigError(path, null, `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new AgentConfigError(path, null, `not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  return compileAgentConfig(doc, { source: path, baseDir: dirname(path), file: path, flags });
}

const execFileP = promisify(execFile);

/** The first IPv4 address of a device in the caller's network namespace, or undefined. */
export async function deviceIPv4(device: string): Promise<string | undefined> {
  let stdout: string;
  try {
    ({ stdout } = await execFileP('ip', ['-j', '-4', 'addr', 'show', 'dev', device], { encoding: 'utf8', timeout: 10_000 }));
  } catch {
    return undefined;
  }
  const links = JSON.parse(stdout || '[]') as Array<{ addr_info?: Array<{ family?: string; local?: string; scope?: string }> }>;
  for (const l of links) for (const a of l.addr_info ?? []) if (a.family === 'inet' && a.local && a.scope !== 'host') return a.local;
  return undefined;
}

/** What the Kubernetes Node says about this node (node-from-api.ts). */
export interface NodeAddressing {
  podCIDR: string | undefined;
  internalIP: string | undefined;
}

/** What resolveNodeConfig looks up; each is asked only when the config needs it. */
export interface NodeConfigLookups {
  /** The first IPv4 address of a device (default deviceIPv4). */
  device?: (dev: string) => Promise<string | undefined>;
  /**
   * This node's Node from the Kubernetes API, waited for until it has what is
   * asked (a pod CIDR, an InternalIP); throws naming the node after the timeout.
   * Undefined: no Kubernetes API to read.
   */
  node?: (need: { podCIDR: boolean; internalIP: boolean }) => Promise<NodeAddressing>;
}

/**
 * Fills nodeIP (from underlayDevice, else the Node's InternalIP) and podCIDR
 * (from the Node's spec.podCIDRs) when the config does not set them, then
 * checks the pod CIDR as a configured one is checked. Throws AgentConfigError.
 */
export async function resolveNodeConfig(cfg: AgentConfig, lookups: NodeConfigLookups = {}): Promise<ResolvedAgentConfig> {
  const source = cfg.file ?? 'flags';
  let nodeIP = cfg.nodeIP;
  if (nodeIP === undefined && cfg.underlayDevice !== undefined) {
    const dev = cfg.underlayDevice;
    nodeIP = await (lookups.device ?? deviceIPv4)(dev);
    if (!nodeIP) throw new AgentConfigError(source, 'underlayDevice', `device ${dev} has no IPv4 address in this network namespace`);
  }
  let podCIDR = cfg.podCIDR;
  if (nodeIP === undefined || podCIDR === undefined) {
    if (!lookups.node) {
      const missing = [podCIDR === undefined ? 'podCIDR' : undefined, nodeIP === undefined ? 'nodeIP' : undefined].filter((m): m is string => m !== undefined);
      throw new AgentConfigError(source, missing[0]!, `is required (${missing.join(' and ')} come${missing.length > 1 ? '' : 's'} from Node ${cfg.nodeName} only when the agent reads a Kubernetes API${nodeIP === undefined ? '; or set underlayDevice, to take its address' : ''})`);
    }
    const node = await lookups.node({ podCIDR: podCIDR === undefined, internalIP: nodeIP === undefined });
    if (podCIDR === undefined) {
      podCIDR = node.podCIDR!;
      checkPodCIDR(source, podCIDR, `podCIDR (Node ${cfg.nodeName} spec.podCIDRs)`, cfg.routingMode, cfg.nativeRoutingCIDRs);
    }
    nodeIP ??= node.internalIP!;
  }
  return { ...cfg, nodeIP, podCIDR };
}

/** resolveNodeConfig for a config that needs no Kubernetes API (nodeIP or underlayDevice, and podCIDR, set). */
export async function resolveNodeIP(cfg: AgentConfig, lookup: (dev: string) => Promise<string | undefined> = deviceIPv4): Promise<ResolvedAgentConfig> {
  return await resolveNodeConfig(cfg, { device: lookup });
}

function maskedAddr(addr: string, len: number): string {
  const n = addr.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const mask = len === 0 ? 0 : (~0 << (32 - len)) >>> 0;
  const m = (n & mask) >>> 0;
  return [24, 16, 8, 0].map((s) => (m >>> s) & 255).join('.');
}

function getPath(obj: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = obj;
  for (const seg of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[seg];
  }
  return cur;
}
