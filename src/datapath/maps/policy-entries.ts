// Verdicts -> the content of cm_policy and cm_policy_enforce (bpf/lib/policy.h),
// as one pure function. Policy (src/policy/) computes verdicts per (endpoint,
// direction, remote identity, protocol, port range); how the kernel's LPM trie
// represents them is the datapath's business, so the translation lives here
// and takes the verdicts by shape (src/policy's PolicyMapEntry fits): the
// datapath imports nothing of policy for it.
//
// Port ranges become the CIDR-like prefixes of the port that cover them
// exactly (at most 30 per range), and every stored prefix carries the
// allow/deny flags of all entries of its (endpoint, direction, protocol,
// identity) whose range contains it: the LPM trie returns only the longest
// matching prefix, so that one value has to answer for every entry that
// contains the port. With that, the lookups of policy_check() (identity,
// CIDR identity of the address, any x protocol exact/any) see exactly the
// entries decide() would.
import type * as policyMap from './policy.ts';
import { MAX_ENTRIES } from './policy.ts';

type Direction = policyMap.PolicyDirection;

/**
 * One verdict for a port range: what src/policy's resolver produces
 * (PolicyMapEntry). Remote identity 0 = any, protocol 0 = any.
 */
export interface VerdictEntry {
  endpointId: number;
  direction: Direction;
  remoteIdentity: number;
  protocol: number;
  /** Destination port range [port, portEnd]; all ports: 0..65535. */
  port: number;
  portEnd: number;
  verdict: 'allow' | 'deny';
}


export interface PortPrefix {
  /** First port; the low 16 - prefixLen bits are 0. */
  port: number;
  /** Leading bits that count: 16 = exactly `port`, 0 = every port. */
  prefixLen: number;
}

/** The fewest prefixes whose union is exactly [port, portEnd], ascending, disjoint. */
export function portRangePrefixes(port: number, portEnd: number): PortPrefix[] {
  if (!Number.isInteger(port) || !Number.isInteger(portEnd) || port < 0 || portEnd > 0xffff || port > portEnd) {
    throw new RangeError(`port range ${port}-${portEnd} is not within 0..65535`);
  }
  const out: PortPrefix[] = [];
  let lo = port;
  while (lo <= portEnd) {
    // Largest aligned block starting at lo that stays inside the range.
    let bits = 0;
    while (bits < 16 && lo % 2 ** (bits + 1) === 0 && lo + 2 ** (bits + 1) - 1 <= portEnd) bits++;
    out.push({ port: lo, prefixLen: 16 - bits });
    lo += 2 ** bits;
  }
  return out;
}

export interface EnforcementState {
  endpointId: number;
  direction: Direction;
  enforced: boolean;
}

export interface PolicyMaps {
  /** cm_policy, sorted by endpoint, direction, protocol, identity, prefix length, port. */
  policy: Array<[policyMap.Key, policyMap.Value]>;
  /**
   * cm_policy_enforce: every endpoint with entries or an enforced direction,
   * all `active`. The datapath skips the policy lookups of an endpoint that
   * is not active there, so the two must be written together; endpoints that
   * lose all policy get zeros (clearEnforce).
   */
  enforce: Array<[policyMap.EnforceKey, policyMap.EnforceValue]>;
}

export class PolicyMapOverflowError extends Error {
  constructor(
    readonly entries: number,
    readonly capacity: number,
  ) {
    super(`policy map needs ${entries} entries, capacity ${capacity}`);
    this.name = 'PolicyMapOverflowError';
  }
}

const ALLOW = 1;
const DENY = 2;

/**
 * The full desired content of cm_policy and cm_policy_enforce for the
 * verdicts and enforcement states. Throws PolicyMapOverflowError
 * when the result does not fit `capacity` (never half a policy).
 */
