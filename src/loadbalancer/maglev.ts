// Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of
// M entries (M prime) in which every backend owns M/N entries give or take
// one, and which changes little when a backend comes or goes, so new
// connections keep landing where they did. Pure: the same backends give the
// same table on every node, whatever order they are listed in.
import { createHash } from 'node:crypto';

export interface MaglevBackend {
  /** What the table holds (a cm_backends id); > 0. */
  id: number;
  /** Stable name of the backend, e.g. '10.101.0.20:8080'; its permutation derives from it. */
  key: string;
}

/** True for primes (trial division; table sizes are small). */
export function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false;
  for (let d = 2; d * d <= n; d++) if (n % d === 0) return false;
  return true;
}

/** Two independent 32-bit hashes of a key. */
function hashes(key: string): [number, number] {
  const d = createHash('sha256').update(key).digest();
  return [d.readUInt32BE(0), d.readUInt32BE(4)];
}

/**
 * The Maglev lookup table of size m for backends: entry i is the id of the
 * backend owning it. Throws on an empty backend list, more backends than
 * entries, m not prime, duplicate ids or keys.
 */
export function maglevTable(backends: readonly MaglevBackend[], m: number): Uint32Array {
  if (!isPrime(m)) throw new RangeError(`Maglev table size ${m} is not prime`);
  if (backends.length === 0) throw new RangeError('Maglev table without backends');
  if (backends.length > m) throw new RangeError(`${backends.length} backends do not fit a Maglev table of ${m}`);
  const ids = new Set<number>();
  const keys = new Set<string>();
  for (const b of backends) {
    if (!Number.isInteger(b.id) || b.id < 1 || b.id > 0xffffffff) throw new RangeError(`backend id ${b.id} not in 1..2^32-1`);
    if (ids.has(b.id)) throw new RangeError(`duplicate backend id ${b.id}`);
    if (keys.has(b.key)) throw new RangeError(`duplicate backend key ${JSON.stringify(b.key)}`);
    ids.add(b.id);
    keys.add(b.key);
  }
  // The fill order decides ties; sorting by key makes the table independent
  // of the order the caller happened to list the backends in.
  const sorted = [...backends].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const n = sorted.length;
  const pos = new Array<number>(n);
  const skip = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const [h1, h2] = hashes(sorted[i]!.key);
    pos[i] = h1 % m;
    // m is prime, so every skip in 1..m-1 walks all m entries.
    skip[i] = (h2 % (m - 1)) + 1;
  }
  const table = new Uint32Array(m); // 0 = not yet taken
  let filled = 0;
  for (;;) {
    for (let i = 0; i < n; i++) {
      // The next entry of backend i's permutation that nobody took yet.
      let c = pos[i]!;
      while (table[c] !== 0) c = (c + skip[i]!) % m;
      table[c] = sorted[i]!.id;
      pos[i] = (c + skip[i]!) % m;
      if (++filled === m) return table;
    }
  }
}

/** How many entries each id owns. */
export function tableShares(table: ArrayLike<number>): Map<number, number> {
  const shares = new Map<number, number>();
  for (let i = 0; i < table.length; i++) shares.set(table[i]!, (shares.get(table[i]!) ?? 0) + 1);
  return shares;
}
