// cm_settings (bpf/lib/events.h): a one-element array of run-time switches
// the programs read per packet, so they change without reloading.
import { type MapHandle, expectSize, field, readU32, struct, writeU32 } from './codec.ts';

export const MAP_NAME = 'cm_settings';

/** SETTINGS_F_* bits of settings_value.flags. */
export const SettingsFlag = {
  /** Emit an EVENT_TRACE for every forwarded packet (drops always emit). */
  SETTINGS_F_TRACE_FORWARD: 1 << 0,
  /** Emit an EVENT_TRACE for each forwarded TCP SYN without ACK (the first packet of a connection). */
  SETTINGS_F_TRACE_NEW: 1 << 1,
} as const;

/** struct settings_value. The key is a __u32 index, always 0. */
export const VALUE_LAYOUT = struct('settings_value', 4, {
  flags: field(0, 4),
});

export interface Value {
  traceForward: boolean;
  /** Forwarded TCP connection openings only (default false). */
  traceNew?: boolean;
}

const KNOWN = SettingsFlag.SETTINGS_F_TRACE_FORWARD | SettingsFlag.SETTINGS_F_TRACE_NEW;

export function encodeKey(): Buffer {
  return Buffer.alloc(4); // index 0
}

export function encodeValue(v: Value): Buffer {
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeU32(b, VALUE_LAYOUT.fields.flags.offset, (v.traceForward ? SettingsFlag.SETTINGS_F_TRACE_FORWARD : 0) | (v.traceNew ? SettingsFlag.SETTINGS_F_TRACE_NEW : 0));
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  const flags = readU32(b, VALUE_LAYOUT.fields.flags.offset);
  if ((flags & ~KNOWN) !== 0) throw new RangeError(`settings_value.flags has unknown bits: 0x${flags.toString(16)}`);
  return { traceForward: (flags & SettingsFlag.SETTINGS_F_TRACE_FORWARD) !== 0, traceNew: (flags & SettingsFlag.SETTINGS_F_TRACE_NEW) !== 0 };
}

/** The current settings (an array element always exists; all zero = defaults). */
export function get(map: MapHandle): Value {
  const b = map.lookup(encodeKey());
  return b === undefined ? { traceForward: false, traceNew: false } : decodeValue(b);
}

export function set(map: MapHandle, v: Value): void {
  map.update(encodeKey(), encodeValue(v));
}
