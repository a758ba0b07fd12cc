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
}

/** C name of each setting. */
export const CONST_NAMES: Readonly<Record<keyof DatapathConfig, string>> = {
  vxlanIfindex: 'CFG_VXLAN_IFINDEX',
  nodeIp: 'CFG_NODE_IP',
  clusterId: 'CFG_CLUSTER_ID',
  redirectPeer: 'CFG_REDIRECT_PEER',
  tunnelMtu: 'CFG_TUNNEL_MTU',
};

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
  ];
}

/** Writes every setting into an opened, not yet loaded object. */
export function applyConfig(obj: Pick<BpfObject, 'setConst'>, c: DatapathConfig): void {
  for (const [name, bytes] of encodeConfig(c)) obj.setConst(name, bytes);
}
