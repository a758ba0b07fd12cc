// `clustermesh lab` driven as a user drives it: the real executable, a lab of
// its own (unique name, CLUSTERMESH_LAB_ROOT in a temp dir), real etcd,
// agents, kubelets, CNI, eBPF and traffic. After `down` nothing the lab made
// may be left: namespaces, pins, processes, /etc/netns dirs, the lab dir.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { childEnv } from '../src/lab/process.ts';
import { listNamespaces } from '../src/lab/topology.ts';
import { labNetnsPrefix } from '../src/lab/lab.ts';
import { podRecordsOf } from '../src/lab/kubelet-config.ts';
import { labStateSchema, sameProcessAlive, type LabState } from '../src/lab/state.ts';

const CLI = resolve(import.meta.dirname, '..', 'bin', 'clustermesh.js');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const root = mkdtempSync(join(tmpdir(), 'cmtl-root-'));
const env = childEnv({ CLUSTERMESH_LAB_ROOT: root });

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], timeoutMs = 240_000, extraEnv: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', reject);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

const show = (r: Run): string => `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

function readState(name: string): LabState | undefined {
  const f = join(root, name, 'lab.json');
  return existsSync(f) ? labStateSchema.parse(JSON.parse(readFileSync(f, 'utf8'))) : undefined;
}

/** Everything a lab's state and pod records say it made, to check after down. */
function madeBy(name: string): { namespaces: string[]; pinDirs: string[]; processes: Array<{ name: string; pid: number; startTime?: string | undefined }>; etcNetns: string[] } {
  const s = readState(name);
  if (!s) return { namespaces: [], pinDirs: [], processes: [], etcNetns: [] };
  const pods = podRecordsOf(join(root, name));
  return {
    namespaces: [...s.namespaces, ...pods.map((p) => p.netns)],
    pinDirs: s.pinDirs,
    processes: [...s.processes, ...pods.flatMap((p) => p.containers.filter((c) => c.pid !== undefined).map((c) => ({ name: `pod ${p.name}`, pid: c.pid!, startTime: c.startTime })))],
    etcNetns: pods.map((p) => join('/etc/netns', p.netns)),
  };
}

async function assertNothingLeft(name: string, made: ReturnType<typeof madeBy>): Promise<void> {
  const prefix = `${labNetnsPrefix(name)}-`;
  const ns = await listNamespaces();
  assert.deepEqual(ns.filter((n) => n.startsWith(prefix) || made.namespaces.includes(n)), [], 'no namespace of the lab is left');
  assert.deepEqual(made.pinDirs.filter((p) => existsSync(p)), [], 'no pin dir is left');
  assert.deepEqual(made.processes.filter((p) => sameProcessAlive(p)).map((p) => `${p.name} ${p.pid}`), [], 'no process of the lab runs');
  assert.deepEqual(made.etcNetns.filter((d) => existsSync(d)), [], 'no /etc/netns dir is left');
  assert.equal(existsSync(join(root, name)), false, 'the lab dir is gone');
}

interface PodJson {
  cluster: string;
  namespace: string;
  name: string;
  ready: boolean;
  phase: string;
  podIP: string | null;
  node: string | null;
  deployment: string | null;
  restarts: number;
}

/** Pods of the namespace (default: 'default'; the lab's own DNS pods live in kube-system). */
async function pods(name: string, namespace: string | undefined = 'default'): Promise<PodJson[]> {
  const r = await cli(['lab', 'get', 'pods', '--lab', name, '-o', 'json']);
  assert.equal(r.code, 0, show(r));
  return (JSON.parse(r.stdout) as PodJson[]).filter((p) => namespace === undefined || p.namespace === namespace);
}

async function waitPods(name: string, what: string, cond: (p: PodJson[]) => boolean, timeoutMs = 120_000): Promise<PodJson[]> {
  const end = Date.now() + timeoutMs;
  let last: PodJson[] = [];
  for (;;) {
    last = await pods(name);
    if (cond(last)) return last;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}; pods: ${JSON.stringify(last)}`);
    await sleep(500);
  }
}

