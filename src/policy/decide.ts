// The meaning of the policy map, as one pure function: what the datapath's
// lookup must decide for a packet, given an endpoint's entries for a
// direction and whether that direction is enforced. Tests state policy
// semantics through it; the C lookup is to be checked against it.
import { ReservedIdentity } from '../model/index.ts';
import type { Direction, PolicyMapEntry, Verdict } from './types.ts';

export interface PacketQuery {
  direction: Direction;
  /** Ingress: the source's identity; egress: the destination's. */
  remoteIdentity: number;
  /**
   * The CIDR identity of the remote address (that of the longest prefix a
   * CIDR rule names around it), 0 or absent when none: CIDR rules match by
   * address, whatever the identity (bpf/lib/policy.h).
   */
  cidrIdentity?: number;
  /** 6, 17 or 132. */
  protocol: number;
  /** Destination port. */
  port: number;
}

export type DecisionReason = 'denied' | 'not-enforced' | 'allowed' | 'host' | 'default-deny';

export interface Decision {
  verdict: Verdict;
  reason: DecisionReason;
  /** The entry that decided, for denied / allowed. */
  entry?: PolicyMapEntry;
}

export function entryMatches(e: PolicyMapEntry, q: PacketQuery): boolean {
  return (
    e.direction === q.direction &&
    (e.remoteIdentity === 0 || e.remoteIdentity === q.remoteIdentity || (!!q.cidrIdentity && e.remoteIdentity === q.cidrIdentity)) &&
    (e.protocol === 0 || e.protocol === q.protocol) &&
    q.port >= e.port &&
    q.port <= e.portEnd
  );
}

/**
 * 1. A matching deny entry denies — whatever else matches, enforced or not.
 * 2. A direction that is not enforced allows.
 * 3. A matching allow entry allows.
 * 4. Ingress from the node itself (reserved:host) is allowed, so kubelet
 *    probes keep working under default deny (bpf/lib/policy.h does the same).
 * 5. Otherwise the packet is dropped (default deny).
 * "Matching": remote identity equal to the peer's identity, to its CIDR
 * identity, or 0; protocol equal or 0; port inside [port, portEnd].
 */
export function decide(entries: Iterable<PolicyMapEntry>, enforced: boolean, q: PacketQuery): Decision {
  let allow: PolicyMapEntry | undefined;
  for (const e of entries) {
    if (!entryMatches(e, q)) continue;
    if (e.verdict === 'deny') return { verdict: 'deny', reason: 'denied', entry: e };
    allow ??= e;
  }
  if (!enforced) return { verdict: 'allow', reason: 'not-enforced' };
  if (allow) return { verdict: 'allow', reason: 'allowed', entry: allow };
  if (q.direction === 'ingress' && q.remoteIdentity === ReservedIdentity.host) return { verdict: 'allow', reason: 'host' };
  return { verdict: 'deny', reason: 'default-deny' };
}
