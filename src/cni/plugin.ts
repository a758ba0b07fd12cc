// The CNI plugin's commands (spec 1.0.0): ADD, DEL, CHECK, VERSION. `runCni`
// takes the environment and stdin and returns what to print and the exit
// status, so it is testable without a process. It runs inside the node's
// agent: the executable a kubelet calls (cni/clustermesh-cni.c) forwards each
// request to the agent's POST /v1/cni, which calls runCni with the agent's
// own handlers as `CniAgent` (no HTTP between the two); without one it talks
// to the agent at the config's agentSocket (unit tests).
//
// ADD  validate → agent healthy? (else 11) → IPAM → veth pair wired → agent
//      endpoint → result. Any failure removes what this call created (the
//      veth, a freshly taken address). A repeated ADD for the same container
//      finds its veth and address in place and returns the same result.
// DEL  agent endpoint deleted, veth removed, address released; missing pieces
//      are success. When the agent is unreachable the veth still goes, the
//      address is kept, and the answer is code 11 so the runtime retries.
// CHECK the address is allocated, both veth ends exist with the address and
//      the default route, and the agent has the endpoint with that address.
import { createHash } from 'node:crypto';
import { statfsSync } from 'node:fs';
import { AgentClient, AgentUnavailableError, ApiError } from '../agent/client.ts';
import type { EndpointInfo, EndpointRequest } from '../agent/types.ts';
import { CNI_VERSION, SUPPORTED_VERSIONS, checkPodIP, parseEnv, parseNetConf, parseVersion, type CniEnv, type NetConf } from './config.ts';
import { CniCode, CniError, toCniError } from './errors.ts';
import { HostLocalIpam } from './ipam.ts';
import { defaultRoute, linkInfo, LinkExistsError, unwirePodVeth, wirePodVeth, WireCommandError } from './wire.ts';

/** What the plugin needs of the node's agent (AgentClient's calls of the same names). */
export interface CniAgent {
  readonly socketPath: string;
  health(): Promise<{ ready: boolean; phase?: string } | undefined>;
  putEndpoint(containerID: string, req: EndpointRequest): Promise<unknown>;
  deleteEndpoint(containerID: string): Promise<unknown>;
  listEndpoints(): Promise<EndpointInfo[]>;
  close(): void;
}

export interface CniOutput {
  stdout: string;
  exitCode: number;
}

export interface CniResult {
  cniVersion: string;
  interfaces: Array<{ name: string; mac: string; sandbox?: string }>;
  ips: Array<{ address: string; gateway: string; interface: number }>;
  routes: Array<{ dst: string; gw: string }>;
  dns: { nameservers?: string[]; domain?: string; search?: string[]; options?: string[] };
}

/** The host-side device of a container: `lxc` + 11 hex digits of its ID's SHA-256 (14 characters). */
export function hostIfNameFor(containerID: string): string {
  return `lxc${createHash('sha256').update(containerID).digest('hex').slice(0, 11)}`;
}

export async function runCni(env: NodeJS.ProcessEnv, stdin: string, agentFor?: (conf: NetConf) => CniAgent): Promise<CniOutput> {
  let cniVersion = CNI_VERSION;
  try {
    const cniEnv = parseEnv(env);
    if (cniEnv.command === 'VERSION') {
      let v = CNI_VERSION;
      try {
        v = parseVersion(stdin, { requireSupported: false }).cniVersion;
      } catch {
        /* VERSION answers whatever stdin holds */
      }
      return { stdout: JSON.stringify({ cniVersion: v, supportedVersions: SUPPORTED_VERSIONS }) + '\n', exitCode: 0 };
    }
    try {
      cniVersion = parseVersion(stdin, { requireSupported: false }).cniVersion;
    } catch {
      /* reported by parseNetConf below */
    }
    const conf = parseNetConf(stdin);
    const client = agentFor ? agentFor(conf) : new AgentClient(conf.agentSocket, { timeoutMs: conf.agentTimeoutMs });
    try {
      // One command per container at a time: an ADD and a DEL (or two ADDs) of the same
      // container interleaved would each undo half of the other's work.
      return await oneAtATime(cniEnv.containerID, async (): Promise<CniOutput> => {
        switch (cniEnv.command) {
          case 'ADD':
            return { stdout: JSON.stringify(await add(cniEnv, conf, client), null, 1) + '\n', exitCode: 0 };
          case 'DEL':
            await del(cniEnv, conf, client);
            return { stdout: '', exitCode: 0 };
          case 'CHECK':
            await check(cniEnv, conf, client);
            return { stdout: '', exitCode: 0 };
          default:
            throw new CniError(CniCode.InvalidEnv, `CNI_COMMAND: '${cniEnv.command}' is not one of ADD, DEL, CHECK`);
        }
      });
    } finally {
      client.close();
    }
  } catch (err) {
    return { stdout: JSON.stringify(toCniError(err).toJSON(cniVersion), null, 1) + '\n', exitCode: 1 };
  }
}

