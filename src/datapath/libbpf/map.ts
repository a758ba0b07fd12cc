// A BPF map behind a file descriptor: element operations, iteration, batch
// operations with a transparent fallback, per-CPU values, pinning.
import { constants as osConstants } from 'node:os';
import { ClosedError, ENOTSUPP, bpfError, mapError } from '../errors.ts';
import { lib } from './ffi.ts';

/** enum bpf_map_type values this project meets (linux/bpf.h). */
export const MapType = {
  hash: 1,
  array: 2,
  progArray: 3,
  perfEventArray: 4,
  percpuHash: 5,
  percpuArray: 6,
  stackTrace: 7,
  cgroupArray: 8,
  lruHash: 9,
  lruPercpuHash: 10,
  lpmTrie: 11,
  arrayOfMaps: 12,
  hashOfMaps: 13,
  devmap: 14,
  sockmap: 15,
  cpumap: 16,
  xskmap: 17,
  sockhash: 18,
  cgroupStorage: 19,
  reuseportSockarray: 20,
  percpuCgroupStorage: 21,
  queue: 22,
  stack: 23,
  skStorage: 24,
  devmapHash: 25,
  structOps: 26,
  ringbuf: 27,
} as const;

const PERCPU_TYPES: ReadonlySet<number> = new Set([MapType.percpuHash, MapType.percpuArray, MapType.lruPercpuHash, MapType.percpuCgroupStorage]);

export type UpdateFlag = 'any' | 'noexist' | 'exist';
const UPDATE_FLAGS: Record<UpdateFlag, number> = { any: 0, noexist: 1, exist: 2 };

export interface MapInfo {
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

/**
 * Whether two map definitions are the same in what libbpf compares before it
 * reuses a pinned map (type, key and value size, max_entries, flags); the name
 * is not compared.
 */
export function sameDefinition(a: Omit<MapInfo, 'name'>, b: Omit<MapInfo, 'name'>): boolean {
  return a.type === b.type && a.keySize === b.keySize && a.valueSize === b.valueSize && a.maxEntries === b.maxEntries && a.flags === b.flags;
}

let possibleCpus: number | undefined;

/** Number of possible CPUs: the element count of per-CPU values. */
export function numPossibleCpus(): number {
  if (possibleCpus === undefined) {
    const n = lib().bpf.libbpf_num_possible_cpus();
    if (n <= 0) throw bpfError('libbpf_num_possible_cpus', n);
    possibleCpus = n;
  }
  return possibleCpus;
}

/** Splits a per-CPU lookup result into one Buffer (valueSize bytes) per CPU. Views, not copies. */
export function splitPerCpu(buf: Buffer, valueSize: number, nCpus = numPossibleCpus()): Buffer[] {
  const stride = roundUp8(valueSize);
  if (buf.length < stride * nCpus) throw new RangeError(`per-CPU value of ${buf.length} bytes, expected ${stride * nCpus}`);
  const out: Buffer[] = [];
  for (let i = 0; i < nCpus; i++) out.push(buf.subarray(i * stride, i * stride + valueSize));
  return out;
}

/** Joins per-CPU values (one per possible CPU, or one replicated to all) into the kernel's layout. */
export function joinPerCpu(values: readonly Buffer[], valueSize: number, nCpus = numPossibleCpus()): Buffer {
  const stride = roundUp8(valueSize);
  const out = Buffer.alloc(stride * nCpus);
  if (values.length !== 1 && values.length !== nCpus) throw new RangeError(`${values.length} per-CPU values for ${nCpus} CPUs`);
  for (let i = 0; i < nCpus; i++) {
    const v = values.length === 1 ? values[0]! : values[i]!;
    if (v.length !== valueSize) throw new RangeError(`per-CPU value of ${v.length} bytes, expected ${valueSize}`);
    v.copy(out, i * stride);
  }
  return out;
}

function roundUp8(n: number): number {
  return (n + 7) & ~7;
}

const E = osConstants.errno;

/** bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; } */
function batchOpts(elemFlags = 0): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(24n, 0);
  b.writeBigUInt64LE(BigInt(elemFlags), 8);
  return b;
}

function isUnsupported(errno: number): boolean {
  return errno === E.EINVAL || errno === E.EOPNOTSUPP || errno === ENOTSUPP || errno === E.ENOSYS;
}

