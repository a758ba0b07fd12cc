// The native boundary: libbpf.so.1 and the few libc calls the binding needs,
// declared through koffi. Everything else in libbpf/ builds on these
// declarations; nothing outside libbpf/ imports this file.
//
// Conventions of libbpf 1.x relied on here: functions returning int return
// -errno on failure; functions returning a pointer return NULL and set errno.
// Option structs are laid out by hand in Buffers (see the `*Opts` helpers in
// each file), sizes and offsets per /usr/include/bpf of libbpf 1.1 on LP64.
import koffi, { type TypeObject } from 'koffi';

/** A native pointer as koffi 3 represents it. */
export type Ptr = bigint;

type Fn = (...args: any[]) => any;

export interface LibbpfNative {
  // print callback
  libbpf_set_print: Fn;
  libbpf_num_possible_cpus: () => number;
  // objects
  bpf_object__open_file: (path: string, opts: Buffer | null) => Ptr | null;
  bpf_object__load: (obj: Ptr) => number;
  bpf_object__close: (obj: Ptr) => void;
  bpf_object__name: (obj: Ptr) => string;
  bpf_object__btf: (obj: Ptr) => Ptr | null;
  bpf_object__find_map_by_name: (obj: Ptr, name: string) => Ptr | null;
  bpf_object__find_program_by_name: (obj: Ptr, name: string) => Ptr | null;
  bpf_object__next_map: (obj: Ptr, prev: Ptr | null) => Ptr | null;
  bpf_object__next_program: (obj: Ptr, prev: Ptr | null) => Ptr | null;
  // maps of an object
  bpf_map__fd: (map: Ptr) => number;
  bpf_map__name: (map: Ptr) => string;
  bpf_map__type: (map: Ptr) => number;
  bpf_map__key_size: (map: Ptr) => number;
  bpf_map__value_size: (map: Ptr) => number;
  bpf_map__max_entries: (map: Ptr) => number;
  bpf_map__map_flags: (map: Ptr) => number;
  bpf_map__set_max_entries: (map: Ptr, n: number) => number;
  bpf_map__set_pin_path: (map: Ptr, path: string) => number;
  bpf_map__initial_value: (map: Ptr, psize: Buffer) => Ptr | null;
  bpf_map__is_internal: (map: Ptr) => boolean;
  // programs of an object
  bpf_program__fd: (prog: Ptr) => number;
  bpf_program__name: (prog: Ptr) => string;
  bpf_program__section_name: (prog: Ptr) => string;
  bpf_program__type: (prog: Ptr) => number;
  // BTF
  btf__find_by_name_kind: (btf: Ptr, name: string, kind: number) => number;
  btf__type_by_id: (btf: Ptr, id: number) => Ptr | null;
  btf__name_by_offset: (btf: Ptr, off: number) => string | null;
  // low-level bpf(2) wrappers
  bpf_map_lookup_elem: (fd: number, key: Buffer, value: Buffer) => number;
  bpf_map_update_elem: (fd: number, key: Buffer, value: Buffer, flags: bigint | number) => number;
  bpf_map_delete_elem: (fd: number, key: Buffer) => number;
  bpf_map_get_next_key: (fd: number, key: Buffer | null, next: Buffer) => number;
  bpf_map_lookup_batch: (fd: number, inBatch: Buffer | null, outBatch: Buffer, keys: Buffer, values: Buffer, count: Buffer, opts: Buffer) => number;
  bpf_map_update_batch: (fd: number, keys: Buffer, values: Buffer, count: Buffer, opts: Buffer) => number;
  bpf_map_delete_batch: (fd: number, keys: Buffer, count: Buffer, opts: Buffer) => number;
  bpf_obj_pin: (fd: number, path: string) => number;
  bpf_obj_get: (path: string) => number;
  bpf_obj_get_info_by_fd: (fd: number, info: Buffer, len: Buffer) => number;
  bpf_prog_test_run_opts: (fd: number, opts: Buffer) => number;
  // links and cgroup attachment
  bpf_link_create: (progFd: number, targetFd: number, attachType: number, opts: Buffer | null) => number;
  bpf_link_update: (linkFd: number, newProgFd: number, opts: Buffer | null) => number;
  bpf_link_detach: (linkFd: number) => number;
  bpf_prog_query: (targetFd: number, attachType: number, queryFlags: number, attachFlags: Buffer | null, progIds: Buffer | null, progCnt: Buffer) => number;
  bpf_prog_attach_opts: (progFd: number, target: number, attachType: number, opts: Buffer) => number;
  bpf_prog_detach2: (progFd: number, target: number, attachType: number) => number;
  bpf_prog_get_fd_by_id: (id: number) => number;
  // tc
  bpf_tc_hook_create: (hook: Buffer) => number;
  bpf_tc_hook_destroy: (hook: Buffer) => number;
  bpf_tc_attach: (hook: Buffer, opts: Buffer) => number;
  bpf_tc_detach: (hook: Buffer, opts: Buffer) => number;
  bpf_tc_query: (hook: Buffer, opts: Buffer) => number;
  // ring buffer
  ring_buffer__new: (fd: number, cb: Ptr, ctx: Ptr | null, opts: Buffer | null) => Ptr | null;
  ring_buffer__poll: (rb: Ptr, timeoutMs: number) => number;
  ring_buffer__consume: (rb: Ptr) => number;
  ring_buffer__free: (rb: Ptr) => void;
  ring_buffer__epoll_fd: (rb: Ptr) => number;
}

