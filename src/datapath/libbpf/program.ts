// A loaded BPF program and BPF_PROG_TEST_RUN.
import { ClosedError, bpfError } from '../errors.ts';
import { addressOf, lib } from './ffi.ts';

/**
 * Id and name of a loaded program as the kernel keeps them (struct
 * bpf_prog_info: id at offset 4, name[16] at 64; the name cut to 15
 * characters), or undefined when the fd is no program.
 */
export function programInfo(fd: number): { id: number; name: string } | undefined {
  const info = Buffer.alloc(256);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(info.length, 0);
  if (lib().bpf.bpf_obj_get_info_by_fd(fd, info, len) !== 0) return undefined;
  const raw = info.subarray(64, 80);
  const end = raw.indexOf(0);
  return { id: info.readUInt32LE(4), name: raw.subarray(0, end < 0 ? raw.length : end).toString('latin1') };
}

/** tc verdicts (linux/pkt_cls.h) as programs return them. */
export const TcAction = {
  unspec: -1,
  ok: 0,
  reclassify: 1,
  shot: 2,
  pipe: 3,
  stolen: 4,
  queued: 5,
  repeat: 6,
  redirect: 7,
} as const;

export interface TestRunOptions {
  /** Packet bytes; for tc programs an Ethernet frame (at least 14 bytes). */
  data: Buffer;
  /** Room for the packet after the run; default data.length + 1024. */
  dataSizeOut?: number;
  /** Context in, e.g. a `struct __sk_buff` built with skbContext(). */
  ctx?: Buffer;
  /** Room for the context after the run; default ctx.length when ctx is given. */
  ctxSizeOut?: number;
  /** Run the program this many times (duration is the average). */
  repeat?: number;
  flags?: number;
  cpu?: number;
}

export interface TestRunResult {
  retval: number;
  /** The packet as the program left it. */
  dataOut: Buffer;
  /** The context as the program left it, when ctx was given. */
  ctxOut: Buffer | undefined;
  /** Average run time per repetition. */
  durationNs: number;
}

/** Fields of `struct __sk_buff` that BPF_PROG_TEST_RUN accepts as input for skb programs. */
export interface SkbContextFields {
  mark?: number;
  priority?: number;
  ingressIfindex?: number;
  /** Must name an existing device in the caller's netns when > 1. */
  ifindex?: number;
  cb?: readonly number[];
  tstamp?: bigint;
  wireLen?: number;
  gsoSegs?: number;
  gsoSize?: number;
}

/** sizeof(struct __sk_buff) and the offsets of its writable fields (linux/bpf.h). */
export const SK_BUFF_SIZE = 192;

/** A `struct __sk_buff` for TestRunOptions.ctx; unset fields are zero as the kernel requires. */
export function skbContext(f: SkbContextFields = {}): Buffer {
  const b = Buffer.alloc(SK_BUFF_SIZE);
  if (f.mark !== undefined) b.writeUInt32LE(f.mark >>> 0, 8);
  if (f.priority !== undefined) b.writeUInt32LE(f.priority >>> 0, 32);
  if (f.ingressIfindex !== undefined) b.writeUInt32LE(f.ingressIfindex >>> 0, 36);
  if (f.ifindex !== undefined) b.writeUInt32LE(f.ifindex >>> 0, 40);
  if (f.cb !== undefined) {
    if (f.cb.length > 5) throw new RangeError('__sk_buff.cb has 5 words');
    f.cb.forEach((w, i) => b.writeUInt32LE(w >>> 0, 48 + 4 * i));
  }
  if (f.tstamp !== undefined) b.writeBigUInt64LE(f.tstamp, 152);
  if (f.wireLen !== undefined) b.writeUInt32LE(f.wireLen >>> 0, 160);
  if (f.gsoSegs !== undefined) b.writeUInt32LE(f.gsoSegs >>> 0, 164);
  if (f.gsoSize !== undefined) b.writeUInt32LE(f.gsoSize >>> 0, 176);
  return b;
}

export class BpfProgram {
  readonly name: string;
  readonly type: number;
  readonly sectionName: string;
  #fd: number;

  /** A program fd owned by its BpfObject. */
  constructor(fd: number, name: string, type: number, sectionName: string) {
    this.#fd = fd;
    this.name = name;
    this.type = type;
    this.sectionName = sectionName;
  }

  get fd(): number {
    if (this.#fd < 0) throw new ClosedError('program', this.name);
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  /** Runs the program once (or `repeat` times) on a crafted packet (bpf_prog_test_run_opts). */
  testRun(opts: TestRunOptions): TestRunResult {
    const data = opts.data;
    const dataOut = Buffer.alloc(opts.dataSizeOut ?? data.length + 1024);
    const ctx = opts.ctx;
    const ctxOut = ctx ? Buffer.alloc(opts.ctxSizeOut ?? ctx.length) : undefined;
    // struct bpf_test_run_opts (libbpf 1.1), 80 bytes:
    //  0 sz | 8 data_in | 16 data_out | 24 data_size_in | 28 data_size_out
    // 32 ctx_in | 40 ctx_out | 48 ctx_size_in | 52 ctx_size_out | 56 retval
    // 60 repeat | 64 duration | 68 flags | 72 cpu | 76 batch_size
    const o = Buffer.alloc(80);
    o.writeBigUInt64LE(80n, 0);
    o.writeBigUInt64LE(addressOf(data), 8);
    o.writeBigUInt64LE(addressOf(dataOut), 16);
    o.writeUInt32LE(data.length, 24);
    o.writeUInt32LE(dataOut.length, 28);
    if (ctx && ctxOut) {
      o.writeBigUInt64LE(addressOf(ctx), 32);
      o.writeBigUInt64LE(addressOf(ctxOut), 40);
      o.writeUInt32LE(ctx.length, 48);
      o.writeUInt32LE(ctxOut.length, 52);
    }
    o.writeInt32LE(opts.repeat ?? 0, 60);
    o.writeUInt32LE(opts.flags ?? 0, 68);
    o.writeUInt32LE(opts.cpu ?? 0, 72);
    const rc = lib().bpf.bpf_prog_test_run_opts(this.fd, o);
    if (rc !== 0) throw bpfError('bpf_prog_test_run_opts', rc, { target: this.name });
    // Keep the buffers alive until after the call: the opts hold raw addresses only.
    void data;
    const outLen = o.readUInt32LE(28);
    const ctxLen = ctxOut ? o.readUInt32LE(52) : 0;
    return {
      retval: o.readInt32LE(56),
      dataOut: Buffer.from(dataOut.subarray(0, outLen)),
      ctxOut: ctxOut ? Buffer.from(ctxOut.subarray(0, ctxLen)) : undefined,
      durationNs: o.readUInt32LE(64),
    };
  }

  /** Marks the program closed; its BpfObject owns and closes the fd. */
  invalidate(): void {
    this.#fd = -1;
  }
}
