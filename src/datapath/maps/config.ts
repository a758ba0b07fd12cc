// The per-node `const volatile` settings of the programs (bpf/lib/config.h),
// i.e. the .rodata map of lxc.bpf.o and overlay.bpf.o, written by the loader
// before load. All are __u32; btf.test.ts checks the names and sizes.
import type { BpfObject } from '../libbpf/object.ts';
import { ipv4Bytes, writeU32 } from './codec.ts';

export interface DatapathConfig {
  /** ifindex of the node's VXLAN (collect_md) device; 0 = no tunnel (tunnel traffic dropped, DROP_NO_TUNNEL_DEVICE). */
  vxlanIfindex: number;
  /** The node's underlay IPv4 (stored network byte order, like ipcache tunnel endpoints). */
  nodeIp: string;
  /** The node's cluster ID; no program reads it yet. */
  clusterId: number;
  /** Deliver to pods with bpf_redirect_peer (the agent probes kernel support). */
  redirectPeer: boolean;
  /** Largest inner IPv4 packet for the tunnel: underlay MTU − 50; 0 disables the check. */
  tunnelMtu: number;
  /** Native routing: mesh destinations inside nativeCidrs leave unencapsulated (bpf/lib/native.h); default false. */
  routingNative?: boolean;
  /** The pod ranges the underlay routes ('a.b.c.d/len'), at most NATIVE_CIDRS_MAX; only with routingNative. */
  nativeCidrs?: readonly string[];
  /** VXLAN headers written and stripped by the programs (bpf/lib/encap.h) instead of the VXLAN device; default false. */
  tunnelBpf?: boolean;
  /** The tunnel's UDP port (the VXLAN device's); default 8472. */
  tunnelPort?: number;
}

/** C name of each setting. */
export const CONST_NAMES: Readonly<Record<Exclude<keyof DatapathConfig, 'nativeCidrs'>, string>> = {
  vxlanIfindex: 'CFG_VXLAN_IFINDEX',
  nodeIp: 'CFG_NODE_IP',
  clusterId: 'CFG_CLUSTER_ID',
  redirectPeer: 'CFG_REDIRECT_PEER',
  tunnelMtu: 'CFG_TUNNEL_MTU',
  routingNative: 'CFG_ROUTING_NATIVE',
  tunnelBpf: 'CFG_TUNNEL_BPF',
  tunnelPort: 'CFG_TUNNEL_PORT',
};

/** Who writes and strips the VXLAN headers: the kernel's VXLAN device, or the programs. */
export type TunnelEncap = 'device' | 'bpf';
export const TUNNEL_ENCAPS: readonly TunnelEncap[] = ['bpf', 'device'];
/** The programs: 2-3 µs less per round trip than the device (BENCHMARKS.md); the device stays for what they leave. */
export const DEFAULT_TUNNEL_ENCAP: TunnelEncap = 'bpf';

/** How a node sends to pods of other nodes: always through the tunnel, or natively where the underlay routes. */
export type RoutingMode = 'tunnel' | 'native';
export const ROUTING_MODES: readonly RoutingMode[] = ['tunnel', 'native'];

/** CFG_NATIVE_CIDRS: CM_NATIVE_CIDRS_MAX slots of struct cm_cidr { addr, mask } (network byte order). */
export const NATIVE_CIDRS_NAME = 'CFG_NATIVE_CIDRS';
export const NATIVE_CIDRS_MAX = 8;
export const NATIVE_CIDRS_SIZE = NATIVE_CIDRS_MAX * 8;

/** The CFG_NATIVE_CIDRS bytes for a list of prefixes (host bits cleared; a /0 is refused: mask 0 ends the list). */
export function encodeNativeCidrs(cidrs: readonly string[]): Buffer {
  if (cidrs.length > NATIVE_CIDRS_MAX) throw new RangeError(`native routing CIDRs: at most ${NATIVE_CIDRS_MAX}, got ${cidrs.length}`);
  const b = Buffer.alloc(NATIVE_CIDRS_SIZE);
  cidrs.forEach((c, i) => {
    const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d{1,2})$/.exec(c);
    const len = m ? Number(m[2]) : NaN;
    if (!m || !(len >= 1 && len <= 32)) throw new RangeError(`native routing CIDR ${JSON.stringify(c)}: must be a.b.c.d/len with len 1..32`);
    const mask = (~0 << (32 - len)) >>> 0;
    const addr = (ipv4Bytes(m[1]!).readUInt32BE(0) & mask) >>> 0;
    b.writeUInt32BE(addr, i * 8);
    b.writeUInt32BE(mask, i * 8 + 4);
  });
  return b;
}

/** Size of every setting in .rodata. */
export const CONST_SIZE = 4;

/** VXLAN adds 50 bytes to every inner IPv4 packet (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14). */
export const VXLAN_OVERHEAD = 50;

/** Each setting as the 4 bytes to put into .rodata. */
export function encodeConfig(c: DatapathConfig): Array<[name: string, bytes: Buffer]> {
  const u32 = (v: number): Buffer => {
    const b = Buffer.alloc(CONST_SIZE);
    writeU32(b, 0, v);
    return b;
  };
  return [
    [CONST_NAMES.vxlanIfindex, u32(c.vxlanIfindex)],
    [CONST_NAMES.nodeIp, ipv4Bytes(c.nodeIp)],
    [CONST_NAMES.clusterId, u32(c.clusterId)],
    [CONST_NAMES.redirectPeer, u32(c.redirectPeer ? 1 : 0)],
    [CONST_NAMES.tunnelMtu, u32(c.tunnelMtu)],
    [CONST_NAMES.routingNative, u32(c.routingNative ? 1 : 0)],
    [CONST_NAMES.tunnelBpf, u32(c.tunnelBpf ? 1 : 0)],
    [CONST_NAMES.tunnelPort, u32(c.tunnelPort ?? 8472)],
    [NATIVE_CIDRS_NAME, encodeNativeCidrs(c.routingNative ? (c.nativeCidrs ?? []) : [])],
  ];
}

/** Writes every setting into an opened, not yet loaded object. */
export function applyConfig(obj: Pick<BpfObject, 'setConst'>, c: DatapathConfig): void {
  for (const [name, bytes] of encodeConfig(c)) obj.setConst(name, bytes);
}
