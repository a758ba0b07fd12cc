// The lab's bridge to the datapath: turns a topology into one plan per node
// and runs `clustermesh datapath apply` inside each node's namespace, the way
// an agent running on that node would. Until the agent issue lands, identities
// are assigned here from each cluster's range.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ensureBpffs, removePinDir, DEFAULT_BPFFS_ROOT } from '../datapath/bpffs.js';
import { BpfMap, type TcAttachPreference } from '../datapath/libbpf/index.js';
import { events, metrics } from '../datapath/maps/index.js';
import type { DatapathEvent } from '../datapath/maps/events.js';
import type { NodePlanInput } from '../agent/node-plan.js';
import type { TunnelEncap } from '../datapath/maps/config.js';
import { AgentClient } from '../agent/client.js';
import { tcpFlagBits, type Flow } from '../agent/flows.js';
import { runIn } from './exec.js';
import { routingSettings, type NodeInfo, type PodInfo, type Topology } from './topology.js';

const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');
export const REMOTE_NODE_IDENTITY = 6;
export const WORLD_IDENTITY = 2;

/** Identity of a pod in the lab: in its cluster's range (cluster c owns [c<<16, (c+1)<<16)), from 256 up. */
export function labPodIdentity(topo: Topology, pod: PodInfo): number {
  const serial = topo.pods.filter((p) => p.cluster === pod.cluster).indexOf(pod);
  return (pod.cluster << 16) | (0x100 + serial);
}

export function pinDirOf(node: NodeInfo, root = DEFAULT_BPFFS_ROOT): string {
  return join(root, node.netns);
}

export function nodePlan(topo: Topology, node: NodeInfo, opts: LabDatapathOptions & { bpffsRoot?: string } = {}): NodePlanInput {
  const local = topo.pods.filter((p) => p.node === node);
  return {
    nodeName: node.netns,
    clusterID: node.cluster,
    nodeIP: node.underlayIP,
    pinDir: pinDirOf(node, opts.bpffsRoot),
    traceForwards: opts.traceForwards ?? false,
    ...(opts.objectsDir !== undefined ? { objectsDir: opts.objectsDir } : {}),
    ...(opts.tcAttach !== undefined ? { tcAttach: opts.tcAttach } : {}),
    ...(opts.socketLB && node.cgroup !== undefined ? { socketLBCgroup: node.cgroup } : {}),
    ...routingSettings(topo.spec, node.cluster),
    ...(opts.tunnelEncap !== undefined ? { tunnelEncap: opts.tunnelEncap } : {}),
    endpoints: local.map((p) => ({ ip: p.ip, identity: labPodIdentity(topo, p), hostIfName: p.hostIfName, podMac: p.mac, endpointID: p.index })),
    routes: [
      ...topo.pods.filter((p) => p.node !== node).map((p) => ({ prefix: `${p.ip}/32`, identity: labPodIdentity(topo, p), tunnelEndpoint: p.node.underlayIP })),
      ...topo.nodes.filter((n) => n !== node).map((n) => ({ prefix: `${n.underlayIP}/32`, identity: REMOTE_NODE_IDENTITY })),
      // A node's whole pod CIDR leads to that node, so an address there that is
      // no pod is dropped by the node that owns the range, with its reason.
      ...topo.nodes.map((n) => ({ prefix: n.podCIDR, identity: WORLD_IDENTITY, tunnelEndpoint: n.underlayIP })),
    ],
  };
}

export interface LabDatapath {
  pinDirs: string[];
  /** Removes every pin this datapath created (the namespaces take the programs with them). */
  stop(): Promise<void>;
}

type LabDatapathOptions = { traceForwards?: boolean; socketLB?: boolean; objectsDir?: string; tcAttach?: TcAttachPreference; tunnelEncap?: TunnelEncap };