export interface LibcNative {
  vsnprintf: (buf: Buffer | null, n: number, fmt: Ptr, ap: Ptr | Buffer) => number;
  close: (fd: number) => number;
  if_nametoindex: (name: string) => number;
  mount: (source: string, target: string, fstype: string, flags: number, data: Buffer | null) => number;
}

export interface Native {
  bpf: LibbpfNative;
  libc: LibcNative;
  /** koffi prototype for ring_buffer_sample_fn, for koffi.register. */
  ringBufferSampleFn: TypeObject;
}

let native: Native | undefined;

/** The loaded libraries; loaded on first use so importing the module never fails. */
export function lib(): Native {
  if (native) return native;
  const so = koffi.load('libbpf.so.1');
  const libcSo = koffi.load('libc.so.6');
  const d = (decl: string): Fn => so.func(decl) as Fn;
  const printFn = koffi.proto('int clustermesh_libbpf_print_fn(int level, void *fmt, void *ap)');
  const ringBufferSampleFn = koffi.proto('int clustermesh_ring_buffer_sample_fn(void *ctx, void *data, size_t size)');
  const bpf: LibbpfNative = {
    libbpf_set_print: so.func('libbpf_set_print', 'void *', [koffi.pointer(printFn)]) as Fn,
    libbpf_num_possible_cpus: d('int libbpf_num_possible_cpus(void)'),
    bpf_object__open_file: d('void *bpf_object__open_file(const char *path, void *opts)'),
    bpf_object__load: d('int bpf_object__load(void *obj)'),
    bpf_object__close: d('void bpf_object__close(void *obj)'),
    bpf_object__name: d('const char *bpf_object__name(void *obj)'),
    bpf_object__btf: d('void *bpf_object__btf(void *obj)'),
    bpf_object__find_map_by_name: d('void *bpf_object__find_map_by_name(void *obj, const char *name)'),
    bpf_object__find_program_by_name: d('void *bpf_object__find_program_by_name(void *obj, const char *name)'),
    bpf_object__next_map: d('void *bpf_object__next_map(void *obj, void *prev)'),
    bpf_object__next_program: d('void *bpf_object__next_program(void *obj, void *prev)'),
    bpf_map__fd: d('int bpf_map__fd(void *map)'),
    bpf_map__name: d('const char *bpf_map__name(void *map)'),
    bpf_map__type: d('int bpf_map__type(void *map)'),
    bpf_map__key_size: d('uint32_t bpf_map__key_size(void *map)'),
    bpf_map__value_size: d('uint32_t bpf_map__value_size(void *map)'),
    bpf_map__max_entries: d('uint32_t bpf_map__max_entries(void *map)'),
    bpf_map__map_flags: d('uint32_t bpf_map__map_flags(void *map)'),
    bpf_map__set_max_entries: d('int bpf_map__set_max_entries(void *map, uint32_t n)'),
    bpf_map__set_pin_path: d('int bpf_map__set_pin_path(void *map, const char *path)'),
    bpf_map__initial_value: d('void *bpf_map__initial_value(void *map, void *psize)'),
    bpf_map__is_internal: d('bool bpf_map__is_internal(void *map)'),
    bpf_program__fd: d('int bpf_program__fd(void *prog)'),
    bpf_program__name: d('const char *bpf_program__name(void *prog)'),
    bpf_program__section_name: d('const char *bpf_program__section_name(void *prog)'),
    bpf_program__type: d('int bpf_program__type(void *prog)'),
    btf__find_by_name_kind: d('int32_t btf__find_by_name_kind(void *btf, const char *name, uint32_t kind)'),
    btf__type_by_id: d('void *btf__type_by_id(void *btf, uint32_t id)'),
    btf__name_by_offset: d('const char *btf__name_by_offset(void *btf, uint32_t off)'),
    bpf_map_lookup_elem: d('int bpf_map_lookup_elem(int fd, void *key, void *value)'),
    bpf_map_update_elem: d('int bpf_map_update_elem(int fd, void *key, void *value, uint64_t flags)'),
    bpf_map_delete_elem: d('int bpf_map_delete_elem(int fd, void *key)'),
    bpf_map_get_next_key: d('int bpf_map_get_next_key(int fd, void *key, void *next_key)'),
    bpf_map_lookup_batch: d('int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, void *count, void *opts)'),
    bpf_map_update_batch: d('int bpf_map_update_batch(int fd, void *keys, void *values, void *count, void *opts)'),
    bpf_map_delete_batch: d('int bpf_map_delete_batch(int fd, void *keys, void *count, void *opts)'),
    bpf_obj_pin: d('int bpf_obj_pin(int fd, const char *path)'),
    bpf_obj_get: d('int bpf_obj_get(const char *path)'),
    bpf_obj_get_info_by_fd: d('int bpf_obj_get_info_by_fd(int fd, void *info, void *info_len)'),
    bpf_prog_test_run_opts: d('int bpf_prog_test_run_opts(int fd, void *opts)'),
    bpf_link_create: d('int bpf_link_create(int prog_fd, int target_fd, int attach_type, void *opts)'),
    bpf_link_update: d('int bpf_link_update(int link_fd, int new_prog_fd, void *opts)'),
    bpf_link_detach: d('int bpf_link_detach(int link_fd)'),
    bpf_prog_query: d('int bpf_prog_query(int target_fd, int type, uint32_t query_flags, void *attach_flags, void *prog_ids, void *prog_cnt)'),
    bpf_prog_attach_opts: d('int bpf_prog_attach_opts(int prog_fd, int target, int type, void *opts)'),
    bpf_prog_detach2: d('int bpf_prog_detach2(int prog_fd, int target, int type)'),
    bpf_prog_get_fd_by_id: d('int bpf_prog_get_fd_by_id(uint32_t id)'),
    bpf_tc_hook_create: d('int bpf_tc_hook_create(void *hook)'),
    bpf_tc_hook_destroy: d('int bpf_tc_hook_destroy(void *hook)'),
    bpf_tc_attach: d('int bpf_tc_attach(void *hook, void *opts)'),
    bpf_tc_detach: d('int bpf_tc_detach(void *hook, void *opts)'),
    bpf_tc_query: d('int bpf_tc_query(void *hook, void *opts)'),
    ring_buffer__new: d('void *ring_buffer__new(int fd, void *cb, void *ctx, void *opts)'),
    ring_buffer__poll: d('int ring_buffer__poll(void *rb, int timeout_ms)'),
    ring_buffer__consume: d('int ring_buffer__consume(void *rb)'),
    ring_buffer__free: d('void ring_buffer__free(void *rb)'),
    ring_buffer__epoll_fd: d('int ring_buffer__epoll_fd(void *rb)'),
  };
  const lc = (decl: string): Fn => libcSo.func(decl) as Fn;
  const libc: LibcNative = {
    vsnprintf: lc('int vsnprintf(void *buf, size_t n, void *fmt, void *ap)'),
    close: lc('int close(int fd)'),
    if_nametoindex: lc('uint32_t if_nametoindex(const char *name)'),
    mount: lc('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, void *data)'),
  };
  native = { bpf, libc, ringBufferSampleFn };
  installPrintCallback(bpf, libc, printFn);
  return native;
}

