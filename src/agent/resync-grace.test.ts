// Withdrawals of remote state while that remote resyncs: held back and
// dropped when re-claimed; applied at once otherwise.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock } from '../util/clock.ts';
import { ResyncGrace } from './resync-grace.ts';

describe('ResyncGrace', () => {
  it('applies withdrawals of a healthy remote at once', () => {
    const clock = new ManualClock();
    const g = new ResyncGrace({ graceMs: 1000, clock });
    g.observe('c2', 'syncing');
    g.observe('c2', 'ready');
    clock.advance(1000); // the grace after becoming ready has passed
    const applied: string[] = [];
    g.withdraw('ip/1', 'c2', () => applied.push('ip/1'));
    g.withdraw('ip/2', 'unknown-cluster', () => applied.push('ip/2'));
    assert.deepEqual(applied, ['ip/1', 'ip/2']);
  });

  it('holds withdrawals while the remote resyncs and shortly after it is ready; a re-claim drops them', () => {
    const clock = new ManualClock();
    const g = new ResyncGrace({ graceMs: 1000, clock });
    g.observe('c2', 'ready');
    g.observe('c2', 'disconnected');
    const applied: string[] = [];
    g.withdraw('ip/a', 'c2', () => applied.push('a'));
    g.observe('c2', 'syncing');
    g.observe('c2', 'ready');
    clock.advance(500);
    g.withdraw('ip/b', 'c2', () => applied.push('b')); // still within the grace after ready
    g.claim('ip/a'); // the refilled remote re-announces a
    assert.equal(applied.length, 0);
    assert.deepEqual(g.status(), { held: 2, pending: 1, cancelled: 1, settling: ['c2'] });
    clock.advance(1000);
    assert.deepEqual(applied, ['b'], 'b was really gone: removed after the grace');
    assert.equal(g.settling('c2'), false);
    g.withdraw('ip/c', 'c2', () => applied.push('c'));
    assert.deepEqual(applied, ['b', 'c'], 'settled: at once');
  });

  it('a remote being removed (stopped, then drained) is drained at once; stop drops what is held', () => {
    const clock = new ManualClock();
    const g = new ResyncGrace({ graceMs: 1000, clock });
    g.observe('c2', 'syncing');
    const applied: string[] = [];
    g.withdraw('ip/a', 'c2', () => applied.push('a'));
    g.observe('c2', 'stopped');
    g.withdraw('ip/b', 'c2', () => applied.push('b'));
    assert.deepEqual(applied, ['b']);
    g.stop();
    clock.advance(5000);
    assert.deepEqual(applied, ['b']);
    assert.equal(clock.pending, 0);
  });

  it('a grace of 0 holds nothing', () => {
    const g = new ResyncGrace({ graceMs: 0, clock: new ManualClock() });
    g.observe('c2', 'syncing');
    let n = 0;
    g.withdraw('x', 'c2', () => n++);
    assert.equal(n, 1);
  });
});