/** The CNI commands running or waiting per container ID, in arrival order (this process: the agent). */
const perContainer = new Map<string, Promise<unknown>>();

async function oneAtATime<T>(containerID: string, fn: () => Promise<T>): Promise<T> {
  const before = perContainer.get(containerID) ?? Promise.resolve();
  const mine = before.catch(() => undefined).then(fn);
  const tail = mine.catch(() => undefined);
  perContainer.set(containerID, tail);
  try {
    return await mine;
  } finally {
    if (perContainer.get(containerID) === tail) perContainer.delete(containerID);
  }
}

/** NSFS_MAGIC: what statfs says of a network namespace file (/var/run/netns/X, /proc/PID/ns/net). */
const NSFS_MAGIC = 0x6e736673;

/** CNI_NETNS must name a network namespace that exists: code 4 otherwise, before anything is created. */
function requireNetns(netns: string): void {
  let type: number;
  try {
    type = statfsSync(netns).type;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new CniError(CniCode.InvalidEnv, `CNI_NETNS: ${netns} does not exist`);
    throw new CniError(CniCode.InvalidEnv, `CNI_NETNS: ${netns}: ${(err as Error).message}`);
  }
  if (type !== NSFS_MAGIC) throw new CniError(CniCode.InvalidEnv, `CNI_NETNS: ${netns} is not a network namespace (a file of type 0x${type.toString(16)}, not nsfs)`);
}

function ipamFor(conf: NetConf): HostLocalIpam {
  return new HostLocalIpam(conf.dataDir, { podCIDR: conf.podCIDR, gateway: conf.gateway, rangeStart: conf.rangeStart, rangeEnd: conf.rangeEnd });
}

/** Agent failures as CNI errors: unreachable or not ready → 11, a refusal → 999 with the agent's reason. */
function agentError(err: unknown, what: string): unknown {
  if (err instanceof AgentUnavailableError) return new CniError(CniCode.TryAgainLater, `${what}: ${err.message}`, err.code);
  if (err instanceof ApiError) {
    if (err.code === 'unavailable' || err.code === 'stopping') return new CniError(CniCode.TryAgainLater, `${what}: the agent is not ready (${err.code}): ${err.message}`);
    return new CniError(CniCode.Generic, `${what}: the agent refused (${err.code}): ${err.message}`, `HTTP ${err.status}`);
  }
  if (err instanceof WireCommandError) return new CniError(CniCode.Generic, `${what}: ${err.message}`);
  return err;
}

async function requireAgentReady(client: CniAgent): Promise<void> {
  let ready: boolean;
  let phase = '';
  try {
    const h = await client.health();
    ready = h?.ready === true;
    phase = h?.phase ?? '';
  } catch (err) {
    throw agentError(err, 'agent health check');
  }
  if (!ready) throw new CniError(CniCode.TryAgainLater, `the agent at ${client.socketPath} is not ready yet (phase ${phase || 'unknown'}); try again later`);
}

function buildResult(env: CniEnv, conf: NetConf, hostIfName: string, hostMac: string, podMac: string, ip: string): CniResult {
  const dns: CniResult['dns'] = {};
  if (conf.dns) {
    if (conf.dns.nameservers.length) dns.nameservers = conf.dns.nameservers;
    if (conf.dns.domain) dns.domain = conf.dns.domain;
    if (conf.dns.search.length) dns.search = conf.dns.search;
    if (conf.dns.options.length) dns.options = conf.dns.options;
  }
  return {
    cniVersion: conf.cniVersion,
    interfaces: [
      { name: hostIfName, mac: hostMac },
      { name: env.ifName, mac: podMac, sandbox: env.netns! },
    ],
    ips: [{ address: `${ip}/32`, gateway: conf.gateway, interface: 1 }],
    routes: [{ dst: '0.0.0.0/0', gw: conf.gateway }],
    dns,
  };
}