const labsToRemove: string[] = [];
after(async () => {
  // A failed test still removes its lab.
  for (const name of labsToRemove) if (readState(name)) await cli(['lab', 'down', '--lab', name]).catch(() => undefined);
  rmSync(root, { recursive: true, force: true });
});

describe('lab: up, apply, exec across clusters, get, scale, delete, down', { timeout: 600_000 }, () => {
  const name = `cmtl${randomBytes(3).toString('hex')}`;
  labsToRemove.push(name);
  const files = mkdtempSync(join(tmpdir(), 'cmtl-files-'));
  after(() => rmSync(files, { recursive: true, force: true }));
  const echoFile = join(files, 'echo.yaml');
  const clientFile = join(files, 'client.yaml');
  const badFile = join(files, 'bad.yaml');
  writeFileSync(
    echoFile,
    `apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 2
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      containers:
      - name: echo
        command: [clustermesh, lab, workload, echo, --port, "8080"]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector: {app: echo}
  ports: [{port: 8080}]
`,
  );
  writeFileSync(
    clientFile,
    `apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: client}
spec:
  containers:
  - name: sleep
    command: [sleep, infinity]
`,
  );
  // Document 2 has a bad port: the server refuses it in the dry run of every
  // document, so document 1 is not applied either.
  writeFileSync(
    badFile,
    `apiVersion: v1
kind: Pod
metadata:
  name: would-be
spec:
  containers:
  - name: c
    command: [sleep, infinity]
---
apiVersion: v1
kind: Service
metadata:
  name: broken
spec:
  ports: [{port: 70000}]
`,
  );

  test('up (2 clusters x 1 node), refuses a second up of the same name, and down leaves nothing', async () => {
    const up = await cli(['lab', 'up', '--lab', name, '--clusters', '2', '--nodes', '1']);
    assert.equal(up.code, 0, show(up));
    const m = /time to all-connected: ([\d.]+) s/.exec(up.stdout);
    assert.ok(m, `up prints the time to all-connected:\n${up.stdout}`);
    console.log(`# lab up 2x1: all connected after ${m[1]} s`);
    const state = readState(name)!;
    assert.equal(state.phase, 'up');
    assert.equal(state.clusters.length, 2);
    assert.equal(state.nodes.length, 2);
    // The mesh is installed (the default): every node's agent is the DaemonSet's pod there, which `lab get nodes` finds.
    assert.equal(state.install?.namespace, 'clustermesh-system');
    const nodes = await cli(['lab', 'get', 'nodes', '--lab', name, '-o', 'json']);
    assert.equal(nodes.code, 0, show(nodes));
    const views = JSON.parse(nodes.stdout) as Array<{ cluster: string; name: string; agent: { pid: number | null; running: boolean }; kubelet: { running: boolean } }>;
    assert.deepEqual(views.map((v) => `${v.cluster}/${v.name}`).sort(), ['cluster1/node1', 'cluster2/node1']);
    for (const v of views) {
      assert.ok(v.agent.running && v.agent.pid !== null, `agent ${v.cluster}/${v.name} runs after up returned: ${JSON.stringify(v)}`);
      assert.match(readFileSync(`/proc/${v.agent.pid}/cmdline`, 'utf8'), /\0agent\0/, `the agent pod's process of ${v.cluster}/${v.name} runs the agent`);
      assert.ok(v.kubelet.running, `kubelet ${v.cluster}/${v.name} runs`);
    }
    assert.match(up.stdout, /\$ clustermesh lab run --lab \S+ -- clustermesh install --context cluster1 --cluster-name cluster1 --cluster-id 1 /, 'up prints the install it runs');
    assert.match(up.stdout, /\$ clustermesh lab run --lab \S+ -- clustermesh connect --context cluster1 --destination-context cluster2/, 'up prints the connect it runs');

    const again = await cli(['lab', 'up', '--lab', name, '--clusters', '2', '--nodes', '1']);
    assert.equal(again.code, 2, show(again));
    assert.match(again.stderr, new RegExp(`a lab named ${name} is already up`));

    try {
      // up applied the cluster DNS (Deployment kube-system/cluster-dns) to every cluster.
      const dns = await pods(name, 'kube-system');
      assert.deepEqual(dns.map((p) => `${p.cluster}/${p.deployment}`).sort(), ['cluster1/cluster-dns', 'cluster2/cluster-dns']);

      // Workloads: echo in cluster2, a client in cluster1.
      const a1 = await cli(['lab', 'apply', '--lab', name, '-f', echoFile, '--cluster', 'cluster2']);
      assert.equal(a1.code, 0, show(a1));
      assert.match(a1.stdout, /deployment\.apps\/echo created in cluster2/);
      assert.match(a1.stdout, /service\/echo created in cluster2/);
      const a2 = await cli(['lab', 'apply', '--lab', name, '-f', clientFile, '--cluster', 'cluster1']);
      assert.equal(a2.code, 0, show(a2));

      const ready = await waitPods(name, 'two echo pods and the client ready', (p) => p.filter((x) => x.ready && x.podIP).length === 3);
      const echo = ready.filter((p) => p.deployment === 'echo');
      assert.equal(echo.length, 2);
      for (const e of echo) {
        assert.equal(e.cluster, 'cluster2');
        assert.match(e.podIP!, /^10\.102\.1\.\d+$/, 'an address of cluster2 node1 pod CIDR');
      }
      const client = ready.find((p) => p.name === 'client')!;
      assert.equal(client.cluster, 'cluster1');
      assert.match(client.podIP!, /^10\.101\.1\.\d+$/);

      // Across clusters: the client in cluster1 asks an echo pod of cluster2 by its pod IP.
      const target = echo[0]!;
      const ex = await cli(['lab', 'exec', '--lab', name, 'client', '--cluster', 'cluster1', '--', 'clustermesh', 'lab', 'workload', 'client', `http://${target.podIP}:8080/`, '-n', '5', '--json']);
      assert.equal(ex.code, 0, show(ex));
      const tally = JSON.parse(ex.stdout.trim().split('\n').pop()!) as { failures: number; tally: Record<string, number> };
      assert.equal(tally.failures, 0, ex.stdout);
      assert.deepEqual(tally.tally, { [`cluster2/node1/${target.name}`]: 5 });

      // exec passes the exit code through, and the pod's resolv.conf names the cluster DNS.
      const code = await cli(['lab', 'exec', '--lab', name, 'client', '--', 'sh', '-c', 'grep -q "nameserver 10.96.0.10" /etc/resolv.conf && exit 7']);
      assert.equal(code.code, 7, show(code));

      // The runtime restarts a container whose process died (restartPolicy Always).
      const rec = podRecordsOf(join(root, name)).find((r) => r.name === 'client')!;
      process.kill(rec.containers[0]!.pid!, 'SIGKILL');
      const restarted = await waitPods(name, 'the client restarted', (p) => p.some((x) => x.name === 'client' && x.restarts === 1 && x.ready));
      assert.equal(restarted.find((x) => x.name === 'client')!.podIP, client.podIP, 'same pod, same address');

      // A bad file: the server refuses the object naming its field (exit 1), and nothing of the file is applied.
      const bad = await cli(['lab', 'apply', '--lab', name, '-f', badFile, '--cluster', 'cluster1']);
      assert.equal(bad.code, 1, show(bad));
      assert.match(bad.stderr, /service\/broken: .*spec\.ports\[0\]\.port: Invalid value: 70000/);
      assert.doesNotMatch(bad.stdout, /would-be/, show(bad));
      assert.equal((await pods(name)).find((p) => p.name === 'would-be'), undefined, 'the valid document before the refused one was not applied');
      // A namespace the cluster does not have: refused by the server, named.
      const elsewhere = join(files, 'elsewhere.yaml');
      writeFileSync(elsewhere, `apiVersion: v1\nkind: Pod\nmetadata: {name: lost, namespace: nowhere}\nspec: {containers: [{name: c, command: [sleep, infinity]}]}\n`);
      const el = await cli(['lab', 'apply', '--lab', name, '-f', elsewhere, '--cluster', 'cluster1']);
      assert.equal(el.code, 1, show(el));
      assert.match(el.stderr, /pod\/lost: namespaces "nowhere" not found/);

      // Scale down to 1, then delete what the file made.
      const sc = await cli(['lab', 'scale', 'deployment/echo', '--replicas', '1', '--lab', name, '--cluster', 'cluster2']);
      assert.equal(sc.code, 0, show(sc));
      await waitPods(name, 'one echo pod', (p) => p.filter((x) => x.deployment === 'echo').length === 1);
      const del = await cli(['lab', 'delete', '--lab', name, '-f', echoFile, '--cluster', 'cluster2']);
      assert.equal(del.code, 0, show(del));
      assert.match(del.stdout, /deployment\.apps\/echo deleted in cluster2/);
      await waitPods(name, 'only the client', (p) => p.length === 1 && p[0]!.name === 'client');
      // The kubelet removed the echo pod's namespace (CNI DEL, netns deleted).
      const left = (await listNamespaces()).filter((n) => n.includes('_default_echo-'));
      assert.deepEqual(left, []);

      const svc = await cli(['lab', 'get', 'services', '--lab', name, '-o', 'json']);
      assert.equal(svc.code, 0, show(svc));
      const svcs = JSON.parse(svc.stdout) as Array<{ cluster: string; metadata: { namespace: string; name: string }; spec: { clusterIP: string } }>;
      assert.deepEqual(svcs.filter((s) => s.metadata.namespace === 'default'), [], 'the echo Service is deleted');
      assert.deepEqual(
        svcs.filter((s) => s.metadata.namespace !== 'clustermesh-system').map((s) => `${s.cluster} ${s.metadata.namespace}/${s.metadata.name} ${s.spec.clusterIP}`).sort(),
        ['cluster1 kube-system/kube-dns 10.96.0.10', 'cluster2 kube-system/kube-dns 10.96.0.10'],
        'what is left besides the install (its apiserver Service)',
      );
    } finally {
      const made = madeBy(name);
      // --name: the alias lab subcommands keep besides --lab
      const down = await cli(['lab', 'down', '--name', name]);
      assert.equal(down.code, 0, show(down));
      await assertNothingLeft(name, made);
    }
  });
});

