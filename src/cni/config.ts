// The plugin's inputs: the CNI_* environment and the network configuration on
// stdin, validated with zod; every failure is a CniError naming the variable or
// the field (code 4 for the environment, 7 for the config, 1 for the version).
//
// Network configuration (CNI 1.0.0 plus our fields):
//   { "cniVersion": "1.0.0", "name": "clustermesh", "type": "clustermesh",
//     "agentSocket": "/var/run/clustermesh/node1/agent.sock",
//     "mtu": 1450,                      // or "underlayMtu": 1500 (pod MTU = underlay − 50)
//     "ipam": { "podCIDR": "10.101.1.0/24", "gateway": "10.101.1.1",
//               "rangeStart": "10.101.1.100", "rangeEnd": "10.101.1.200", "dataDir": "/var/lib/..." },
//     "dns": { "nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"] },
//     "labels": { "team": "x" },        // default labels of every pod
//     "runtimeConfig": { "labels": {...}, "ips": ["10.101.1.42/32"], "serviceAccount": "sa" } }
// CNI_ARGS: K8S_POD_NAMESPACE, K8S_POD_NAME (required by ADD), optional
// K8S_POD_SERVICE_ACCOUNT and IP (a fixed address), IgnoreUnknown.
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { CONTAINER_ID_RE } from '../agent/types.ts';
import { dns1123Label, dns1123Subdomain, labelsSchema } from '../model/index.ts';
import { CniCode, CniError } from './errors.ts';

export const CNI_VERSION = '1.0.0';
/** Only 1.0.0: the result format of 0.4.0 (ips[].version) is not produced. */
export const SUPPORTED_VERSIONS: readonly string[] = ['1.0.0'];
export const VXLAN_OVERHEAD = 50;
export const PLUGIN_TYPE = 'clustermesh';

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const ipv4 = z.string().regex(IPV4_RE, 'must be an IPv4 address');
const cidr4 = z.string().refine((s) => {
  const [ip, len, more] = s.split('/');
  return more === undefined && ip !== undefined && IPV4_RE.test(ip) && len !== undefined && /^\d{1,2}$/.test(len) && Number(len) <= 32;
}, 'must be an IPv4 CIDR a.b.c.d/n');
const absPath = z.string().startsWith('/', 'must be an absolute path');

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}
export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}
/** [network, broadcast] of a CIDR as integers. */
export function cidrRange(cidr: string): [number, number] {
  const [ip = '', len = '32'] = cidr.split('/');
  const size = 2 ** (32 - Number(len));
  const net = Math.floor(ipToInt(ip) / size) * size;
  return [net, net + size - 1];
}
export const inCidr = (ip: string, cidr: string): boolean => {
  const [a, b] = cidrRange(cidr);
  const n = ipToInt(ip);
  return n >= a && n <= b;
};

const ipamSchema = z
  .object({
    type: z.literal('host-local').optional(),
    podCIDR: cidr4.refine((c) => Number(c.split('/')[1]) <= 30, 'must be /30 or larger to hold pods'),
    gateway: ipv4.optional(),
    rangeStart: ipv4.optional(),
    rangeEnd: ipv4.optional(),
    /** Where the allocation state lives (default: `cni-ipam/` beside the agent socket, i.e. per node). */
    dataDir: absPath.optional(),
  })
  .superRefine((v, ctx) => {
    for (const f of ['gateway', 'rangeStart', 'rangeEnd'] as const) {
      const ip = v[f];
      if (ip !== undefined && !inCidr(ip, v.podCIDR)) ctx.addIssue({ code: 'custom', path: [f], message: `must lie in podCIDR ${v.podCIDR}` });
    }
  });

const runtimeConfigSchema = z
  .object({
    labels: labelsSchema.optional(),
    ips: z.array(z.string().refine((s) => IPV4_RE.test(s.replace(/\/32$/, '')), 'must be an IPv4 address (optionally /32)')).max(1, 'at most one address').optional(),
    serviceAccount: dns1123Subdomain.optional(),
  })
  .default({});

