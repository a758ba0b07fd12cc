// Unit tests of service-account token signing and checking (tokens.ts) and of the kubelet's refresh time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { issueToken, newServiceAccountKey, publicKeyOf, TOKEN_ISSUER, TokenError, verifyToken } from './tokens.ts';
import { tokenRefreshAt } from '../kubelet.ts';

const key = newServiceAccountKey();
const pub = publicKeyOf(key);
const sa = { name: 'agent', uid: 'u-1' };

test('a token carries the claims of a bound service-account token and verifies with its key', () => {
  const { token, claims } = issueToken(key, { namespace: 'ns1', serviceAccount: sa, pod: { name: 'p', uid: 'pu' }, seconds: 600, now: 1000 });
  assert.equal(token.split('.').length, 3);
  assert.deepEqual(JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()), { alg: 'ES256', typ: 'JWT' });
  const c = verifyToken(token, pub, { now: 1100 });
  assert.deepEqual(c, claims);
  assert.equal(c.iss, TOKEN_ISSUER);
  assert.equal(c.sub, 'system:serviceaccount:ns1:agent');
  assert.deepEqual(c.aud, [TOKEN_ISSUER]);
  assert.equal(c.exp, 1600);
  assert.equal(c.iat, 1000);
  assert.deepEqual(c['kubernetes.io'], { namespace: 'ns1', serviceaccount: sa, pod: { name: 'p', uid: 'pu' } });
});

test('refused: another key, a changed claim, expired, not yet valid, another audience, not a JWT', () => {
  const { token } = issueToken(key, { namespace: 'ns1', serviceAccount: sa, seconds: 600, now: 1000 });
  const other = newServiceAccountKey();
  assert.throws(() => verifyToken(issueToken(other, { namespace: 'ns1', serviceAccount: sa, seconds: 600, now: 1000 }).token, pub, { now: 1000 }), (e: Error) => e instanceof TokenError && /invalid signature/.test(e.message));
  // A claim changed after signing: the signature no longer matches.
  const [h, p, s] = token.split('.');
  const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
  claims['kubernetes.io'].serviceaccount.name = 'admin';
  claims.sub = 'system:serviceaccount:ns1:admin';
  assert.throws(() => verifyToken(`${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${s}`, pub, { now: 1000 }), /invalid signature/);
  // Expired: past exp plus 60 s of leeway; accepted inside the leeway.
  assert.throws(() => verifyToken(token, pub, { now: 1661 }), /service account token has expired/);
  assert.doesNotThrow(() => verifyToken(token, pub, { now: 1659 }));
  assert.throws(() => verifyToken(token, pub, { now: 900 }), /not valid yet/);
  const aud = issueToken(key, { namespace: 'ns1', serviceAccount: sa, audiences: ['vault'], seconds: 600, now: 1000 }).token;
  assert.throws(() => verifyToken(aud, pub, { now: 1000 }), /audiences \["vault"\] are invalid/);
  assert.doesNotThrow(() => verifyToken(aud, pub, { now: 1000, audiences: ['vault'] }));
  assert.throws(() => verifyToken('abc', pub), /not a JWT/);
  assert.throws(() => verifyToken('a.b.c', pub), /not a JWT/);
  const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${p}.`;
  assert.throws(() => verifyToken(none, pub, { now: 1000 }), /unexpected signing algorithm "none"/);
});

test('the kubelet refreshes a token once 80% of its life has passed, at most a day after it was issued', () => {
  const t = (iat: number, exp: number) => issueToken(key, { namespace: 'n', serviceAccount: sa, seconds: exp - iat, now: iat }).token;
  assert.equal(tokenRefreshAt(t(1000, 4607)), (1000 + 0.8 * 3607) * 1000);
  assert.equal(tokenRefreshAt(t(0, 10 * 24 * 3600)), 24 * 3600 * 1000);
  assert.equal(tokenRefreshAt('garbage'), undefined);
});
