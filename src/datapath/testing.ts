// Helpers for datapath tests: build test objects, unique pin directories on
// the project bpffs, pinned maps, crafted packets, a node and pod namespace
// pair. Used by *.test.ts only.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureBpffs, nodePinDir, removePinDir } from './bpffs.ts';
import { BpfMap } from './libbpf/map.ts';
import { BpfObject } from './libbpf/object.ts';
import * as config from './maps/config.ts';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BPF_BUILD = join(REPO_ROOT, 'bpf/build');

/** Why datapath tests cannot run here, or undefined when they can (root, libbpf present). */
export function datapathSkipReason(): string | undefined {
  // CI runs as root with libbpf installed by the test command: there a missing
  // prerequisite must fail the tests loudly, never skip them.
  if (process.env.CI) return undefined;
  if (process.getuid?.() !== 0) return 'needs root (CAP_BPF, CAP_NET_ADMIN)';
  if (!existsSync('/usr/lib/x86_64-linux-gnu/libbpf.so.1') && !existsSync('/usr/lib/aarch64-linux-gnu/libbpf.so.1') && !existsSync('/usr/lib64/libbpf.so.1')) {
    return 'libbpf.so.1 not installed';
  }
  return undefined;
}

/** Builds bpf/build/<rel> with the project Makefile (make is a no-op when up to date); returns its path. */
export function buildBpfObject(rel: string): string {
  execFileSync('make', ['-s', '-C', join(REPO_ROOT, 'bpf'), `build/${rel}`], { stdio: ['ignore', 'ignore', 'inherit'] });
  return join(BPF_BUILD, rel);
}

/** A short random suffix for namespace, device and pin names. */
export function uniqueSuffix(bytes = 4): string {
  return randomBytes(bytes).toString('hex');
}

/** A fresh pin directory `<bpffs>/<prefix>-<random>`; remove it with removePinDir in finally. */
export function tempPinDir(prefix = 'test'): string {
  return nodePinDir(`${prefix}-${uniqueSuffix()}`, ensureBpffs());
}

/** Runs fn with a fresh pin directory and removes it afterwards, even on failure. */
export async function withPinDir<T>(prefix: string, fn: (dir: string) => T | Promise<T>): Promise<T> {
  const dir = tempPinDir(prefix);
  try {
    return await fn(dir);
  } finally {
    removePinDir(dir);
  }
}

/** Runs fn with the map pinned as pinDir/name open, and closes it again. */
export function withPinnedMap<T>(pinDir: string, name: string, fn: (m: BpfMap) => T): T {
  const m = BpfMap.openPinned(join(pinDir, name));
  try {
    return fn(m);
  } finally {
    m.close();
  }
}

export interface Ipv4UdpPacket {
  srcMac?: string;
  dstMac?: string;
  src: string;
  dst: string;
  sport: number;
  dport: number;
  ttl?: number;
  payload?: Buffer;
}

function mac(s: string): Buffer {
  const b = Buffer.from(s.split(':').map((h) => parseInt(h, 16)));
  if (b.length !== 6) throw new RangeError(`bad MAC ${s}`);
  return b;
}

function ipv4(s: string): Buffer {
  const parts = s.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new RangeError(`bad IPv4 ${s}`);
  return Buffer.from(parts);
}

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1]! << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return ~sum & 0xffff;
}

/** An Ethernet + IPv4 + UDP frame with a valid IP header checksum (UDP checksum 0). */
export function ipv4UdpPacket(p: Ipv4UdpPacket): Buffer {
  const payload = p.payload ?? Buffer.alloc(0);
  const eth = Buffer.concat([mac(p.dstMac ?? '02:00:00:00:00:02'), mac(p.srcMac ?? '02:00:00:00:00:01'), Buffer.from([0x08, 0x00])]);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 8 + payload.length, 2);
  ip[8] = p.ttl ?? 64;
  ip[9] = 17;
  ipv4(p.src).copy(ip, 12);
  ipv4(p.dst).copy(ip, 16);
  ip.writeUInt16BE(checksum(ip), 10);
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(p.sport, 0);
  udp.writeUInt16BE(p.dport, 2);
  udp.writeUInt16BE(8 + payload.length, 4);
  return Buffer.concat([eth, ip, udp, payload]);
}

/**
 * Opens a compiled object with its maps pinned under pinRoot, writes the
 * node settings into it, and loads it; closes it again if loading fails.
 */
export function loadDatapathObject(rel: string, pinRoot: string, cfg: config.DatapathConfig): BpfObject {
  const o = BpfObject.open(buildBpfObject(rel), { pinRoot });
  try {
    config.applyConfig(o, cfg);
    o.load();
    return o;
  } catch (err) {
    o.close();
    throw err;
  }
}

/** The namespaces of withNodePodRig: a node with an underlay and one pod wired to it. */
export interface NodePodRig {
  suffix: string;
  /** `cmt-<prefix>-<suffix>-node`: lo up, underlay veth ul0 10.1.0.2/24 (peer ul1 unused), host veth lxc0. */
  nodeNs: string;
  /** `cmt-<prefix>-<suffix>-pod`: eth0 10.101.0.5/32, MTU 1450, default route via 169.254.1.1. */
  podNs: string;
}

/**
 * Runs fn with a fresh node namespace and pod namespace wired as a node
 * datapath expects them (see NodePodRig), and deletes both afterwards, even
 * on failure.
 */
export async function withNodePodRig<T>(prefix: string, fn: (rig: NodePodRig) => T | Promise<T>): Promise<T> {
  const ip = (...args: string[]): void => {
    execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  };
  const suffix = uniqueSuffix(3);
  const rig = { suffix, nodeNs: `cmt-${prefix}-${suffix}-node`, podNs: `cmt-${prefix}-${suffix}-pod` };
  const { nodeNs, podNs } = rig;
  try {
    ip('netns', 'add', nodeNs);
    ip('netns', 'add', podNs);
    ip('-n', nodeNs, 'link', 'set', 'lo', 'up');
    // underlay: a veth pair (this kernel has no dummy driver); the peer end stays unused
    ip('-n', nodeNs, 'link', 'add', 'ul0', 'type', 'veth', 'peer', 'name', 'ul1');
    ip('-n', nodeNs, 'addr', 'add', '10.1.0.2/24', 'dev', 'ul0');
    ip('-n', nodeNs, 'link', 'set', 'ul0', 'up');
    ip('-n', nodeNs, 'link', 'add', 'lxc0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', podNs);
    ip('-n', nodeNs, 'link', 'set', 'lxc0', 'up');
    ip('-n', podNs, 'link', 'set', 'lo', 'up');
    ip('-n', podNs, 'addr', 'add', '10.101.0.5/32', 'dev', 'eth0');
    ip('-n', podNs, 'link', 'set', 'eth0', 'mtu', '1450', 'up');
    ip('-n', podNs, 'route', 'add', '169.254.1.1', 'dev', 'eth0', 'scope', 'link');
    ip('-n', podNs, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0');
    return await fn(rig);
  } finally {
    for (const ns of [podNs, nodeNs]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  }
}
