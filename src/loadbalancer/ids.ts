// Stable numeric ids for keyed objects (service frontends, backends) as the
// maps need them. An id stays with its key while it is held; a released id
// is not handed out again until the allocator has gone round its whole
// range, so a conntrack entry that still names an old backend id does not
// suddenly mean a new backend. Pure; restore() rebuilds the state from what
// an agent finds in the pinned maps after a restart.

export class IdSpaceExhaustedError extends Error {
  constructor(readonly min: number, readonly max: number) {
    super(`no free id in ${min}..${max}`);
    this.name = 'IdSpaceExhaustedError';
  }
}

export class IdAllocator {
  readonly min: number;
  readonly max: number;
  readonly #byKey = new Map<string, number>();
  readonly #byId = new Map<number, string>();
  #next: number;

  constructor(opts: { min?: number; max?: number } = {}) {
    this.min = opts.min ?? 1;
    this.max = opts.max ?? 0xffffffff;
    if (!Number.isInteger(this.min) || !Number.isInteger(this.max) || this.min < 1 || this.max < this.min || this.max > 0xffffffff) {
      throw new RangeError(`id range ${this.min}..${this.max}`);
    }
    this.#next = this.min;
  }

  get size(): number {
    return this.#byId.size;
  }

  /** The id of key, allocating one if it has none. */
  acquire(key: string): number {
    const have = this.#byKey.get(key);
    if (have !== undefined) return have;
    const span = this.max - this.min + 1;
    if (this.#byId.size >= span) throw new IdSpaceExhaustedError(this.min, this.max);
    let id = this.#next;
    while (this.#byId.has(id)) id = id === this.max ? this.min : id + 1;
    this.#set(key, id);
    this.#next = id === this.max ? this.min : id + 1;
    return id;
  }

  peek(key: string): number | undefined {
    return this.#byKey.get(key);
  }

  keyOf(id: number): string | undefined {
    return this.#byId.get(id);
  }

  /** false when key held no id. */
  release(key: string): boolean {
    const id = this.#byKey.get(key);
    if (id === undefined) return false;
    this.#byKey.delete(key);
    this.#byId.delete(id);
    return true;
  }

  /**
   * Re-reserves an id found in the maps. Later acquire() calls continue
   * after the highest restored id. Throws if the id is out of range or held
   * by another key, or the key holds another id.
   */
  restore(key: string, id: number): void {
    if (!Number.isInteger(id) || id < this.min || id > this.max) throw new RangeError(`id ${id} not in ${this.min}..${this.max}`);
    const holder = this.#byId.get(id);
    if (holder !== undefined && holder !== key) throw new RangeError(`id ${id} is held by ${JSON.stringify(holder)}`);
    const had = this.#byKey.get(key);
    if (had !== undefined && had !== id) throw new RangeError(`${JSON.stringify(key)} holds id ${had}, not ${id}`);
    this.#set(key, id);
    if (id >= this.#next) this.#next = id === this.max ? this.min : id + 1;
  }

  entries(): IterableIterator<[key: string, id: number]> {
    return this.#byKey.entries();
  }

  #set(key: string, id: number): void {
    this.#byKey.set(key, id);
    this.#byId.set(id, key);
  }
}
