// cm_lb_hint's codec and writers (pure: a map of one value in memory).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { MapHandle } from './codec.ts';
import * as hint from './lb-hint.ts';

function memoryMap(): MapHandle & { writes: Buffer[] } {
  let value: Buffer | undefined;
  const writes: Buffer[] = [];
  return {
    writes,
    lookup: () => (value ? Buffer.from(value) : undefined),
    update: (_k, v) => {
      writes.push(Buffer.from(v));
      value = Buffer.from(v);
    },
    delete: () => false,
    *entries() {},
  };
}

/** Two addresses whose bits are the same. */
function collision(): [string, string] {
  const seen = new Map<number, string>();
  for (let i = 0; ; i++) {
    const a = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
    const other = seen.get(hint.hintBit(a));
    if (other) return [other, a];
    seen.set(hint.hintBit(a), a);
  }
}

describe('cm_lb_hint', () => {
  it('counts: a bit stays while any address of it is counted, and encodes as encode() of the same addresses', () => {
    const [a, b] = collision();
    const c = new hint.HintCounts();
    c.change({ vips: [a, b], backends: ['10.101.0.1'] }, 1);
    assert.ok(c.encode().equals(hint.encode({ vips: [a], backends: ['10.101.0.1'] })));
    c.change({ vips: [a], backends: [] }, -1);
    assert.ok(hint.hasBit(c.encode(), 'vip', a), 'b still needs the bit a shares with it');
    assert.ok(!hint.hasBit(c.encode(), 'backend', a), 'the sets are apart');
    c.change({ vips: [b], backends: ['10.101.0.1'] }, -1);
    assert.ok(c.encode().equals(hint.encode({ vips: [], backends: [] })), 'nothing counted: no bit, valid');
    assert.ok(hint.hasBit(c.encode({ vips: [], backends: ['10.102.0.9'] }), 'backend', '10.102.0.9'), 'extra addresses are added');
    assert.throws(() => c.change({ vips: [b], backends: [] }, -1), /removed more often than added/);
    c.change({ vips: [a], backends: ['10.101.0.1'] }, 1);
    assert.throws(() => c.change({ vips: [a, b], backends: ['10.101.0.1'] }, -1), /removed more often than added/, 'a and b share the one count there is');
    assert.ok(c.encode().equals(hint.encode({ vips: [a], backends: ['10.101.0.1'] })), 'a refused change changes nothing');
  });

  it('writeValue: nothing when the value holds, bits before valid on a hint not valid yet', () => {
    const m = memoryMap();
    const next = hint.encode({ vips: ['10.96.0.10'], backends: [] });
    assert.equal(hint.writeValue(m, next, hint.read(m)), true);
    assert.equal(m.writes.length, 2);
    assert.ok(!hint.isValid(m.writes[0]!) && hint.hasBit(m.writes[0]!, 'vip', '10.96.0.10'), 'first the bits, not valid');
    assert.ok(m.writes[1]!.equals(next));
    assert.equal(hint.writeValue(m, next, hint.read(m)), false);
    assert.equal(m.writes.length, 2, 'the same value is not written again');
    assert.equal(hint.add(m, { vips: ['10.96.0.10'], backends: [] }), false, 'a bit already set: no write');
    assert.equal(hint.add(m, { vips: [], backends: ['10.101.0.1'] }), true);
    assert.equal(m.writes.length, 3);
    assert.ok(hint.mayBe(hint.read(m), 'backend', '10.101.0.1') && hint.mayBe(hint.read(m), 'vip', '10.96.0.10'));
  });
});