/** errno of the last native call on this thread. */
export function lastErrno(): number {
  return koffi.errno();
}

/** The address of a Buffer's bytes, for pointer fields of option structs. */
export function addressOf(buf: Buffer): bigint {
  return koffi.address(buf) as bigint;
}

/** A copy of `len` native bytes at `ptr`. */
export function copyFrom(ptr: Ptr, len: number): Buffer {
  if (len === 0) return Buffer.alloc(0);
  return Buffer.from(new Uint8Array(koffi.view(ptr, len)));
}

/** A Buffer aliasing `len` native bytes at `ptr` (no copy; valid while the native memory is). */
export function viewOf(ptr: Ptr, len: number): Buffer {
  return Buffer.from(koffi.view(ptr, len));
}

export function isNull(p: Ptr | null | undefined): p is null | undefined {
  return p === null || p === undefined || p === 0n;
}

// ---- libbpf's print callback -------------------------------------------------

export type LibbpfLogLevel = 'warn' | 'info' | 'debug';
const levelNames: readonly LibbpfLogLevel[] = ['warn', 'info', 'debug'];

/** Collects what libbpf prints while an operation runs (see captureLog). */
export class LogCapture {
  readonly messages: { level: LibbpfLogLevel; text: string }[] = [];
  text(): string {
    return this.messages.map((m) => m.text).join('');
  }
}

