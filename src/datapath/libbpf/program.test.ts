import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { removePinDir } from '../bpffs.ts';
import { buildBpfObject, datapathSkipReason, ipv4UdpPacket, tempPinDir } from '../testing.ts';
import { BpfObject, TcAction, numPossibleCpus, skbContext } from './index.ts';

const skip = datapathSkipReason();
const packet = ipv4UdpPacket({ src: '10.101.0.5', dst: '10.102.0.7', sport: 40000, dport: 8080, payload: Buffer.from('hello') });

describe('BpfProgram.testRun', { skip }, () => {
  let obj: BpfObject;
  let pinDir: string;
  before(() => {
    pinDir = tempPinDir('libbpf-prog');
    obj = BpfObject.open(buildBpfObject('test/libbpf_fixture.bpf.o'), { pinRoot: pinDir });
    obj.setConst('fx_verdict', TcAction.ok);
    obj.load();
  });
  after(() => {
    obj?.close();
    if (pinDir) removePinDir(pinDir);
  });

  it('returns the verdict and the packet as the program left it', () => {
    const r = obj.program('fx_ret').testRun({ data: packet });
    assert.equal(r.retval, TcAction.ok);
    assert.deepEqual(r.dataOut, packet);
    assert.equal(typeof r.durationNs, 'number');
    assert.equal(r.ctxOut, undefined);
  });

  it('a tc program that sets the tunnel key and redirects → TC_ACT_REDIRECT', () => {
    const r = obj.program('fx_redirect').testRun({ data: packet });
    assert.equal(r.retval, TcAction.redirect);
  });

  it('repeat runs the program that many times (per-CPU counter sums to it)', () => {
    const counter = obj.map('fx_percpu');
    const key = Buffer.alloc(4);
    const sum = (): bigint => counter.lookupPerCpu(key)!.reduce((s, b) => s + b.readBigUInt64LE(), 0n);
    assert.equal(counter.lookupPerCpu(key)!.length, numPossibleCpus());
    const before = sum();
    obj.program('fx_ret').testRun({ data: packet, repeat: 25 });
    assert.equal(sum() - before, 25n);
  });

  it('passes a struct __sk_buff context in and out', () => {
    const r = obj.program('fx_ret').testRun({ data: packet, ctx: skbContext({ mark: 0x1234, ingressIfindex: 42, priority: 3, cb: [1, 2, 3, 4, 5] }) });
    assert.ok(r.ctxOut);
    assert.equal(r.ctxOut.readUInt32LE(8), 0x1234, 'mark');
    assert.equal(r.ctxOut.readUInt32LE(32), 3, 'priority');
    assert.equal(r.ctxOut.readUInt32LE(48 + 16), 5, 'cb[4]');
  });

  it('rejects a context the kernel does not accept with a typed error', () => {
    const bad = skbContext();
    bad.writeUInt32LE(99, 0); // __sk_buff.len is not an input field
    assert.throws(() => obj.program('fx_ret').testRun({ data: packet, ctx: bad }), (e: unknown) => (e as { code?: string }).code === 'EINVAL');
  });
});
