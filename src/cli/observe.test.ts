import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidArgumentError } from 'commander';
import { toFlow } from '../agent/flows.ts';
import { event, namer } from '../agent/flows.test-helper.ts';
import { formatFlow, mergeByTime, parseVerdict } from './observe.ts';

test('one line per flow, Hubble-like', () => {
  const f = toFlow(event(), namer, new Date('2026-01-01T00:00:00Z'));
  assert.equal(
    formatFlow(f),
    '2026-01-01T00:00:00.000Z c2/node1 DROPPED   DROP_UNKNOWN_ENDPOINT (destination is no local endpoint) ingress c1:default/frontend 10.101.1.11:40000 (id 65792 app=frontend,ns=default) -> 10.102.1.99:53 (id 0 reserved:unknown) UDP via c1/node1',
  );
  const syn = toFlow(event({ type: 'trace', reason: 1, protocol: 6, tcpFlags: 0x02, dstIp: '10.102.1.12', dstPort: 8080, service: { ip: '10.96.0.10', port: 80 }, tunnelEndpoint: null }), namer, new Date('2026-01-01T00:00:00Z'));
  assert.equal(
    formatFlow(syn),
    '2026-01-01T00:00:00.000Z c2/node1 FORWARDED TRACE_TO_ENDPOINT (to endpoint) ingress c1:default/frontend 10.101.1.11:40000 (id 65792 app=frontend,ns=default) -> c2:shop/backend 10.102.1.12:8080 (id 131372) [service 10.96.0.10:80] TCP SYN',
  );
  assert.equal(parseVerdict('dropped'), 'DROPPED');
  assert.throws(() => parseVerdict('denied'), (e: unknown) => e instanceof InvalidArgumentError && /must be DROPPED or FORWARDED/.test((e as Error).message));
});

test('flows of several nodes merge by time, each node keeping its own order for equal times', () => {
  const at = (iso: string, port: number) => ({ ...toFlow(event({ dstPort: port }), namer, new Date(iso)) });
  const a = [at('2026-01-01T00:00:01Z', 1), at('2026-01-01T00:00:03Z', 3), at('2026-01-01T00:00:03Z', 4)];
  const b = [at('2026-01-01T00:00:02Z', 2), at('2026-01-01T00:00:03Z', 5)];
  assert.deepEqual(mergeByTime([a, b]).map((f) => f.destination.port), [1, 2, 3, 4, 5]);
});
