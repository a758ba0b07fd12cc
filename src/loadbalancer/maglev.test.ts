import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isPrime, maglevTable, tableShares } from './maglev.ts';

const M = 1021;
const backends = (n: number, from = 1) => Array.from({ length: n }, (_, i) => ({ id: from + i, key: `10.101.0.${from + i}:8080` }));

/** Entries that changed owner between a and b, not counting those of the ids that came or went. */
function movedOthers(a: Uint32Array, b: Uint32Array, changed: Set<number>): number {
  let n = 0;
  for (let i = 0; i < a.length; i++) if (!changed.has(a[i]!) && !changed.has(b[i]!) && a[i] !== b[i]) n++;
  return n;
}

describe('maglevTable', () => {
  it('fills every entry, each backend owning M/N entries give or take one', () => {
    for (const n of [1, 2, 3, 7, 10, 100, 1021]) {
      const t = maglevTable(backends(n), M);
      assert.equal(t.length, M);
      assert.ok(t.every((id) => id >= 1 && id <= n), `n=${n}: every entry is a backend`);
      const shares = [...tableShares(t).values()];
      assert.equal(shares.length, n, `n=${n}: every backend owns entries`);
      assert.ok(Math.max(...shares) - Math.min(...shares) <= 1, `n=${n}: shares ${Math.min(...shares)}..${Math.max(...shares)}`);
    }
  });

  it('does not depend on the order the backends are listed in', () => {
    const b = backends(12);
    assert.deepEqual(maglevTable([...b].reverse(), M), maglevTable(b, M));
    assert.deepEqual(maglevTable([b[5]!, ...b.slice(0, 5), ...b.slice(6)], M), maglevTable(b, M));
  });

  it('moves few entries of the other backends when one goes or comes (under 4% at 10 backends)', () => {
    const ten = maglevTable(backends(10), M);
    const nine = maglevTable(backends(10).filter((b) => b.id !== 4), M);
    // The entries of the backend that went go to the others; the rest barely move.
    assert.ok(nine.every((id) => id !== 4));
    const gone = movedOthers(ten, nine, new Set([4]));
    assert.ok(gone < 0.04 * M, `${gone} entries of staying backends moved`);
    const eleven = maglevTable(backends(11), M);
    const came = movedOthers(ten, eleven, new Set([11]));
    assert.ok(came < 0.04 * M, `${came} entries moved to others than the new backend`);
    // The newcomer takes about its share.
    const share = tableShares(eleven).get(11)!;
    assert.ok(Math.abs(share - M / 11) <= 1, `new backend owns ${share}`);
  });

  it('refuses a size that is not prime, no backends, too many, duplicate ids or keys, bad ids', () => {
    assert.throws(() => maglevTable(backends(3), 1024), /not prime/);
    assert.throws(() => maglevTable([], M), /without backends/);
    assert.throws(() => maglevTable(backends(8), 7), /do not fit/);
    assert.throws(() => maglevTable([{ id: 1, key: 'a' }, { id: 1, key: 'b' }], M), /duplicate backend id/);
    assert.throws(() => maglevTable([{ id: 1, key: 'a' }, { id: 2, key: 'a' }], M), /duplicate backend key/);
    assert.throws(() => maglevTable([{ id: 0, key: 'a' }], M), /backend id 0/);
  });

  it('isPrime', () => {
    assert.deepEqual([1, 2, 3, 4, 251, 1021, 1023, 16381, 65537].map(isPrime), [false, true, true, false, true, true, false, true, true]);
  });
});
