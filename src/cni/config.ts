// The plugin's inputs: the CNI_* environment and the network configuration on
// stdin, validated by hand (no zod: the plugin starts on every pod's creation
// path, and building zod schemas was most of its start); every failure is a
// CniError naming the variable or the field (code 4 for the environment, 7 for
// the config, 1 for the version).
//
// Network configuration (CNI 1.0.0 plus our fields; from a conflist, the
// runtime passes one plugin entry with the list's cniVersion and name added):
//   { "cniVersion": "1.0.0", "name": "clustermesh", "type": "clustermesh-cni",
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
import { CONTAINER_ID_RE } from '../agent/types.ts';
import { dns1123LabelProblem, dns1123SubdomainProblem, IPV4_RE, jsonKind, labelsProblems } from '../model/names.ts';
import { CniCode, CniError } from './errors.ts';

export const CNI_VERSION = '1.0.0';
/** Only 1.0.0: the result format of 0.4.0 (ips[].version) is not produced. */
export const SUPPORTED_VERSIONS: readonly string[] = ['1.0.0'];
export const VXLAN_OVERHEAD = 50;
/** The lab's name of the plugin executable in its CNI bin directory; the install's is clustermesh-cni (DEFAULT_CNI_BINARY_NAME). */
export const PLUGIN_TYPE = 'clustermesh';

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

// ---- checks of single values: why a value is wrong, or undefined --------------

type Check = (s: string) => string | undefined;
const ipv4: Check = (s) => (IPV4_RE.test(s) ? undefined : 'must be an IPv4 address');
const cidr4: Check = (s) => {
  const [ip, len, more] = s.split('/');
  if (more !== undefined || ip === undefined || !IPV4_RE.test(ip) || len === undefined || !/^\d{1,2}$/.test(len) || Number(len) > 32) return 'must be an IPv4 CIDR a.b.c.d/n';
  return Number(len) > 30 ? 'must be /30 or larger to hold pods' : undefined;
};
const absPath: Check = (s) => (s.startsWith('/') ? undefined : 'must be an absolute path');
const netName: Check = (s) =>
  s === '' ? 'must not be empty' : /^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(s) ? undefined : 'letters, digits, "_", "." and "-", starting with a letter or digit';
const ipv4Slash32: Check = (s) => (IPV4_RE.test(s.replace(/\/32$/, '')) ? undefined : 'must be an IPv4 address (optionally /32)');

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Reads the fields of untrusted JSON by hand (the plugin loads no zod: building
 * its schemas was most of a CNI call's start) and collects one
 * `path: what is wrong` line per bad field, so every problem is named at once.
 * Each reader takes the object and the field's dotted path from the root (its
 * last segment is the key in that object) and returns undefined for a field
 * that is absent or wrong.
 */
class FieldReader {
  readonly problems: string[] = [];

  bad(path: string, message: string): undefined {
    this.problems.push(`${path}: ${message}`);
    return undefined;
  }

  object(o: Json, path: string, required: boolean): Json | undefined {
    const v = o[last(path)];
    if (v === undefined) return required ? this.bad(path, 'required (an object)') : undefined;
    return isObject(v) ? v : this.bad(path, `must be an object, got ${jsonKind(v)}`);
  }

  string(o: Json, path: string, opts: { required?: boolean; check?: Check } = {}): string | undefined {
    const v = o[last(path)];
    if (v === undefined) return opts.required ? this.bad(path, 'required (a string)') : undefined;
    if (typeof v !== 'string') return this.bad(path, `must be a string, got ${jsonKind(v)}`);
    const why = opts.check?.(v);
    return why === undefined ? v : this.bad(path, why);
  }

  int(o: Json, path: string, min: number, max: number): number | undefined {
    const v = o[last(path)];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) return this.bad(path, `must be an integer in ${min}..${max}, got ${jsonKind(v)}`);
    return v;
  }

  strings(o: Json, path: string, opts: { check?: Check; max?: number } = {}): string[] | undefined {
    const v = o[last(path)];
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) return this.bad(path, `must be an array of strings, got ${jsonKind(v)}`);
    if (opts.max !== undefined && v.length > opts.max) return this.bad(path, opts.max === 1 ? 'at most one address' : `at most ${opts.max} entries`);
    const before = this.problems.length;
    v.forEach((e: unknown, i) => this.string({ [i]: e }, `${path}.${i}`, { required: true, check: opts.check }));
    return this.problems.length === before ? (v as string[]) : undefined;
  }

  labels(o: Json, path: string): Record<string, string> | undefined {
    const v = o[last(path)];
    if (v === undefined) return undefined;
    const problems = labelsProblems(v);
    for (const [key, message] of problems) this.bad(key === undefined ? path : `${path}.${key}`, message);
    return problems.length ? undefined : (v as Record<string, string>);
  }
}

const last = (path: string): string => path.slice(path.lastIndexOf('.') + 1);

