// cm_events (bpf/lib/events.h): ring buffer of struct cm_event, one per drop
// and, while cm_settings says so, one per forwarded packet.
import type { BpfMap } from '../libbpf/map.ts';
import { RingBufferReader } from '../libbpf/ringbuf.ts';
import { field, readIPv4, readU16, readU32, readU64, struct, writeIPv4, writeU16, writeU32, writeU64, writeU8 } from './codec.ts';
import {
  type DirectionName,
  type EventTypeName,
  EventType,
  directionCode,
  directionName,
  reasonName,
} from './reasons.ts';

export const MAP_NAME = 'cm_events';

/** struct cm_event: addresses network order, everything else host order. */
export const EVENT_LAYOUT = struct('cm_event', 56, {
  timestamp: field(0, 8),
  src_ip: field(8, 4),
  dst_ip: field(12, 4),
  src_identity: field(16, 4),
  dst_identity: field(20, 4),
  ifindex: field(24, 4),
  target_ifindex: field(28, 4),
  tunnel_endpoint: field(32, 4),
  length: field(36, 4),
  src_port: field(40, 2),
  dst_port: field(42, 2),
  type: field(44, 1),
  reason: field(45, 1),
  direction: field(46, 1),
  protocol: field(47, 1),
  tcp_flags: field(48, 1),
  pad0: field(49, 1),
  svc_port: field(50, 2),
  svc_ip: field(52, 4),
});

export interface DatapathEvent {
  /** bpf_ktime_get_ns(): CLOCK_MONOTONIC nanoseconds. */
  timestamp: bigint;
  type: EventTypeName;
  /** enum cm_drop_reason for drops, enum cm_trace_reason for traces. */
  reason: number;
  reasonName: string;
  direction: DirectionName;
  /** '0.0.0.0' when the packet was not parsed that far. */
  srcIp: string;
  dstIp: string;
  srcIdentity: number;
  dstIdentity: number;
  /** Device the program ran on. */
  ifindex: number;
  /** Redirect target (pod veth or VXLAN device), 0 if none. */
  targetIfindex: number;
  /** Remote node the packet goes to (egress) or came from (overlay ingress). */
  tunnelEndpoint: string | null;
  /** skb->len */
  length: number;
  /** IP protocol number, 0 when not IPv4. */
  protocol: number;
  /** TCP/UDP port; for ICMP the type. */
  srcPort: number;
  /** TCP/UDP port; for ICMP the code. */
  dstPort: number;
  /** TCP header flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE 0x40, CWR 0x80); 0 if not TCP. */
  tcpFlags: number;
  /** The service frontend the packet was addressed to (before translation), null if none. */
  service: { ip: string; port: number } | null;
}

const F = EVENT_LAYOUT.fields;

export function decode(b: Buffer): DatapathEvent {
  if (b.length < EVENT_LAYOUT.size) throw new RangeError(`cm_event: ${b.length} bytes, expected ${EVENT_LAYOUT.size}`);
  const type = b[F.type.offset]!;
  const reason = b[F.reason.offset]!;
  const tep = readIPv4(b, F.tunnel_endpoint.offset);
  const svc = readIPv4(b, F.svc_ip.offset);
  return {
    timestamp: readU64(b, F.timestamp.offset),
    type: type === EventType.EVENT_DROP ? 'drop' : 'trace',
    reason,
    reasonName: reasonName(reason),
    direction: directionName(b[F.direction.offset]!),
    srcIp: readIPv4(b, F.src_ip.offset),
    dstIp: readIPv4(b, F.dst_ip.offset),
    srcIdentity: readU32(b, F.src_identity.offset),
    dstIdentity: readU32(b, F.dst_identity.offset),
    ifindex: readU32(b, F.ifindex.offset),
    targetIfindex: readU32(b, F.target_ifindex.offset),
    tunnelEndpoint: tep === '0.0.0.0' ? null : tep,
    length: readU32(b, F.length.offset),
    protocol: b[F.protocol.offset]!,
    srcPort: readU16(b, F.src_port.offset),
    dstPort: readU16(b, F.dst_port.offset),
    tcpFlags: b[F.tcp_flags.offset]!,
    service: svc === '0.0.0.0' ? null : { ip: svc, port: readU16(b, F.svc_port.offset) },
  };
}

/** The C layout of an event (for fakes and round-trip tests; the datapath is the only real writer). */
export function encode(e: Omit<DatapathEvent, 'reasonName' | 'tcpFlags' | 'service'> & { tcpFlags?: number; service?: DatapathEvent['service'] }): Buffer {
  const b = Buffer.alloc(EVENT_LAYOUT.size);
  writeU64(b, F.timestamp.offset, e.timestamp);
  writeIPv4(b, F.src_ip.offset, e.srcIp);
  writeIPv4(b, F.dst_ip.offset, e.dstIp);
  writeU32(b, F.src_identity.offset, e.srcIdentity);
  writeU32(b, F.dst_identity.offset, e.dstIdentity);
  writeU32(b, F.ifindex.offset, e.ifindex);
  writeU32(b, F.target_ifindex.offset, e.targetIfindex);
  writeIPv4(b, F.tunnel_endpoint.offset, e.tunnelEndpoint ?? '0.0.0.0');
  writeU32(b, F.length.offset, e.length);
  writeU16(b, F.src_port.offset, e.srcPort);
  writeU16(b, F.dst_port.offset, e.dstPort);
  writeU8(b, F.type.offset, e.type === 'drop' ? EventType.EVENT_DROP : EventType.EVENT_TRACE);
  writeU8(b, F.reason.offset, e.reason);
  writeU8(b, F.direction.offset, directionCode(e.direction));
  writeU8(b, F.protocol.offset, e.protocol);
  writeU8(b, F.tcp_flags.offset, e.tcpFlags ?? 0);
  writeU16(b, F.svc_port.offset, e.service?.port ?? 0);
  writeIPv4(b, F.svc_ip.offset, e.service?.ip ?? '0.0.0.0');
  return b;
}

/**
 * A reader of cm_events that decodes each record. Drive it with
 * consume()/poll() or start(); close() it when done.
 */
export function openReader(map: BpfMap, onEvent: (e: DatapathEvent) => void): RingBufferReader {
  return new RingBufferReader(map, (data) => onEvent(decode(data)));
}
