// Service-account tokens of the lab's Kubernetes API, as Kubernetes makes
// them: a JWT (ES256, signed with the cluster's service-account key kept with
// the API's PKI, `sa.key`) with the claims of a bound token --
// iss, sub `system:serviceaccount:<ns>:<name>`, aud, exp, iat, nbf, jti and
// `kubernetes.io` {namespace, serviceaccount {name, uid}, pod {name, uid}?}.
// Issued by the TokenRequest subresource (server.ts), checked on every
// request that carries `Authorization: Bearer`.
//
// Pure: signing, decoding and checking the signature and times here (unit
// tests: tokens.test.ts); whether the ServiceAccount (and the pod a token is
// bound to) still exists with the uid of the claims is the server's part.
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign, verify, type KeyObject } from 'node:crypto';

/** The issuer and the API's own audience (kubeadm's defaults). */
export const TOKEN_ISSUER = 'https://kubernetes.default.svc.cluster.local';
export const API_AUDIENCES = [TOKEN_ISSUER];
/** TokenRequest's expirationSeconds: default, and the bounds Kubernetes enforces (10 minutes, 2^32 s). */
export const DEFAULT_TOKEN_SECONDS = 3600;
export const MIN_TOKEN_SECONDS = 600;
export const MAX_TOKEN_SECONDS = 2 ** 32;

export interface TokenClaims {
  iss: string;
  sub: string;
  aud: string[];
  exp: number;
  iat: number;
  nbf: number;
  jti: string;
  'kubernetes.io': {
    namespace: string;
    serviceaccount: { name: string; uid: string };
    pod?: { name: string; uid: string };
  };
}

/** A new service-account signing key (PEM, PKCS#8, P-256). */
export function newServiceAccountKey(): string {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

export interface IssueOptions {
  namespace: string;
  serviceAccount: { name: string; uid: string };
  pod?: { name: string; uid: string } | undefined;
  audiences?: string[] | undefined;
  /** Lifetime in seconds. */
  seconds: number;
  /** Seconds since the epoch (default now). */
  now?: number;
}

/** Signs a token with the cluster's key (ES256). */
export function issueToken(key: KeyObject | string, o: IssueOptions): { token: string; claims: TokenClaims } {
  const k = typeof key === 'string' ? createPrivateKey(key) : key;
  const now = o.now ?? Math.floor(Date.now() / 1000);
  const claims: TokenClaims = {
    iss: TOKEN_ISSUER,
    sub: `system:serviceaccount:${o.namespace}:${o.serviceAccount.name}`,
    aud: o.audiences?.length ? o.audiences : API_AUDIENCES,
    exp: now + o.seconds,
    iat: now,
    nbf: now,
    jti: randomUUID(),
    'kubernetes.io': { namespace: o.namespace, serviceaccount: o.serviceAccount, ...(o.pod ? { pod: o.pod } : {}) },
  };
  const input = `${b64url(JSON.stringify({ alg: 'ES256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  // JWS ES256 is the raw r||s pair (IEEE P1363), not DER.
  const sig = sign('sha256', Buffer.from(input), { key: k, dsaEncoding: 'ieee-p1363' });
  return { token: `${input}.${b64url(sig)}`, claims };
}

/** Why a token is refused (the message of the 401). */
export class TokenError extends Error {}

/**
 * The claims of a token this cluster's key signed, checked: well-formed,
 * ES256 signature of `publicKey`, issuer, one of `audiences`, not expired
 * and not before nbf (60 s of leeway, as Kubernetes allows). Throws TokenError.
 */
export function verifyToken(token: string, publicKey: KeyObject, o: { now?: number; audiences?: string[] } = {}): TokenClaims {
  const parts = token.split('.');
  if (parts.length !== 3) throw new TokenError('not a JWT (three dot-separated parts)');
  let header: { alg?: unknown };
  let claims: TokenClaims;
  try {
    header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8')) as { alg?: unknown };
    claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as TokenClaims;
  } catch {
    throw new TokenError('not a JWT (header or claims are not base64url JSON)');
  }
  if (header.alg !== 'ES256') throw new TokenError(`unexpected signing algorithm ${JSON.stringify(header.alg)} (this cluster signs ES256)`);
  const ok = verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), { key: publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(parts[2]!, 'base64url'));
  if (!ok) throw new TokenError('invalid signature (not signed by this cluster\'s service-account key)');
  if (claims.iss !== TOKEN_ISSUER) throw new TokenError(`unexpected issuer ${JSON.stringify(claims.iss)}`);
  const want = o.audiences ?? API_AUDIENCES;
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (!aud.some((a) => want.includes(a))) throw new TokenError(`token audiences ${JSON.stringify(aud)} are invalid for the target audiences ${JSON.stringify(want)}`);
  const now = o.now ?? Math.floor(Date.now() / 1000);
  const leeway = 60;
  if (typeof claims.exp !== 'number' || now > claims.exp + leeway) throw new TokenError('service account token has expired');
  if (typeof claims.nbf === 'number' && now < claims.nbf - leeway) throw new TokenError('service account token is not valid yet');
  const k = claims['kubernetes.io'];
  if (!k || typeof k.namespace !== 'string' || typeof k.serviceaccount?.name !== 'string' || typeof k.serviceaccount?.uid !== 'string') throw new TokenError('token has no kubernetes.io service account claims');
  if (claims.sub !== `system:serviceaccount:${k.namespace}:${k.serviceaccount.name}`) throw new TokenError('token subject does not match its service account claims');
  return claims;
}

/** The public half of a PEM private key. */
export const publicKeyOf = (pem: string): KeyObject => createPublicKey(createPrivateKey(pem));