/** The network config's fields after validation, defaults not yet applied. */
interface NetConfFields {
  cniVersion: string;
  name: string;
  agentSocket: string;
  agentTimeoutSeconds: number;
  mtu: number | undefined;
  underlayMtu: number;
  ipam: { podCIDR: string; gateway?: string; rangeStart?: string; rangeEnd?: string; dataDir?: string };
  dns: NetConf['dns'];
  labels: Record<string, string>;
  runtimeConfig: { labels?: Record<string, string>; ips?: string[]; serviceAccount?: string };
  prevResult: unknown;
}

/** Checks every field of the network config (unknown fields are ignored); the problems name each bad one. */
function readNetConf(raw: Json): { conf: NetConfFields; problems: string[] } {
  const r = new FieldReader();
  const cniVersion = r.string(raw, 'cniVersion', { required: true }) ?? '';
  const name = r.string(raw, 'name', { required: true, check: netName }) ?? '';
  // The executable the runtime ran (clustermesh in the lab, clustermesh-cni as installed): any file name.
  r.string(raw, 'type', { required: true, check: (s) => (/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(s) ? undefined : `must be the plugin executable's file name (e.g. "${PLUGIN_TYPE}" or "clustermesh-cni"), without "/"`) });
  const agentSocket = r.string(raw, 'agentSocket', { required: true, check: absPath }) ?? '';
  /** Seconds each agent call may take (an add waits for the identity and the datapath). */
  const agentTimeoutSeconds = r.int(raw, 'agentTimeoutSeconds', 1, 300) ?? 30;
  const mtu = r.int(raw, 'mtu', 576, 9000);
  const underlayMtu = r.int(raw, 'underlayMtu', 1280, 9000) ?? 1500;

  const ipam: NetConfFields['ipam'] = { podCIDR: '' };
  const ri = r.object(raw, 'ipam', true);
  if (ri) {
    r.string(ri, 'ipam.type', { check: (s) => (s === 'host-local' ? undefined : 'must be "host-local" (or absent)') });
    const podCIDR = r.string(ri, 'ipam.podCIDR', { required: true, check: cidr4 });
    const inPodCIDR: Check = (s) => ipv4(s) ?? (podCIDR === undefined || inCidr(s, podCIDR) ? undefined : `must lie in podCIDR ${podCIDR}`);
    ipam.podCIDR = podCIDR ?? '';
    for (const f of ['gateway', 'rangeStart', 'rangeEnd'] as const) {
      const v = r.string(ri, `ipam.${f}`, { check: inPodCIDR });
      if (v !== undefined) ipam[f] = v;
    }
    /** Where the allocation state lives (default: `cni-ipam/` beside the agent socket, i.e. per node). */
    const dataDir = r.string(ri, 'ipam.dataDir', { check: absPath });
    if (dataDir !== undefined) ipam.dataDir = dataDir;
  }

  let dns: NetConfFields['dns'];
  const rd = r.object(raw, 'dns', false);
  if (rd) {
    dns = { nameservers: r.strings(rd, 'dns.nameservers', { check: ipv4 }) ?? [], search: r.strings(rd, 'dns.search') ?? [], options: r.strings(rd, 'dns.options') ?? [] };
    const domain = r.string(rd, 'dns.domain');
    if (domain !== undefined) dns.domain = domain;
  }

  const labels = r.labels(raw, 'labels') ?? {};
  const runtimeConfig: NetConfFields['runtimeConfig'] = {};
  const rc = r.object(raw, 'runtimeConfig', false);
  if (rc) {
    const l = r.labels(rc, 'runtimeConfig.labels');
    if (l) runtimeConfig.labels = l;
    const ips = r.strings(rc, 'runtimeConfig.ips', { check: ipv4Slash32, max: 1 });
    if (ips) runtimeConfig.ips = ips;
    const sa = r.string(rc, 'runtimeConfig.serviceAccount', { check: dns1123SubdomainProblem });
    if (sa !== undefined) runtimeConfig.serviceAccount = sa;
  }
  return {
    conf: { cniVersion, name, agentSocket, agentTimeoutSeconds, mtu, underlayMtu, ipam, dns, labels, runtimeConfig, prevResult: raw.prevResult },
    problems: r.problems,
  };
}

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
  const { conf: c, problems } = readNetConf(raw as Json);
  if (problems.length) throw new CniError(CniCode.InvalidConfig, `invalid network config: ${problems[0]}`, problems.join('\n'));
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
  const check = (problem: Check, v: string | undefined, what: string) => {
    const why = v === undefined ? undefined : problem(v);
    if (why !== undefined) bad('CNI_ARGS', `${what} '${v}': ${why}`);
  };
  check(dns1123LabelProblem, podNamespace, 'K8S_POD_NAMESPACE');
  check(dns1123SubdomainProblem, podName, 'K8S_POD_NAME');
  check(dns1123SubdomainProblem, serviceAccount, 'K8S_POD_SERVICE_ACCOUNT');
  if (argIP !== undefined && !IPV4_RE.test(argIP)) bad('CNI_ARGS', `IP '${argIP}' must be an IPv4 address`);
  return { command: cmd, containerID, netns, ifName, args, path, podNamespace, podName, serviceAccount, argIP };
}
