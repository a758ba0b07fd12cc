import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DropReason, TraceReason } from '../datapath/maps/index.ts';
import type { DatapathEvent } from '../datapath/maps/events.ts';
import { FlowStore, flowQueryString, isLostMarker, matchesFlow, monotonicToDate, parseFlowQuery, tcpFlagBits, toFlow, type Flow } from './flows.ts';
import { event, FRONTEND, FRONTEND_LABELS, namer } from './flows.test-helper.ts';

test('a flow names pods, identities, clusters and the tunnel node; the datapath identity wins, the agent fills a missing one', () => {
  const f = toFlow(event(), namer, new Date('2026-01-01T00:00:00Z'));
  assert.equal(f.verdict, 'DROPPED');
  assert.equal(f.reason, 'DROP_UNKNOWN_ENDPOINT');
  assert.equal(f.reasonCode, DropReason.DROP_UNKNOWN_ENDPOINT);
  assert.equal(f.description, 'destination is no local endpoint');
  assert.equal(f.node, 'c2/node1');
  assert.deepEqual(f.source, { ip: '10.101.1.11', port: 40000, identity: FRONTEND, labels: FRONTEND_LABELS, cluster: 'c1', namespace: 'default', pod: 'default/frontend', node: 'c1/node1' });
  assert.deepEqual(f.destination, { ip: '10.102.1.99', port: 53, identity: 0, labels: ['reserved:unknown'], cluster: null, namespace: null, pod: null, node: null });
  assert.equal(f.tunnelNode, 'c1/node1');
  assert.equal(f.policy, null);
  const icmp = toFlow(event({ protocol: 1, srcIdentity: 0, type: 'trace', reason: TraceReason.TRACE_TO_ENDPOINT }), namer, new Date(0));
  assert.equal(icmp.source.port, null);
  assert.equal(icmp.source.identity, FRONTEND, 'from the agent when the datapath had none');
  assert.equal(icmp.protocol, 'ICMP');
  assert.equal(icmp.verdict, 'FORWARDED');
  const denied = toFlow(event({ reason: DropReason.DROP_POLICY, dstIp: '10.102.1.12', protocol: 6, dstPort: 80 }), namer, new Date(0));
  assert.equal(denied.policy, 'default deny: ingress of shop/backend is enforced and no allow entry matched');
  assert.equal(f.tcpFlags, null, 'UDP');
  const syn = toFlow(event({ protocol: 6, tcpFlags: 0x12, type: 'trace', reason: TraceReason.TRACE_TO_OVERLAY }), namer, new Date(0));
  assert.deepEqual(syn.tcpFlags, ['SYN', 'ACK']);
  assert.equal(tcpFlagBits(syn.tcpFlags!), 0x12);
  assert.equal(isLostMarker(event({ type: 'trace', reason: TraceReason.TRACE_EVENT_LOST })), true);
  assert.equal(isLostMarker(event()), false);
});

test('monotonic timestamps become wall-clock times by the current offset', () => {
  const when = monotonicToDate(9_000_000_000n, 10_000_000_000n, Date.parse('2026-01-01T00:00:10Z'));
  assert.equal(when.toISOString(), '2026-01-01T00:00:09.000Z');
});

function flowAt(ms: number, o: Partial<Omit<DatapathEvent, 'reasonName'>> = {}): Flow {
  return toFlow(event(o), namer, new Date(Date.parse('2026-01-01T00:00:00Z') + ms));
}

test('the store keeps the last N flows, oldest first, and answers queries over them', () => {
  const s = new FlowStore(3);
  for (let i = 0; i < 5; i++) s.add(flowAt(i * 1000, { dstPort: 1000 + i }));
  assert.deepEqual(s.query().map((f) => f.destination.port), [1002, 1003, 1004], 'the 3 newest of 5');
  assert.deepEqual(s.query({ limit: 2 }).map((f) => f.destination.port), [1003, 1004]);
  assert.deepEqual(s.query({ port: 1003 }).map((f) => f.destination.port), [1003]);
  assert.deepEqual(s.query({ since: new Date('2026-01-01T00:00:03Z') }).map((f) => f.destination.port), [1003, 1004]);
  const st = s.status();
  assert.deepEqual([st.capacity, st.stored, st.seen, st.oldest, st.newest], [3, 3, 5, '2026-01-01T00:00:02.000Z', '2026-01-01T00:00:04.000Z']);
  assert.throws(() => new FlowStore(0), /positive integer/);
});

