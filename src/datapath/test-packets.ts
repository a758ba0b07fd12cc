// Crafted frames for datapath program tests (BPF_PROG_TEST_RUN) and readers
// for what the programs leave behind. Test support only.
import { ipv4Bytes } from './maps/codec.ts';

export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;
export const ETH_P_IPV6 = 0x86dd;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
}
function macString(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** One's complement sum of 16-bit big-endian words, folded. */
export function internetChecksum(b: Buffer, initial = 0): number {
  let sum = initial;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function ethernet(dst: string, src: string, ethertype: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(14);
  macBytes(dst).copy(h, 0);
  macBytes(src).copy(h, 6);
  h.writeUInt16BE(ethertype, 12);
  return Buffer.concat([h, payload]);
}

export interface Ipv4Options {
  src: string;
  dst: string;
  protocol: number;
  payload: Buffer;
  ttl?: number;
  id?: number;
  /** Don't-fragment bit; default true (what Linux sets for TCP). */
  df?: boolean;
  tos?: number;
}

export function ipv4(o: Ipv4Options): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h[1] = o.tos ?? 0;
  h.writeUInt16BE(20 + o.payload.length, 2);
  h.writeUInt16BE(o.id ?? 0x1234, 4);
  h.writeUInt16BE(o.df === false ? 0 : 0x4000, 6);
  h[8] = o.ttl ?? 64;
  h[9] = o.protocol;
  ipv4Bytes(o.src).copy(h, 12);
  ipv4Bytes(o.dst).copy(h, 16);
  h.writeUInt16BE(internetChecksum(h), 10);
  return Buffer.concat([h, o.payload]);
}

function pseudoHeaderSum(src: string, dst: string, protocol: number, len: number): number {
  const p = Buffer.alloc(12);
  ipv4Bytes(src).copy(p, 0);
  ipv4Bytes(dst).copy(p, 4);
  p[9] = protocol;
  p.writeUInt16BE(len, 10);
  let sum = 0;
  for (let i = 0; i < 12; i += 2) sum += p.readUInt16BE(i);
  return sum;
}

/** A TCP segment (SYN unless flags given) with a correct checksum. */
export function tcp(src: string, dst: string, sport: number, dport: number, payload: Buffer = Buffer.alloc(0), flags = 0x02): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt32BE(1, 4);
  h[12] = 5 << 4;
  h[13] = flags;
  h.writeUInt16BE(0xffff, 14);
  const seg = Buffer.concat([h, payload]);
  seg.writeUInt16BE(internetChecksum(seg, pseudoHeaderSum(src, dst, IPPROTO_TCP, seg.length)), 16);
  return seg;
}

export function icmpEcho(id = 1, seq = 1, payload: Buffer = Buffer.alloc(8)): Buffer {
  const m = Buffer.concat([Buffer.from([8, 0, 0, 0, id >> 8, id & 0xff, seq >> 8, seq & 0xff]), payload]);
  m.writeUInt16BE(internetChecksum(m), 2);
  return m;
}

/** Ethernet + IPv4 + TCP. */
export function tcpFrame(o: { srcMac: string; dstMac: string; src: string; dst: string; sport: number; dport: number; ttl?: number; payload?: Buffer; df?: boolean }): Buffer {
  const seg = tcp(o.src, o.dst, o.sport, o.dport, o.payload);
  const ip = ipv4({ src: o.src, dst: o.dst, protocol: IPPROTO_TCP, payload: seg, ...(o.ttl !== undefined ? { ttl: o.ttl } : {}), ...(o.df !== undefined ? { df: o.df } : {}) });
  return ethernet(o.dstMac, o.srcMac, ETH_P_IP, ip);
}

/**
 * A VXLAN packet as a node's underlay carries it (RFC 7348): outer Ethernet,
 * IPv4 (DF, protocol UDP), UDP to @port (checksum @udpChecksum, 0 as the
 * datapath sends), the VXLAN header (@flags, default the I flag) with @vni,
 * then @inner, a whole Ethernet frame.
 */
