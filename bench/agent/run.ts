// bench/agent: end-to-end propagation through the real control plane.
//   clustermesh: PUT /v1/endpoints on a cluster1 agent → the pod's /32 is in
//                the pinned ipcache map of a cluster2 node (agent → store in
//                cluster1's etcd → apiserver export → cluster2 agent's import
//                → reconciler → map), one pod at a time, p50 / p99.
//   limit:       the floor of that path on the same etcd: a put into cluster1's
//                etcd → the watch event of a client of that etcd.
// The pods are cheap: a veth pair per pod inside a cluster1 node namespace
// (the agent needs a real device to attach to), no pod namespace. Addresses
// are reused across rounds: a round adds its pods, then deletes them and waits
// until cluster2 has forgotten them.
// Usage: npm run bench -- agent [--pods 500] [--per-node 200] [--apps 10] [--reps 3]
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BpfMap } from '../../src/datapath/libbpf/index.ts';
import * as ipcache from '../../src/datapath/maps/ipcache.ts';
import { ipBatch, run } from '../../src/lab/exec.ts';
import { startMesh, type Mesh } from '../../src/lab/mesh.ts';
import { createTopology, destroyTopology, type NodeInfo, type Topology } from '../../src/lab/topology.ts';
import { percentile, printTable, summarize, writeResults, type Sample } from '../lib/results.ts';