test('filters: verdict, clusters and pods by side, namespace, identity, protocol', () => {
  const drop = flowAt(0, { dstIp: '10.102.1.12', reason: DropReason.DROP_POLICY, protocol: 6, dstPort: 80 });
  const fwd = flowAt(1, { type: 'trace', reason: TraceReason.TRACE_TO_ENDPOINT });
  assert.equal(matchesFlow(drop, { verdict: 'DROPPED' }), true);
  assert.equal(matchesFlow(fwd, { verdict: 'DROPPED' }), false);
  assert.equal(matchesFlow(drop, { fromCluster: 'c1', toCluster: 'c2' }), true);
  assert.equal(matchesFlow(drop, { fromCluster: 'c2' }), false);
  assert.equal(matchesFlow(drop, { cluster: 'c2' }), true, 'either side');
  assert.equal(matchesFlow(drop, { fromPod: 'frontend', toPod: 'shop/backend' }), true);
  assert.equal(matchesFlow(drop, { toPod: 'default/backend' }), false, 'namespace/name must match both');
  assert.equal(matchesFlow(drop, { pod: 'backend' }), true);
  assert.equal(matchesFlow(drop, { namespace: 'shop' }), true);
  assert.equal(matchesFlow(drop, { namespace: 'kube-system' }), false);
  assert.equal(matchesFlow(drop, { identity: FRONTEND }), true);
  assert.equal(matchesFlow(drop, { protocol: 'TCP', port: 80 }), true);
  assert.equal(matchesFlow(drop, { protocol: 'UDP' }), false);
});

test('followers get new matching flows; one that cannot take more is counted, not buffered', () => {
  const s = new FlowStore(10);
  const got: Flow[] = [];
  let full = false;
  const stop = s.follow({ write: (f) => (full ? false : (got.push(f), true)) }, { verdict: 'DROPPED', limit: 1, since: new Date(0) });
  s.add(flowAt(0));
  s.add(flowAt(1, { type: 'trace', reason: TraceReason.TRACE_TO_ENDPOINT }));
  s.add(flowAt(2));
  assert.equal(got.length, 2, 'only drops; limit and since are for the kept flows, not live ones');
  full = true;
  s.add(flowAt(3));
  assert.equal(s.status().followerDropped, 1);
  assert.equal(s.status().followers, 1);
  stop();
  assert.equal(s.status().followers, 0);
});

test('query strings: parsed with clear errors, and written back the same', () => {
  const q = parseFlowQuery(new URLSearchParams('verdict=dropped&port=80&protocol=tcp&from-cluster=c1&to-pod=default/b&limit=5&since=2026-01-01T00:00:00Z&follow=1&identity=65792'));
  assert.deepEqual(q, { follow: true, verdict: 'DROPPED', port: 80, protocol: 'TCP', fromCluster: 'c1', toPod: 'default/b', limit: 5, since: new Date('2026-01-01T00:00:00Z'), identity: 65792 });
  assert.deepEqual(parseFlowQuery(new URLSearchParams(flowQueryString(q).slice(1))), q);
  const recent = parseFlowQuery(new URLSearchParams('since=5m')).since!;
  assert.ok(Math.abs(Date.now() - 300_000 - recent.getTime()) < 5000);
  assert.throws(() => parseFlowQuery(new URLSearchParams('verdict=denied')), /verdict=denied: must be DROPPED or FORWARDED/);
  assert.throws(() => parseFlowQuery(new URLSearchParams('port=99999')), /port=99999: must be an integer 0\.\.65535/);
  assert.throws(() => parseFlowQuery(new URLSearchParams('limit=0')), /limit=0/);
  assert.throws(() => parseFlowQuery(new URLSearchParams('since=yesterday')), /since=yesterday: must be an ISO-8601 time or a duration/);
  assert.throws(() => parseFlowQuery(new URLSearchParams('colour=red')), /unknown query parameter 'colour'/);
});