/** Starts `lab up` and SIGKILLs it mid-way: once the control plane runs and the first agent has been started (a pod of
 * the install: its container runs under a kubelet, which up started). */
async function killedUp(name: string): Promise<void> {
  const child = spawn(process.execPath, [CLI, 'lab', 'up', '--lab', name, '--clusters', '2', '--nodes', '1'], { env, stdio: 'ignore' });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const end = Date.now() + 180_000;
  const agentStarted = (): boolean => podRecordsOf(join(root, name)).some((r) => r.namespace === 'clustermesh-system' && r.name.startsWith('clustermesh-agent-') && r.containers.some((c) => c.name === 'agent' && c.pid !== undefined));
  while (!agentStarted()) {
    if (child.exitCode !== null) assert.fail(`up ended (code ${child.exitCode}) before it was killed`);
    if (Date.now() > end) assert.fail('up did not get to the agents');
    await sleep(50);
  }
  child.kill('SIGKILL');
  await exited;
}

describe('lab: a killed up', { timeout: 600_000 }, () => {
  const name = `cmtk${randomBytes(3).toString('hex')}`;
  labsToRemove.push(name);

  test('SIGKILL of up while agents start, then down: no namespace, pin, process, file left', async () => {
    await killedUp(name);
    const made = madeBy(name);
    assert.ok(made.processes.some((p) => sameProcessAlive(p)), 'the killed up left running processes (what down must remove)');
    assert.ok(made.namespaces.length >= 5, `namespaces recorded: ${made.namespaces.join(' ')}`);

    const down = await cli(['lab', 'down', '--lab', name]);
    assert.equal(down.code, 0, show(down));
    await assertNothingLeft(name, made);
    // And the next up of that name works from a clean slate (refusal only for a live lab).
    const st = await cli(['lab', 'get', 'nodes', '--lab', name]);
    assert.equal(st.code, 2);
    assert.match(st.stderr, new RegExp(`no lab named ${name}; start one with: clustermesh lab up --lab ${name}`));
  });

  test('the next up of a name whose up was killed removes what it left and starts afresh', async () => {
    await killedUp(name);
    const made = madeBy(name);
    assert.ok(made.processes.some((p) => sameProcessAlive(p)), 'the killed up left running processes');
    const up = await cli(['lab', 'up', '--lab', name, '--clusters', '2', '--nodes', '1']);
    assert.equal(up.code, 0, show(up));
    assert.match(up.stdout, new RegExp(`removing what a dead lab named ${name} left behind`));
    assert.deepEqual(made.processes.filter((p) => sameProcessAlive(p)).map((p) => p.name), [], 'the dead lab\'s processes are gone');
    const fresh = madeBy(name);
    const down = await cli(['lab', 'down', '--lab', name]);
    assert.equal(down.code, 0, show(down));
    await assertNothingLeft(name, fresh);
  });
});

