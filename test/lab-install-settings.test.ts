// The install settings `lab up` offers, on its installed lab: `lab up
// --routing native --socket-lb --prometheus` (2 clusters x 1 node)
// hands them to `clustermesh install` (--routing-mode native with the lab's
// routed ranges, --socket-lb at each node's own cgroup, the agent's and
// apiserver's metrics ports), and then, with the installed agents only:
// - the agents route natively: requests from cluster1 answered by cluster2's
//   pods through the global Service, and cluster1's VXLAN device sent nothing;
// - socket LB: the programs are attached to the node's own cgroup (not the
//   machine's root cgroup), and a pod's connections to the ClusterIP are
//   counted in cm_sock_stats (translated at connect);
// - Prometheus scrapes every agent and apiserver pod (up == 1, found by the
//   installed pods' prometheus.io annotations) and reads agent metrics.
// Prometheus is optional (./scripts/setup.sh --prometheus): without it the
// lab comes up without --prometheus and that test is skipped.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { AgentClient } from '../src/agent/client.ts';
import { cgroupQuery } from '../src/datapath/libbpf/cgroup.ts';
import { LAB_CGROUP2_MOUNT, nodeCgroupPath } from '../src/lab/cgroup.ts';
import { runIn } from '../src/lab/exec.ts';
import { childEnv } from '../src/lab/process.ts';
import type { LabState } from '../src/lab/state.ts';
import { byCluster, EXAMPLES_DIR, REBEL_BASE_URL } from '../src/cli/demo-lab.ts';
import { eventually, kubectlFor, ok, run, show, type Run } from './helpers/kube.ts';

const CLI = resolve(import.meta.dirname, '..', 'bin', 'clustermesh.js');
const root = mkdtempSync(join(tmpdir(), 'cmtis-root-'));
const files = mkdtempSync(join(tmpdir(), 'cmtis-files-'));
const name = `cmtis${randomBytes(3).toString('hex')}`;
const labDir = join(root, name);
const env = childEnv({ CLUSTERMESH_LAB_ROOT: root });
let kubeconfig = '';
const cli = (args: string[], timeoutMs = 300_000): Promise<Run> => run(process.execPath, [CLI, ...args], { env: { ...env, KUBECONFIG: kubeconfig }, timeoutMs });
const k = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(files, 'kube-cache'), env: () => env, timeoutMs: 330_000 });
const kubectlOk = (cluster: string, args: string[]): Promise<string> => k.kubectlOk('--context', cluster, ...args);

function hasPrometheus(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v prometheus'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const PROMETHEUS = hasPrometheus();

interface Tally {
  requests: number;
  failures: number;
  tally: Record<string, number>;
  lastError?: string;
}

/** `count` requests from pod `pod` of cluster1 to `url` (lab exec: the pod's namespace and its node's cgroup, as its own processes). */
async function client(pod: string, url: string, count: number): Promise<Tally> {
  const r = await cli(['lab', 'exec', pod, '--lab', name, '--cluster', 'cluster1', '--', 'clustermesh', 'lab', 'workload', 'client', url, '-n', String(count), '--timeout', '3000', '--json'], count * 3000 + 30_000);
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as Tally;
  } catch {
    return { requests: count, failures: count, tally: {}, lastError: show(r) };
  }
}

const state = (): LabState => JSON.parse(readFileSync(join(labDir, 'lab.json'), 'utf8')) as LabState;
const node1 = () => state().nodes.find((n) => n.cluster === 'cluster1' && n.name === 'node1')!;

async function agentStatus(socket: string) {
  const api = new AgentClient(socket, { timeoutMs: 10_000 });
  try {
    return await api.status();
  } finally {
    api.close();
  }
}

async function vxlanTx(netns: string): Promise<number> {
  const { stdout } = await runIn(netns, ['ip', '-s', '-j', 'link', 'show', 'dev', 'cm_vxlan']);
  return (JSON.parse(stdout) as Array<{ stats64: { tx: { packets: number } } }>)[0]!.stats64.tx.packets;
}

