import { test } from 'node:test';
import assert from 'node:assert/strict';
import { events as eventsMap, DropReason, TraceReason } from '../datapath/maps/index.ts';
import type { DatapathEvent } from '../datapath/maps/events.ts';
import { emptyDirectory } from './directory.ts';
import { formatFlow, matchesVerdict, monotonicToDate, parseVerdict, toFlow, verdictOf } from './observe.ts';

function event(o: Partial<Omit<DatapathEvent, 'reasonName'>> = {}): DatapathEvent {
  // Through the codec, as the ring buffer delivers it.
  return eventsMap.decode(
    eventsMap.encode({
      timestamp: 5_000_000_000n,
      type: 'drop',
      reason: DropReason.DROP_UNKNOWN_ENDPOINT,
      direction: 'ingress',
      srcIp: '10.101.1.11',
      dstIp: '10.102.1.99',
      srcIdentity: (1 << 16) | 256,
      dstIdentity: 0,
      ifindex: 4,
      targetIfindex: 0,
      tunnelEndpoint: '10.1.0.1',
      length: 84,
      protocol: 17,
      srcPort: 40000,
      dstPort: 53,
      ...o,
    }),
  );
}

test('verdicts: drops, forwards, and the lost-events marker', () => {
  assert.equal(verdictOf(event()), 'DROPPED');
  assert.equal(verdictOf(event({ type: 'trace', reason: TraceReason.TRACE_TO_OVERLAY })), 'FORWARDED');
  assert.equal(verdictOf(event({ type: 'trace', reason: TraceReason.TRACE_EVENT_LOST })), 'LOST');
  assert.equal(parseVerdict('dropped'), 'DROPPED');
  assert.throws(() => parseVerdict('denied'), /must be DROPPED or FORWARDED/);
});

test('a flow names pods, identities, clusters and the tunnel node; the datapath identity wins, the directory fills a missing one', () => {
  const d = emptyDirectory();
  d.clusterById.set(1, 'c1');
  d.identities.set((1 << 16) | 256, ['k8s:app=frontend', 'k8s:io.cilium.k8s.policy.cluster=c1', 'k8s:io.kubernetes.pod.namespace=default']);
  d.pods.set('10.101.1.11', { namespace: 'default', pod: 'frontend', cluster: 'c1', node: 'c1/node1', identity: (1 << 16) | 256 });
  d.nodesByIP.set('10.1.0.1', 'c1/node1');
  const f = toFlow(event(), 'c2/node1', d, new Date('2026-01-01T00:00:00Z'));
  assert.equal(f.verdict, 'DROPPED');
  assert.equal(f.reason, 'DROP_UNKNOWN_ENDPOINT');
  assert.equal(f.description, 'destination is no local endpoint');
  assert.deepEqual(f.source, { ip: '10.101.1.11', port: 40000, identity: 65792, labels: d.identities.get(65792), cluster: 'c1', pod: 'default/frontend', node: 'c1/node1' });
  assert.deepEqual(f.destination, { ip: '10.102.1.99', port: 53, identity: 0, labels: ['reserved:unknown'], cluster: null, pod: null, node: null });
  assert.equal(f.tunnelNode, 'c1/node1');
  assert.equal(
    formatFlow(f),
    '2026-01-01T00:00:00.000Z c2/node1 DROPPED   DROP_UNKNOWN_ENDPOINT (destination is no local endpoint) ingress c1:default/frontend 10.101.1.11:40000 (id 65792 app=frontend,ns=default) -> 10.102.1.99:53 (id 0 reserved:unknown) UDP via c1/node1',
  );
  // ICMP has no ports; an event without identity takes the directory's.
  const icmp = toFlow(event({ protocol: 1, srcIdentity: 0 }), 'c2/node1', d, new Date(0));
  assert.equal(icmp.source.port, null);
  assert.equal(icmp.source.identity, 65792);
  assert.equal(icmp.protocol, 'ICMP');
  assert.equal(matchesVerdict(icmp, 'FORWARDED'), false);
  assert.equal(matchesVerdict(icmp, undefined), true);
});

test('monotonic timestamps become wall-clock times by the current offset', () => {
  const when = monotonicToDate(9_000_000_000n, 10_000_000_000n, Date.parse('2026-01-01T00:00:10Z'));
  assert.equal(when.toISOString(), '2026-01-01T00:00:09.000Z');
});
