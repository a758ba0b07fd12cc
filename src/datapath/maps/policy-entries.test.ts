import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decide, type PacketQuery } from '../../policy/decide.ts';
import { policyEntry } from '../../policy/testing.ts';
import type { PolicyMapEntry, ProtocolNumber } from '../../policy/types.ts';
import { PolicyMapOverflowError, lookupPolicyMaps, portRangePrefixes, toPolicyMaps } from './policy-entries.ts';
import { prng } from '../../util/prng.ts';

function covered(prefixes: { port: number; prefixLen: number }[]): number[] {
  const ports: number[] = [];
  for (const p of prefixes) for (let i = 0; i < 2 ** (16 - p.prefixLen); i++) ports.push(p.port + i);
  return ports;
}

test('port ranges become the fewest exact prefixes', () => {
  assert.deepEqual(portRangePrefixes(80, 80), [{ port: 80, prefixLen: 16 }]);
  assert.deepEqual(portRangePrefixes(0, 65535), [{ port: 0, prefixLen: 0 }]);
  assert.deepEqual(portRangePrefixes(8080, 8083), [{ port: 8080, prefixLen: 14 }]);
  assert.deepEqual(
    portRangePrefixes(1024, 65535).map((p) => `${p.port}/${p.prefixLen}`),
    ['1024/6', '2048/5', '4096/4', '8192/3', '16384/2', '32768/1'],
  );
  // The worst case: 30 prefixes.
  assert.equal(portRangePrefixes(1, 65534).length, 30);
  assert.throws(() => portRangePrefixes(10, 9), RangeError);
  assert.throws(() => portRangePrefixes(0, 65536), RangeError);
});

test('prefixes cover exactly the range, disjoint (random ranges)', () => {
  const rnd = prng(7);
  for (let i = 0; i < 300; i++) {
    const a = rnd(65536);
    const b = Math.min(65535, a + (i % 3 === 0 ? rnd(65536) : rnd(300)));
    const ports = covered(portRangePrefixes(a, b));
    assert.equal(ports.length, b - a + 1, `${a}-${b}`);
    assert.equal(ports[0], a);
    assert.equal(ports.at(-1), b);
    for (let j = 1; j < ports.length; j++) assert.equal(ports[j], ports[j - 1]! + 1);
  }
});

const E = policyEntry;

test('a prefix carries the flags of every shorter prefix of its group', () => {
  const m = toPolicyMaps(
    [E({ verdict: 'deny', protocol: 6, port: 0, portEnd: 65535 }), E({ protocol: 6, port: 80, portEnd: 80 }), E({ protocol: 6, port: 443, portEnd: 443 })],
    [],
  );
  assert.deepEqual(
    m.policy.map(([k, v]) => `${k.protocol}/${k.port}/${k.portPrefixLen}:${v.allow ? 'A' : ''}${v.deny ? 'D' : ''}`),
    ['6/0/0:D', '6/80/16:AD', '6/443/16:AD'],
  );
  // Other groups (identity, protocol) are not merged: that is what the four lookups are for.
  const n = toPolicyMaps([E({ verdict: 'deny', protocol: 0 }), E({ protocol: 6, port: 80, portEnd: 80 })], []);
  assert.deepEqual(n.policy.map(([, v]) => v), [{ allow: false, deny: true }, { allow: true, deny: false }]);
});

test('enforcement: one entry per endpoint with entries or any enforced direction', () => {
  const m = toPolicyMaps([E({ endpointId: 5, verdict: 'deny' })], [
    { endpointId: 3, direction: 'egress', enforced: true },
    { endpointId: 2, direction: 'ingress', enforced: true },
    { endpointId: 2, direction: 'egress', enforced: false },
    { endpointId: 4, direction: 'ingress', enforced: false },
  ]);
  assert.deepEqual(m.enforce, [
    [{ endpointId: 2 }, { active: true, ingress: true, egress: false }],
    [{ endpointId: 3 }, { active: true, ingress: false, egress: true }],
    [{ endpointId: 5 }, { active: true, ingress: false, egress: false }],
  ]);
});

test('a result beyond the capacity is refused whole', () => {
  assert.throws(() => toPolicyMaps([E({ port: 1, portEnd: 65534 })], [], 29), PolicyMapOverflowError);
  assert.equal(toPolicyMaps([E({ port: 1, portEnd: 65534 })], [], 30).policy.length, 30);
});

test('the map lookup equals decide() (random policies and packets)', () => {
  const rnd = prng(42);
  const protos: ProtocolNumber[] = [0, 6, 17, 132];
  // 5000: a CIDR identity (where the peer's address lies), besides the peer's own identity.
  const ids = [0, 1000, 2000, 3000, 5000];
  const portPick = (): number => [0, 79, 80, 81, 443, 1023, 1024, 8080, 65535, rnd(65536)][rnd(10)]!;
  let checked = 0;
  for (let round = 0; round < 200; round++) {
    const entries: PolicyMapEntry[] = [];
    for (let i = rnd(6); i > 0; i--) {
      const a = portPick();
      const b = rnd(3) === 0 ? 65535 : Math.min(65535, a + rnd(3) * rnd(2000));
      const full = rnd(4) === 0;
      entries.push(
        E({
          endpointId: 1 + rnd(2),
          direction: rnd(2) ? 'ingress' : 'egress',
          remoteIdentity: ids[rnd(5)]!,
          protocol: protos[rnd(4)]!,
          port: full ? 0 : a,
          portEnd: full ? 65535 : b,
          verdict: rnd(3) === 0 ? 'deny' : 'allow',
        }),
      );
    }
    const enforcement = [1, 2].flatMap((endpointId) =>
      (['ingress', 'egress'] as const).map((direction) => ({ endpointId, direction, enforced: rnd(3) !== 0 })),
    );
    const maps = toPolicyMaps(entries, enforcement);
    for (let j = 0; j < 40; j++) {
      const endpointId = 1 + rnd(2);
      const q: PacketQuery = {
        direction: rnd(2) ? 'ingress' : 'egress',
        remoteIdentity: ids[1 + rnd(3)]!,
        cidrIdentity: [0, 5000, 6000][rnd(3)]!,
        protocol: [6, 17, 132][rnd(3)]!,
        port: portPick(),
      };
      const enforced = enforcement.find((s) => s.endpointId === endpointId && s.direction === q.direction)!.enforced;
      const want = decide(entries.filter((e) => e.endpointId === endpointId), enforced, q).reason;
      assert.equal(lookupPolicyMaps(maps, { endpointId, ...q }), want, JSON.stringify({ entries, endpointId, q, enforced }));
      checked++;
    }
  }
  assert.equal(checked, 8000);
});
