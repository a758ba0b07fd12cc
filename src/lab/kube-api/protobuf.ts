// Decoding of Kubernetes protobuf request bodies (application/vnd.kubernetes.protobuf).
// kubectl's typed clients (`kubectl create namespace|configmap|secret|deployment|…`)
// send them; the server answers in JSON, which those clients accept too.
//
// Envelope: the bytes "k8s\0", then a runtime.Unknown message: typeMeta
// (apiVersion, kind) and raw (the object's message). Messages are decoded with
// the field table of protobuf-schema.gen.ts into the object's JSON form: Time
// as RFC 3339, IntOrString as a number or string, Quantity as its string,
// bytes as base64. Go writes every non-pointer field, zero or not; zero values
// are dropped as JSON's omitempty would (except fields where 0 means something).

import { badRequest } from './errors.ts';
import type { Json, JsonObject } from './json.ts';
import { PROTO_SCHEMA } from './protobuf-schema.gen.ts';

export const PROTOBUF_CONTENT_TYPE = 'application/vnd.kubernetes.protobuf';
const MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]);
/** Fields whose zero value is meaningful (pointers in Go, or required numbers). */
const KEEP_ZERO = new Set(['replicas', 'port', 'containerPort', 'intVal', 'count', 'terminationGracePeriodSeconds']);

const PACKAGE_OF_GROUP: Record<string, string> = { '': 'core', apps: 'apps', 'discovery.k8s.io': 'discovery', 'networking.k8s.io': 'networking', 'authentication.k8s.io': 'authentication', 'meta.k8s.io': 'meta' };

class Reader {
  pos = 0;
  constructor(readonly buf: Buffer) {}
  get done(): boolean {
    return this.pos >= this.buf.length;
  }
  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (this.pos >= this.buf.length) throw badRequest('protobuf: truncated varint');
      const b = this.buf[this.pos++]!;
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 70n) throw badRequest('protobuf: varint too long');
    }
  }
  bytes(): Buffer {
    const len = Number(this.varint());
    if (this.pos + len > this.buf.length) throw badRequest('protobuf: truncated field');
    const b = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return b;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else throw badRequest(`protobuf: unsupported wire type ${wire}`);
  }
}

const toInt = (v: bigint): number => Number(BigInt.asIntN(64, v));

function decodeScalar(t: string, wire: number, r: Reader): Json {
  switch (t) {
    case 's':
      return r.bytes().toString('utf8');
    case 'y':
      return r.bytes().toString('base64');
    case 'b':
      return r.varint() !== 0n;
    case 'i':
      return toInt(r.varint());
    case 'd': {
      if (wire === 1) {
        const v = r.buf.readDoubleLE(r.pos);
        r.pos += 8;
        return v;
      }
      const v = r.buf.readFloatLE(r.pos);
      r.pos += 4;
      return v;
    }
  }
  throw badRequest(`protobuf: unknown scalar type ${t}`);
}

function decodeValue(t: string, wire: number, r: Reader): Json | undefined {
  if (t.length === 1) return decodeScalar(t, wire, r);
  return decodeMessage(t, r.bytes());
}

function isZero(v: Json | undefined): boolean {
  return v === undefined || v === '' || v === 0 || v === false;
}

/** Decodes message `name` into its JSON form (undefined: a value JSON omits). */
export function decodeMessage(name: string, buf: Buffer): Json | undefined {
  const fields = PROTO_SCHEMA[name];
  if (fields === undefined) throw badRequest(`protobuf: message ${name} is not known to this server; send JSON`);
  const r = new Reader(buf);
  const out: JsonObject = {};
  const raw: Record<string, Json | undefined> = {};
  while (!r.done) {
    const tag = r.varint();
    const num = String(tag >> 3n);
    const wire = Number(tag & 7n);
    const spec = fields[num];
    if (spec === undefined) {
      r.skip(wire);
      continue;
    }
    const i = spec.indexOf(':');
    const field = spec.slice(0, i);
    const type = spec.slice(i + 1);
    if (type.startsWith('%')) {
      const entry = new Reader(r.bytes());
      let key = '';
      let value: Json | undefined;
      while (!entry.done) {
        const et = entry.varint();
        const ew = Number(et & 7n);
        if (et >> 3n === 1n) key = entry.bytes().toString('utf8');
        else if (et >> 3n === 2n) value = decodeValue(type.slice(1), ew, entry);
        else entry.skip(ew);
      }
      const map = (out[field] ??= {}) as JsonObject;
      map[key] = value ?? '';
    } else if (type.startsWith('*')) {
      const el = type.slice(1);
      const list = (out[field] ??= []) as Json[];
      if (wire === 2 && (el === 'i' || el === 'b' || el === 'd')) {
        // packed
        const packed = new Reader(r.bytes());
        while (!packed.done) list.push(decodeScalar(el, el === 'd' ? 1 : 0, packed));
      } else {
        const v = decodeValue(el, wire, r);
        list.push(v ?? {});
      }
    } else {
      raw[field] = decodeValue(type, wire, r);
      const v = raw[field];
      if (v !== undefined && (!isZero(v) || KEEP_ZERO.has(field))) out[field] = v;
    }
  }
  // Messages with a JSON form of their own.
  switch (name) {
    case 'meta.Time':
    case 'meta.MicroTime': {
      const s = Number(raw.seconds ?? 0);
      const n = Number(raw.nanos ?? 0);
      if (s === 0 && n === 0) return undefined;
      const base = new Date(s * 1000).toISOString().replace(/\.\d+Z$/, '');
      return name === 'meta.Time' ? `${base}Z` : `${base}.${String(Math.floor(n / 1000)).padStart(6, '0')}Z`;
    }
    case 'intstr.IntOrString':
      return Number(raw.type ?? 0) === 1 ? String(raw.strVal ?? '') : Number(raw.intVal ?? 0);
    case 'resource.Quantity':
      return String(raw.string ?? '');
    case 'runtime.RawExtension':
    case 'meta.FieldsV1': {
      const b = typeof raw.raw === 'string' ? Buffer.from(raw.raw, 'base64').toString('utf8') : '';
      if (b === '') return undefined;
      try {
        return JSON.parse(b) as Json;
      } catch {
        return undefined;
      }
    }
    case 'meta.Duration': {
      const ns = Number(raw.duration ?? 0);
      return `${ns / 1e9}s`;
    }
  }
  return out;
}

/** Decodes a protobuf request body into the object it carries. */
export function decodeProtobufBody(body: Buffer): JsonObject {
  if (body.length < 4 || !body.subarray(0, 4).equals(MAGIC)) throw badRequest('protobuf: the body does not start with the Kubernetes magic bytes');
  const unknown = decodeMessage('runtime.Unknown', body.subarray(4)) as JsonObject;
  const tm = (unknown.typeMeta ?? {}) as JsonObject;
  const apiVersion = String(tm.apiVersion ?? '');
  const kind = String(tm.kind ?? '');
  const group = apiVersion.includes('/') ? apiVersion.slice(0, apiVersion.indexOf('/')) : '';
  const pkg = PACKAGE_OF_GROUP[group];
  if (pkg === undefined || kind === '') throw badRequest(`protobuf: cannot decode ${kind || 'an object'} of ${apiVersion || 'no apiVersion'}; send JSON`);
  const rawB64 = typeof unknown.raw === 'string' ? unknown.raw : '';
  const obj = (decodeMessage(kind === 'DeleteOptions' ? 'meta.DeleteOptions' : `${pkg}.${kind}`, Buffer.from(rawB64, 'base64')) ?? {}) as JsonObject;
  return { apiVersion, kind, ...obj };
}