export const netConfSchema = z.object({
  cniVersion: z.string(),
  name: z
    .string()
    .min(1, 'must not be empty')
    .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'letters, digits, "_", "." and "-", starting with a letter or digit'),
  type: z.literal(PLUGIN_TYPE, { message: `must be "${PLUGIN_TYPE}"` }),
  agentSocket: absPath,
  /** Seconds each agent call may take (an add waits for the identity and the datapath). */
  agentTimeoutSeconds: z.number().int().min(1).max(300).default(30),
  mtu: z.number().int().min(576).max(9000).optional(),
  underlayMtu: z.number().int().min(1280).max(9000).default(1500),
  ipam: ipamSchema,
  dns: z
    .object({
      nameservers: z.array(ipv4).default([]),
      domain: z.string().optional(),
      search: z.array(z.string()).default([]),
      options: z.array(z.string()).default([]),
    })
    .optional(),
  labels: labelsSchema.default({}),
  runtimeConfig: runtimeConfigSchema,
  prevResult: z.unknown().optional(),
});
export type NetConfInput = z.input<typeof netConfSchema>;

export interface NetConf {
  cniVersion: string;
  name: string;
  agentSocket: string;
  agentTimeoutMs: number;
  mtu: number;
  podCIDR: string;
  gateway: string;
  rangeStart: string;
  rangeEnd: string;
  dataDir: string;
  dns: { nameservers: string[]; domain?: string; search: string[]; options: string[] } | undefined;
  labels: Record<string, string>;
  runtimeIP: string | undefined;
  serviceAccount: string | undefined;
  prevResult: unknown;
}

/** "ipam.podCIDR: must be ..." for each issue. */
export function describeIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((i) => `${i.path.length ? i.path.map(String).join('.') : '(root)'}: ${i.message}`);
}

