// cm_services (bpf/lib/lb.h): hash, frontend (VIP, port, protocol) ->
// service id, revnat id, backend count, flags, affinity timeout. One entry
// per frontend, i.e. per Service port; a Service with two ports has two.
import { expectSize, field, readIPv4, readU16, readU32, struct, typedOps, writeIPv4, writeU16, writeU32 } from './codec.ts';

export const MAP_NAME = 'cm_services';

/** L4 protocols the datapath translates. */
export type L4Protocol = 'TCP' | 'UDP';

export const IPPROTO = { TCP: 6, UDP: 17 } as const satisfies Record<L4Protocol, number>;

export function protocolNumber(p: L4Protocol): number {
  return IPPROTO[p];
}

export function protocolName(n: number): L4Protocol {
  if (n === IPPROTO.TCP) return 'TCP';
  if (n === IPPROTO.UDP) return 'UDP';
  throw new RangeError(`IP protocol ${n} is neither TCP nor UDP`);
}

/** enum lb_service_flag: bits of lb_service_value.flags. */
export const ServiceFlag = {
  SVC_F_AFFINITY: 1 << 0,
  SVC_F_MAGLEV: 1 << 1,
} as const;

const KNOWN_FLAGS = ServiceFlag.SVC_F_AFFINITY | ServiceFlag.SVC_F_MAGLEV;

/** struct lb_service_key: vip and dport network order. */
export const KEY_LAYOUT = struct('lb_service_key', 8, {
  vip: field(0, 4),
  dport: field(4, 2),
  proto: field(6, 1),
  pad: field(7, 1),
});

/** struct lb_service_value: host order. */
export const VALUE_LAYOUT = struct('lb_service_value', 16, {
  service_id: field(0, 4),
  revnat_id: field(4, 4),
  affinity_timeout: field(8, 4),
  backend_count: field(12, 2),
  flags: field(14, 2),
});

export interface Key {
  vip: string;
  port: number;
  protocol: L4Protocol;
}

export interface Value {
  /** Key of this frontend's slots (cm_backend_slots), Maglev table (cm_maglev) and affinity entries. */
  serviceId: number;
  /** cm_revnat key replies are translated back with. */
  revnatId: number;
  /**
   * Slot table mode: the number of slots 0..n-1 in cm_backend_slots.
   * Maglev mode: the number of distinct backends in the table. 0 = no
   * backend (new connections are dropped with DROP_NO_SERVICE_BACKEND, TCP
   * answered with a RST).
   */
  backendCount: number;
  /** sessionAffinity ClientIP (SVC_F_AFFINITY). */
  sessionAffinity: boolean;
  /** Seconds a client sticks to its backend since its last new connection; used with sessionAffinity. */
  affinityTimeout: number;
  /** Backends from the Maglev table in cm_maglev (SVC_F_MAGLEV) instead of cm_backend_slots. */
  maglev: boolean;
}

export function encodeKey(k: Key): Buffer {
  const f = KEY_LAYOUT.fields;
  const b = Buffer.alloc(KEY_LAYOUT.size);
  writeIPv4(b, f.vip.offset, k.vip);
  checkPort(k.port);
  b.writeUInt16BE(k.port, f.dport.offset);
  b[f.proto.offset] = protocolNumber(k.protocol);
  return b;
}

export function decodeKey(b: Buffer): Key {
  expectSize(b, KEY_LAYOUT);
  const f = KEY_LAYOUT.fields;
  return { vip: readIPv4(b, f.vip.offset), port: b.readUInt16BE(f.dport.offset), protocol: protocolName(b[f.proto.offset]!) };
}

export function encodeValue(v: Value): Buffer {
  const f = VALUE_LAYOUT.fields;
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeU32(b, f.service_id.offset, v.serviceId);
  writeU32(b, f.revnat_id.offset, v.revnatId);
  writeU32(b, f.affinity_timeout.offset, v.affinityTimeout);
  writeU16(b, f.backend_count.offset, v.backendCount);
  writeU16(b, f.flags.offset, (v.sessionAffinity ? ServiceFlag.SVC_F_AFFINITY : 0) | (v.maglev ? ServiceFlag.SVC_F_MAGLEV : 0));
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  const f = VALUE_LAYOUT.fields;
  const flags = readU16(b, f.flags.offset);
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new RangeError(`lb_service_value.flags has unknown bits: 0x${flags.toString(16)}`);
  return {
    serviceId: readU32(b, f.service_id.offset),
    revnatId: readU32(b, f.revnat_id.offset),
    backendCount: readU16(b, f.backend_count.offset),
    sessionAffinity: (flags & ServiceFlag.SVC_F_AFFINITY) !== 0,
    affinityTimeout: readU32(b, f.affinity_timeout.offset),
    maglev: (flags & ServiceFlag.SVC_F_MAGLEV) !== 0,
  };
}

export function checkPort(p: number): void {
  if (!Number.isInteger(p) || p < 0 || p > 0xffff) throw new RangeError(`port ${p} not in 0..65535`);
}

export const { lookup, update, remove, entries, updateMany, removeMany } = typedOps<Key, Value>(
  { encode: encodeKey, decode: decodeKey },
  { encode: encodeValue, decode: decodeValue },
);
