// The few network-device operations the datapath needs, through `ip` (JSON
// output), in the caller's network namespace. No netlink library.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export class NetdevError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly stderr: string,
  ) {
    super(`${argv.join(' ')}: ${stderr.trim() || 'failed'}`);
    this.name = 'NetdevError';
  }
}

async function ip(args: readonly string[]): Promise<string> {
  try {
    const { stdout } = await execFileP('ip', args, { encoding: 'utf8', timeout: 30_000 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message?: string };
    throw new NetdevError(['ip', ...args], e.stderr || e.message || '');
  }
}

export interface LinkInfo {
  ifindex: number;
  name: string;
  mtu: number;
  up: boolean;
  mac: string | undefined;
  /** 'vxlan', 'veth', 'dummy', ...; undefined for plain devices. */
  kind: string | undefined;
  /** linkinfo.info_data as `ip -d -j` prints it. */
  data: Record<string, unknown>;
}

interface IpLink {
  ifindex: number;
  ifname: string;
  mtu: number;
  flags?: string[];
  address?: string;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

/** The device, or undefined when there is none of that name. */
export async function linkInfo(name: string): Promise<LinkInfo | undefined> {
  let out: string;
  try {
    out = await ip(['-d', '-j', 'link', 'show', 'dev', name]);
  } catch (err) {
    if (err instanceof NetdevError && /does not exist|Cannot find device/i.test(err.stderr)) return undefined;
    throw err;
  }
  const l = (JSON.parse(out) as IpLink[])[0];
  if (!l) return undefined;
  return {
    ifindex: l.ifindex,
    name: l.ifname,
    mtu: l.mtu,
    up: (l.flags ?? []).includes('UP'),
    mac: l.address,
    kind: l.linkinfo?.info_kind,
    data: l.linkinfo?.info_data ?? {},
  };
}

export interface VxlanOptions {
  name: string;
  /** UDP destination port; 8472 by default (the Linux/Cilium VXLAN port). */
  port?: number;
  mtu?: number;
}

/**
 * Makes sure an external (collect_md) VXLAN device exists and is up. Creates
 * it when missing; an existing device of that name must be an external VXLAN
 * on the same port (a different device is an error, never reconfigured).
 * Returns the device and whether this call created it.
 */
export async function ensureVxlanDevice(o: VxlanOptions): Promise<{ link: LinkInfo; created: boolean }> {
  const port = o.port ?? 8472;
  let link = await linkInfo(o.name);
  let created = false;
  if (!link) {
    const args = ['link', 'add', o.name, 'type', 'vxlan', 'external', 'dstport', String(port)];
    if (o.mtu !== undefined) args.splice(3, 0, 'mtu', String(o.mtu));
    try {
      await ip(args);
      created = true;
    } catch (err) {
      // another process may have created it meanwhile; checked below
      if (!(err instanceof NetdevError && /exists/i.test(err.stderr))) throw err;
    }
    link = await linkInfo(o.name);
    if (!link) throw new NetdevError(['ip', ...args], 'device missing after creation');
  }
  if (link.kind !== 'vxlan' || link.data.external !== true || link.data.port !== port) {
    throw new NetdevError(['ip', 'link', 'show', o.name], `${o.name} exists but is not an external VXLAN device on port ${port} (kind ${link.kind}, port ${String(link.data.port)})`);
  }
  if (o.mtu !== undefined && link.mtu !== o.mtu) await ip(['link', 'set', 'dev', o.name, 'mtu', String(o.mtu)]);
  if (!link.up) await ip(['link', 'set', 'dev', o.name, 'up']);
  link = (await linkInfo(o.name))!;
  return { link, created };
}

/** Deletes a device; false when there was none. */
export async function deleteLink(name: string): Promise<boolean> {
  try {
    await ip(['link', 'del', 'dev', name]);
    return true;
  } catch (err) {
    if (err instanceof NetdevError && /does not exist|Cannot find device/i.test(err.stderr)) return false;
    throw err;
  }
}

/** The device holding IPv4 address addr (name, ifindex, MTU), or undefined when no device has it. */
export async function deviceOfAddress(addr: string): Promise<{ name: string; ifindex: number; mtu: number } | undefined> {
  const out = await ip(['-j', 'addr', 'show']);
  const links = JSON.parse(out) as Array<{ ifname: string; ifindex: number; mtu: number; addr_info?: Array<{ family: string; local: string }> }>;
  const l = links.find((x) => (x.addr_info ?? []).some((a) => a.family === 'inet' && a.local === addr));
  return l && { name: l.ifname, ifindex: l.ifindex, mtu: l.mtu };
}

/** MTU of the device holding IPv4 address addr, or undefined when no device has it. */
export async function mtuOfAddress(addr: string): Promise<number | undefined> {
  const out = await ip(['-j', 'addr', 'show']);
  const links = JSON.parse(out) as Array<{ mtu: number; addr_info?: Array<{ family: string; local: string }> }>;
  return links.find((l) => (l.addr_info ?? []).some((a) => a.family === 'inet' && a.local === addr))?.mtu;
}
