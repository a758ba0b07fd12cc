import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ClosedError, KeyExistsError, KeyNotFoundError, MapFullError } from '../errors.ts';
import { removePinDir } from '../bpffs.ts';
import { buildBpfObject, datapathSkipReason, tempPinDir } from '../testing.ts';
import { BpfMap, BpfObject, MapType, joinPerCpu, numPossibleCpus, splitPerCpu } from './index.ts';

const skip = datapathSkipReason();

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};
const u64 = (n: number | bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};
const lpmKey = (prefixlen: number, addr: string): Buffer => {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(prefixlen, 0);
  Buffer.from(addr.split('.').map(Number)).copy(b, 4);
  return b;
};

describe('BpfMap', { skip }, () => {
  let obj: BpfObject;
  let pinDir: string;

  before(() => {
    const path = buildBpfObject('test/libbpf_fixture.bpf.o');
    pinDir = tempPinDir('libbpf-map');
    obj = BpfObject.open(path, { pinRoot: pinDir });
    obj.load();
  });
  after(() => {
    obj?.close();
    if (pinDir) removePinDir(pinDir);
  });

  it('reports type and sizes', () => {
    const m = obj.map('fx_hash');
    assert.equal(m.name, 'fx_hash');
    assert.equal(m.type, MapType.hash);
    assert.equal(m.keySize, 4);
    assert.equal(m.valueSize, 8);
    assert.equal(m.maxEntries, 4);
    assert.ok(m.fd > 0);
    assert.equal(m.perCpu, false);
  });

  it('hash: lookup, update with flags, delete, typed errors', () => {
    const m = obj.map('fx_hash');
    assert.equal(m.lookup(u32(1)), undefined, 'missing key → undefined');
    assert.equal(m.delete(u32(1)), false, 'delete of missing key → false');
    assert.throws(() => m.update(u32(1), u64(10), 'exist'), (e: unknown) => e instanceof KeyNotFoundError && e.errno === 2 && e.code === 'ENOENT');
    m.update(u32(1), u64(10));
    assert.equal(m.lookup(u32(1))!.readBigUInt64LE(), 10n);
    assert.throws(() => m.update(u32(1), u64(11), 'noexist'), (e: unknown) => e instanceof KeyExistsError && e.code === 'EEXIST' && e.op === 'bpf_map_update_elem');
    m.update(u32(1), u64(12), 'exist');
    assert.equal(m.lookup(u32(1))!.readBigUInt64LE(), 12n);
    assert.equal(m.delete(u32(1)), true);
    assert.equal(m.lookup(u32(1)), undefined);
  });

  it('hash: update of a full map → MapFullError with E2BIG', () => {
    const m = obj.map('fx_hash');
    try {
      for (let i = 0; i < 4; i++) m.update(u32(100 + i), u64(i));
      assert.throws(
        () => m.update(u32(200), u64(0)),
        (e: unknown) => e instanceof MapFullError && e.errno === 7 && e.code === 'E2BIG' && e.target === 'fx_hash',
      );
      // replacing an existing key still works when full
      m.update(u32(100), u64(99));
    } finally {
      m.deleteBatch([0, 1, 2, 3].map((i) => u32(100 + i)));
    }
    assert.equal([...m.keys()].length, 0);
  });

  it('refuses keys and values of the wrong size before the syscall', () => {
    const m = obj.map('fx_hash');
    assert.throws(() => m.lookup(Buffer.alloc(2)), RangeError);
    assert.throws(() => m.update(u32(1), Buffer.alloc(4)), RangeError);
  });

  it('hash: keys(), entries(), and batch operations', () => {
    const m = obj.map('fx_hash');
    assert.equal(m.updateBatch([[u32(1), u64(11)], [u32(2), u64(22)], [u32(3), u64(33)]]), 3);
    const keys = [...m.keys()].map((k) => k.readUInt32LE()).sort();
    assert.deepEqual(keys, [1, 2, 3]);
    const entries = new Map([...m.entries()].map(([k, v]) => [k.readUInt32LE(), v.readBigUInt64LE()]));
    assert.deepEqual(entries, new Map([[1, 11n], [2, 22n], [3, 33n]]));
    // batch size 1 forces several rounds (and the ENOSPC regrow path on shared buckets)
    for (const size of [1, 2, 256]) {
      const batch = new Map(m.lookupBatch(size).map(([k, v]) => [k.readUInt32LE(), v.readBigUInt64LE()]));
      assert.deepEqual(batch, entries, `batch size ${size}`);
    }
    // missing keys in a batch delete are skipped
    assert.equal(m.deleteBatch([u32(1), u32(77), u32(3)]), 2);
    assert.deepEqual([...m.keys()].map((k) => k.readUInt32LE()), [2]);
    assert.equal(m.deleteBatch([u32(2)]), 1);
    assert.deepEqual(m.lookupBatch(), []);
    assert.equal(m.batchFallback, false, 'hash maps use the kernel batch syscalls');
  });

  it('scan(): every entry in place, in reused chunk buffers; the fallback visits one by one', () => {
    const m = obj.map('fx_hash');
    m.updateBatch([[u32(1), u64(11)], [u32(2), u64(22)], [u32(3), u64(33)], [u32(4), u64(44)]]);
    try {
      for (const size of [1, 3, 256]) {
        const seen = new Map<number, bigint>();
        const chunks = new Set<Buffer>();
        m.scan((keys, values, i) => {
          chunks.add(keys);
          seen.set(keys.readUInt32LE(i * m.keySize), values.readBigUInt64LE(i * m.valueBufferSize));
        }, size);
        assert.deepEqual(seen, new Map([[1, 11n], [2, 22n], [3, 33n], [4, 44n]]), `batch size ${size}`);
        // one keys buffer for all chunks (a new one only when a bucket needs more room than the size)
        if (size === 256) assert.equal(chunks.size, 1, 'no Buffer per entry');
      }
    } finally {
      m.deleteBatch([1, 2, 3, 4].map(u32));
    }
    let visits = 0;
    m.scan(() => void visits++);
    assert.equal(visits, 0, 'an empty map visits nothing');
    // where the kernel has no batch lookup, scan() visits each entry with i = 0
    const d = obj.map('fx_devmap');
    d.update(u32(3), u32(1));
    try {
      const got: Array<[number, number, number]> = [];
      d.scan((keys, values, i) => void got.push([keys.readUInt32LE(i * 4), values.readUInt32LE(i * 4), i]));
      assert.deepEqual(got, [[3, 1, 0]]);
    } finally {
      d.delete(u32(3));
    }
  });

  it('LPM trie: longest-prefix lookup, iteration, batch', () => {
    const m = obj.map('fx_lpm');
    assert.equal(m.type, MapType.lpmTrie);
    m.update(lpmKey(8, '10.0.0.0'), u32(8));
    m.update(lpmKey(24, '10.1.2.0'), u32(24));
    assert.equal(m.lookup(lpmKey(32, '10.1.2.3'))!.readUInt32LE(), 24);
    assert.equal(m.lookup(lpmKey(32, '10.9.9.9'))!.readUInt32LE(), 8);
    assert.equal(m.lookup(lpmKey(32, '11.0.0.1')), undefined);
    assert.equal([...m.keys()].length, 2);
    assert.equal(m.updateBatch([[lpmKey(16, '10.2.0.0'), u32(16)]]), 1);
    const all = new Map(m.lookupBatch().map(([k, v]) => [`${k.subarray(4).join('.')}/${k.readUInt32LE()}`, v.readUInt32LE()]));
    assert.deepEqual(all, new Map([['10.0.0.0/8', 8], ['10.1.2.0/24', 24], ['10.2.0.0/16', 16]]));
    assert.equal(m.deleteBatch([lpmKey(8, '10.0.0.0'), lpmKey(8, '12.0.0.0'), lpmKey(24, '10.1.2.0'), lpmKey(16, '10.2.0.0')]), 3);
    assert.equal(m.delete(lpmKey(8, '10.0.0.0')), false);
    assert.deepEqual([...m.keys()], []);
  });

  it('batch operations fall back to element syscalls where the kernel has none (devmap_hash)', () => {
    const m = obj.map('fx_devmap');
    assert.equal(m.type, MapType.devmapHash);
    const lo = u32(1); // ifindex of lo, present in every netns
    assert.equal(m.updateBatch([[u32(1), lo], [u32(2), lo]]), 2);
    assert.equal(m.batchFallback, true);
    const all = new Map(m.lookupBatch().map(([k, v]) => [k.readUInt32LE(), v.readUInt32LE()]));
    assert.deepEqual(all, new Map([[1, 1], [2, 1]]));
    assert.equal(m.deleteBatch([u32(1), u32(3), u32(2)]), 2);
    assert.deepEqual(m.lookupBatch(), []);
  });

  it('per-CPU maps: one value per possible CPU, split and join', () => {
    const n = numPossibleCpus();
    assert.ok(n >= 1);
    const m = obj.map('fx_percpu_hash');
    assert.equal(m.perCpu, true);
    assert.equal(m.valueBufferSize, 8 * n, 'u32 values are padded to 8 bytes per CPU');
    // a single value is written to every CPU
    m.update(u32(5), u32(7));
    const raw = m.lookup(u32(5))!;
    assert.equal(raw.length, 8 * n);
    assert.deepEqual(splitPerCpu(raw, 4).map((b) => b.readUInt32LE()), Array(n).fill(7));
    // distinct values per CPU
    const values = Array.from({ length: n }, (_, i) => u32(i + 1));
    m.update(u32(5), joinPerCpu(values, 4));
    assert.deepEqual(m.lookupPerCpu(u32(5))!.map((b) => b.readUInt32LE()), values.map((b) => b.readUInt32LE()));
    const batch = m.lookupBatch();
    assert.equal(batch.length, 1);
    assert.equal(batch[0]![1].length, 8 * n);
    assert.equal(m.deleteBatch([u32(5)]), 1);
    assert.equal(m.lookupPerCpu(u32(5)), undefined);
  });

  it('pin() and openPinned(): a second fd on the same map; close is deterministic and idempotent', () => {
    const m = obj.map('fx_hash');
    const path = `${pinDir}/fx_hash_extra`;
    m.pin(path);
    const other = BpfMap.openPinned(path);
    try {
      assert.equal(other.name, 'fx_hash');
      assert.equal(other.type, MapType.hash);
      assert.equal(other.keySize, 4);
      assert.equal(other.valueSize, 8);
      assert.equal(other.maxEntries, 4);
      assert.notEqual(other.fd, m.fd);
      other.update(u32(9), u64(99));
      assert.equal(m.lookup(u32(9))!.readBigUInt64LE(), 99n, 'both fds reach the same map');
      m.delete(u32(9));
    } finally {
      other.close();
    }
    other.close();
    assert.equal(other.closed, true);
    assert.throws(() => other.lookup(u32(9)), ClosedError);
    assert.throws(() => BpfMap.openPinned(`${pinDir}/no-such-pin`), (e: unknown) => e instanceof Error && (e as { code?: string }).code === 'ENOENT');
  });
});