export class BpfMap {
  readonly name: string;
  readonly type: number;
  readonly keySize: number;
  /** Size of one value as declared; per-CPU maps read and write nCpus × roundup(valueSize, 8). */
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly flags: number;
  readonly perCpu: boolean;
  #fd: number;
  readonly #ownsFd: boolean;
  #batchUnsupported = false;

  /** Wraps an fd. With ownsFd, close() closes it; otherwise its owner (a BpfObject) does. */
  constructor(fd: number, info: MapInfo, ownsFd: boolean) {
    this.#fd = fd;
    this.#ownsFd = ownsFd;
    this.name = info.name;
    this.type = info.type;
    this.keySize = info.keySize;
    this.valueSize = info.valueSize;
    this.maxEntries = info.maxEntries;
    this.flags = info.flags;
    this.perCpu = PERCPU_TYPES.has(info.type);
  }

  /** Opens a pinned map (bpf_obj_get) and reads its sizes from the kernel. The map owns the new fd. */
  static openPinned(path: string): BpfMap {
    const { bpf, libc } = lib();
    const fd = bpf.bpf_obj_get(path);
    if (fd < 0) throw bpfError('bpf_obj_get', fd, { target: path });
    try {
      return new BpfMap(fd, mapInfoByFd(fd), true);
    } catch (err) {
      libc.close(fd);
      throw err;
    }
  }

