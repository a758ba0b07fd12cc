// A BPF ELF object: open (with the pin root for LIBBPF_PIN_BY_NAME maps),
// set `const volatile` globals, load, then hand out its maps and programs.
import { mkdirSync } from 'node:fs';
import { BpfError, ClosedError, VerifierError, bpfError } from '../errors.ts';
import { type Ptr, addressOf as addr, captureLog, isNull, lastErrno, lib, viewOf } from './ffi.ts';
import { BpfMap, type MapInfo } from './map.ts';
import { BpfProgram } from './program.ts';

export interface OpenOptions {
  /** Directory (on a bpffs) where maps declared with LIBBPF_PIN_BY_NAME are pinned and reused. */
  pinRoot?: string;
  /** Override of the object name libbpf derives from the file name (prefix of internal map names). */
  objectName?: string;
  /**
   * Verifier log level for every program (kernel_log_level: 1 instructions,
   * 2 every state, 4 statistics); 0 (default) none. The log of a successful
   * load is `loadLog` when libbpf's debug messages are on
   * (CLUSTERMESH_LIBBPF_DEBUG=1); a rejected program's log is in the
   * VerifierError either way. For measurements (bench/load), not agents.
   */
  kernelLogLevel?: number;
}

const BTF_KIND_VAR = 14;
const BTF_KIND_DATASEC = 15;

interface ConstVar {
  offset: number;
  size: number;
}

export class BpfObject {
  readonly path: string;
  #ptr: Ptr | null;
  #loaded = false;
  /** What libbpf printed during a successful load() (see OpenOptions.kernelLogLevel). */
  loadLog = '';
  readonly #maps = new Map<string, BpfMap>();
  readonly #programs = new Map<string, BpfProgram>();
  // Strings referenced by raw address from the opts struct must outlive open().
  readonly #keepAlive: Buffer[];

  private constructor(path: string, ptr: Ptr, keepAlive: Buffer[]) {
    this.path = path;
    this.#ptr = ptr;
    this.#keepAlive = keepAlive;
  }

  /** bpf_object__open_file with bpf_object_open_opts.pin_root_path = pinRoot. */
  static open(path: string, opts: OpenOptions = {}): BpfObject {
    const { bpf } = lib();
    const keep: Buffer[] = [];
    const cstr = (s: string): Buffer => {
      const b = Buffer.from(s + '\0', 'utf8');
      keep.push(b);
      return b;
    };
    // struct bpf_object_open_opts (libbpf 1.1), 80 bytes:
    //  0 sz | 8 object_name | 16 relaxed_maps | 24 pin_root_path | 32 (removed)
    // 40 kconfig | 48 btf_custom_path | 56 kernel_log_buf | 64 kernel_log_size | 72 kernel_log_level
    const o = Buffer.alloc(80);
    o.writeBigUInt64LE(80n, 0);
    if (opts.objectName !== undefined) o.writeBigUInt64LE(addr(cstr(opts.objectName)), 8);
    if (opts.pinRoot !== undefined) {
      mkdirSync(opts.pinRoot, { recursive: true });
      o.writeBigUInt64LE(addr(cstr(opts.pinRoot)), 24);
    }
    if (opts.kernelLogLevel) o.writeUInt32LE(opts.kernelLogLevel, 72);
    const r = captureLog(() => {
      const p = bpf.bpf_object__open_file(path, o);
      return { p, errno: lastErrno() };
    });
    if ('error' in r) throw r.error;
    const { p, errno } = r.value;
    if (isNull(p)) throw bpfError('bpf_object__open_file', errno || 22, { target: path, log: r.log });
    return new BpfObject(path, p, keep);
  }

  get loaded(): boolean {
    return this.#loaded;
  }

