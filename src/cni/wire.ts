// The pod's wiring, shared by the CNI plugin and (later) the lab's topology:
// a veth pair with the host side in the node's namespace and the peer in the
// pod's, the pod address as a /32, the gateway as a static neighbour whose MAC
// is the host-side veth's, and a default route via the gateway (onlink).
// Namespaces are given as paths (/var/run/netns/X, /proc/PID/ns/net) or as
// names under /var/run/netns; `undefined` for the host side means "the
// namespace this process runs in" (where a kubelet runs the plugin).
import { execFile } from 'node:child_process';

export interface PodVethSpec {
  /** The node's namespace, or undefined for the current one. */
  hostNetns?: string | undefined;
  hostIfName: string;
  podNetns: string;
  podIfName: string;
  mtu: number;
  ip: string;
  gatewayIP: string;
}

export interface PodVethInfo {
  hostIfIndex: number;
  hostMac: string;
  podIfIndex: number;
  podMac: string;
}

export class WireCommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly stderr: string,
  ) {
    super(`${argv.join(' ')}: ${stderr.trim() || 'failed'}`);
    this.name = 'WireCommandError';
  }
}

const nsPath = (ns: string): string => (ns.startsWith('/') ? ns : `/var/run/netns/${ns}`);

/** argv run inside netns (nsenter), or as is for the current namespace. */
function inNs(netns: string | undefined, argv: readonly string[]): string[] {
  return netns === undefined ? [...argv] : ['nsenter', `--net=${nsPath(netns)}`, ...argv];
}

/** How many commands (ip, nsenter, sysctl) this process ran and their wall time: bench/startup reports it. */
export const commandTime = { count: 0, ms: 0 };

function exec(argv: readonly string[], input?: string): Promise<string> {
  const [cmd, ...args] = argv;
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = execFile(cmd!, args, { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
      commandTime.count++;
      commandTime.ms += performance.now() - t0;
      if (err) reject(new WireCommandError(argv, stderr || err.message));
      else resolve(stdout);
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

const ipBatch = (netns: string | undefined, lines: readonly string[]): Promise<string> => exec(inNs(netns, ['ip', '-batch', '-']), lines.join('\n') + '\n');

/** ifindex, MAC and addresses of a device, or undefined when it does not exist. */
export async function linkInfo(netns: string | undefined, dev: string): Promise<{ ifindex: number; mac: string; mtu: number; addresses: string[] } | undefined> {
  let out: string;
  try {
    out = await exec(inNs(netns, ['ip', '-j', 'addr', 'show', 'dev', dev]));
  } catch (err) {
    if (err instanceof WireCommandError && /does not exist|Cannot find device/i.test(err.stderr)) return undefined;
    throw err;
  }
  const [info] = JSON.parse(out || '[]') as Array<{ ifindex: number; address: string; mtu: number; addr_info?: Array<{ family: string; local: string; prefixlen: number }> }>;
  if (!info) return undefined;
  return { ifindex: info.ifindex, mac: info.address, mtu: info.mtu, addresses: (info.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`) };
}

/**
 * Creates and configures the pair. On failure the host side (and with it the
 * peer) is removed before the error is rethrown: nothing is left half-done.
 */
export async function wirePodVeth(s: PodVethSpec): Promise<PodVethInfo> {
  // The peer is created directly inside the pod's namespace under its final
  // name, so it never collides with a device of the node.
  await ipBatch(s.hostNetns, [`link add ${s.hostIfName} mtu ${s.mtu} type veth peer name ${s.podIfName} mtu ${s.mtu} netns ${nsPath(s.podNetns)}`]);
  try {
    await ipBatch(s.hostNetns, [
      `link set ${s.hostIfName} up`,
      // Lets the node's own stack reach the pod.
      `route replace ${s.ip}/32 dev ${s.hostIfName} scope link`,
    ]);
    const host = await linkInfo(s.hostNetns, s.hostIfName);
    if (!host) throw new Error(`${s.hostIfName} vanished while it was being configured`);
    await ipBatch(s.podNetns, [
      'link set lo up',
      `addr add ${s.ip}/32 dev ${s.podIfName}`,
      `link set ${s.podIfName} up`,
      // The gateway is a static neighbour: pods never ARP for it.
      `neigh replace ${s.gatewayIP} lladdr ${host.mac} dev ${s.podIfName} nud permanent`,
      `route replace default via ${s.gatewayIP} dev ${s.podIfName} onlink`,
    ]);
    // IPv6 stays off in pods (the datapath is IPv4); best effort, the key may be absent.
    await exec(inNs(s.podNetns, ['sysctl', '-q', '-e', '-w', 'net.ipv6.conf.all.disable_ipv6=1'])).catch(() => undefined);
    const pod = await linkInfo(s.podNetns, s.podIfName);
    if (!pod) throw new Error(`${s.podIfName} vanished while it was being configured`);
    return { hostIfIndex: host.ifindex, hostMac: host.mac, podIfIndex: pod.ifindex, podMac: pod.mac };
  } catch (err) {
    await unwirePodVeth({ hostNetns: s.hostNetns, hostIfName: s.hostIfName }).catch(() => undefined);
    throw err;
  }
}

/** Removes the pair through its host side; false when it was already gone. */
export async function unwirePodVeth(s: { hostNetns?: string | undefined; hostIfName: string }): Promise<boolean> {
  try {
    await exec(inNs(s.hostNetns, ['ip', 'link', 'del', 'dev', s.hostIfName]));
    return true;
  } catch (err) {
    if (err instanceof WireCommandError && /does not exist|Cannot find device/i.test(err.stderr)) return false;
    throw err;
  }
}

/** Removes a device inside a namespace (e.g. the pod side when the host side is gone); false when absent. */
export async function deleteLinkIn(netns: string, dev: string): Promise<boolean> {
  try {
    await exec(inNs(netns, ['ip', 'link', 'del', 'dev', dev]));
    return true;
  } catch (err) {
    if (err instanceof WireCommandError && /does not exist|Cannot find device|No such file/i.test(err.stderr)) return false;
    throw err;
  }
}

/** The default route of a namespace: gateway and device, or undefined. */
export async function defaultRoute(netns: string | undefined): Promise<{ gateway: string; dev: string } | undefined> {
  const out = await exec(inNs(netns, ['ip', '-j', 'route', 'show', 'default']));
  const [r] = JSON.parse(out || '[]') as Array<{ gateway?: string; dev: string }>;
  return r?.gateway ? { gateway: r.gateway, dev: r.dev } : undefined;
}