  get fd(): number {
    if (this.#fd < 0) throw new ClosedError('map', this.name);
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  /** True once a batch operation found the map type without kernel batch support and fell back to per-element syscalls. */
  get batchFallback(): boolean {
    return this.#batchUnsupported;
  }

  /** Bytes of one value as the syscalls exchange it. */
  get valueBufferSize(): number {
    return this.perCpu ? roundUp8(this.valueSize) * numPossibleCpus() : this.valueSize;
  }

  /** The value of key, or undefined when the key is absent. Per-CPU maps: see splitPerCpu. */
  lookup(key: Buffer): Buffer | undefined {
    this.#checkKey(key);
    const value = Buffer.alloc(this.valueBufferSize);
    const rc = lib().bpf.bpf_map_lookup_elem(this.fd, key, value);
    if (rc === 0) return value;
    if (-rc === E.ENOENT) return undefined;
    throw mapError('lookup', rc, { target: this.name });
  }

  /** Per-CPU maps: the value of key on each possible CPU. */
  lookupPerCpu(key: Buffer): Buffer[] | undefined {
    if (!this.perCpu) throw new TypeError(`map ${this.name} is not per-CPU`);
    const v = this.lookup(key);
    return v === undefined ? undefined : splitPerCpu(v, this.valueSize);
  }

  /**
   * Creates or replaces key's value. For per-CPU maps a single valueSize
   * Buffer is written to every CPU. Throws MapFullError (E2BIG),
   * KeyExistsError ('noexist'), KeyNotFoundError ('exist').
   */
  update(key: Buffer, value: Buffer, flags: UpdateFlag = 'any'): void {
    this.#checkKey(key);
    const v = this.#kernelValue(value);
    const rc = lib().bpf.bpf_map_update_elem(this.fd, key, v, UPDATE_FLAGS[flags]);
    if (rc !== 0) throw mapError('update', rc, { target: this.name, updateFlag: flags });
  }

  /** Deletes key; false when it was not there. */
  delete(key: Buffer): boolean {
    this.#checkKey(key);
    const rc = lib().bpf.bpf_map_delete_elem(this.fd, key);
    if (rc === 0) return true;
    if (-rc === E.ENOENT) return false;
    throw mapError('delete', rc, { target: this.name });
  }

  /** Keys in kernel order (bpf_map_get_next_key). Each yielded Buffer is a fresh copy. */
  *keys(): Generator<Buffer, void, undefined> {
    const { bpf } = lib();
    let cur: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(this.keySize);
      const rc = bpf.bpf_map_get_next_key(this.fd, cur, next);
      if (rc !== 0) {
        if (-rc === E.ENOENT) return;
        throw mapError('get_next_key', rc, { target: this.name });
      }
      yield next;
      cur = next;
    }
  }

  /** [key, value] pairs; keys deleted during the walk are skipped. */
  *entries(): Generator<[Buffer, Buffer], void, undefined> {
    for (const k of this.keys()) {
      const v = this.lookup(k);
      if (v !== undefined) yield [k, v];
    }
  }

  /**
   * Every entry, read with BPF_MAP_LOOKUP_BATCH in chunks of batchSize; falls
   * back to keys()+lookup() where the map type has no batch support (LPM trie).
   * Each key and value is a copy; scan() reads the same without them.
   */
  lookupBatch(batchSize = 256): Array<[Buffer, Buffer]> {
    const out: Array<[Buffer, Buffer]> = [];
    const ks = this.keySize;
    const vs = this.valueBufferSize;
    this.scan((keys, values, i) => void out.push([Buffer.from(keys.subarray(i * ks, (i + 1) * ks)), Buffer.from(values.subarray(i * vs, (i + 1) * vs))]), batchSize);
    return out;
  }

  /**
   * Visits every entry where it lies, without a Buffer per entry: entry i of
   * a chunk has its key at keys[i * keySize] and its value at
   * values[i * valueBufferSize]. The buffers are reused for the next chunk:
   * copy what you keep. Read with BPF_MAP_LOOKUP_BATCH in chunks of
   * batchSize (keys()+lookup(), i = 0, where the map type has no batch
   * support). An array visits every slot: this is how to scan one whose
   * slots are mostly zero (decode only those that are not).
   */
  scan(visit: (keys: Buffer, values: Buffer, i: number) => void, batchSize = 256): void {
    if (!this.#batchUnsupported && this.#tryScanBatch(visit, batchSize)) return;
    for (const [k, v] of this.entries()) visit(k, v, 0);
  }

  /** Writes all entries (BPF_MAP_UPDATE_BATCH, or one by one); returns how many were written. */
  updateBatch(entries: ReadonlyArray<readonly [Buffer, Buffer]>, flags: UpdateFlag = 'any'): number {
    if (entries.length === 0) return 0;
    for (const [k] of entries) this.#checkKey(k);
    const vsz = this.valueBufferSize;
    if (!this.#batchUnsupported) {
      const keys = Buffer.alloc(this.keySize * entries.length);
      const values = Buffer.alloc(vsz * entries.length);
      entries.forEach(([k, v], i) => {
        k.copy(keys, i * this.keySize);
        this.#kernelValue(v).copy(values, i * vsz);
      });
      const count = Buffer.alloc(4);
      count.writeUInt32LE(entries.length);
      const rc = lib().bpf.bpf_map_update_batch(this.fd, keys, values, count, batchOpts(UPDATE_FLAGS[flags]));
      if (rc === 0) return entries.length;
      const done = count.readUInt32LE();
      // an unsupported command leaves count as it was; a real failure reports how far it got
      if (!(isUnsupported(-rc) && (done === 0 || done === entries.length))) throw mapError('update_batch', rc, { target: this.name, updateFlag: flags });
      this.#batchUnsupported = true;
    }
    for (const [k, v] of entries) this.update(k, v, flags);
    return entries.length;
  }

  /** Deletes keys (BPF_MAP_DELETE_BATCH, or one by one); missing keys are skipped; returns how many were deleted. */
  deleteBatch(keys: readonly Buffer[]): number {
    if (keys.length === 0) return 0;
    for (const k of keys) this.#checkKey(k);
    let deleted = 0;
    let rest = keys;
    if (!this.#batchUnsupported) {
      const buf = Buffer.alloc(this.keySize * keys.length);
      keys.forEach((k, i) => k.copy(buf, i * this.keySize));
      const count = Buffer.alloc(4);
      count.writeUInt32LE(keys.length);
      const rc = lib().bpf.bpf_map_delete_batch(this.fd, buf, count, batchOpts());
      if (rc === 0) return keys.length;
      const done = count.readUInt32LE();
      if (-rc === E.ENOENT) {
        // the kernel stops at the first missing key: it was key[done]
        deleted = done;
        rest = keys.slice(done + 1);
      } else if (isUnsupported(-rc) && (done === 0 || done === keys.length)) {
        this.#batchUnsupported = true;
      } else {
        throw mapError('delete_batch', rc, { target: this.name });
      }
    }
    if (this.#batchUnsupported) {
      for (const k of rest) if (this.delete(k)) deleted++;
      return deleted;
    }
    return deleted + (rest.length > 0 ? this.deleteBatch(rest) : 0);
  }

  /** Pins the map at path (on a bpffs). */
  pin(path: string): void {
    const rc = lib().bpf.bpf_obj_pin(this.fd, path);
    if (rc !== 0) throw bpfError('bpf_obj_pin', rc, { target: path });
  }

  /** Releases the fd if this map owns it; later operations throw ClosedError. Idempotent. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    if (this.#ownsFd) lib().libc.close(fd);
  }

  /** Marks the map closed without closing the fd (its owner closes it). */
  invalidate(): void {
    this.#fd = -1;
  }

  #checkKey(key: Buffer): void {
    // The kernel reads keySize bytes from the pointer: a short buffer would leak memory into the map.
    if (key.length !== this.keySize) throw new RangeError(`map ${this.name}: key of ${key.length} bytes, expected ${this.keySize}`);
  }

  #kernelValue(value: Buffer): Buffer {
    if (this.perCpu) {
      if (value.length === this.valueSize) return joinPerCpu([value], this.valueSize);
      if (value.length === this.valueBufferSize) return value;
      throw new RangeError(`map ${this.name}: per-CPU value of ${value.length} bytes, expected ${this.valueSize} or ${this.valueBufferSize}`);
    }
    if (value.length !== this.valueSize) throw new RangeError(`map ${this.name}: value of ${value.length} bytes, expected ${this.valueSize}`);
    return value;
  }