  get name(): string {
    return lib().bpf.bpf_object__name(this.#handle('name'));
  }

  /**
   * Sets a `const volatile` global (in .rodata) before load. A number or
   * bigint is written little-endian in the variable's size; a Buffer must
   * have exactly that size.
   */
  setConst(name: string, value: Buffer | number | bigint): void {
    const h = this.#handle('setConst');
    if (this.#loaded) throw new BpfError('setConst', 16 /* EBUSY */, { target: `${name}: object already loaded` });
    const v = this.#findRodataVar(h, name);
    const bytes = encodeConst(name, value, v.size);
    const rodata = this.#rodataMap(h);
    const psize = Buffer.alloc(8);
    const p = lib().bpf.bpf_map__initial_value(rodata, psize);
    if (isNull(p)) throw bpfError('bpf_map__initial_value', 22, { target: `.rodata of ${this.path}` });
    const size = Number(psize.readBigUInt64LE(0));
    if (v.offset + v.size > size) throw new BpfError('setConst', 34 /* ERANGE */, { target: `${name} at ${v.offset}+${v.size} beyond .rodata of ${size}` });
    bytes.copy(viewOf(p, size), v.offset);
  }

  /** Changes a map's max_entries before load. */
  setMaxEntries(mapName: string, n: number): void {
    const h = this.#handle('setMaxEntries');
    const m = this.#mapPtr(h, mapName);
    const rc = lib().bpf.bpf_map__set_max_entries(m, n);
    if (rc !== 0) throw bpfError('bpf_map__set_max_entries', rc, { target: mapName });
  }

  /** Pins (or reuses the pin of) a map at @path instead of <pinRoot>/<name>; before load. */
  setPinPath(mapName: string, path: string): void {
    const h = this.#handle('setPinPath');
    const m = this.#mapPtr(h, mapName);
    const rc = lib().bpf.bpf_map__set_pin_path(m, path);
    if (rc !== 0) throw bpfError('bpf_map__set_pin_path', rc, { target: mapName });
  }

  /** A map's definition as the object will create it (after setMaxEntries; before or after load). */
  mapDefinition(mapName: string): MapInfo {
    const h = this.#handle('mapDefinition');
    const { bpf } = lib();
    const m = this.#mapPtr(h, mapName);
    return {
      name: bpf.bpf_map__name(m),
      type: bpf.bpf_map__type(m),
      keySize: bpf.bpf_map__key_size(m),
      valueSize: bpf.bpf_map__value_size(m),
      maxEntries: bpf.bpf_map__max_entries(m),
      flags: bpf.bpf_map__map_flags(m),
    };
  }

  /** Names of the object's maps (including internal ones like `<obj>.rodata`). */
  mapNames(): string[] {
    const h = this.#handle('mapNames');
    const { bpf } = lib();
    const names: string[] = [];
    for (let m = bpf.bpf_object__next_map(h, null); !isNull(m); m = bpf.bpf_object__next_map(h, m)) names.push(bpf.bpf_map__name(m));
    return names;
  }

  /** Names of the object's programs (function names). */
  programNames(): string[] {
    const h = this.#handle('programNames');
    const { bpf } = lib();
    const names: string[] = [];
    for (let p = bpf.bpf_object__next_program(h, null); !isNull(p); p = bpf.bpf_object__next_program(h, p)) names.push(bpf.bpf_program__name(p));
    return names;
  }

  /**
   * Creates the maps (reusing pinned ones), loads the programs. A rejected
   * program throws VerifierError with the verifier log; other failures a
   * BpfError whose `log` holds what libbpf printed.
   */
  load(): void {
    const h = this.#handle('load');
    if (this.#loaded) return;
    const r = captureLog(() => lib().bpf.bpf_object__load(h));
    if ('error' in r) throw r.error;
    const rc = r.value;
    if (rc !== 0) throw loadError(rc, this.path, r.log);
    this.loadLog = r.log;
    this.#loaded = true;
  }

  /** A map of the loaded object, by name. The object owns its fd. */
  map(name: string): BpfMap {
    const h = this.#handle('map');
    this.#requireLoaded('map');
    let m = this.#maps.get(name);
    if (m) return m;
    const { bpf } = lib();
    const p = this.#mapPtr(h, name);
    m = new BpfMap(
      bpf.bpf_map__fd(p),
      {
        name: bpf.bpf_map__name(p),
        type: bpf.bpf_map__type(p),
        keySize: bpf.bpf_map__key_size(p),
        valueSize: bpf.bpf_map__value_size(p),
        maxEntries: bpf.bpf_map__max_entries(p),
        flags: bpf.bpf_map__map_flags(p),
      },
      false,
    );
    this.#maps.set(name, m);
    return m;
  }

  /** A program of the loaded object, by function name. The object owns its fd. */
  program(name: string): BpfProgram {
    const h = this.#handle('program');
    this.#requireLoaded('program');
    let prog = this.#programs.get(name);
    if (prog) return prog;
    const { bpf } = lib();
    const p = bpf.bpf_object__find_program_by_name(h, name);
    if (isNull(p)) throw new BpfError('bpf_object__find_program_by_name', 2, { target: `${name} in ${this.path}` });
    prog = new BpfProgram(bpf.bpf_program__fd(p), bpf.bpf_program__name(p), bpf.bpf_program__type(p), bpf.bpf_program__section_name(p));
    this.#programs.set(name, prog);
    return prog;
  }

  /** Closes every fd of the object (pins stay). Maps and programs handed out become closed. Idempotent. */
  close(): void {
    const h = this.#ptr;
    if (h === null) return;
    this.#ptr = null;
    for (const m of this.#maps.values()) m.invalidate();
    for (const p of this.#programs.values()) p.invalidate();
    lib().bpf.bpf_object__close(h);
    this.#keepAlive.length = 0;
  }

  #handle(op: string): Ptr {
    if (this.#ptr === null) throw new ClosedError(op, this.path);
    return this.#ptr;
  }

  #requireLoaded(op: string): void {
    if (!this.#loaded) throw new BpfError(op, 22, { target: `${this.path} is not loaded` });
  }

  #mapPtr(h: Ptr, name: string): Ptr {
    const p = lib().bpf.bpf_object__find_map_by_name(h, name);
    if (isNull(p)) throw new BpfError('bpf_object__find_map_by_name', 2, { target: `${name} in ${this.path}` });
    return p;
  }

  #rodataMap(h: Ptr): Ptr {
    const { bpf } = lib();
    for (let m = bpf.bpf_object__next_map(h, null); !isNull(m); m = bpf.bpf_object__next_map(h, m)) {
      if (bpf.bpf_map__is_internal(m) && bpf.bpf_map__name(m).endsWith('.rodata')) return m;
    }
    throw new BpfError('setConst', 2, { target: `${this.path} has no .rodata map` });
  }

  /** Offset and size of a variable of the .rodata DATASEC, read from the object's (fixed-up) BTF. */
  #findRodataVar(h: Ptr, name: string): ConstVar {
    const { bpf } = lib();
    const btf = bpf.bpf_object__btf(h);
    if (isNull(btf)) throw new BpfError('bpf_object__btf', 2, { target: `${this.path} has no BTF` });
    const secId = bpf.btf__find_by_name_kind(btf, '.rodata', BTF_KIND_DATASEC);
    if (secId < 0) throw new BpfError('btf__find_by_name_kind', -secId, { target: `.rodata in ${this.path}` });
    const sec = bpf.btf__type_by_id(btf, secId);
    if (isNull(sec)) throw new BpfError('btf__type_by_id', 2, { target: `.rodata in ${this.path}` });
    // struct btf_type { __u32 name_off; __u32 info; __u32 size; } followed by
    // vlen × struct btf_var_secinfo { __u32 type; __u32 offset; __u32 size; }
    const head = viewOf(sec, 12);
    const vlen = head.readUInt32LE(4) & 0xffff;
    const secinfo = viewOf(sec, 12 + 12 * vlen);
    for (let i = 0; i < vlen; i++) {
      const at = 12 + 12 * i;
      const varId = secinfo.readUInt32LE(at);
      const t = bpf.btf__type_by_id(btf, varId);
      if (isNull(t)) continue;
      const vt = viewOf(t, 12);
      const kind = (vt.readUInt32LE(4) >>> 24) & 0x1f;
      if (kind !== BTF_KIND_VAR) continue;
      if (bpf.btf__name_by_offset(btf, vt.readUInt32LE(0)) === name) {
        return { offset: secinfo.readUInt32LE(at + 4), size: secinfo.readUInt32LE(at + 8) };
      }
    }
    throw new BpfError('setConst', 2, { target: `no const volatile ${name} in .rodata of ${this.path}` });
  }
}

function encodeConst(name: string, value: Buffer | number | bigint, size: number): Buffer {
  if (Buffer.isBuffer(value)) {
    if (value.length !== size) throw new RangeError(`setConst ${name}: ${value.length} bytes for a variable of ${size}`);
    return value;
  }
  const b = Buffer.alloc(size);
  const big = typeof value === 'bigint' ? value : BigInt(Math.trunc(value));
  if (typeof value === 'number' && !Number.isSafeInteger(value)) throw new RangeError(`setConst ${name}: ${value} is not a safe integer`);
  if (![1, 2, 4, 8].includes(size)) throw new RangeError(`setConst ${name}: a number for a variable of ${size} bytes; pass a Buffer`);
  const bits = BigInt(size * 8);
  const min = -(1n << (bits - 1n));
  const max = (1n << bits) - 1n;
  if (big < min || big > max) throw new RangeError(`setConst ${name}: ${value} does not fit in ${size} bytes`);
  const u = BigInt.asUintN(size * 8, big);
  for (let i = 0; i < size; i++) b[i] = Number((u >> BigInt(8 * i)) & 0xffn);
  return b;
}

const PROG_LOG_RE = /prog '([^']+)': -- BEGIN PROG LOAD LOG --\n([\s\S]*?)-- END PROG LOAD LOG --/;
const PROG_FAIL_RE = /prog '([^']+)': (?:BPF program load failed|failed to load)/;

/** Classifies a failed bpf_object__load where libbpf reported it: a rejected program, or anything else. */
function loadError(rc: number, path: string, log: string): BpfError {
  const withLog = log.match(PROG_LOG_RE);
  const failed = withLog ?? log.match(PROG_FAIL_RE);
  if (failed) {
    return new VerifierError('bpf_object__load', rc, {
      target: path,
      log,
      program: failed[1]!,
      verifierLog: withLog ? withLog[2]! : log,
    });
  }
  return bpfError('bpf_object__load', rc, { target: path, log });
}
