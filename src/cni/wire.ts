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

/** How many commands (ip, nsenter) this process ran and their wall time (wire.test.ts counts them). */
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

/** The pair could not be created: a device of that name exists (on the node, or in the pod's namespace). */
export class LinkExistsError extends WireCommandError {
  constructor(argv: readonly string[], stderr: string) {
    super(argv, stderr);
    this.name = 'LinkExistsError';
  }
}

interface IpLink {
  ifindex: number;
  address: string;
  mtu: number;
  addr_info?: Array<{ family: string; local: string; prefixlen: number }>;
}

/** The one device a `-j` command (or a `-j -batch` whose last line shows it) printed. */
function parseLink(out: string, dev: string): IpLink {
  const [info] = JSON.parse(out.trim().split('\n').pop() || '[]') as IpLink[];
  if (!info) throw new Error(`${dev} vanished while it was being configured`);
  return info;
}

/** ifindex, MAC and addresses of a device, or undefined when it does not exist. */
export async function linkInfo(netns: string | undefined, dev: string): Promise<{ ifindex: number; mac: string; mtu: number; addresses: string[] } | undefined> {
  let out: string;
  try {
    out = await exec(inNs(netns, ['ip', '-j', 'addr', 'show', 'dev', dev]));
  } catch (err) {
    if (err instanceof WireCommandError && /does not exist|Cannot find device/i.test(err.stderr)) return undefined;
    throw err;
  }
  const [info] = JSON.parse(out || '[]') as IpLink[];
  if (!info) return undefined;
  return { ifindex: info.ifindex, mac: info.address, mtu: info.mtu, addresses: (info.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`) };
}

// Commands run in the pod's namespace, in one nsenter: IPv6 off (the datapath
// is IPv4; best effort, the key may be absent; written by the shell itself:
// /proc/sys/net is the namespace's own, and a sysctl process more per pod is
// measurable when many start at once), then the `ip -batch` on stdin.
const POD_SIDE = '{ echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; } 2>/dev/null; exec ip -j -batch -';

/**
 * Creates and configures the pair with two commands (a pod start waits for
 * each, and with many pods starting at once every process counts): the pair
 * and its host side in one `ip -batch`, then the pod side; each prints the
 * device it configured. A name already taken is a LinkExistsError and nothing
 * is changed (the batch stops at its first line); any later failure removes
 * the host side (and with it the peer) before the error is rethrown: nothing
 * is left half-done.
 */
export async function wirePodVeth(s: PodVethSpec): Promise<PodVethInfo> {
  let hostOut: string;
  try {
    hostOut = await exec(inNs(s.hostNetns, ['ip', '-j', '-batch', '-']), [
      // The peer is created directly inside the pod's namespace under its final
      // name, so it never collides with a device of the node.
      `link add ${s.hostIfName} mtu ${s.mtu} type veth peer name ${s.podIfName} mtu ${s.mtu} netns ${nsPath(s.podNetns)}`,
      `link set ${s.hostIfName} up`,
      // Lets the node's own stack reach the pod.
      `route replace ${s.ip}/32 dev ${s.hostIfName} scope link`,
      `link show dev ${s.hostIfName}`,
    ].join('\n') + '\n');
  } catch (err) {
    // ip -batch stops at the first failing line and names it ("Command failed -:1": the pair itself was
    // refused); a line it cannot parse ends it without a line number: a later line (the ADD checked the
    // names, the MTU and the namespace of the first before), so the pair exists.
    const noPair = err instanceof WireCommandError && /Command failed -:1\b/.test(err.stderr);
    if (noPair && /File exists/i.test(err.stderr)) throw new LinkExistsError(err.argv, err.stderr);
    if (!noPair) await unwirePodVeth({ hostNetns: s.hostNetns, hostIfName: s.hostIfName }).catch(() => undefined);
    throw err;
  }
  try {
    const host = parseLink(hostOut, s.hostIfName);
    const pod = parseLink(
      await exec(['nsenter', `--net=${nsPath(s.podNetns)}`, 'sh', '-c', POD_SIDE], [
        'link set lo up',
        `addr add ${s.ip}/32 dev ${s.podIfName}`,
        `link set ${s.podIfName} up`,
        // The gateway is a static neighbour: pods never ARP for it.
        `neigh replace ${s.gatewayIP} lladdr ${host.address} dev ${s.podIfName} nud permanent`,
        `route replace default via ${s.gatewayIP} dev ${s.podIfName} onlink`,
        `link show dev ${s.podIfName}`,
      ].join('\n') + '\n'),
      s.podIfName,
    );
    return { hostIfIndex: host.ifindex, hostMac: host.address, podIfIndex: pod.ifindex, podMac: pod.address };
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
