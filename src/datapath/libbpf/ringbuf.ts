// Reading a BPF ring buffer map from TypeScript (ring_buffer__new with a
// koffi-registered sample callback).
import koffi from 'koffi';
import { ClosedError, bpfError } from '../errors.ts';
import { type Ptr, copyFrom, isNull, lastErrno, lib } from './ffi.ts';
import { MapType, type BpfMap } from './map.ts';

export type RingBufferHandler = (data: Buffer) => void;

export class RingBufferReader {
  readonly mapName: string;
  #rb: Ptr | null;
  #cb: unknown;
  #pending: unknown;
  #hasPending = false;
  #timer: NodeJS.Timeout | undefined;

  /** Each record is copied into a fresh Buffer and passed to onData synchronously from poll()/consume(). */
  constructor(map: BpfMap, onData: RingBufferHandler) {
    if (map.type !== MapType.ringbuf) throw new TypeError(`map ${map.name} is not a ring buffer (type ${map.type})`);
    const { bpf } = lib();
    this.mapName = map.name;
    const sample = (_ctx: Ptr | null, data: Ptr, size: number | bigint): number => {
      try {
        onData(copyFrom(data, Number(size)));
        return 0;
      } catch (err) {
        // stop this consume round; poll()/consume() rethrow the handler's error
        if (!this.#hasPending) {
          this.#pending = err;
          this.#hasPending = true;
        }
        return -1;
      }
    };
    const cb = koffi.register(sample, koffi.pointer(lib().ringBufferSampleFn));
    const rb = bpf.ring_buffer__new(map.fd, cb, null, null);
    if (isNull(rb)) {
      const errno = lastErrno();
      koffi.unregister(cb);
      throw bpfError('ring_buffer__new', errno || 22, { target: map.name });
    }
    this.#cb = cb;
    this.#rb = rb;
  }

  /** Waits up to timeoutMs (0: not at all) for records and handles them; returns how many. Blocks the thread while waiting. */
  poll(timeoutMs: number): number {
    const rb = this.#handle('ring_buffer__poll');
    const n = lib().bpf.ring_buffer__poll(rb, timeoutMs);
    return this.#result('ring_buffer__poll', n);
  }

  /** Handles every record available now without waiting; returns how many. */
  consume(): number {
    const rb = this.#handle('ring_buffer__consume');
    const n = lib().bpf.ring_buffer__consume(rb);
    return this.#result('ring_buffer__consume', n);
  }

  /** An fd that becomes readable when records arrive (for an event loop that watches fds). */
  get epollFd(): number {
    return lib().bpf.ring_buffer__epoll_fd(this.#handle('ring_buffer__epoll_fd'));
  }

  /**
   * Consumes every intervalMs on the event loop (never blocks it) until
   * stop() or close(). A handler error stops the loop and goes to onError
   * (default: rethrown asynchronously).
   */
  start(intervalMs = 50, onError?: (err: unknown) => void): void {
    this.#handle('start');
    if (this.#timer) return;
    const tick = (): void => {
      try {
        this.consume();
      } catch (err) {
        this.stop();
        if (onError) onError(err);
        else throw err;
      }
    };
    this.#timer = setInterval(tick, intervalMs);
  }

  /** Stops start()'s loop after consuming what is already there. */
  stop(): void {
    if (!this.#timer) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#rb !== null) {
      try {
        this.consume();
      } catch {
        // the loop is being stopped; a handler error here has nowhere better to go
      }
    }
  }

  get running(): boolean {
    return this.#timer !== undefined;
  }

  /** Frees the ring buffer manager and the callback slot. Idempotent. */
  close(): void {
    if (this.#timer) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
    const rb = this.#rb;
    if (rb === null) return;
    this.#rb = null;
    lib().bpf.ring_buffer__free(rb);
    koffi.unregister(this.#cb as bigint);
    this.#cb = undefined;
  }

  #handle(op: string): Ptr {
    if (this.#rb === null) throw new ClosedError(op, this.mapName);
    return this.#rb;
  }

  #result(op: string, n: number): number {
    if (this.#hasPending) {
      const err = this.#pending;
      this.#pending = undefined;
      this.#hasPending = false;
      throw err;
    }
    if (n < 0) {
      if (-n === 4 /* EINTR */) return 0;
      throw bpfError(op, n, { target: this.mapName });
    }
    return n;
  }
}

/** Reads records until the signal aborts, consuming every intervalMs; resolves when stopped. */
export async function readRingBuffer(map: BpfMap, onData: RingBufferHandler, opts: { signal: AbortSignal; intervalMs?: number }): Promise<void> {
  const reader = new RingBufferReader(map, onData);
  try {
    await new Promise<void>((resolve, reject) => {
      if (opts.signal.aborted) return resolve();
      opts.signal.addEventListener('abort', () => resolve(), { once: true });
      reader.start(opts.intervalMs ?? 50, (err) => reject(err));
    });
    reader.stop();
  } finally {
    reader.close();
  }
}