/** Parses stdin's JSON far enough to know the version (code 6 when not JSON, 1 when unsupported). */
export function parseVersion(stdin: string, opts: { requireSupported?: boolean } = {}): { raw: unknown; cniVersion: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (err) {
    throw new CniError(CniCode.DecodeFailure, `network config on stdin is not JSON: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new CniError(CniCode.InvalidConfig, 'invalid network config: (root): must be a JSON object');
  const v = (raw as { cniVersion?: unknown }).cniVersion;
  if (typeof v !== 'string' || !v) throw new CniError(CniCode.InvalidConfig, 'invalid network config: cniVersion: must be a version string such as "1.0.0"');
  if ((opts.requireSupported ?? true) && !SUPPORTED_VERSIONS.includes(v))
    throw new CniError(CniCode.IncompatibleVersion, `incompatible CNI version ${v}: this plugin supports ${SUPPORTED_VERSIONS.join(', ')}`, `cniVersion: ${v}`);
  return { raw, cniVersion: v };
}

/** Validates the network config; throws CniError code 7 naming every bad field. */
export function parseNetConf(stdin: string): NetConf {
  const { raw } = parseVersion(stdin);
  const r = netConfSchema.safeParse(raw);
  if (!r.success) {
    const lines = describeIssues(r.error.issues);
    throw new CniError(CniCode.InvalidConfig, `invalid network config: ${lines[0]}`, lines.join('\n'));
  }
  const c = r.data;
  const [net, bcast] = cidrRange(c.ipam.podCIDR);
  const gateway = c.ipam.gateway ?? intToIp(net + 1);
  const mtu = c.mtu ?? c.underlayMtu - VXLAN_OVERHEAD;
  const runtimeIP = c.runtimeConfig.ips?.[0]?.replace(/\/32$/, '');
  if (runtimeIP !== undefined) checkPodIP(runtimeIP, c.ipam.podCIDR, gateway, 'runtimeConfig.ips', CniCode.InvalidConfig);
  return {
    cniVersion: c.cniVersion,
    name: c.name,
    agentSocket: c.agentSocket,
    agentTimeoutMs: c.agentTimeoutSeconds * 1000,
    mtu,
    podCIDR: `${intToIp(net)}/${c.ipam.podCIDR.split('/')[1]}`,
    gateway,
    rangeStart: c.ipam.rangeStart ?? intToIp(net + 2),
    rangeEnd: c.ipam.rangeEnd ?? intToIp(bcast - 1),
    dataDir: c.ipam.dataDir ?? join(dirname(c.agentSocket), 'cni-ipam', c.name),
    dns: c.dns,
    labels: { ...c.labels, ...(c.runtimeConfig.labels ?? {}) },
    runtimeIP,
    serviceAccount: c.runtimeConfig.serviceAccount,
    prevResult: c.prevResult,
  };
}

/** A pod address must be a host of the pod CIDR and not the gateway. */
export function checkPodIP(ip: string, podCIDR: string, gateway: string, field: string, code: number): void {
  const [net, bcast] = cidrRange(podCIDR);
  const n = ipToInt(ip);
  if (n <= net || n >= bcast) throw new CniError(code, `${field}: ${ip} is not a host address of ${podCIDR}`);
  if (ip === gateway) throw new CniError(code, `${field}: ${ip} is the gateway`);
}

export type CniCommandName = 'ADD' | 'DEL' | 'CHECK' | 'VERSION';

export interface CniEnv {
  command: CniCommandName;
  containerID: string;
  /** Path of the pod's network namespace (absent on DEL when the runtime no longer has it). */
  netns: string | undefined;
  ifName: string;
  args: Record<string, string>;
  path: string[];
  podNamespace: string | undefined;
  podName: string | undefined;
  serviceAccount: string | undefined;
  /** A fixed address from CNI_ARGS IP=. */
  argIP: string | undefined;
}

/** `K=V;K=V` → record; code 4 on a malformed pair. */
export function parseCniArgs(s: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!s) return out;
  for (const pair of s.split(';')) {
    if (!pair) continue;
    const i = pair.indexOf('=');
    if (i <= 0) throw new CniError(CniCode.InvalidEnv, `CNI_ARGS: '${pair}' is not KEY=VALUE`);
    out[pair.slice(0, i)] = pair.slice(i + 1);
  }
  return out;
}

const IFNAME_RE = /^[A-Za-z0-9_.:-]{1,15}$/;

/** Validates the CNI_* variables the command needs; throws CniError code 4 naming the variable. */
export function parseEnv(env: NodeJS.ProcessEnv): CniEnv {
  const bad = (v: string, why: string): never => {
    throw new CniError(CniCode.InvalidEnv, `${v}: ${why}`);
  };
  const cmd = env.CNI_COMMAND;
  if (!cmd) bad('CNI_COMMAND', 'not set (one of ADD, DEL, CHECK, VERSION)');
  if (cmd !== 'ADD' && cmd !== 'DEL' && cmd !== 'CHECK' && cmd !== 'VERSION') return bad('CNI_COMMAND', `'${cmd}' is not one of ADD, DEL, CHECK, VERSION`);
  const path = (env.CNI_PATH ?? '').split(':').filter(Boolean);
  if (cmd === 'VERSION') return { command: cmd, containerID: '', netns: undefined, ifName: '', args: {}, path, podNamespace: undefined, podName: undefined, serviceAccount: undefined, argIP: undefined };

  const containerID = env.CNI_CONTAINERID ?? '';
  if (!containerID) bad('CNI_CONTAINERID', 'not set');
  if (!CONTAINER_ID_RE.test(containerID)) bad('CNI_CONTAINERID', `'${containerID.slice(0, 40)}' must be 1-128 letters, digits, '_', '.' or '-'`);
  const ifName = env.CNI_IFNAME ?? '';
  if (!ifName) bad('CNI_IFNAME', 'not set');
  if (!IFNAME_RE.test(ifName) || ifName === '.' || ifName === '..') bad('CNI_IFNAME', `'${ifName}' is not a valid interface name (at most 15 characters, no '/' or spaces)`);
  const netns = env.CNI_NETNS || undefined;
  if (cmd !== 'DEL' && !netns) bad('CNI_NETNS', 'not set');
  if (netns !== undefined && !netns.startsWith('/')) bad('CNI_NETNS', `'${netns}' must be an absolute path (/var/run/netns/NAME or /proc/PID/ns/net)`);

  const args = parseCniArgs(env.CNI_ARGS);
  const podNamespace = args.K8S_POD_NAMESPACE;
  const podName = args.K8S_POD_NAME;
  const serviceAccount = args.K8S_POD_SERVICE_ACCOUNT || undefined;
  const argIP = args.IP?.replace(/\/32$/, '') || undefined;
  if (cmd === 'ADD') {
    if (!podNamespace) bad('CNI_ARGS', 'K8S_POD_NAMESPACE is required');
    if (!podName) bad('CNI_ARGS', 'K8S_POD_NAME is required');
  }
  const check = (schema: z.ZodType, v: string | undefined, what: string) => {
    if (v === undefined) return;
    const r = schema.safeParse(v);
    if (!r.success) bad('CNI_ARGS', `${what} '${v}': ${r.error.issues[0]?.message ?? 'invalid'}`);
  };
  check(dns1123Label, podNamespace, 'K8S_POD_NAMESPACE');
  check(dns1123Subdomain, podName, 'K8S_POD_NAME');
  check(dns1123Subdomain, serviceAccount, 'K8S_POD_SERVICE_ACCOUNT');
  if (argIP !== undefined && !IPV4_RE.test(argIP)) bad('CNI_ARGS', `IP '${argIP}' must be an IPv4 address`);
  return { command: cmd, containerID, netns, ifName, args, path, podNamespace, podName, serviceAccount, argIP };
}