const { values } = parseArgs({
  options: {
    pods: { type: 'string', default: '500' },
    'per-node': { type: 'string', default: '200' },
    apps: { type: 'string', default: '10' },
    reps: { type: 'string', default: '3' },
  },
});
const int = (name: string, v: string | undefined, min: number, max: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer in ${min}..${max}, got ${v}`);
  return n;
};
const PODS = int('pods', values.pods, 1, 100_000);
const PER_NODE = int('per-node', values['per-node'], 1, 230);
const APPS = int('apps', values.apps, 1, 1000);
const REPS = int('reps', values.reps, 1, 100);

interface Slot {
  node: NodeInfo;
  hostIfName: string;
  podMac: string;
  ip: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** PER_NODE veth pairs in a node namespace; the peer's MAC stands in for the pod's. */
async function createSlots(node: NodeInfo): Promise<Slot[]> {
  const lines: string[] = [];
  for (let i = 0; i < PER_NODE; i++) lines.push(`link add cmb${i} type veth peer name cmbp${i}`, `link set cmb${i} up`, `link set cmbp${i} up`);
  await ipBatch(node.netns, lines);
  const { stdout } = await run(['ip', '-n', node.netns, '-j', 'link', 'show', 'type', 'veth']);
  const macs = new Map((JSON.parse(stdout) as Array<{ ifname: string; address: string }>).map((l) => [l.ifname, l.address]));
  const base = node.podCIDR.replace(/0\/24$/, '');
  return Array.from({ length: PER_NODE }, (_, i) => ({ node, hostIfName: `cmb${i}`, podMac: macs.get(`cmbp${i}`)!, ip: `${base}${20 + i}` }));
}

async function waitUntil(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(0.5);
  }
}

let topo: Topology | undefined;
let mesh: Mesh | undefined;
const samples: Sample[] = [];
const params = { pods: PODS, apps: APPS, clusters: 2, nodes: 2 };
try {
  topo = await createTopology({ clusters: 2, nodesPerCluster: 2, podsPerNode: 1, mode: 'clustermesh', prefix: 'cmb' });
  mesh = await startMesh(topo, { dir: await mkdtemp(join(tmpdir(), 'cmb-mesh-')), progress: (l) => console.error(`mesh: ${l}`) });
  const sources = topo.nodes.filter((n) => n.cluster === 1);
  const observer = topo.nodes.find((n) => n.cluster === 2)!;
  const slots = (await Promise.all(sources.map(createSlots))).flat();
  const map = BpfMap.openPinned(join(mesh.agent(observer).pinDir, ipcache.MAP_NAME));
  // The exact /32, not the longest match (the node's /24 would match too).
  const present = (ip: string, identity?: number): boolean => {
    const v = ipcache.lookup(map, { addr: ip, prefixLen: 32 });
    return v !== undefined && v.identity !== 2 && (identity === undefined || v.identity === identity);
  };
  const kv = mesh.kv(1);
  try {
    for (let rep = 0; rep < REPS; rep++) {
      const lat: number[] = [];
      const api: number[] = [];
      const remote: number[] = [];
      let serial = 0;
      while (lat.length < PODS) {
        const round = slots.slice(0, Math.min(slots.length, PODS - lat.length));
        const ids: string[] = [];
        for (const s of round) {
          const id = `bench-${rep}-${serial++}`;
          const t0 = performance.now();
          const ep = await mesh.addEndpoint(s.node, id, {
            namespace: 'default',
            podName: id,
            ip: s.ip,
            hostIfName: s.hostIfName,
            podMac: s.podMac,
            labels: { app: `bench-${serial % APPS}` },
          });
          const t1 = performance.now();
          if (ep.identity === null) throw new Error(`${id}: the agent gave no identity (state ${ep.state})`);
          const identity = ep.identity;
          await waitUntil(`${s.ip} in ${observer.netns}'s ipcache`, () => present(s.ip, identity), 10_000);
          const t2 = performance.now();
          lat.push(t2 - t0);
          api.push(t1 - t0);
          remote.push(t2 - t1);
          ids.push(id);
        }
        // Delete the round and wait until cluster2 has forgotten it, so addresses can be reused.
        for (const [i, s] of round.entries()) await mesh.deleteEndpoint(s.node, ids[i]!);
        await waitUntil('the round to be forgotten in cluster2', () => round.every((s) => !present(s.ip)), 30_000);
        console.error(`rep ${rep + 1}/${REPS}: ${lat.length}/${PODS} pods`);
      }
      // The floor: one etcd put → watch event, on cluster1's etcd, the same number of times.
      const floor: number[] = [];
      const prefix = 'bench/propagation/';
      const waiting = new Map<string, (t: number) => void>();
      const rev = (await kv.list(prefix, { pageSize: 1 })).revision;
      const watch = kv.watch(prefix, (BigInt(rev) + 1n).toString(), (ev) => {
        if (ev.kind === 'upsert') waiting.get(ev.key)?.(performance.now());
      }, () => undefined);
      for (let i = 0; i < PODS; i++) {
        const key = `${prefix}${i}`;
        const seen = new Promise<number>((resolve) => waiting.set(key, resolve));
        const t0 = performance.now();
        await kv.put(key, JSON.stringify({ i }));
        floor.push((await seen) - t0);
        waiting.delete(key);
      }
      await watch.cancel();
      await kv.deletePrefix(prefix);
      for (const [config, values] of [['clustermesh', lat], ['limit', floor]] as const) {
        samples.push({ config, metric: 'propagation_p50', unit: 'ms', rep, value: percentile(values, 50), params });
        samples.push({ config, metric: 'propagation_p99', unit: 'ms', rep, value: percentile(values, 99), params });
      }
      samples.push({ config: 'clustermesh', metric: 'endpoint_add_p50', unit: 'ms', rep, value: percentile(api, 50), params });
      samples.push({ config: 'clustermesh', metric: 'endpoint_add_p99', unit: 'ms', rep, value: percentile(api, 99), params });
      // From the agent's answer to the map of the other cluster's node: the remote part of the path.
      samples.push({ config: 'clustermesh', metric: 'propagation_remote_p50', unit: 'ms', rep, value: percentile(remote, 50), params });
      samples.push({ config: 'clustermesh', metric: 'propagation_remote_p99', unit: 'ms', rep, value: percentile(remote, 99), params });
      console.error(
        `rep ${rep + 1}: propagation p50 ${percentile(lat, 50).toFixed(1)} ms, p99 ${percentile(lat, 99).toFixed(1)} ms, max ${Math.max(...lat).toFixed(1)} ms; ` +
          `agent API p50 ${percentile(api, 50).toFixed(1)} ms, then to cluster2's map p50 ${percentile(remote, 50).toFixed(1)} ms; etcd put→watch p50 ${percentile(floor, 50).toFixed(2)} ms`,
      );
    }
  } finally {
    map.close();
  }
} finally {
  await mesh?.stop().catch((e: unknown) => console.error(`mesh stop: ${(e as Error).message}`));
  if (topo) await destroyTopology(topo);
}
const rows = summarize(samples);
const file = writeResults('agent', rows, samples, topo?.spec.underlayMtu ?? 1500);
printTable(rows, 'limit');
console.log(`results: ${file}`);