describe('lab: netem between clusters', { timeout: 300_000 }, () => {
  const name = `cmtn${randomBytes(3).toString('hex')}`;
  labsToRemove.push(name);

  test('--latency/--loss go on the router ports; a kernel without netem fails at that step, naming it, with nothing left', async () => {
    const up = await cli(['lab', 'up', '--lab', name, '--clusters', '2', '--nodes', '1', '--latency', '5ms', '--loss', '0.5%']);
    if (up.code === 0) {
      const state = readState(name)!;
      const made = madeBy(name);
      try {
        for (const port of ['rt1', 'rt2']) {
          const q = await new Promise<string>((r) => {
            const c = spawn('tc', ['-n', state.router.netns, 'qdisc', 'show', 'dev', port], { stdio: ['ignore', 'pipe', 'ignore'] });
            let out = '';
            c.stdout.on('data', (d: Buffer) => (out += d.toString()));
            c.once('exit', () => r(out));
          });
          assert.match(q, /netem .*delay 5ms loss 0\.5%/, `qdisc on ${port}: ${q}`);
        }
      } finally {
        const down = await cli(['lab', 'down', '--lab', name]);
        assert.equal(down.code, 0, show(down));
        await assertNothingLeft(name, made);
      }
    } else {
      assert.equal(up.code, 2, show(up));
      assert.match(up.stderr, /lab up failed at step 'netem': this kernel has no netem qdisc \(module sch_netem\)/);
      await assertNothingLeft(name, { namespaces: [], pinDirs: [], processes: [], etcNetns: [] });
      console.log('# this kernel has no netem: checked the failure path');
    }
  });
});

