import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IdAllocator, IdSpaceExhaustedError } from './ids.ts';

describe('IdAllocator', () => {
  it('gives a key the same id while held, and does not reuse released ids before wrapping', () => {
    const a = new IdAllocator({ min: 1, max: 4 });
    assert.equal(a.acquire('x'), 1);
    assert.equal(a.acquire('y'), 2);
    assert.equal(a.acquire('x'), 1);
    assert.equal(a.release('x'), true);
    assert.equal(a.release('x'), false);
    assert.equal(a.acquire('z'), 3, 'not the just-released 1');
    assert.equal(a.acquire('w'), 4);
    assert.equal(a.acquire('v'), 1, 'wraps, skipping held ids');
    assert.throws(() => a.acquire('u'), IdSpaceExhaustedError);
    assert.equal(a.keyOf(3), 'z');
    assert.equal(a.peek('nope'), undefined);
    assert.equal(a.size, 4);
  });

  it('restore() re-reserves ids from the maps and continues after the highest', () => {
    const a = new IdAllocator();
    a.restore('svc-a', 7);
    a.restore('svc-b', 3);
    a.restore('svc-a', 7);
    assert.equal(a.acquire('svc-c'), 8);
    assert.equal(a.acquire('svc-a'), 7);
    assert.throws(() => a.restore('svc-d', 3), /held by "svc-b"/);
    assert.throws(() => a.restore('svc-b', 4), /holds id 3/);
    assert.throws(() => a.restore('svc-e', 0), RangeError);
    assert.deepEqual([...a.entries()].sort(), [['svc-a', 7], ['svc-b', 3], ['svc-c', 8]]);
  });

  it('refuses an empty or out-of-range id space', () => {
    assert.throws(() => new IdAllocator({ min: 0 }), RangeError);
    assert.throws(() => new IdAllocator({ min: 5, max: 4 }), RangeError);
    assert.throws(() => new IdAllocator({ max: 2 ** 32 }), RangeError);
  });
});
