// Helpers of the network policy integration tests (test/policy*.test.ts).
import assert from 'node:assert/strict';
import * as policyMap from '../../src/datapath/maps/policy.ts';
import { withPinnedMap } from '../../src/datapath/testing.ts';
import { runIn } from '../../src/lab/exec.ts';
import type { PodInfo } from '../../src/lab/topology.ts';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` until true; fails after timeoutMs with `detail()`. Returns the milliseconds it took. */
export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 20_000, detail?: () => unknown): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await cond()) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) {
      const d = detail ? await Promise.resolve(detail()).catch((e: unknown) => String(e)) : undefined;
      assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}${d !== undefined ? `\n${JSON.stringify(d, null, 1).slice(0, 4000)}` : ''}`);
    }
    await sleep(20);
  }
}

/** One HTTP request from a pod to `dst`:`port`; true when the echo server answered 200 (a refused flow times out). */
export async function reaches(src: PodInfo, dst: PodInfo, port: number, timeoutS = 1.5): Promise<boolean> {
  try {
    const { stdout } = await runIn(src.netns, ['curl', '-sS', '-o', '/dev/null', '--connect-timeout', String(timeoutS), '--max-time', String(timeoutS + 1), '-w', '%{http_code}', `http://${dst.ip}:${port}/`], {
      timeoutMs: (timeoutS + 5) * 1000,
    });
    return stdout.trim() === '200';
  } catch {
    return false;
  }
}

/** One ICMP echo from a pod to `to`; true when answered within a second. */
export async function pings(from: PodInfo, to: PodInfo): Promise<boolean> {
  try {
    await runIn(from.netns, ['ping', '-c', '1', '-W', '1', '-q', to.ip], { timeoutMs: 5000 });
    return true;
  } catch {
    return false;
  }
}

/** DROP_POLICY + DROP_POLICY_DENY of a node's drop counters (Mesh.readDrops). */
export function policyDrops(drops: Map<string, number>): number {
  return (drops.get('DROP_POLICY') ?? 0) + (drops.get('DROP_POLICY_DENY') ?? 0);
}

/** The node's cm_policy_enforce value for one endpoint, read from its pin (read only). */
export function enforceFlags(pinDir: string, endpointId: number): policyMap.EnforceValue {
  return withPinnedMap(pinDir, policyMap.ENFORCE_MAP_NAME, (map) => policyMap.enforce.lookup(map, { endpointId }) ?? { active: false, ingress: false, egress: false });
}

/** The node's cm_policy_cidr: prefix → CIDR identity (read only). */
export function policyCidrs(pinDir: string): Map<string, number> {
  return withPinnedMap(pinDir, policyMap.CIDR_MAP_NAME, (map) => new Map([...policyMap.cidr.entries(map)].map(([k, v]) => [policyMap.formatCidrKey(k), v.identity])));
}
