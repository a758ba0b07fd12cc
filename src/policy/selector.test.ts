import { test } from 'node:test';
import assert from 'node:assert/strict';
import { identityLabels } from '../identity/labels.ts';
import { formatPrefix, hasHostBits, parsePrefix, prefixContains, subtractPrefixes } from './cidr.ts';
import { LabelView, requirement, selectorMatches, normalizeSelector } from './selector.ts';

const view = new LabelView([
  ...identityLabels({ cluster: 'c1', namespace: 'prod', serviceAccount: 'sa', podLabels: { app: 'web', tier: 'front' }, namespaceLabels: { team: 'a' } }),
  { source: 'container', key: 'app', value: 'sidecar' },
]);
const m = (...reqs: Parameters<typeof requirement>[]) => selectorMatches(normalizeSelector(reqs.map((r) => requirement(...r))), view);

test('every operator, including on a missing key', () => {
  assert.equal(m(['k8s', 'app', 'In', ['web', 'db']]), true);
  assert.equal(m(['k8s', 'app', 'In', ['db']]), false);
  assert.equal(m(['k8s', 'app', 'NotIn', ['db']]), true);
  assert.equal(m(['k8s', 'app', 'NotIn', ['web']]), false);
  assert.equal(m(['k8s', 'missing', 'NotIn', ['x']]), true, 'NotIn holds when the key is absent');
  assert.equal(m(['k8s', 'tier', 'Exists']), true);
  assert.equal(m(['k8s', 'missing', 'Exists']), false);
  assert.equal(m(['k8s', 'missing', 'DoesNotExist']), true);
  assert.equal(m(['k8s', 'tier', 'DoesNotExist']), false);
  assert.equal(m(), true, 'no requirement selects everything');
  assert.equal(m(['k8s', 'app', 'In', ['web']], ['k8s', 'tier', 'In', ['back']]), false, 'requirements are ANDed');
});

test('sources: k8s: only k8s labels, any: every source', () => {
  assert.equal(m(['k8s', 'app', 'In', ['sidecar']]), false);
  assert.equal(m(['container', 'app', 'In', ['sidecar']]), true);
  assert.equal(m(['any', 'app', 'In', ['sidecar']]), true);
  assert.equal(m(['any', 'app', 'In', ['web']]), true);
  assert.equal(m(['any', 'app', 'NotIn', ['sidecar']]), false);
  assert.equal(m(['reserved', 'host', 'Exists']), false);
});

test('namespace labels, and kubernetes.io/metadata.name even when the namespace object lacks it', () => {
  assert.equal(m(['k8s', 'io.cilium.k8s.namespace.labels.team', 'In', ['a']]), true);
  assert.equal(m(['k8s', 'io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name', 'In', ['prod']]), true);
  assert.equal(m(['k8s', 'io.cilium.k8s.policy.cluster', 'In', ['c1']]), true);
});

test('CIDR arithmetic: parse, host bits, containment, subtraction', () => {
  assert.equal(formatPrefix(parsePrefix('10.1.2.3/8')!), '10.0.0.0/8');
  assert.equal(formatPrefix(parsePrefix('192.168.1.7')!), '192.168.1.7/32');
  assert.equal(parsePrefix('10.0.0.0/33'), undefined);
  assert.equal(parsePrefix('fd00::/8'), undefined);
  assert.equal(hasHostBits('10.1.2.3/8'), true);
  assert.equal(hasHostBits('10.0.0.0/8'), false);
  assert.equal(prefixContains(parsePrefix('10.0.0.0/8')!, parsePrefix('10.96.0.0/12')!), true);
  assert.equal(prefixContains(parsePrefix('10.96.0.0/12')!, parsePrefix('10.0.0.0/8')!), false);
  assert.equal(prefixContains(parsePrefix('0.0.0.0/0')!, parsePrefix('255.255.255.255/32')!), true);
  const sub = (c: string, ...ex: string[]) => subtractPrefixes(parsePrefix(c)!, ex.map((e) => parsePrefix(e)!)).map(formatPrefix);
  assert.deepEqual(sub('10.0.0.0/8', '10.96.0.0/12'), ['10.0.0.0/10', '10.64.0.0/11', '10.112.0.0/12', '10.128.0.0/9']);
  assert.deepEqual(sub('10.0.0.0/30', '10.0.0.1/32', '10.0.0.2/31'), ['10.0.0.0/32']);
  assert.deepEqual(sub('10.0.0.0/24', '10.0.0.0/24'), []);
  assert.deepEqual(sub('10.0.0.0/24', '11.0.0.0/8'), ['10.0.0.0/24']);
  assert.deepEqual(sub('0.0.0.0/0', '128.0.0.0/1'), ['0.0.0.0/1']);
  // Exhaustively on a /28: the result covers exactly the addresses not excepted.
  const covered = (ps: string[]) => {
    const s = new Set<number>();
    for (const p of ps.map((x) => parsePrefix(x)!)) for (let i = 0; i < 2 ** (32 - p.len); i++) s.add(p.addr + i);
    return s;
  };
  const res = covered(sub('10.0.0.0/28', '10.0.0.4/30', '10.0.0.9/32', '10.0.0.6/31'));
  const base = parsePrefix('10.0.0.0/28')!.addr;
  for (let i = 0; i < 16; i++) assert.equal(res.has(base + i), !(i >= 4 && i <= 7) && i !== 9, `address .${i}`);
});
