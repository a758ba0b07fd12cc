import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { prng } from '../util/prng.ts';
import { LOCAL, OwnershipRegistry, parseRange } from './ownership.ts';

const reg = (): OwnershipRegistry => {
  const r = new OwnershipRegistry();
  r.setNode(LOCAL, 'n1', { cidrs: ['10.1.1.0/24'], addresses: ['192.168.1.1'] });
  r.setNode('c2', 'n1', { cidrs: ['10.2.1.0/24'], addresses: ['192.168.2.1'] });
  r.setNode('c3', 'n1', { cidrs: ['10.3.1.0/24'], addresses: ['192.168.3.1'] });
  return r;
};

describe('address ownership between clusters', () => {
  test('parseRange clears host bits and refuses what is not IPv4', () => {
    assert.equal(parseRange('10.1.2.3/16')?.text, '10.1.0.0/16');
    assert.equal(parseRange('10.1.2.3')?.text, '10.1.2.3/32');
    for (const bad of ['10.1.2', '10.1.2.256', 'fd00::1', '10.1.2.3/33', '10.1.2.3/x', '1.2.3.4/5/6', '']) assert.equal(parseRange(bad), undefined, bad);
  });

  test("a remote's endpoint IPs must lie in its own pod CIDRs or be its node addresses", () => {
    const r = reg();
    assert.deepEqual(r.checkIp('c2', '10.2.1.7'), { ok: true });
    assert.deepEqual(r.checkIp('c2', '192.168.2.1'), { ok: true });
    assert.deepEqual(r.checkIp('c2', '10.3.1.7'), { ok: false, kind: 'foreign', reason: '10.3.1.7/32 lies in pod CIDR 10.3.1.0/24 of c3 (node n1)' });
    assert.deepEqual(r.checkIp('c2', '10.1.1.9'), { ok: false, kind: 'foreign', reason: '10.1.1.9/32 lies in pod CIDR 10.1.1.0/24 of the local cluster (node n1)' });
    assert.deepEqual(r.checkIp('c2', '192.168.3.1'), { ok: false, kind: 'foreign', reason: '192.168.3.1/32 is the address of node n1 of c3' });
    assert.deepEqual(r.checkIp('c2', '10.9.9.9'), { ok: false, kind: 'outside', reason: "10.9.9.9/32 is outside the pod CIDRs and node addresses that cluster c2's nodes announce" });
    assert.deepEqual(r.checkIp('c2', '10.2.0.0/16'), { ok: false, kind: 'outside', reason: "10.2.0.0/16 is outside the pod CIDRs and node addresses that cluster c2's nodes announce" });
    assert.equal(r.checkIp('c2', 'fd00::1').ok, false);
    assert.deepEqual(r.conflicts(), []);
  });

  test('overlapping pod CIDRs: the later claim is refused and both are flagged; withdrawing the earlier one accepts it', () => {
    const r = reg();
    const affected = r.setNode('c4', 'n1', { cidrs: ['10.2.0.0/16'], addresses: ['192.168.4.1'] });
    assert.deepEqual([...affected].sort(), ['c2', 'c4']);
    assert.deepEqual(r.acceptedCidrs('c4', 'n1'), []);
    assert.deepEqual(r.acceptedCidrs('c2', 'n1'), ['10.2.1.0/24']);
    assert.deepEqual(r.conflicts(), [{ kind: 'pod-cidr', cluster: 'c4', node: 'n1', value: '10.2.0.0/16', ownerCluster: 'c2', ownerNode: 'n1', ownerValue: '10.2.1.0/24' }]);
    assert.deepEqual(r.flaggedClusters(), ['c2', 'c4']);
    // c4 cannot take c2's pods, nor the rest of its refused range; c2 keeps its own.
    assert.equal(r.checkIp('c4', '10.2.1.7').ok, false);
    assert.equal(r.checkIp('c4', '10.2.200.7').ok, false);
    assert.deepEqual(r.checkIp('c2', '10.2.1.7'), { ok: true });
    // An update of c2's node keeps its place: c4 stays refused.
    r.setNode('c2', 'n1', { cidrs: ['10.2.1.0/24'], addresses: ['192.168.2.1', '192.168.2.2'] });
    assert.deepEqual(r.acceptedCidrs('c4', 'n1'), []);
    assert.deepEqual([...r.removeNode('c2', 'n1')].sort(), ['c2', 'c4']);
    assert.deepEqual(r.acceptedCidrs('c4', 'n1'), ['10.2.0.0/16']);
    assert.deepEqual(r.checkIp('c4', '10.2.200.7'), { ok: true });
    assert.deepEqual(r.conflicts(), []);
  });

  test("a remote claiming the local cluster's range is refused, whatever the order", () => {
    const r = new OwnershipRegistry();
    r.setNode('c2', 'n1', { cidrs: ['10.1.0.0/16'], addresses: ['192.168.2.1'] });
    r.setNode(LOCAL, 'n1', { cidrs: ['10.1.1.0/24'], addresses: ['192.168.1.1'] });
    assert.deepEqual(r.acceptedCidrs('c2', 'n1'), []);
    assert.equal(r.conflicts()[0]!.ownerCluster, 'the local cluster');
    assert.deepEqual(r.flaggedClusters(), ['c2']);
  });

  test('a node address claimed by two clusters refuses the later node (its ranges too)', () => {
    const r = reg();
    r.setNode('c4', 'n1', { cidrs: ['10.4.1.0/24'], addresses: ['192.168.2.1'] });
    assert.equal(r.nodeRefusal('c4', 'n1'), 'node address 192.168.2.1 is already claimed by c2 (node n1)');
    assert.equal(r.nodeRefusal('c2', 'n1'), null);
    assert.deepEqual(r.acceptedCidrs('c4', 'n1'), []);
    assert.equal(r.checkIp('c4', '10.4.1.5').ok, false);
    assert.deepEqual(r.conflicts().map((c) => `${c.kind} ${c.cluster}/${c.node} ${c.value} <- ${c.ownerCluster}/${c.ownerNode}`), ['node-address c4/n1 192.168.2.1 <- c2/n1']);
    r.removeCluster('c2');
    assert.equal(r.nodeRefusal('c4', 'n1'), null);
    assert.deepEqual(r.checkIp('c4', '10.4.1.5'), { ok: true });
  });

  test('a cluster whose nodes announce no pod CIDR is unverified: accepted outside every other claim only', () => {
    const r = reg();
    r.setNode('eni', 'n1', { cidrs: [], addresses: ['192.168.9.1'] });
    assert.deepEqual(r.unverifiedClusters(), ['eni']);
    assert.deepEqual(r.checkIp('eni', '172.16.0.5'), { ok: true, unverified: true });
    assert.equal(r.checkIp('eni', '10.2.1.5').ok, false);
    assert.equal(r.checkIp('eni', '192.168.1.1').ok, false);
  });

  test('wide ranges and ranges across the index buckets are found', () => {
    const r = new OwnershipRegistry();
    r.setNode(LOCAL, 'n1', { cidrs: ['10.0.0.0/8'], addresses: [] });
    r.setNode('c2', 'n1', { cidrs: ['10.200.3.0/24'], addresses: [] });
    assert.deepEqual(r.acceptedCidrs('c2', 'n1'), []);
    const q = new OwnershipRegistry();
    q.setNode('c2', 'n1', { cidrs: ['10.5.255.0/24'], addresses: [] });
    q.setNode('c3', 'n1', { cidrs: ['10.4.0.0/15'], addresses: [] });
    assert.deepEqual(q.acceptedCidrs('c3', 'n1'), []);
    assert.match((q.checkIp('c3', '10.5.255.1') as { reason: string }).reason, /pod CIDR 10\.5\.255\.0\/24 of c2/);
  });

  test('an update that changes a pod CIDR goes to the back: a node cannot grow over a range claimed after it', () => {
    const r = new OwnershipRegistry();
    r.setNode('early', 'n1', { cidrs: ['10.7.1.0/24'], addresses: ['192.168.7.1'] });
    r.setNode('late', 'n1', { cidrs: ['10.7.2.0/24'], addresses: ['192.168.8.1'] });
    r.setNode('early', 'n1', { cidrs: ['10.7.0.0/16'], addresses: ['192.168.7.1'] });
    assert.deepEqual(r.acceptedCidrs('late', 'n1'), ['10.7.2.0/24']);
    assert.deepEqual(r.acceptedCidrs('early', 'n1'), []);
    assert.equal(r.checkIp('early', '10.7.2.9').ok, false);
    // Its address kept its place.
    assert.equal(r.nodeRefusal('early', 'n1'), null);
  });

  test('verdicts say why: foreign, outside, invalid', () => {
    const r = reg();
    assert.equal((r.checkIp('c2', '10.3.1.7') as { kind: string }).kind, 'foreign');
    assert.equal((r.checkIp('c2', '10.9.9.9') as { kind: string }).kind, 'outside');
    assert.equal((r.checkIp('c2', 'x') as { kind: string }).kind, 'invalid');
  });

  test('randomized: the indexed registry agrees with a brute-force reading of the rules', () => {
    const rand = prng(17);
    const owners = [LOCAL, 'a', 'b', 'c', 'd'] as const;
    const lens = [12, 16, 20, 24, 26];
    const addr = (): string => `10.${rand(4)}.${rand(256)}.${rand(256)}`;
    type C = { text: string; seq: number };
    for (let round = 0; round < 30; round++) {
      const r = new OwnershipRegistry();
      const live = new Map<string, { owner: (typeof owners)[number]; node: string; cidrs: C[]; addresses: C[] }>();
      let seq = 0;
      for (let step = 0; step < 40; step++) {
        const owner = owners[rand(owners.length)]!;
        const node = `n${rand(3)}`;
        const k = `${String(owner === LOCAL ? '' : owner)}/${node}`;
        if (rand(4) === 0) {
          r.removeNode(owner, node);
          live.delete(k);
          continue;
        }
        const cidrs = rand(5) === 0 ? [] : [`${addr()}/${lens[rand(lens.length)]}`];
        const addresses = [`192.168.${rand(3)}.${rand(3)}`];
        r.setNode(owner, node, { cidrs, addresses });
        const prev = live.get(k);
        const claimed = (xs: string[], before: C[] = []): C[] =>
          xs.map((x) => {
            const text = parseRange(x)!.text;
            return { text, seq: before.find((b) => b.text === text)?.seq ?? (owner === LOCAL ? -1e6 + ++seq : ++seq) };
          });
        live.set(k, { owner, node, cidrs: claimed(cidrs, prev?.cidrs), addresses: claimed(addresses, prev?.addresses) });
      }
      // Brute force.
      const all = [...live.values()];
      const over = (x: string, y: string): boolean => {
        const a = parseRange(x)!;
        const b = parseRange(y)!;
        return a.base < b.base + 2 ** (32 - b.len) && b.base < a.base + 2 ** (32 - a.len);
      };
      const refused = (n: (typeof all)[number]): boolean => all.some((o) => o.owner !== n.owner && n.addresses.some((a) => o.addresses.some((b) => b.text === a.text && b.seq < a.seq)));
      for (const n of all) {
        const want = refused(n) ? [] : n.cidrs.filter((c) => !all.some((o) => o.owner !== n.owner && o.cidrs.some((oc) => oc.seq < c.seq && over(oc.text, c.text)))).map((c) => c.text);
        assert.deepEqual(r.acceptedCidrs(n.owner, n.node), want, `round ${round} ${String(n.owner === LOCAL ? 'local' : n.owner)}/${n.node}`);
      }
      for (let i = 0; i < 50; i++) {
        const cluster = owners[1 + rand(owners.length - 1)] as string;
        const ip = addr();
        const mine = all.filter((n) => n.owner === cluster && !refused(n));
        const inOwn = mine.some((n) => r.acceptedCidrs(cluster, n.node).some((c) => over(c, `${ip}/32`)));
        const inOther = all.some((n) => n.owner !== cluster && n.cidrs.some((c) => over(c.text, `${ip}/32`)));
        const announces = all.some((n) => n.owner === cluster && n.cidrs.length > 0);
        const v = r.checkIp(cluster, ip);
        assert.equal(v.ok, inOwn || (!inOther && !announces), `round ${round}: ${cluster} ${ip} -> ${JSON.stringify(v)}`);
      }
    }
  });
});