export function vxlanFrame(o: { srcMac: string; dstMac: string; src: string; dst: string; vni: number; inner: Buffer; port?: number; sport?: number; flags?: number; udpChecksum?: number }): Buffer {
  const vx = Buffer.alloc(8);
  vx.writeUInt32BE(o.flags ?? 0x08000000, 0);
  vx.writeUInt32BE((o.vni << 8) >>> 0, 4);
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(o.sport ?? 49152, 0);
  udp.writeUInt16BE(o.port ?? 8472, 2);
  udp.writeUInt16BE(8 + vx.length + o.inner.length, 4);
  udp.writeUInt16BE(o.udpChecksum ?? 0, 6);
  return ethernet(o.dstMac, o.srcMac, ETH_P_IP, ipv4({ src: o.src, dst: o.dst, protocol: IPPROTO_UDP, payload: Buffer.concat([udp, vx, o.inner]) }));
}

/** Ethernet + IPv4 + ICMP echo request. */
export function icmpFrame(o: { srcMac: string; dstMac: string; src: string; dst: string; ttl?: number }): Buffer {
  const ip = ipv4({ src: o.src, dst: o.dst, protocol: IPPROTO_ICMP, payload: icmpEcho(), ...(o.ttl !== undefined ? { ttl: o.ttl } : {}) });
  return ethernet(o.dstMac, o.srcMac, ETH_P_IP, ip);
}

export const ARPOP_REQUEST = 1;
export const ARPOP_REPLY = 2;

/** An Ethernet/IPv4 ARP frame (broadcast for requests). */
export function arpFrame(o: { op: number; senderMac: string; senderIp: string; targetMac?: string; targetIp: string; ethDst?: string }): Buffer {
  const a = Buffer.alloc(28);
  a.writeUInt16BE(1, 0); // ARPHRD_ETHER
  a.writeUInt16BE(ETH_P_IP, 2);
  a[4] = 6;
  a[5] = 4;
  a.writeUInt16BE(o.op, 6);
  macBytes(o.senderMac).copy(a, 8);
  ipv4Bytes(o.senderIp).copy(a, 14);
  macBytes(o.targetMac ?? '00:00:00:00:00:00').copy(a, 18);
  ipv4Bytes(o.targetIp).copy(a, 24);
  return ethernet(o.ethDst ?? 'ff:ff:ff:ff:ff:ff', o.senderMac, ETH_P_ARP, a);
}

export interface ParsedFrame {
  dstMac: string;
  srcMac: string;
  ethertype: number;
}

export function parseEthernet(f: Buffer): ParsedFrame {
  return { dstMac: macString(f.subarray(0, 6)), srcMac: macString(f.subarray(6, 12)), ethertype: f.readUInt16BE(12) };
}

export interface ParsedIpv4 {
  ttl: number;
  protocol: number;
  src: string;
  dst: string;
  totalLength: number;
  /** The header checksum verifies (sums to zero). */
  checksumValid: boolean;
}

/** The IPv4 header after a 14-byte Ethernet header. */
export function parseIpv4(f: Buffer): ParsedIpv4 {
  const h = f.subarray(14, 14 + (f[14]! & 0x0f) * 4);
  const ip = (o: number): string => `${h[o]}.${h[o + 1]}.${h[o + 2]}.${h[o + 3]}`;
  return { ttl: h[8]!, protocol: h[9]!, src: ip(12), dst: ip(16), totalLength: h.readUInt16BE(2), checksumValid: internetChecksum(h) === 0 };
}

export interface ParsedArp {
  op: number;
  senderMac: string;
  senderIp: string;
  targetMac: string;
  targetIp: string;
}

export function parseArp(f: Buffer): ParsedArp {
  const a = f.subarray(14, 42);
  const ip = (o: number): string => `${a[o]}.${a[o + 1]}.${a[o + 2]}.${a[o + 3]}`;
  return { op: a.readUInt16BE(6), senderMac: macString(a.subarray(8, 14)), senderIp: ip(14), targetMac: macString(a.subarray(18, 24)), targetIp: ip(24) };
}
