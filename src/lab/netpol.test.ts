// The netpol pod program on loopback: what a probe reports for an answering
// port, a closed one and a silent one, and what /probe refuses.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { netpolHealth, parseProbes, probeFrom, startNetpolServer, type NetpolServer } from './netpol.ts';

/** Starts the server on random high ports (loopback is shared with other tests: retry on a clash). */
async function startOnFreePorts(control: string): Promise<{ server: NetpolServer; tcp: number; udp: number }> {
  for (let i = 0; ; i++) {
    const tcp = randomInt(20_000, 60_000);
    const udp = randomInt(20_000, 60_000);
    try {
      return { server: await startNetpolServer({ who: 'c/ns/p', tcpPorts: [tcp], udpPorts: [udp], controlSocket: control, host: '127.0.0.1' }), tcp, udp };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || i > 20) throw err;
    }
  }
}

describe('lab workload netpol', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cmt-netpol-unit-'));
  const control = join(dir, 'p.sock');
  let s: Awaited<ReturnType<typeof startOnFreePorts>>;
  before(async () => {
    s = await startOnFreePorts(control);
  });
  after(async () => {
    await s?.server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('health names the pod and its ports', async () => {
    assert.deepEqual(await netpolHealth(control), { who: 'c/ns/p', tcp: [s.tcp], udp: [s.udp] });
  });

  test('probes: an answering TCP and UDP port name the pod; a closed TCP port is refused; a silent UDP port times out', async () => {
    const closed = s.tcp === 65_000 ? 65_001 : 65_000;
    const r = await probeFrom(control, [
      { ip: '127.0.0.1', port: s.tcp, protocol: 'tcp' },
      { ip: '127.0.0.1', port: s.udp, protocol: 'udp' },
      { ip: '127.0.0.1', port: closed, protocol: 'tcp' },
      { ip: '127.0.0.1', port: closed, protocol: 'udp', timeoutMs: 300 },
    ]);
    assert.deepEqual(
      r.map((x) => [x.ok, x.answeredBy ?? x.error]),
      [
        [true, 'c/ns/p'],
        [true, 'c/ns/p'],
        [false, 'ECONNREFUSED'],
        // An unconnected UDP socket never sees the ICMP port unreachable: silence until the timeout.
        [false, 'timeout'],
      ],
    );
    assert.ok(r[3]!.ms >= 290, `the silent probe waited its timeout (${r[3]!.ms} ms)`);
  });

  test('a bad probe request is refused naming the field, and nothing is probed', async () => {
    await assert.rejects(probeFrom(control, [{ ip: '127.0.0.1', port: 0, protocol: 'tcp' }]), /400 probes\[0\]\.port: must be 1\.\.65535/);
    assert.throws(() => parseProbes({ probes: [{ ip: '10.0.0.1', port: 80, protocol: 'sctp' }] }), /probes\[0\]\.protocol: must be tcp or udp/);
    assert.throws(() => parseProbes({ probes: [{ ip: 'pod-a', port: 80, protocol: 'tcp' }] }), /probes\[0\]\.ip: must be an IPv4 address/);
    assert.throws(() => parseProbes({}), /field probes must be an array/);
  });
});
