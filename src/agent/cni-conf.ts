// The CNI network configuration the agent writes for the node's container
// runtime (as Cilium's agent writes 05-cilium.conflist): one plugin, the
// executable the install copies to /opt/cni/bin, which relays each ADD/DEL to
// this agent's socket. Written only once the agent is ready (a runtime that
// finds it sends pods our way), atomically (a temporary file renamed over
// it: the runtime never reads half a file), rewritten only when its content
// would change, removed on a clean stop. A killed agent leaves it: its pods
// keep working and the agent that comes back serves the same socket.
import { execFile } from 'node:child_process';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CNI_VERSION, cidrRange, intToIp } from '../cni/config.ts';
import type { ResolvedAgentConfig } from './config.ts';

/** The network's name in the conflist (and the IPAM state directory under the socket's directory). */
export const CNI_NETWORK_NAME = 'clustermesh';

/** The conflist for this node: exactly the fields src/cni/config.ts reads for one plugin. */
export function cniConflist(cfg: Pick<ResolvedAgentConfig, 'socketPath' | 'podCIDR' | 'cniBinaryName'>, underlayMtu: number): Record<string, unknown> {
  const [net] = cidrRange(cfg.podCIDR);
  return {
    cniVersion: CNI_VERSION,
    name: CNI_NETWORK_NAME,
    plugins: [
      {
        type: cfg.cniBinaryName,
        agentSocket: cfg.socketPath,
        underlayMtu,
        ipam: { podCIDR: cfg.podCIDR, gateway: intToIp(net + 1) },
      },
    ],
  };
}

const execFileP = promisify(execFile);

/** The MTU of the device holding `ip` in the caller's network namespace (the underlay); 1500 when not found. */
export async function underlayMtuOf(ip: string): Promise<number> {
  try {
    const { stdout } = await execFileP('ip', ['-j', '-4', 'addr', 'show'], { encoding: 'utf8', timeout: 10_000 });
    const links = JSON.parse(stdout || '[]') as Array<{ mtu?: number; addr_info?: Array<{ local?: string }> }>;
    const link = links.find((l) => (l.addr_info ?? []).some((a) => a.local === ip));
    if (link?.mtu !== undefined && link.mtu >= 1280) return link.mtu;
  } catch {
    // no `ip`, or not JSON: the default
  }
  return 1500;
}

/** Writes and removes one conflist file. */
export class CniConfFile {
  readonly path: string;
  constructor(
    readonly dir: string,
    readonly name: string,
  ) {
    this.path = join(dir, name);
  }

  /** Writes `conf` unless the file already holds exactly it; returns whether it wrote. */
  async write(conf: Record<string, unknown>): Promise<boolean> {
    const text = JSON.stringify(conf, null, 2) + '\n';
    const current = await readFile(this.path, 'utf8').catch(() => undefined);
    if (current === text) return false;
    await mkdir(this.dir, { recursive: true });
    // A dot-name the runtime ignores (it reads *.conf, *.conflist, *.json), renamed over the file.
    const tmp = join(this.dir, `.${this.name}.${process.pid}.tmp`);
    try {
      await writeFile(tmp, text, { mode: 0o644 });
      await rename(tmp, this.path);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return true;
  }

  async remove(): Promise<void> {
    await rm(this.path, { force: true });
  }
}