describe('lab up with --routing native --socket-lb --prometheus: the install settings, with real traffic', { timeout: 1_200_000 }, () => {
  before(async () => {
    const up = await cli(['lab', 'up', '--lab', name, '--clusters', '2', '--nodes', '1', '--routing', 'native', '--socket-lb', ...(PROMETHEUS ? ['--prometheus', '--prometheus-port', '0'] : [])], 900_000);
    assert.equal(up.code, 0, show(up));
    // The install commands, as printed, carry the settings.
    assert.match(up.stdout, /clustermesh install --context cluster1 .*--routing-mode native --native-routing-cidr 10\.101\.0\.0\/16 --native-routing-cidr 10\.102\.0\.0\/16 --socket-lb --socket-lb-cgroup \/run\/clustermesh\/cgroupv2/);
    kubeconfig = (await ok(cli(['lab', 'kubeconfig', '--lab', name]), 'lab kubeconfig')).trim();
    for (const [file, c] of [['rebel-base.yaml', 'cluster1'], ['rebel-base.yaml', 'cluster2'], ['clients.yaml', 'cluster1']] as const) await kubectlOk(c, ['apply', '-f', join(EXAMPLES_DIR, file)]);
    for (const c of ['cluster1', 'cluster2']) await kubectlOk(c, ['rollout', 'status', 'deployment/rebel-base', '--timeout', '240s']);
    await kubectlOk('cluster1', ['wait', '--for=condition=Ready', 'pod/x-wing', '--timeout', '240s']);
  });

  after(async () => {
    if (existsSync(join(labDir, 'lab.json'))) {
      const d = await cli(['lab', 'down', '--lab', name], 180_000);
      if (d.code !== 0) console.log(`# lab down: ${show(d)}`);
    }
    rmSync(files, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  });

  test("the installed agents run what install rendered: native routing with the lab's ranges, socket LB on the node's own cgroup", async () => {
    for (const n of state().nodes) {
      const st = await agentStatus(n.socket);
      assert.equal(st.datapath.routingMode, 'native', `${n.cluster}/${n.name}`);
      assert.deepEqual(st.datapath.nativeRoutingCIDRs, ['10.101.0.0/16', '10.102.0.0/16']);
      const lb = st.datapath.socketLB;
      assert.equal(lb.enabled, true, `${n.cluster}/${n.name}: ${JSON.stringify(lb)}`);
      assert.equal(lb.programs.length, 4);
      // The kernel's view: every program on the node's cgroup, none on the machine's root cgroup.
      const cg = nodeCgroupPath(n.netns, { mount: false })!;
      for (const p of lb.programs) {
        assert.ok(p.attached && p.progId !== null, `${p.hook} attached`);
        assert.ok(cgroupQuery(cg, p.hook).includes(p.progId!), `${p.program} (${p.progId}) on ${cg}`);
        assert.ok(!cgroupQuery(LAB_CGROUP2_MOUNT, p.hook).includes(p.progId!), `${p.program} not on the machine's root cgroup`);
      }
    }
  });

  test("a pod's connections to the global Service: translated at connect, answered by both clusters, nothing through the tunnel", async () => {
    const n = node1();
    const before = (await agentStatus(n.socket)).datapath.socketLB.stats!;
    const tx0 = await vxlanTx(n.netns);
    // Until cluster2's backends are known here, the answers come from cluster1 only: repeat until both answer.
    const total: Tally = { requests: 0, failures: 0, tally: {} };
    await eventually('answers from both clusters through the global Service', async () => {
      const t = await client('x-wing', REBEL_BASE_URL, 10);
      total.requests += t.requests;
      total.failures += t.failures;
      for (const [key, v] of Object.entries(t.tally)) total.tally[key] = (total.tally[key] ?? 0) + v;
      assert.equal(t.failures, 0, JSON.stringify(t));
      return Object.keys(byCluster(total)).length === 2 ? true : undefined;
    }, 120_000, 1000);
    const afterStats = (await agentStatus(n.socket)).datapath.socketLB.stats!;
    const tx1 = await vxlanTx(n.netns);
    console.log(`# x-wing -> ${REBEL_BASE_URL}: ${JSON.stringify(byCluster(total))} in ${total.requests} requests; cm_sock_stats connect ${before.connect} -> ${afterStats.connect}; cm_vxlan tx ${tx0} -> ${tx1}`);
    assert.ok(afterStats.connect - before.connect >= total.requests, `every connect to the ClusterIP translated at the socket: ${JSON.stringify({ before, after: afterStats, requests: total.requests })}`);
    assert.equal(tx1, tx0, "cluster2's answers came natively: cluster1's VXLAN device sent nothing");
  });

  test('prometheus scrapes every installed agent and apiserver at its node', { skip: PROMETHEUS ? false : "Debian's prometheus is not installed (./scripts/setup.sh --prometheus)" }, async () => {
    const url = state().prometheus!.url;
    const ips = Object.fromEntries(state().nodes.map((n) => [n.cluster, n.underlayIP]));
    type Up = { metric: { job: string; cluster: string; instance: string }; value: [number, string] };
    const ups = await eventually('every target up', async () => {
      const r = (await (await fetch(`${url}/api/v1/query?query=up`)).json()) as { data: { result: Up[] } };
      const got = r.data.result.map((x) => `${x.metric.job} ${x.metric.cluster} ${x.metric.instance} ${x.value[1]}`).sort();
      return got.length === 4 && got.every((l) => l.endsWith(' 1')) ? got : undefined;
    }, 120_000, 1000);
    // 1 node per cluster: the apiserver's pod is on that node too.
    assert.deepEqual(ups, [
      `clustermesh-agent cluster1 ${ips.cluster1}:9962 1`,
      `clustermesh-agent cluster2 ${ips.cluster2}:9962 1`,
      `clustermesh-apiserver cluster1 ${ips.cluster1}:9963 1`,
      `clustermesh-apiserver cluster2 ${ips.cluster2}:9963 1`,
    ]);
    // The agents' own series are there, not just the scrape's.
    const r = (await (await fetch(`${url}/api/v1/query?query=${encodeURIComponent('count by (cluster) ({job="clustermesh-agent",__name__=~"clustermesh_.+"})')}`)).json()) as { data: { result: Array<{ metric: { cluster: string } }> } };
    assert.deepEqual(r.data.result.map((x) => x.metric.cluster).sort(), ['cluster1', 'cluster2']);
  });
});
