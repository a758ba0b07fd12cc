// A small seeded pseudo-random generator for tests and benchmarks that must
// be reproducible (the same seed, the same sequence).

/** mulberry32: returns a function giving integers in [0, n); its low bits are not periodic (an LCG's are). */
export function prng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) % n;
  };
}
