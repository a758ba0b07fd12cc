// Reason codes, directions and event types of the datapath, mirroring the C
// enums (bpf/lib/drop.h, events.h, metrics.h) name for name and value for
// value; btf.test.ts fails when they drift. Values are stable API: the C
// side appends only.

/** enum cm_drop_reason (bpf/lib/drop.h): why a packet was dropped. */
export const DropReason = {
  DROP_INVALID_PACKET: 130,
  DROP_UNSUPPORTED_L3: 131,
  DROP_UNKNOWN_SOURCE: 132,
  DROP_SOURCE_MISMATCH: 133,
  DROP_UNKNOWN_ENDPOINT: 134,
  DROP_TTL_EXCEEDED: 135,
  DROP_FRAG_NEEDED: 136,
  DROP_NO_TUNNEL_ENDPOINT: 137,
  DROP_NO_TUNNEL_DEVICE: 138,
  DROP_NO_TUNNEL_KEY: 139,
  DROP_INVALID_IDENTITY: 140,
  DROP_WRITE_ERROR: 141,
  DROP_INTERNAL: 142,
  DROP_NO_SERVICE_BACKEND: 143,
  DROP_SERVICE_FRAGMENT: 144,
  DROP_CT_WRITE_FAILED: 145,
  DROP_POLICY_DENY: 146,
  DROP_POLICY: 147,
  DROP_NO_ROUTE: 148,
} as const;
export type DropReasonName = keyof typeof DropReason;

/** enum cm_trace_reason (bpf/lib/events.h): why a packet went on. */
export const TraceReason = {
  TRACE_TO_ENDPOINT: 1,
  TRACE_TO_OVERLAY: 2,
  TRACE_TO_STACK: 3,
  TRACE_ARP_REPLY: 4,
  /** Not a forward of its own: a packet translated to a service backend, counted besides where it went. */
  TRACE_SERVICE_XLATE: 5,
  /** Native routing: unencapsulated, to the FIB's next hop. */
  TRACE_TO_NETWORK: 6,
  /** Not a packet: an event the ring buffer had no room for. */
  TRACE_EVENT_LOST: 127,
} as const;
export type TraceReasonName = keyof typeof TraceReason;

/** enum cm_direction (bpf/lib/metrics.h), from the pod's point of view. */
export const Direction = {
  DIR_UNKNOWN: 0,
  DIR_INGRESS: 1,
  DIR_EGRESS: 2,
} as const;
export type DirectionName = 'unknown' | 'ingress' | 'egress';

/** enum cm_event_type (bpf/lib/events.h). */
export const EventType = {
  EVENT_DROP: 1,
  EVENT_TRACE: 2,
} as const;
export type EventTypeName = 'drop' | 'trace';

const DESCRIPTIONS: Readonly<Record<DropReasonName | TraceReasonName, string>> = {
  DROP_INVALID_PACKET: 'invalid packet',
  DROP_UNSUPPORTED_L3: 'unsupported L3 protocol',
  DROP_UNKNOWN_SOURCE: 'source is no local endpoint',
  DROP_SOURCE_MISMATCH: 'source address from the wrong interface',
  DROP_UNKNOWN_ENDPOINT: 'destination is no local endpoint',
  DROP_TTL_EXCEEDED: 'TTL exceeded',
  DROP_FRAG_NEEDED: 'larger than the tunnel or route MTU',
  DROP_NO_TUNNEL_ENDPOINT: 'no tunnel endpoint for destination',
  DROP_NO_TUNNEL_DEVICE: 'no tunnel device configured',
  DROP_NO_TUNNEL_KEY: 'no tunnel metadata',
  DROP_INVALID_IDENTITY: 'identity does not fit the VNI',
  DROP_WRITE_ERROR: 'failed to write packet or tunnel metadata',
  DROP_INTERNAL: 'internal error',
  DROP_NO_SERVICE_BACKEND: 'service has no backend',
  DROP_SERVICE_FRAGMENT: 'fragmented service traffic',
  DROP_CT_WRITE_FAILED: 'conntrack entry not written',
  DROP_POLICY_DENY: 'denied by policy',
  DROP_POLICY: 'not allowed by policy',
  DROP_NO_ROUTE: 'no route (native routing)',
  TRACE_TO_ENDPOINT: 'to endpoint',
  TRACE_TO_OVERLAY: 'to overlay',
  TRACE_TO_STACK: 'to stack',
  TRACE_ARP_REPLY: 'ARP reply',
  TRACE_SERVICE_XLATE: 'translated to a service backend',
  TRACE_TO_NETWORK: 'to network (native routing)',
  TRACE_EVENT_LOST: 'event lost',
};

const byCode = new Map<number, DropReasonName | TraceReasonName>([
  ...(Object.entries(DropReason) as Array<[DropReasonName, number]>).map(([n, v]) => [v, n] as const),
  ...(Object.entries(TraceReason) as Array<[TraceReasonName, number]>).map(([n, v]) => [v, n] as const),
]);

/** Drop reasons are >= 128, trace reasons below (one code space for metrics). */
export function isDropReason(code: number): boolean {
  return code >= 128;
}

/** 'DROP_TTL_EXCEEDED', 'TRACE_TO_OVERLAY', or 'REASON_<n>' for a code this build does not know. */
export function reasonName(code: number): string {
  return byCode.get(code) ?? `REASON_${code}`;
}

/** 'TTL exceeded', 'to overlay', ... for humans. */
export function reasonDescription(code: number): string {
  const n = byCode.get(code);
  return n ? DESCRIPTIONS[n] : `unknown reason ${code}`;
}

export function directionName(code: number): DirectionName {
  return code === Direction.DIR_INGRESS ? 'ingress' : code === Direction.DIR_EGRESS ? 'egress' : 'unknown';
}

export function directionCode(name: DirectionName): number {
  return name === 'ingress' ? Direction.DIR_INGRESS : name === 'egress' ? Direction.DIR_EGRESS : Direction.DIR_UNKNOWN;
}
