// This node's addressing from its Kubernetes Node, for an agent whose config
// sets no podCIDR (or no nodeIP): what the kubelet registered and the
// controller manager (or whoever runs the node IPAM) assigned. The agent waits
// for it (a Node registers before its pod CIDR is set), saying what it waits
// for, and gives up after a bounded time naming the node.
import type { Logger } from 'pino';
import { KubeApiError, type KubeHttp } from '../sources/kubernetes/http.ts';
import { keepAliveClock, sleep, type Clock } from '../util/clock.ts';
import type { NodeAddressing } from './config.ts';

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const isV4Cidr = (s: unknown): s is string => typeof s === 'string' && IPV4.test(s.split('/')[0] ?? '') && /^\/\d{1,2}$/.test(s.slice(s.indexOf('/')));

/** A Node as the API returns it → its first IPv4 pod CIDR (spec.podCIDRs, else spec.podCIDR) and first IPv4 InternalIP. */
export function nodeAddressing(raw: unknown): NodeAddressing {
  const o = (raw ?? {}) as { spec?: { podCIDR?: unknown; podCIDRs?: unknown }; status?: { addresses?: unknown } };
  const cidrs = Array.isArray(o.spec?.podCIDRs) && o.spec.podCIDRs.length > 0 ? (o.spec.podCIDRs as unknown[]) : [o.spec?.podCIDR];
  const addresses = Array.isArray(o.status?.addresses) ? (o.status.addresses as Array<{ type?: unknown; address?: unknown }>) : [];
  const internal = addresses.find((a) => a?.type === 'InternalIP' && typeof a.address === 'string' && IPV4.test(a.address));
  return { podCIDR: cidrs.find(isV4Cidr), internalIP: internal?.address as string | undefined };
}

export interface WaitForNodeOptions {
  nodeName: string;
  need: { podCIDR: boolean; internalIP: boolean };
  timeoutMs: number;
  log: Logger;
  clock?: Clock;
  /** Between two reads of the Node (default 1000 ms). */
  intervalMs?: number;
  signal?: AbortSignal;
}

/** Reads the Node until it has what is needed; throws naming the node and what was missing after timeoutMs. */
export async function waitForNode(http: Pick<KubeHttp, 'request'>, o: WaitForNodeOptions): Promise<NodeAddressing> {
  // Ref'd timers: at an agent's start this wait is the only thing the process does.
  const clock = o.clock ?? keepAliveClock;
  const wanted = [o.need.podCIDR ? 'a pod CIDR (spec.podCIDRs)' : '', o.need.internalIP ? 'an InternalIP (status.addresses)' : ''].filter(Boolean).join(' and ');
  const start = clock.now();
  let logged = '';
  for (;;) {
    let why: string;
    try {
      const got = nodeAddressing(await http.request('GET', `/api/v1/nodes/${encodeURIComponent(o.nodeName)}`, undefined, { timeoutMs: 10_000 }));
      const lacks = [o.need.podCIDR && !got.podCIDR ? 'no IPv4 pod CIDR in spec.podCIDRs' : '', o.need.internalIP && !got.internalIP ? 'no IPv4 InternalIP in status.addresses' : ''].filter(Boolean);
      if (lacks.length === 0) {
        if (logged) o.log.info({ node: o.nodeName, ...got }, 'Node found');
        return got;
      }
      why = `it has ${lacks.join(' and ')}`;
    } catch (err) {
      why = err instanceof KubeApiError && err.code === 404 ? 'it does not exist yet' : `reading it failed: ${(err as Error).message}`;
    }
    const waited = clock.now() - start;
    if (waited >= o.timeoutMs)
      throw new Error(`Node ${o.nodeName} did not have ${wanted} within ${Math.round(o.timeoutMs / 1000)} s (nodeWaitTimeoutSeconds): ${why}; check that the node is registered and has a pod CIDR assigned, or set podCIDR/nodeIP in the agent config`);
    if (why !== logged) {
      o.log.info({ node: o.nodeName, timeoutSeconds: Math.round(o.timeoutMs / 1000) }, `waiting for Node ${o.nodeName} to have ${wanted}: ${why}`);
      logged = why;
    }
    if (!(await sleep(clock, Math.min(o.intervalMs ?? 1000, Math.max(1, o.timeoutMs - waited)), o.signal))) throw new Error(`Node ${o.nodeName}: stopped while waiting for ${wanted}`);
  }
}