describe('lab: a step that fails', { timeout: 300_000 }, () => {
  const name = `cmtf${randomBytes(3).toString('hex')}`;
  labsToRemove.push(name);

  test('up names the failed step and its log (kept), and removes everything it made', async () => {
    // An etcd that cannot start (first on PATH for this one command).
    const bin = mkdtempSync(join(tmpdir(), 'cmtl-bin-'));
    try {
      writeFileSync(join(bin, 'etcd'), '#!/bin/sh\necho "etcd: cannot start (injected by the test)" >&2\nexit 3\n', { mode: 0o755 });
      const up = await cli(['lab', 'up', '--lab', name, '--clusters', '2', '--nodes', '1'], 240_000, { PATH: `${bin}:${process.env.PATH ?? ''}` });
      assert.equal(up.code, 2, show(up));
      const m = /lab up failed at step 'control plane': etcd exited during start \(code 3, signal null\); log (\S+etcd\.log)/.exec(up.stderr);
      assert.ok(m, show(up));
      assert.ok(m[1]!.startsWith(join(root, '.failed', `${name}-`)), `the log is kept outside the removed lab dir: ${m[1]}`);
      assert.match(readFileSync(m[1]!, 'utf8'), /injected by the test/);
      await assertNothingLeft(name, { namespaces: [], pinDirs: [], processes: [], etcNetns: [] });
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });
});