async function add(env: CniEnv, conf: NetConf, client: CniAgent): Promise<CniResult> {
  const netns = env.netns!;
  requireNetns(netns);
  if (env.argIP !== undefined) checkPodIP(env.argIP, conf.podCIDR, conf.gateway, 'CNI_ARGS IP', CniCode.InvalidEnv);
  if (env.argIP !== undefined && conf.runtimeIP !== undefined && env.argIP !== conf.runtimeIP)
    throw new CniError(CniCode.InvalidConfig, `runtimeConfig.ips (${conf.runtimeIP}) and CNI_ARGS IP (${env.argIP}) disagree`);
  await requireAgentReady(client);

  const hostIfName = hostIfNameFor(env.containerID);
  const ipam = ipamFor(conf);
  const { ip, fresh } = await ipam.allocate(env.containerID, env.ifName, env.argIP ?? conf.runtimeIP);
  let created = false;
  try {
    let hostMac: string;
    let podMac: string;
    const wire = { hostIfName, podNetns: netns, podIfName: env.ifName, mtu: conf.mtu, ip, gatewayIP: conf.gateway };
    try {
      // The common case first (a new pod): nothing to look at before.
      ({ hostMac, podMac } = await wirePodVeth(wire));
      created = true;
    } catch (err) {
      if (!(err instanceof LinkExistsError)) throw err;
      const host = await linkInfo(undefined, hostIfName);
      const pod = await linkInfo(netns, env.ifName);
      if (host && pod && pod.addresses.includes(`${ip}/32`)) {
        // A repeated ADD: the wiring is in place.
        hostMac = host.mac;
        podMac = pod.mac;
      } else {
        if (pod && !host) throw new CniError(CniCode.Generic, `CNI_IFNAME: ${env.ifName} already exists in ${netns} and is not ours`);
        if (host) await unwirePodVeth({ hostIfName }); // half-wired by a crashed ADD: start over
        ({ hostMac, podMac } = await wirePodVeth(wire));
        created = true;
      }
    }
    const serviceAccount = env.serviceAccount ?? conf.serviceAccount;
    try {
      await client.putEndpoint(env.containerID, {
        namespace: env.podNamespace!,
        podName: env.podName!,
        ip,
        hostIfName,
        podMac,
        labels: conf.labels,
        ...(serviceAccount !== undefined ? { serviceAccount } : {}),
      });
    } catch (err) {
      throw agentError(err, `registering endpoint ${env.containerID} with the agent`);
    }
    return buildResult(env, conf, hostIfName, hostMac, podMac, ip);
  } catch (err) {
    const cleanup: string[] = [];
    if (created) await unwirePodVeth({ hostIfName }).catch((e: unknown) => cleanup.push(`removing ${hostIfName}: ${(e as Error).message}`));
    if (fresh) await ipam.release(env.containerID, env.ifName).catch((e: unknown) => cleanup.push(`releasing ${ip}: ${(e as Error).message}`));
    const e = toCniError(agentError(err, 'ADD'));
    if (cleanup.length) throw new CniError(e.code, e.message, [e.details, 'rollback failed:', ...cleanup].filter(Boolean).join('\n'));
    throw e;
  }
}

async function del(env: CniEnv, conf: NetConf, client: CniAgent): Promise<void> {
  let agentFailure: unknown;
  try {
    await client.deleteEndpoint(env.containerID);
  } catch (err) {
    agentFailure = agentError(err, `deleting endpoint ${env.containerID} from the agent`);
  }
  // Removing the host side removes the pod side with it (also when the pod's namespace is gone).
  await unwirePodVeth({ hostIfName: hostIfNameFor(env.containerID) }).catch((err: unknown) => {
    throw agentError(err, 'DEL');
  });
  if (agentFailure) throw agentFailure; // keep the address until the agent has let go of it
  await ipamFor(conf).release(env.containerID, env.ifName);
}

async function check(env: CniEnv, conf: NetConf, client: CniAgent): Promise<void> {
  const netns = env.netns!;
  const fail = (msg: string): never => {
    throw new CniError(CniCode.Generic, `CHECK ${env.containerID}: ${msg}`);
  };
  requireNetns(netns);
  // The agent first: without it the check cannot be answered (11, not a failed check).
  let eps;
  try {
    eps = await client.listEndpoints();
  } catch (err) {
    throw agentError(err, 'listing the agent endpoints');
  }
  const ip = ipamFor(conf).lookup(env.containerID, env.ifName);
  if (ip === undefined) return fail(`no address is allocated to ${env.ifName}`);
  const prev = conf.prevResult as Partial<CniResult> | undefined;
  const prevIP = prev?.ips?.[0]?.address?.replace(/\/32$/, '');
  if (prevIP !== undefined && prevIP !== ip) fail(`prevResult has ${prevIP}, the allocation is ${ip}`);
  const hostIfName = hostIfNameFor(env.containerID);
  const host = await linkInfo(undefined, hostIfName);
  if (!host) return fail(`host-side device ${hostIfName} is missing`);
  const pod = await linkInfo(netns, env.ifName);
  if (!pod) return fail(`${env.ifName} is missing in ${netns}`);
  if (!pod.addresses.includes(`${ip}/32`)) fail(`${env.ifName} has ${pod.addresses.join(', ') || 'no address'}, expected ${ip}/32`);
  if (pod.mtu !== conf.mtu) fail(`${env.ifName} has MTU ${pod.mtu}, expected ${conf.mtu}`);
  const route = await defaultRoute(netns);
  if (!route || route.gateway !== conf.gateway || route.dev !== env.ifName) fail(`the default route is ${route ? `via ${route.gateway} dev ${route.dev}` : 'missing'}, expected via ${conf.gateway} dev ${env.ifName}`);
  const ep = eps.find((e) => e.containerID === env.containerID);
  if (!ep) return fail('the agent has no endpoint for it');
  if (ep.ip !== ip || ep.hostIfName !== hostIfName) fail(`the agent's endpoint has ${ep.ip} on ${ep.hostIfName}, expected ${ip} on ${hostIfName}`);
}