export function toPolicyMaps(
  entries: Iterable<VerdictEntry>,
  enforcement: Iterable<EnforcementState>,
  capacity: number = MAX_ENTRIES,
): PolicyMaps {
  // group "endpoint/direction/protocol/identity" -> "prefixLen/port" -> own flags
  const groups = new Map<string, { head: Omit<policyMap.Key, 'port' | 'portPrefixLen'>; prefixes: Map<number, number> }>();
  for (const e of entries) {
    const gk = `${e.endpointId}/${e.direction}/${e.protocol}/${e.remoteIdentity}`;
    let g = groups.get(gk);
    if (!g) {
      g = { head: { endpointId: e.endpointId, direction: e.direction, protocol: e.protocol, identity: e.remoteIdentity }, prefixes: new Map() };
      groups.set(gk, g);
    }
    const bit = e.verdict === 'deny' ? DENY : ALLOW;
    for (const p of portRangePrefixes(e.port, e.portEnd)) {
      const pk = p.prefixLen * 0x10000 + p.port;
      g.prefixes.set(pk, (g.prefixes.get(pk) ?? 0) | bit);
    }
  }

  const policy: Array<[policyMap.Key, policyMap.Value]> = [];
  for (const { head, prefixes } of groups.values()) {
    for (const pk of prefixes.keys()) {
      const prefixLen = Math.floor(pk / 0x10000);
      const port = pk % 0x10000;
      let flags = 0;
      for (let l = 0; l <= prefixLen; l++) {
        const mask = l === 0 ? 0 : (0xffff << (16 - l)) & 0xffff;
        flags |= prefixes.get(l * 0x10000 + (port & mask)) ?? 0;
      }
      policy.push([{ ...head, port, portPrefixLen: prefixLen }, { allow: (flags & ALLOW) !== 0, deny: (flags & DENY) !== 0 }]);
    }
  }
  if (policy.length > capacity) throw new PolicyMapOverflowError(policy.length, capacity);
  policy.sort(([a], [b]) => a.endpointId - b.endpointId || a.direction.localeCompare(b.direction) || a.protocol - b.protocol || a.identity - b.identity || a.portPrefixLen - b.portPrefixLen || a.port - b.port);

  const byEndpoint = new Map<number, policyMap.EnforceValue>();
  for (const { head } of groups.values()) {
    if (!byEndpoint.has(head.endpointId)) byEndpoint.set(head.endpointId, { active: true, ingress: false, egress: false });
  }
  for (const s of enforcement) {
    const v = byEndpoint.get(s.endpointId) ?? { active: true, ingress: false, egress: false };
    if (s.enforced) v[s.direction] = true;
    byEndpoint.set(s.endpointId, v);
  }
  const hasEntries = new Set([...groups.values()].map((g) => g.head.endpointId));
  const enforce = [...byEndpoint]
    .filter(([id, v]) => v.ingress || v.egress || hasEntries.has(id))
    .sort(([a], [b]) => a - b)
    .map(([endpointId, v]) => [{ endpointId }, v] as [policyMap.EnforceKey, policyMap.EnforceValue]);
  return { policy, enforce };
}

/**
 * What the datapath decides with these maps, in TypeScript: the
 * longest-prefix lookups of policy_check() (four, six with a CIDR identity)
 * and its order. For tests (the
 * property that it equals decide()) and for explaining a drop.
 */
export function lookupPolicyMaps(
  maps: PolicyMaps,
  q: { endpointId: number; direction: Direction; remoteIdentity: number; protocol: number; port: number; cidrIdentity?: number },
): 'denied' | 'not-enforced' | 'allowed' | 'default-deny' {
  let allow = false;
  let deny = false;
  // The peer's identity, any, and (two lookups more) the CIDR identity of its address.
  const identities = [q.remoteIdentity, 0];
  if (q.cidrIdentity && q.cidrIdentity !== q.remoteIdentity) identities.push(q.cidrIdentity);
  for (const identity of identities) {
    for (const protocol of [q.protocol, 0]) {
      let best: [policyMap.Key, policyMap.Value] | undefined;
      for (const kv of maps.policy) {
        const [k] = kv;
        if (k.endpointId !== q.endpointId || k.direction !== q.direction || k.protocol !== protocol || k.identity !== identity) continue;
        const mask = k.portPrefixLen === 0 ? 0 : (0xffff << (16 - k.portPrefixLen)) & 0xffff;
        if ((q.port & mask) !== k.port) continue;
        if (!best || k.portPrefixLen > best[0].portPrefixLen) best = kv;
      }
      if (best) {
        allow ||= best[1].allow;
        deny ||= best[1].deny;
      }
    }
  }
  const e = maps.enforce.find(([k]) => k.endpointId === q.endpointId);
  if (!e || !e[1].active) return 'not-enforced';
  const enforced = e[1][q.direction];
  if (deny) return 'denied';
  if (!enforced) return 'not-enforced';
  return allow ? 'allowed' : 'default-deny';
}
