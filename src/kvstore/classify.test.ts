// Failure classes from the messages etcd3 / gRPC / Node's TLS actually produce.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classifyError } from './client.ts';

test('a server dying mid-handshake is unavailable, a certificate problem is tls', () => {
  const e = (message: string, code?: number) => Object.assign(new Error(message), code === undefined ? {} : { code });
  assert.equal(classifyError(e('14 UNAVAILABLE: Client network socket disconnected before secure TLS connection was established', 14)), 'unavailable');
  assert.equal(classifyError(e('14 UNAVAILABLE: read ECONNRESET', 14)), 'unavailable');
  assert.equal(classifyError(e('14 UNAVAILABLE: connect ECONNREFUSED 127.0.0.1:2379', 14)), 'unavailable');
  assert.equal(classifyError(e("14 UNAVAILABLE: Hostname/IP does not match certificate's altnames", 14)), 'tls');
  assert.equal(classifyError(e('14 UNAVAILABLE: unable to get local issuer certificate', 14)), 'tls');
  assert.equal(classifyError(e('14 UNAVAILABLE: ssl alert bad certificate', 14)), 'unauthenticated');
  assert.equal(classifyError(e('etcdserver: permission denied', 7)), 'permission');
});
