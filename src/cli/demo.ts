// `clustermesh demo`: the main job. By default the seed's story on a lab
// (demo-lab.ts). `--basic` runs the smaller check below: a two-cluster mesh of
// two nodes per cluster with two pods per node registered straight with the
// agents (no lab runtime), real traffic across it, what the datapath did, and
// a clean teardown.
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { createTopology, destroyTopology, type PodInfo, type Topology } from '../lab/topology.js';
import { runIn, spawnIn, stopChild } from '../lab/exec.js';
import { collectAgentEvents, readNodeMetrics } from '../lab/datapath.js';
import { startMesh, type Mesh } from '../lab/mesh.js';
import { formatEvent } from '../datapath/format.js';
import { reasonName } from '../datapath/maps/index.js';
import { echoArgv, requireEchoBin } from '../lab/workload-main.ts';
import { labOption } from './common.ts';

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
    const { stdout } = await runIn(src.netns, [process.execPath, CLI, 'lab', 'workload', 'client', url, '--count', String(count), '--timeout', '3000', '--json'], { timeoutMs: 60_000 });
    return JSON.parse(stdout);
  } catch (err) {
    return { failures: count, tally: {}, lastError: (err as Error).message.split('\n')[0] };
  }
}

export async function runDemo(opts: { keep?: boolean } = {}): Promise<boolean> {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  let dir: string | undefined;
  const servers: ChildProcess[] = [];
  let ok = true;
  try {
    step('building 2 clusters x 2 nodes x 2 pods (network namespaces, underlay, router)');
    const t0 = Date.now();
    topo = await createTopology({ clusters: 2, nodesPerCluster: 2, podsPerNode: 2, mode: 'clustermesh', prefix: 'cmd' });
    for (const n of topo.nodes) console.log(`  ${n.clusterName}/${n.name}  underlay ${n.underlayIP}  pods ${n.podCIDR}  (netns ${n.netns})`);
    console.log(`  built in ${Date.now() - t0} ms`);

    step('starting the control plane: per cluster an etcd with mutual TLS and the apiserver, an agent on every node');
    const t1 = Date.now();
    dir = await mkdtemp(join(tmpdir(), 'clustermesh-demo-'));
    mesh = await startMesh(topo, { dir, progress: (l) => console.log(`  ${l}`) });
    console.log(`  every agent ready and connected to the other cluster in ${Date.now() - t1} ms`);

    step('adding every pod through its node\'s agent (identity allocated, datapath programmed, pod published)');
    for (const p of topo.pods) {
      const ep = await mesh.addPod(p, { labels: { app: 'echo', pod: p.name } });
      console.log(`  ${p.name.padEnd(14)} ${p.ip.padEnd(12)} identity ${ep.identity}`);
    }
    const t2 = Date.now();
    const all = topo.pods.map((p) => `${p.ip}/32`);
    for (;;) {
      const missing = topo.nodes.flatMap((n) => all.filter((k) => !mesh!.readIpcache(n).has(k)).map((k) => `${n.netns}:${k}`));
      if (missing.length === 0) break;
      if (Date.now() - t2 > 30_000) throw new Error(`pods not learned everywhere after 30 s: ${missing.slice(0, 5).join(', ')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    console.log(`  every node's ipcache holds all 8 pods ${Date.now() - t2} ms after the last add (no map entry written by hand)`);

    step('starting an HTTP echo server in every pod');
    requireEchoBin();
    for (const p of topo.pods) servers.push(spawnIn(p.netns, echoArgv({ port: 8080, cluster: p.clusterName, node: p.node.name, pod: p.name })));
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
    const ev = collectAgentEvents(mesh.agent(remote.node).socket);
    try {
      await runIn(client.netns, ['ping', '-c', '1', '-W', '1', unknown]).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 200));
      const drops = (await ev.drain()).filter((e) => e.type === 'drop' && e.dstIp === unknown);
      for (const e of drops) console.log(`  event: ${formatEvent(e)}`);
      if (drops.length === 0) {
        ok = false;
        console.log('  FAIL no drop event seen');
      }
    } finally {
      ev.stop();
    }

    step(`what ${client.node.clusterName}/${client.node.name}'s agent reports (GET /v1/status on its unix socket)`);
    const st = await mesh.agentStatus(client.node);
    console.log(`  ready ${st.ready}, endpoints ${st.endpoints.endpoints}, identities ${st.endpoints.identities}`);
    for (const r of st.remoteClusters) console.log(`  remote ${r.name}: ${r.state}, ready ${r.ready}, nodes ${r.counts.nodes}, endpoints ${r.counts.endpoints}, identities ${r.counts.identities}, reconnections ${r.reconnections}`);

    step('datapath counters per node (packets)');
    for (const n of topo.nodes) {
      const rows = readNodeMetrics(mesh.agent(n).pinDir).filter((r) => r.packets > 0n);
      console.log(`  ${n.clusterName}/${n.name}: ${rows.map((r) => `${r.direction}/${reasonName(r.reason)}=${r.packets}`).join('  ')}`);
    }
    console.log(`\n${ok ? 'demo: every check passed' : 'demo: some checks FAILED'}`);
    return ok;
  } finally {
    if (!opts.keep) {
      step('tearing down');
      await Promise.all(servers.map((s) => stopChild(s)));
      await mesh?.stop();
      if (topo) await destroyTopology(topo);
      if (dir) await rm(dir, { recursive: true, force: true });
      console.log('  stopped every process and removed every namespace, pin and file the demo created');
    }
  }
}

export function demoCommand(): Command {
  const cmd = new Command('demo').description(
    "the seed's story on a two-cluster lab, driven through the CLI as a user would: lab up, a global rebel-base Service answered from both clusters (by DNS name), a cross-cluster NetworkPolicy that admits only app=frontend (observe shows the refused pod's drop), failover to cluster2 when cluster1 has no backends, status, lab down",
  );
  return labOption(cmd, 'demo', 'the lab name')
    .option('--keep', 'keep the lab running at the end (take it down later with: clustermesh lab down --lab NAME)')
    .option('--basic', 'instead: the raw mesh without the lab runtime (2 clusters x 2 nodes x 2 pods registered straight with the agents), traffic between every pair, a drop event, teardown')
    .addHelpText('after', '\nExamples:\n  clustermesh demo\n  clustermesh demo --keep --lab mylab\n  clustermesh demo --basic\n')
    .action(async (o: { basic?: boolean; lab: string; keep?: boolean }) => {
      const ok = o.basic ? await runDemo() : await (await import('./demo-lab.ts')).runLabDemo({ name: o.lab, keep: o.keep === true });
      // Open handles (etcd clients of the basic demo) must not hold the process.
      process.exit(ok ? 0 : 1);
    });
}
