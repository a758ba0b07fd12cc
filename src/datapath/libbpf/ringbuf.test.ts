import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { ClosedError } from '../errors.ts';
import { removePinDir } from '../bpffs.ts';
import { buildBpfObject, datapathSkipReason, ipv4UdpPacket, tempPinDir } from '../testing.ts';
import { BpfObject, RingBufferReader, readRingBuffer, skbContext } from './index.ts';

const skip = datapathSkipReason();
const packet = ipv4UdpPacket({ src: '10.101.0.5', dst: '10.102.0.7', sport: 1, dport: 2 });
const TAG = 0x1122334455667788n;

interface FxEvent {
  magic: number;
  ingressIfindex: number;
  mark: number;
  len: number;
  tag: bigint;
}
const decode = (b: Buffer): FxEvent => ({
  magic: b.readUInt32LE(0),
  ingressIfindex: b.readUInt32LE(4),
  mark: b.readUInt32LE(8),
  len: b.readUInt32LE(12),
  tag: b.readBigUInt64LE(16),
});

describe('RingBufferReader', { skip }, () => {
  let obj: BpfObject;
  let pinDir: string;
  const emit = (mark: number): void => {
    const r = obj.program('fx_emit').testRun({ data: packet, ctx: skbContext({ ingressIfindex: 42, mark }) });
    assert.equal(r.retval, 0);
  };
  before(() => {
    pinDir = tempPinDir('libbpf-rb');
    obj = BpfObject.open(buildBpfObject('test/libbpf_fixture.bpf.o'), { pinRoot: pinDir });
    obj.setConst('fx_tag', TAG);
    obj.load();
  });
  after(() => {
    obj?.close();
    if (pinDir) removePinDir(pinDir);
  });

  it('reads the event a test run emitted', () => {
    const got: Buffer[] = [];
    const reader = new RingBufferReader(obj.map('fx_events'), (d) => got.push(d));
    try {
      assert.equal(reader.consume(), 0);
      emit(7);
      assert.equal(reader.poll(100), 1);
      assert.equal(got.length, 1);
      assert.equal(got[0]!.length, 24);
      assert.deepEqual(decode(got[0]!), { magic: 0xc1a55e7e, ingressIfindex: 42, mark: 7, len: packet.length, tag: TAG });
    } finally {
      reader.close();
    }
    reader.close(); // idempotent
    assert.throws(() => reader.consume(), ClosedError);
  });

  it('start() consumes on the event loop until stop()', async () => {
    const marks: number[] = [];
    const reader = new RingBufferReader(obj.map('fx_events'), (d) => marks.push(decode(d).mark));
    try {
      reader.start(10);
      for (let i = 1; i <= 5; i++) emit(i);
      for (let i = 0; i < 100 && marks.length < 5; i++) await sleep(10);
      assert.deepEqual(marks, [1, 2, 3, 4, 5]);
      reader.stop();
      assert.equal(reader.running, false);
    } finally {
      reader.close();
    }
  });

  it('a throwing handler stops the round and its error surfaces from consume()', () => {
    let calls = 0;
    const reader = new RingBufferReader(obj.map('fx_events'), () => {
      calls++;
      throw new Error('boom');
    });
    try {
      emit(1);
      emit(2);
      assert.throws(() => reader.consume(), /boom/);
      assert.equal(calls, 1);
    } finally {
      reader.close();
    }
    // drain what is left for the next test
    const drain = new RingBufferReader(obj.map('fx_events'), () => {});
    drain.consume();
    drain.close();
  });

  it('readRingBuffer() runs until aborted', async () => {
    const ac = new AbortController();
    const marks: number[] = [];
    const done = readRingBuffer(obj.map('fx_events'), (d) => {
      marks.push(decode(d).mark);
      if (marks.length === 2) ac.abort();
    }, { signal: ac.signal, intervalMs: 5 });
    emit(10);
    emit(11);
    await done;
    assert.deepEqual(marks, [10, 11]);
  });

  it('refuses a map that is not a ring buffer', () => {
    assert.throws(() => new RingBufferReader(obj.map('fx_hash'), () => {}), TypeError);
  });
});
