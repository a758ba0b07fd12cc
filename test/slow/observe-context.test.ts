// `clustermesh observe --context` and `ui --context` against clusters of
// `clustermesh install` (what `lab up` makes): from the lab's workstation, as
// from a user's machine, the CLI lists each context's agent pods through the
// Kubernetes API and dials each node's read-only API with the client
// certificate of Secret clustermesh-observer (mutual TLS). A policy drop and
// a forward across clusters are found with both sides' clusters; a client
// without that certificate (none, or the `remote` etcd user's of the same CA)
// is refused; a context that cannot be read is named while the others are
// shown; `ui --context` serves a topology with both clusters; `observe --follow
// --context` goes on through an agent pod's replacement.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Flow } from '../../src/agent/flows.ts';
import { EXAMPLES_DIR, REBEL_BASE_URL } from '../../src/cli/demo-lab.ts';
import type { LabState } from '../../src/lab/state.ts';
import { eventually, show, type Run } from '../helpers/kube.ts';
import { CLI, labFixture } from '../helpers/lab-fixture.ts';

const lab = labFixture('cmoc', { up: ['--clusters', '2', '--nodes', '1'], upTimeoutMs: 900_000 });
const { labDir, files, kubectlOk, client } = lab;
/** On the lab's workstation (`lab run`): what reaches the nodes' addresses (this host must not dial them). */
const ws = (args: string[], timeoutMs = 120_000): Promise<Run> => lab.onWorkstation(args, timeoutMs);
const flowsOf = (out: string): Flow[] => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Flow);

