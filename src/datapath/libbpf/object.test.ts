import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { before, describe, it } from 'node:test';
import { BpfError, ClosedError, VerifierError } from '../errors.ts';
import { withPinDir, buildBpfObject, datapathSkipReason, ipv4UdpPacket } from '../testing.ts';
import { BpfObject, TcAction } from './index.ts';

const skip = datapathSkipReason();

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};
const packet = ipv4UdpPacket({ src: '10.101.0.5', dst: '10.102.0.7', sport: 40000, dport: 80 });

describe('BpfObject', { skip }, () => {
  let fixture: string;
  let reject: string;
  before(() => {
    fixture = buildBpfObject('test/libbpf_fixture.bpf.o');
    reject = buildBpfObject('test/libbpf_reject.bpf.o');
  });

  it('lists maps and programs; map()/program() need a loaded object', async () => {
    await withPinDir('libbpf-obj', (pinRoot) => {
      const obj = BpfObject.open(fixture, { pinRoot });
      try {
        assert.equal(obj.name, 'libbpf_fixture');
        assert.deepEqual(obj.programNames().sort(), ['fx_emit', 'fx_redirect', 'fx_ret']);
        assert.ok(obj.mapNames().includes('fx_hash'));
        assert.ok(obj.mapNames().some((n) => n.endsWith('.rodata')));
        assert.throws(() => obj.map('fx_hash'), BpfError);
        obj.load();
        assert.equal(obj.loaded, true);
        assert.throws(() => obj.map('nope'), (e: unknown) => e instanceof BpfError && e.code === 'ENOENT');
        assert.throws(() => obj.program('nope'), (e: unknown) => e instanceof BpfError && e.code === 'ENOENT');
        const prog = obj.program('fx_ret');
        assert.equal(prog.name, 'fx_ret');
        assert.equal(prog.sectionName, 'tc');
        const m = obj.map('fx_hash');
        obj.close();
        obj.close(); // idempotent
        assert.throws(() => m.lookup(u32(0)), ClosedError, 'maps of a closed object are closed');
        assert.throws(() => prog.testRun({ data: packet }), ClosedError);
        assert.throws(() => obj.load(), ClosedError);
      } finally {
        obj.close();
      }
    });
  });

  it('setConst before load changes what the program returns', async () => {
    await withPinDir('libbpf-obj', (pinRoot) => {
      for (const verdict of [TcAction.ok, TcAction.shot, TcAction.redirect]) {
        const obj = BpfObject.open(fixture, { pinRoot });
        try {
          obj.setConst('fx_verdict', verdict);
          obj.load();
          assert.equal(obj.program('fx_ret').testRun({ data: packet }).retval, verdict);
          assert.throws(() => obj.setConst('fx_verdict', 1), (e: unknown) => e instanceof BpfError && e.code === 'EBUSY', 'rodata is frozen after load');
        } finally {
          obj.close();
        }
      }
    });
  });

  it('setConst validates name and size', async () => {
    await withPinDir('libbpf-obj', (pinRoot) => {
      const obj = BpfObject.open(fixture, { pinRoot });
      try {
        assert.throws(() => obj.setConst('no_such_var', 1), (e: unknown) => e instanceof BpfError && e.code === 'ENOENT');
        assert.throws(() => obj.setConst('fx_verdict', Buffer.alloc(8)), RangeError);
        assert.throws(() => obj.setConst('fx_verdict', 2 ** 32), RangeError);
        obj.setConst('fx_tag', Buffer.alloc(8, 1));
        obj.setConst('fx_tag', 0xffff_ffff_ffff_ffffn);
      } finally {
        obj.close();
      }
    });
  });

  it('maps pinned by name are pinned in pinRoot and reused by the next load', async () => {
    await withPinDir('libbpf-obj', (pinRoot) => {
      const first = BpfObject.open(fixture, { pinRoot });
      try {
        first.load();
        assert.ok(existsSync(`${pinRoot}/fx_pinned`), 'LIBBPF_PIN_BY_NAME map pinned under pinRoot');
        assert.ok(!existsSync(`${pinRoot}/fx_hash`), 'unpinned maps are not');
        first.map('fx_pinned').update(u32(1), u32(1111));
        first.map('fx_hash').update(u32(1), Buffer.alloc(8, 1));
      } finally {
        first.close();
      }
      const second = BpfObject.open(fixture, { pinRoot });
      try {
        second.load();
        assert.equal(second.map('fx_pinned').lookup(u32(1))?.readUInt32LE(), 1111, 'second load finds the first load\'s entry');
        assert.equal(second.map('fx_hash').lookup(u32(1)), undefined, 'an unpinned map is new');
      } finally {
        second.close();
      }
    });
  });

  it('setPinPath pins a map elsewhere than pinRoot/<name>, and a later load with the same path reuses it', async () => {
    await withPinDir('libbpf-obj', (pinRoot) => {
      const first = BpfObject.open(fixture, { pinRoot });
      try {
        first.setPinPath('fx_pinned', `${pinRoot}/fx_pinned_other`);
        first.load();
        assert.ok(existsSync(`${pinRoot}/fx_pinned_other`) && !existsSync(`${pinRoot}/fx_pinned`));
        first.map('fx_pinned').update(u32(1), u32(2222));
      } finally {
        first.close();
      }
      const second = BpfObject.open(fixture, { pinRoot });
      try {
        second.setPinPath('fx_pinned', `${pinRoot}/fx_pinned_other`);
        second.load();
        assert.equal(second.map('fx_pinned').lookup(u32(1))?.readUInt32LE(), 2222);
      } finally {
        second.close();
      }
    });
  });

  it('a program the verifier rejects → VerifierError with the verifier log', () => {
    const obj = BpfObject.open(reject);
    try {
      assert.throws(
        () => obj.load(),
        (e: unknown) =>
          e instanceof VerifierError &&
          e.program === 'rj_unchecked' &&
          e.code === 'EACCES' &&
          e.errno === 13 &&
          /invalid mem access 'map_value_or_null'/.test(e.verifierLog) &&
          /processed \d+ insns/.test(e.verifierLog),
      );
    } finally {
      obj.close();
    }
  });

  it('open of a missing file → BpfError ENOENT with libbpf\'s message', () => {
    assert.throws(
      () => BpfObject.open('/nonexistent/x.bpf.o'),
      (e: unknown) => e instanceof BpfError && e.op === 'bpf_object__open_file' && e.code === 'ENOENT' && /failed to open/.test(e.log ?? ''),
    );
  });
});
