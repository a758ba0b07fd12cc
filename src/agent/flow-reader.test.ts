// FlowReader with a retired ring: after an upgrade replaced cm_events (another
// size), programs attached before the restart still write into the old ring
// until they are replaced, so the agent reads both. Unit test of that logic
// with fake rings (a real ring buffer can only be written by BPF programs; the
// agent's datapath tests cover the real one): both rings' events are kept, the
// retired ring's first in a round (its events are the older ones); a retired
// ring that fails is let go, said once, and the live ring is still read; a
// retired ring that cannot be opened costs only its own events; close()
// drains and closes both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { BpfMap } from '../datapath/libbpf/map.ts';
import { DropReason, events as eventsMap } from '../datapath/maps/index.ts';
import { FlowReader, type RingSource } from './flow-reader.ts';
import { namer } from './flows.test-helper.ts';

/** A ring of encoded events; consume() hands over what was pushed, or throws when told to. */
class FakeRing implements RingSource {
  readonly queued: Buffer[] = [];
  consumed = 0;
  closed = false;
  failWith: Error | undefined;
  constructor(readonly onData: (b: Buffer) => void) {}
  consume(): number {
    if (this.closed) throw new Error('closed ring consumed');
    this.consumed++;
    if (this.failWith) throw this.failWith;
    const out = this.queued.splice(0);
    for (const b of out) this.onData(b);
    return out.length;
  }
  close(): void {
    this.closed = true;
  }
}

/** An event from pod 10.101.1.11 to port dstPort (which ring it came from, for the assertions). */
const record = (dstPort: number, timestamp: bigint): Buffer =>
  eventsMap.encode({
    timestamp,
    type: 'drop',
    reason: DropReason.DROP_POLICY,
    direction: 'egress',
    srcIp: '10.101.1.11',
    dstIp: '10.102.1.12',
    srcIdentity: (1 << 16) | 256,
    dstIdentity: (2 << 16) | 300,
    ifindex: 4,
    targetIfindex: 0,
    tunnelEndpoint: null,
    length: 60,
    protocol: 6,
    srcPort: 40000,
    dstPort,
  });

const map = (name: string): BpfMap => ({ name }) as unknown as BpfMap;

function setup(o: { retired?: boolean; openRetiredFails?: boolean } = {}) {
  const rings = new Map<string, FakeRing>();
  const warnings: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const log = {
    info() {},
    debug() {},
    error() {},
    warn(fields: Record<string, unknown>, msg: string) {
      warnings.push({ msg, fields });
    },
  } as never;
  const reader = new FlowReader(
    { events: map('cm_events'), metrics: map('cm_metrics'), retiredEvents: o.retired === false ? undefined : map('cm_events_old') },
    namer,
    64,
    log,
    {
      openRing: (m, onData) => {
        if (m.name === 'cm_events_old' && o.openRetiredFails) throw new Error('ring_buffer__new: Bad file descriptor (cm_events_old)');
        const r = new FakeRing(onData);
        rings.set(m.name, r);
        return r;
      },
      lostEvents: () => 0,
    },
  );
  return { reader, live: () => rings.get('cm_events')!, retired: () => rings.get('cm_events_old'), warnings };
}

const ports = (r: FlowReader): Array<number | null> => r.store.query().map((f) => f.destination.port);

test('both rings are read; the retired ring first in a round (older events before newer)', () => {
  const { reader, live, retired } = setup();
  assert.equal(reader.readingRetired, true);
  live().queued.push(record(2001, 3_000_000_000n), record(2002, 3_000_000_001n));
  retired()!.queued.push(record(1001, 1_000_000_000n));
  assert.equal(reader.consume(), 3);
  assert.deepEqual(ports(reader), [1001, 2001, 2002]);
  // Later rounds: both still read (programs attached before the restart keep writing into the old ring).
  retired()!.queued.push(record(1002, 1_000_000_001n));
  live().queued.push(record(2003, 3_000_000_002n));
  assert.equal(reader.consume(), 2);
  assert.deepEqual(ports(reader), [1001, 2001, 2002, 1002, 2003]);
  assert.equal(reader.store.status().seen, 5);
  assert.equal(reader.store.status().decodeErrors, 0);
  const f = reader.store.query()[0]!;
  assert.equal(f.verdict, 'DROPPED');
  assert.equal(f.source.pod, 'default/frontend', 'named by the namer like any other flow');
  reader.close();
});

test('a retired ring that fails is let go (said once); the live ring is still read, in that round and after', () => {
  const { reader, live, retired, warnings } = setup();
  retired()!.failWith = new Error('ring_buffer__consume: Bad file descriptor');
  live().queued.push(record(2001, 3_000_000_000n));
  assert.equal(reader.consume(), 1);
  assert.deepEqual(ports(reader), [2001]);
  assert.equal(reader.readingRetired, false);
  assert.equal(retired()!.closed, true, 'the failed ring is closed');
  live().queued.push(record(2002, 3_000_000_001n));
  assert.equal(reader.consume(), 1);
  reader.consume();
  assert.deepEqual(ports(reader), [2001, 2002]);
  assert.equal(retired()!.consumed, 1, 'not read again');
  assert.equal(warnings.length, 1, JSON.stringify(warnings));
  assert.match(warnings[0]!.msg, /retired cm_events ring/);
  assert.match(String(warnings[0]!.fields.err), /Bad file descriptor/);
  reader.close();
  assert.equal(live().closed, true);
});

test('a failing live ring does not stop the retired one', () => {
  const { reader, live, retired, warnings } = setup();
  live().failWith = new Error('ring_buffer__consume: Invalid argument');
  retired()!.queued.push(record(1001, 1_000_000_000n));
  assert.equal(reader.consume(), 1);
  assert.deepEqual(ports(reader), [1001]);
  assert.equal(reader.readingRetired, true);
  assert.match(warnings[0]!.msg, /reading cm_events failed/);
});

test('a retired ring that cannot be opened costs only its own events (named in the warning)', () => {
  const { reader, live, retired, warnings } = setup({ openRetiredFails: true });
  assert.equal(retired(), undefined);
  assert.equal(reader.readingRetired, false);
  assert.equal(warnings.length, 1);
  assert.equal(warnings[0]!.fields.map, 'cm_events_old');
  live().queued.push(record(2001, 3_000_000_000n));
  assert.equal(reader.consume(), 1);
  reader.close();
});

test('close() reads what both rings still hold, then closes both; without a retired ring only cm_events is opened', () => {
  const { reader, live, retired } = setup();
  retired()!.queued.push(record(1001, 1_000_000_000n));
  live().queued.push(record(2001, 3_000_000_000n));
  reader.close();
  assert.deepEqual(ports(reader), [1001, 2001]);
  assert.equal(live().closed, true);
  assert.equal(retired()!.closed, true);
  assert.equal(reader.readingRetired, false);

  const plain = setup({ retired: false });
  assert.equal(plain.retired(), undefined);
  assert.equal(plain.reader.readingRetired, false);
  plain.live().queued.push(record(2001, 3_000_000_000n));
  assert.equal(plain.reader.consume(), 1);
  plain.reader.close();
});