describe('observe and ui by kube context on installed lab clusters', { timeout: 1_200_000 }, () => {
  let since = '';
  let tfIp = '';
  let xwIp = '';
  before(async () => {
    await lab.up();
    for (const [file, c] of [['rebel-base.yaml', 'cluster1'], ['rebel-base.yaml', 'cluster2'], ['clients.yaml', 'cluster1']] as const) await kubectlOk(c, ['apply', '-f', join(EXAMPLES_DIR, file)]);
    for (const c of ['cluster1', 'cluster2']) await kubectlOk(c, ['rollout', 'status', 'deployment/rebel-base', '--timeout', '240s']);
    await kubectlOk('cluster1', ['wait', '--for=condition=Ready', 'pod/x-wing', 'pod/tie-fighter', '--timeout', '240s']);
    for (const c of ['cluster2', 'cluster1']) await kubectlOk(c, ['apply', '-f', join(EXAMPLES_DIR, 'policy.yaml')]);
    tfIp = (await kubectlOk('cluster1', ['get', 'pod', 'tie-fighter', '-o', 'jsonpath={.status.podIP}'])).trim();
    xwIp = (await kubectlOk('cluster1', ['get', 'pod', 'x-wing', '-o', 'jsonpath={.status.podIP}'])).trim();
    since = new Date(Date.now() - 1000).toISOString();
    // A policy drop (the tie-fighter is not app=frontend) and forwards, some to cluster2's backends.
    await eventually('the tie-fighter refused', async () => ((await client('tie-fighter', REBEL_BASE_URL, 2, 1000)).failures === 2 ? true : undefined), 60_000, 500);
    // Ten more: the global Service picks a cluster per connection, so some of them are dropped by cluster2 (all ten in cluster1: 1 in 1,024).
    assert.equal((await client('tie-fighter', REBEL_BASE_URL, 10, 1000)).failures, 10);
    assert.equal((await client('x-wing', REBEL_BASE_URL, 20, 2000)).failures, 0);
  });

  after(() => lab.down());

  test('observe --context cluster1 --context cluster2: the policy drop with both clusters, and a forward from cluster1 to cluster2', async () => {
    const drops = await eventually('the drop through both contexts', async () => {
      const r = await ws([process.execPath, CLI, 'observe', '--context', 'cluster1', '--context', 'cluster2', '-o', 'json', '--verdict', 'DROPPED', '--since', since]);
      assert.equal(r.code, 0, show(r));
      // Those to cluster2's backends (the global Service balances over both clusters).
      const fs = flowsOf(r.stdout).filter((f) => f.source.ip === tfIp && f.reason.startsWith('DROP_POLICY') && f.destination.cluster === 'cluster2');
      return fs.length > 0 ? fs : undefined;
    }, 30_000, 1000);
    const d = drops.at(-1)!;
    console.log(`# ${d.time} ${d.node} ${d.reason}: ${d.source.cluster}:${d.source.pod} -> ${d.destination.cluster}:${d.destination.pod}`);
    assert.equal(d.verdict, 'DROPPED');
    assert.equal(d.source.cluster, 'cluster1');
    assert.equal(d.source.pod, 'default/tie-fighter');
    assert.equal(d.destination.cluster, 'cluster2', 'dropped by the backend in cluster2 (ingress policy there)');
    assert.match(d.node, /^cluster2\//);

    const fwd = await ws([process.execPath, CLI, 'observe', '--context', 'cluster1', '--context', 'cluster2', '-o', 'json', '--verdict', 'FORWARDED', '--from-cluster', 'cluster1', '--to-cluster', 'cluster2', '--since', since]);
    assert.equal(fwd.code, 0, show(fwd));
    const across = flowsOf(fwd.stdout).filter((f) => f.source.ip === xwIp);
    assert.ok(across.length > 0, `a forward of the x-wing to cluster2: ${fwd.stdout.slice(0, 1500)}`);
    assert.ok(across.every((f) => f.source.cluster === 'cluster1' && f.destination.cluster === 'cluster2'));
    // Both clusters' agents answered (flows of the x-wing's connections are seen leaving cluster1 and arriving in cluster2).
    assert.deepEqual([...new Set(across.map((f) => f.node.split('/')[0]))].sort(), ['cluster1', 'cluster2']);
    // Merged by time over every node of every context.
    const times = flowsOf(fwd.stdout).map((f) => f.time);
    assert.deepEqual(times, [...times].sort());
  });

  test('a client without the observer certificate is refused: none (TLS handshake), the `remote` etcd user of the same CA (403); with it, 200', async () => {
    const state = JSON.parse(readFileSync(join(labDir, 'lab.json'), 'utf8')) as LabState;
    const node = state.nodes.find((n) => n.cluster === 'cluster2')!;
    const secret = async (n: string): Promise<Record<string, string>> => {
      const data = JSON.parse(await kubectlOk('cluster2', ['-n', 'clustermesh-system', 'get', 'secret', n, '-o', 'jsonpath={.data}'])) as Record<string, string>;
      return Object.fromEntries(Object.entries(data).map(([k2, v]) => [k2, Buffer.from(v, 'base64').toString('utf8')]));
    };
    const dir = mkdtempSync(join(files, 'tls-'));
    for (const [who, s] of [['observer', await secret('clustermesh-observer')], ['remote', await secret('clustermesh-etcd-remote')]] as const) {
      for (const f of ['ca.crt', 'tls.crt', 'tls.key']) writeFileSync(join(dir, `${who}-${f}`), s[f]!, { mode: 0o600 });
    }
    const url = `https://${node.underlayIP}:4247/v1/flows?verdict=DROPPED`;
    const curl = (tls: string[]): Promise<Run> => ws(['curl', '-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10', '--cacert', join(dir, 'observer-ca.crt'), '--resolve', `agents.cluster2.clustermesh.internal:4247:${node.underlayIP}`, ...tls, url.replace(node.underlayIP, 'agents.cluster2.clustermesh.internal')]);
    const none = await curl([]);
    assert.notEqual(none.code, 0, `no client certificate: ${show(none)}`);
    assert.match(none.stderr + none.stdout, /alert|handshake|certificate|SSL|000/i, show(none));
    const remote = await curl(['--cert', join(dir, 'remote-tls.crt'), '--key', join(dir, 'remote-tls.key')]);
    assert.equal(remote.stdout.trim(), '403', show(remote));
    const observer = await curl(['--cert', join(dir, 'observer-tls.crt'), '--key', join(dir, 'observer-tls.key')]);
    assert.equal(observer.stdout.trim(), '200', show(observer));
  });

  test('a context that cannot be read is named; the other cluster is still shown (exit 2)', async () => {
    const r = await ws([process.execPath, CLI, 'observe', '--context', 'cluster1', '--context', 'nosuch', '-o', 'json', '--verdict', 'FORWARDED', '--since', since]);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /warning: context nosuch: .*(no context|nosuch)/i, show(r));
    assert.ok(flowsOf(r.stdout).some((f) => f.node.startsWith('cluster1/')), show(r));
  });

  test('ui --context cluster1 --context cluster2 starts and its topology lists both clusters', async () => {
    const state = JSON.parse(readFileSync(join(labDir, 'lab.json'), 'utf8')) as LabState;
    // `ip netns exec` execs: the pid is the ui's own, stopped by that pid.
    let ui: ChildProcess | undefined = spawn('ip', ['netns', 'exec', state.router.netns, process.execPath, CLI, 'ui', '--context', 'cluster1', '--context', 'cluster2', '--port', '0'], { env: { ...lab.env, KUBECONFIG: lab.kubeconfig() }, stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let out = '';
      let err = '';
      ui.stdout!.on('data', (b: Buffer) => (out += b.toString()));
      ui.stderr!.on('data', (b: Buffer) => (err += b.toString()));
      const url = await eventually('the ui serving', () => {
        assert.equal(ui!.exitCode, null, `ui exited: ${out}${err}`);
        return /on (http:\/\/\S+)/.exec(out)?.[1];
      }, 120_000, 200);
      assert.match(out, /contexts cluster1, cluster2/);
      const topo = await eventually('both clusters with their node', async () => {
        const r = await ws(['curl', '-sS', '--max-time', '10', `${url}api/topology`]);
        if (r.code !== 0) return undefined;
        const t = JSON.parse(r.stdout) as { clusters: Array<{ name: string }>; nodes: Array<{ key: string; streamError: string | null }> };
        return t.clusters.length === 2 && t.nodes.every((n) => n.streamError === null) ? t : undefined;
      }, 60_000, 1000);
      assert.deepEqual(topo.clusters.map((c) => c.name).sort(), ['cluster1', 'cluster2']);
      assert.deepEqual(topo.nodes.map((n) => n.key).sort(), ['cluster1/node1', 'cluster2/node1']);
    } finally {
      if (ui?.pid && ui.exitCode === null) process.kill(ui.pid, 'SIGTERM');
      ui = undefined;
    }
  });

  test("observe --follow --context: cluster2's agent pod deleted, its replacement is followed without restarting observe", async () => {
    const state = JSON.parse(readFileSync(join(labDir, 'lab.json'), 'utf8')) as LabState;
    const follow = spawn('ip', ['netns', 'exec', state.router.netns, process.execPath, CLI, 'observe', '--follow', '--context', 'cluster1', '--context', 'cluster2', '-o', 'json', '--verdict', 'DROPPED'], { env: { ...lab.env, KUBECONFIG: lab.kubeconfig() }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    follow.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    follow.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const agentPod = async (): Promise<string> => (await kubectlOk('cluster2', ['-n', 'clustermesh-system', 'get', 'pods', '-l', 'app.kubernetes.io/name=clustermesh-agent', '-o', 'jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'])).trim();
    /** A drop of the tie-fighter printed by cluster2's agent after `after` (more refused requests until there is one). */
    const cluster2Drop = (what: string, after: string): Promise<Flow> =>
      eventually(what, async () => {
        assert.equal(follow.exitCode, null, `observe exited: ${err}`);
        const d = flowsOf(out).find((f) => f.time > after && f.source.ip === tfIp && f.node.startsWith('cluster2/'));
        if (d) return d;
        await client('tie-fighter', REBEL_BASE_URL, 4, 1000);
        return undefined;
      }, 120_000, 500).catch((e: Error) => {
        const fs = flowsOf(out);
        throw new Error(`${e.message}; observe printed ${fs.length} drops (${[...new Set(fs.map((f) => `${f.node} from ${f.source.ip}`))].join(', ')}; last at ${fs.at(-1)?.time ?? 'none'}); its stderr: ${err.trim() || 'none'}`);
      });
    try {
      await cluster2Drop('a drop in cluster2 while following', new Date().toISOString());
      const old = (await agentPod()).split(' ')[0]!;
      await kubectlOk('cluster2', ['-n', 'clustermesh-system', 'delete', 'pod', old, '--wait=true']);
      const fresh = await eventually('a new agent pod, ready', async () => {
        const [name, ready] = (await agentPod()).split(' ');
        return name && name !== old && ready === 'True' ? name : undefined;
      }, 180_000, 500);
      const readyAt = new Date().toISOString();
      const d = await cluster2Drop('a drop in cluster2 from the new agent', readyAt);
      console.log(`# agent pod ${old} replaced by ${fresh}; observe --follow printed ${d.node} ${d.reason} at ${d.time}; stderr: ${err.trim().split('\n').join(' | ')}`);
      assert.match(err, /cluster2\/node1 \(context cluster2, [^)]*\): /, 'the broken stream was named');
      const lines = out.split('\n').filter((l) => l.startsWith('{'));
      assert.equal(new Set(lines).size, lines.length, 'no flow printed twice');
    } finally {
      if (follow.pid && follow.exitCode === null) process.kill(follow.pid, 'SIGTERM');
    }
  });
});
