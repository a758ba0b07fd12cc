// `clustermesh demo`: the main job for now — a two-cluster mesh of two nodes
// per cluster with two pods per node, real traffic across it, what the
// datapath did, and a clean teardown. Grows into `clustermesh lab`.
import type { ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { Command } from 'commander';
import { createTopology, destroyTopology, type PodInfo, type Topology } from '../lab/topology.js';
import { runIn, spawnIn, stopChild } from '../lab/exec.js';
import { collectEvents, labPodIdentity, readNodeMetrics, startClustermeshDatapath, type LabDatapath } from '../lab/datapath.js';
import { formatEvent } from '../datapath/format.js';
import { reasonName } from '../datapath/maps/index.js';

const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');

function step(text: string): void {
  console.log(`\n== ${text}`);
}

async function waitForListen(p: PodInfo, port: number): Promise<void> {
  for (let i = 0; i < 300; i++) {
    const { stdout } = await runIn(p.netns, ['ss', '-Htln', `sport = :${port}`]);
    if (stdout.trim()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${p.name}: the echo server did not start listening on :${port}`);
}

async function get(src: PodInfo, url: string, count: number): Promise<{ failures: number; tally: Record<string, number>; lastError?: string }> {
  try {
    const { stdout } = await runIn(src.netns, [process.execPath, CLI, 'lab', 'workload', 'client', url, '--count', String(count), '--timeout', '3000'], { timeoutMs: 60_000 });
    return JSON.parse(stdout);
  } catch (err) {
    return { failures: count, tally: {}, lastError: (err as Error).message.split('\n')[0] };
  }
}

export async function runDemo(opts: { keep?: boolean } = {}): Promise<boolean> {
  let topo: Topology | undefined;
  let dp: LabDatapath | undefined;
  const servers: ChildProcess[] = [];
  let ok = true;
  try {
    step('building 2 clusters x 2 nodes x 2 pods (network namespaces, underlay, router)');
    const t0 = Date.now();
    topo = await createTopology({ clusters: 2, nodesPerCluster: 2, podsPerNode: 2, mode: 'clustermesh', prefix: 'cmd' });
    for (const n of topo.nodes) console.log(`  ${n.clusterName}/${n.name}  underlay ${n.underlayIP}  pods ${n.podCIDR}  (netns ${n.netns})`);
    console.log(`  built in ${Date.now() - t0} ms`);

    step('loading the eBPF datapath on every node (VXLAN external on UDP 8472, from-container on pod veths, from-overlay on the tunnel)');
    const t1 = Date.now();
    dp = await startClustermeshDatapath(topo);
    console.log(`  4 nodes programmed in ${Date.now() - t1} ms; maps pinned under ${dp.pinDirs[0]?.replace(/\/[^/]+$/, '')}`);
    for (const p of topo.pods) console.log(`  ${p.name.padEnd(14)} ${p.ip.padEnd(12)} identity ${labPodIdentity(topo, p)}`);

    step('starting an HTTP echo server in every pod');
    for (const p of topo.pods) servers.push(spawnIn(p.netns, [process.execPath, CLI, 'lab', 'workload', 'echo', '--port', '8080', '--cluster', p.clusterName, '--node', p.node.name, '--pod', p.name]));
    await Promise.all(topo.pods.map((p) => waitForListen(p, 8080)));

    const client = topo.pods[0]!;
    step(`HTTP from ${client.name} (${client.ip}) to every other pod, 5 requests each`);
    for (const dst of topo.pods.slice(1)) {
      const where = dst.node === client.node ? 'same node' : dst.cluster === client.cluster ? 'other node' : 'other cluster';
      const r = await get(client, `http://${dst.ip}:8080/`, 5);
      const answered = Object.entries(r.tally).map(([k, v]) => `${k} x${v}`).join(', ');
      const good = r.failures === 0 && Object.keys(r.tally).length === 1 && Object.keys(r.tally)[0]!.endsWith(`/${dst.name}`);
      ok &&= good;
      console.log(`  ${good ? 'ok  ' : 'FAIL'} -> ${dst.ip.padEnd(12)} ${where.padEnd(13)} answered by ${answered || '-'}${r.lastError ? `  (${r.lastError})` : ''}`);
    }

    const remote = topo.pods.find((p) => p.cluster === 2)!;
    step(`ping ${remote.ip} (${remote.clusterName}) from ${client.name}`);
    try {
      const { stdout } = await runIn(client.netns, ['ping', '-c', '3', '-i', '0.2', '-W', '2', remote.ip]);
      console.log(stdout.trim().split('\n').slice(-2).map((l) => `  ${l}`).join('\n'));
    } catch (err) {
      ok = false;
      console.log(`  FAIL ${(err as Error).message.split('\n')[0]}`);
    }

    const unknown = remote.node.podCIDR.replace(/0\/24$/, '99');
    step(`a packet to ${unknown}, inside ${remote.clusterName}/${remote.node.name}'s pod range but no pod: dropped there, with its reason`);
    const ev = collectEvents(dp.pinDirs[topo.nodes.indexOf(remote.node)]!);
    try {
      await runIn(client.netns, ['ping', '-c', '1', '-W', '1', unknown]).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 200));
      const drops = ev.drain().filter((e) => e.type === 'drop' && e.dstIp === unknown);
      for (const e of drops) console.log(`  event: ${formatEvent(e)}`);
      if (drops.length === 0) {
        ok = false;
        console.log('  FAIL no drop event seen');
      }
    } finally {
      ev.stop();
    }

    step('datapath counters per node (packets)');
    for (const [i, n] of topo.nodes.entries()) {
      const rows = readNodeMetrics(dp.pinDirs[i]!).filter((r) => r.packets > 0n);
      console.log(`  ${n.clusterName}/${n.name}: ${rows.map((r) => `${r.direction}/${reasonName(r.reason)}=${r.packets}`).join('  ')}`);
    }
    console.log(`\n${ok ? 'demo: every check passed' : 'demo: some checks FAILED'}`);
    return ok;
  } finally {
    if (!opts.keep) {
      step('tearing down');
      await Promise.all(servers.map((s) => stopChild(s)));
      await dp?.stop();
      if (topo) await destroyTopology(topo);
      console.log('  removed every namespace and pin the demo created');
    }
  }
}

export function demoCommand(): Command {
  return new Command('demo')
    .description('bring up two clusters of two nodes with two pods each on this machine, send traffic across them, print what the eBPF datapath did, tear it down')
    .action(async () => {
      const ok = await runDemo();
      if (!ok) process.exitCode = 1;
    });
}