const captures: LogCapture[] = [];
let handler: ((level: LibbpfLogLevel, text: string) => void) | undefined;

/**
 * Where libbpf's messages go when no operation captures them. Default: warnings
 * to stderr. Debug messages are only produced when `CLUSTERMESH_LIBBPF_DEBUG=1`.
 */
export function setLibbpfLogHandler(fn: ((level: LibbpfLogLevel, text: string) => void) | undefined): void {
  handler = fn;
}

/** Runs fn and returns what libbpf printed meanwhile along with fn's result or error. */
export function captureLog<T>(fn: () => T): { value: T; log: string } | { error: unknown; log: string } {
  const cap = new LogCapture();
  captures.push(cap);
  try {
    return { value: fn(), log: cap.text() };
  } catch (error) {
    return { error, log: cap.text() };
  } finally {
    const i = captures.lastIndexOf(cap);
    if (i >= 0) captures.splice(i, 1);
  }
}

function installPrintCallback(bpf: LibbpfNative, libc: LibcNative, proto: TypeObject): void {
  const debug = process.env.CLUSTERMESH_LIBBPF_DEBUG === '1';
  // va_copy by value: the callee's va_list is a pointer to the 24-byte
  // __va_list_tag on x86-64, and to a caller's copy of the 32-byte struct on
  // arm64. Copying those bytes lets vsnprintf run twice (measure, then print).
  const vaListSize = process.arch === 'x64' ? 24 : process.arch === 'arm64' ? 32 : 0;
  const scratch = Buffer.alloc(4096);
  const cb = (level: number, fmt: Ptr, ap: Ptr): number => {
    try {
      const lvl = levelNames[level] ?? 'debug';
      if (lvl === 'debug' && !debug) return 0;
      let text: string;
      if (vaListSize > 0) {
        const apCopy = copyFrom(ap, vaListSize);
        const n = libc.vsnprintf(scratch, scratch.length, fmt, apCopy);
        if (n < 0) return 0;
        if (n < scratch.length) {
          text = scratch.toString('utf8', 0, n);
        } else {
          const big = Buffer.alloc(n + 1);
          libc.vsnprintf(big, big.length, fmt, ap);
          text = big.toString('utf8', 0, n);
        }
      } else {
        const big = Buffer.alloc(1 << 20);
        const n = libc.vsnprintf(big, big.length, fmt, ap);
        if (n < 0) return 0;
        text = big.toString('utf8', 0, Math.min(n, big.length - 1));
      }
      const cap = captures[captures.length - 1];
      if (cap) cap.messages.push({ level: lvl, text });
      else if (handler) handler(lvl, text);
      else if (lvl === 'warn') process.stderr.write(text.startsWith('libbpf:') ? text : `libbpf: ${text}`);
    } catch {
      // never let an exception unwind into libbpf
    }
    return 0;
  };
  const registered = koffi.register(cb, koffi.pointer(proto));
  bpf.libbpf_set_print(registered);
}