/** Programs the clustermesh datapath on every node of a topology built in 'clustermesh' mode. */
/** objectsDir: the BPF objects to load (default bpf/build), e.g. a measurement variant's; tcAttach: how the tc programs are attached (default auto). */
export async function startClustermeshDatapath(topo: Topology, opts: LabDatapathOptions = {}): Promise<LabDatapath> {
  if (topo.spec.mode !== 'clustermesh') throw new Error(`topology ${topo.id} is wired as '${topo.spec.mode}', not 'clustermesh'`);
  const pinDirs: string[] = [];
  const stop = async () => {
    for (const d of pinDirs) removePinDir(d);
  };
  try {
    const root = ensureBpffs();
    for (const node of topo.nodes) {
      // Before the apply: a node that fails half-way has pins to remove too.
      pinDirs.push(pinDirOf(node, root));
      await applyNodeDatapath(topo, node, opts);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { pinDirs, stop };
}

/**
 * Runs `clustermesh datapath apply` in one node's namespace with that node's
 * plan (startClustermeshDatapath does it for every node; a test re-applies one
 * node with other settings). Returns the node's pin dir.
 */
export async function applyNodeDatapath(topo: Topology, node: NodeInfo, opts: LabDatapathOptions = {}): Promise<string> {
  const plan = nodePlan(topo, node, { ...opts, bpffsRoot: ensureBpffs() });
  const work = mkdtempSync(join(tmpdir(), 'clustermesh-plan-'));
  try {
    const file = join(work, `${node.netns}.json`);
    writeFileSync(file, JSON.stringify(plan, null, 2));
    await runIn(node.netns, [process.execPath, CLI, 'datapath', 'apply', '--plan', file], { timeoutMs: 180_000 });
    return plan.pinDir;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Per-reason counters of one node, summed over CPUs, read from its pinned map. */
export function readNodeMetrics(pinDir: string): metrics.Row[] {
  const map = BpfMap.openPinned(join(pinDir, metrics.MAP_NAME));
  try {
    return metrics.read(map);
  } finally {
    map.close();
  }
}

/**
 * Collects the events of one node's ring buffer until stop() is called. Only
 * for a node without an agent: an agent is its ring's one reader, and a second
 * reader would split the events with it (use collectAgentEvents there).
 */
export function collectEvents(pinDir: string): { events: DatapathEvent[]; drain(): DatapathEvent[]; stop(): void } {
  const map = BpfMap.openPinned(join(pinDir, events.MAP_NAME));
  const seen: DatapathEvent[] = [];
  const reader = events.openReader(map, (e) => seen.push(e));
  return {
    events: seen,
    drain: () => {
      reader.consume();
      return seen;
    },
    stop: () => {
      reader.close();
      map.close();
    },
  };
}

/**
 * A flow from an agent as the datapath event it was decoded from (the fields
 * flows carry; an identity the datapath left 0 is the one the agent filled in).
 */
export function flowEvent(f: Flow): DatapathEvent {
  return {
    timestamp: 0n,
    type: f.verdict === 'DROPPED' ? 'drop' : 'trace',
    reason: f.reasonCode,
    reasonName: f.reason,
    direction: f.direction as DatapathEvent['direction'],
    srcIp: f.source.ip,
    dstIp: f.destination.ip,
    srcIdentity: f.source.identity,
    dstIdentity: f.destination.identity,
    ifindex: 0,
    targetIfindex: 0,
    tunnelEndpoint: f.tunnelEndpoint,
    length: f.length,
    protocol: { TCP: 6, UDP: 17, ICMP: 1, SCTP: 132, '-': 0 }[f.protocol] ?? Number(f.protocol),
    srcPort: f.source.port ?? 0,
    dstPort: f.destination.port ?? 0,
    tcpFlags: tcpFlagBits(f.tcpFlags ?? []),
    service: f.service,
  };
}

/**
 * The events of a node whose agent reads its ring buffer, from now on: each
 * drain() asks the agent (GET /v1/flows, which reads the ring first) for the
 * flows since the last drain and adds them to `events`.
 */
export function collectAgentEvents(socket: string): { events: DatapathEvent[]; drain(): Promise<DatapathEvent[]>; stop(): void } {
  const api = new AgentClient(socket, { timeoutMs: 10_000 });
  const seen: DatapathEvent[] = [];
  // A flow's time has ms resolution: flows at the newest time already taken are told apart by count.
  let last = new Date(Date.now() - 2);
  let atLast = 0;
  return {
    events: seen,
    drain: async () => {
      const flows = await api.flows({ since: last });
      const lastIso = last.toISOString();
      let skip = atLast;
      for (const f of flows) {
        if (f.time === lastIso && skip > 0) {
          skip--;
          continue;
        }
        seen.push(flowEvent(f));
      }
      if (flows.length > 0) {
        const newest = flows[flows.length - 1]!.time;
        atLast = flows.filter((f) => f.time === newest).length;
        last = new Date(newest);
      }
      return seen;
    },
    stop: () => api.close(),
  };
}