  /** scan() over BPF_MAP_LOOKUP_BATCH; false (nothing visited) when the map type has no batch support. */
  #tryScanBatch(visit: (keys: Buffer, values: Buffer, i: number) => void, batchSize: number): boolean {
    const { bpf } = lib();
    let n = Math.max(1, Math.min(batchSize, this.maxEntries || batchSize));
    const vsz = this.valueBufferSize;
    let keys = Buffer.alloc(this.keySize * n);
    let values = Buffer.alloc(vsz * n);
    const count = Buffer.alloc(4);
    const opts = batchOpts();
    // The batch token is opaque; hash maps use a u32 bucket index, arrays a u32 index.
    const tokenSize = Math.max(8, this.keySize);
    let inBatch: Buffer | null = null;
    let outBatch: Buffer = Buffer.alloc(tokenSize);
    for (;;) {
      count.writeUInt32LE(n);
      const rc = bpf.bpf_map_lookup_batch(this.fd, inBatch, outBatch, keys, values, count, opts);
      if (-rc === E.ENOSPC) {
        // a hash bucket holds more entries than n: retry the same position with room for them
        n *= 2;
        keys = Buffer.alloc(this.keySize * n);
        values = Buffer.alloc(vsz * n);
        continue;
      }
      if (rc !== 0 && -rc !== E.ENOENT) {
        if (isUnsupported(-rc) && inBatch === null) {
          this.#batchUnsupported = true;
          return false;
        }
        throw mapError('lookup_batch', rc, { target: this.name });
      }
      const got = count.readUInt32LE();
      for (let i = 0; i < got; i++) visit(keys, values, i);
      if (rc !== 0) return true; // ENOENT: the walk is complete
      const prevOut: Buffer = outBatch;
      outBatch = inBatch ?? Buffer.alloc(tokenSize);
      inBatch = prevOut;
    }
  }
}

/** Reads type, sizes and name of a map fd (bpf_obj_get_info_by_fd on struct bpf_map_info). */
export function mapInfoByFd(fd: number): MapInfo {
  const info = Buffer.alloc(88); // sizeof(struct bpf_map_info) in linux/bpf.h of this kernel series
  const len = Buffer.alloc(4);
  len.writeUInt32LE(info.length);
  const rc = lib().bpf.bpf_obj_get_info_by_fd(fd, info, len);
  if (rc !== 0) throw bpfError('bpf_obj_get_info_by_fd', rc);
  const nameEnd = info.indexOf(0, 24);
  return {
    type: info.readUInt32LE(0),
    keySize: info.readUInt32LE(8),
    valueSize: info.readUInt32LE(12),
    maxEntries: info.readUInt32LE(16),
    flags: info.readUInt32LE(20),
    name: info.toString('utf8', 24, nameEnd < 0 || nameEnd > 40 ? 40 : nameEnd),
  };
}
