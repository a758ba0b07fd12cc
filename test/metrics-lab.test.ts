// Metrics in a real lab (`clustermesh lab up --prometheus`, 2 clusters x 1
// node): every agent's and apiserver's /metrics endpoint shows the families of
// issue 16 with non-zero values after traffic (a service lookup, a policy
// drop), a policy drop increments exactly its reason's counter, and the lab's
// prometheus (Debian's) has scraped that drop counter (HTTP API), and follows
// a replaced apiserver pod (its targets are listed from each cluster's
// Kubernetes API by `lab prometheus-sd`). Skipped when
// Debian's prometheus is not installed (./scripts/setup.sh --prometheus).
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runIn } from '../src/lab/exec.ts';
import { childEnv } from '../src/lab/process.ts';
import { labStateSchema, sameProcessAlive, type LabState } from '../src/lab/state.ts';
import { run, show, type Run } from './helpers/kube.ts';

const CLI = resolve(import.meta.dirname, '..', 'bin', 'clustermesh.js');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const root = mkdtempSync(join(tmpdir(), 'cmtm-root-'));
const env = childEnv({ CLUSTERMESH_LAB_ROOT: root });
const noPrometheus = spawnSync('sh', ['-c', 'command -v prometheus']).status !== 0;

const cli = (args: string[], timeoutMs = 240_000): Promise<Run> => run(process.execPath, [CLI, ...args], { env, timeoutMs });

/** Every sample of a /metrics text, 'name{labels}' → value, and '# TYPE name' → 1 per family. */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const l of text.split('\n')) {
    const t = /^# TYPE (clustermesh_[a-z_]+) /.exec(l);
    if (t) out.set(`# TYPE ${t[1]}`, 1); // the families served, with or without samples
    const m = /^(clustermesh_[a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(l);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}
/** Sum of a family's samples whose labels contain every `must` fragment. */
const total = (m: Map<string, number>, family: string, ...must: string[]): number =>
  [...m].filter(([k]) => (k === family || k.startsWith(`${family}{`)) && must.every((x) => k.includes(x))).reduce((a, [, v]) => a + v, 0);

describe('metrics: every agent and apiserver endpoint of a lab, and the lab\'s prometheus', { timeout: 600_000, skip: noPrometheus && "Debian's prometheus is not installed (./scripts/setup.sh --prometheus)" }, () => {
  const name = `cmtm${randomBytes(3).toString('hex')}`;
  const files = mkdtempSync(join(tmpdir(), 'cmtm-files-'));
  const state = (): LabState => labStateSchema.parse(JSON.parse(readFileSync(join(root, name, 'lab.json'), 'utf8')));
  after(async () => {
    if (existsSync(join(root, name, 'lab.json'))) await cli(['lab', 'down', '--lab', name]).catch(() => undefined);
    rmSync(files, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  });

  test('lab up --prometheus; traffic; each endpoint shows its families; a policy drop moves exactly DROP_POLICY; prometheus has it; down stops prometheus', async () => {
    const up = await cli(['lab', 'up', '--lab', name, '--clusters', '2', '--nodes', '1', '--prometheus', '--prometheus-port', '0']);
    assert.equal(up.code, 0, show(up));
    const st = state();
    assert.ok(st.prometheus, 'the state records the prometheus');
    const url = st.prometheus.url;
    assert.match(up.stdout, new RegExp(`prometheus: ${url.replace(/[.]/g, '\\.')}/`));

    writeFileSync(join(files, 'server.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: server\n  labels: {app: server}\nspec:\n  containers:\n  - name: sleep\n    command: [sleep, infinity]\n');
    writeFileSync(join(files, 'client.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  labels: {app: client}\nspec:\n  containers:\n  - name: sleep\n    command: [sleep, infinity]\n');
    writeFileSync(
      join(files, 'deny.yaml'),
      'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: server-deny-ingress\nspec:\n  podSelector:\n    matchLabels: {app: server}\n  policyTypes: [Ingress]\n',
    );
    for (const [f, c] of [['server.yaml', 'cluster2'], ['client.yaml', 'cluster1']] as const) {
      const r = await cli(['lab', 'apply', '--lab', name, '-f', join(files, f), '--cluster', c]);
      assert.equal(r.code, 0, show(r));
    }
    type PodJson = { name: string; namespace: string; ready: boolean; podIP: string | null };
    let pods: PodJson[] = [];
    for (const end = Date.now() + 120_000; ; await sleep(500)) {
      const r = await cli(['lab', 'get', 'pods', '--lab', name, '-o', 'json']);
      pods = (JSON.parse(r.stdout) as PodJson[]).filter((p) => p.namespace === 'default');
      if (pods.filter((p) => p.ready && p.podIP).length === 2) break;
      if (Date.now() > end) assert.fail(`pods not ready: ${r.stdout}`);
    }
    const serverIP = pods.find((p) => p.name === 'server')!.podIP!;
    const exec = (cluster: string, cmd: string[]): Promise<Run> => cli(['lab', 'exec', '--lab', name, 'client', '--cluster', cluster, '--', ...cmd], 60_000);
    const ping = (n: number): Promise<Run> => exec('cluster1', ['ping', '-c', String(n), '-i', '0.2', '-W', '1', serverIP]);
    assert.equal((await ping(2)).code, 0, 'the server answers before the policy');

    const n1 = st.nodes.find((n) => n.cluster === 'cluster1')!;
    const n2 = st.nodes.find((n) => n.cluster === 'cluster2')!;
    const scrape = async (netns: string, address: string): Promise<Map<string, number>> => {
      await sleep(300); // an endpoint reads its sources at most every 250 ms
      const { stdout } = await runIn(netns, ['curl', '-sf', `http://${address}/metrics`], { timeoutMs: 10_000 });
      return parseMetrics(stdout);
    };
    const agent2 = (): Promise<Map<string, number>> => scrape(n2.netns, `${n2.underlayIP}:9962`);

    // The policy: wait until it drops, then count exactly five drops.
    const ap = await cli(['lab', 'apply', '--lab', name, '-f', join(files, 'deny.yaml'), '--cluster', 'cluster2']);
    assert.equal(ap.code, 0, show(ap));
    const policyIn = 'clustermesh_drop_count_total{reason="DROP_POLICY",direction="ingress"}';
    for (const end = Date.now() + 60_000; ; ) {
      const b = (await agent2()).get(policyIn) ?? 0;
      await ping(1);
      if (((await agent2()).get(policyIn) ?? 0) > b) break;
      if (Date.now() > end) assert.fail('the policy never dropped a ping');
    }
    const before = await agent2();
    assert.notEqual((await ping(5)).code, 0, 'the pings are dropped');
    const after = await agent2();
    const delta = (k: string): number => (after.get(k) ?? 0) - (before.get(k) ?? 0);
    assert.equal(delta(policyIn), 5, 'five pings, five drops of DROP_POLICY');
    const moved = [...after.keys()].filter((k) => k.startsWith('clustermesh_drop_count_total{') && k !== policyIn && delta(k) !== 0);
    assert.deepEqual(moved, [], 'no other drop reason moved');
    assert.equal(delta('clustermesh_policy_verdicts_total{direction="ingress",match="default-deny"}'), 5);

    // A service lookup from the client: translated by the per-packet datapath (cluster DNS VIP), a conntrack entry.
    await exec('cluster1', ['bash', '-c', 'for i in 1 2 3; do echo x > /dev/udp/10.96.0.10/53; done']);

    // Every agent: the families with non-zero values.
    for (const n of st.nodes) {
      const other = n.cluster === 'cluster1' ? 'cluster2' : 'cluster1';
      const m = await scrape(n.netns, `${n.underlayIP}:9962`);
      const nonZero = (family: string, ...must: string[]): void => assert.ok(total(m, family, ...must) > 0, `${n.cluster}/${n.name}: ${family}${must.join('')} is 0 or missing`);
      nonZero('clustermesh_forward_count_total');
      nonZero('clustermesh_forward_bytes_total');
      nonZero('clustermesh_map_entries', 'map="cm_ipcache"');
      nonZero('clustermesh_map_capacity', 'map="cm_ct"');
      nonZero('clustermesh_remote_cluster_connected', `source_cluster="${other}"`);
      nonZero('clustermesh_remote_cluster_ready', `source_cluster="${other}"`);
      nonZero('clustermesh_remote_cluster_entries', `source_cluster="${other}"`, 'kind="nodes"');
      nonZero('clustermesh_remote_cluster_heartbeat_age_seconds');
      nonZero('clustermesh_remote_clusters', 'state="ready"');
      nonZero('clustermesh_propagation_delay_seconds_count', `source_cluster="${other}"`);
      nonZero('clustermesh_reconciler_duration_seconds_count', 'reconciler="ipcache"');
      nonZero('clustermesh_flows_seen_total');
      nonZero('clustermesh_flows_stored');
      for (const f of ['clustermesh_reconciler_errors_total', 'clustermesh_map_full_errors_total', 'clustermesh_reconciler_pending', 'clustermesh_flows_lost_total', 'clustermesh_conntrack_entries', 'clustermesh_service_translations_total'])
        assert.ok(m.has(`# TYPE ${f}`), `${n.cluster}/${n.name}: ${f} is served`);
      if (n === n2) {
        nonZero('clustermesh_drop_count_total', 'reason="DROP_POLICY"');
        nonZero('clustermesh_policy_verdicts_total');
      }
      if (n === n1) {
        nonZero('clustermesh_service_translations_total', 'path="packet"');
        nonZero('clustermesh_conntrack_entries', 'table="service"');
      }
    }
    // Every apiserver: the install's Deployment pod (host network) serves at its node's address.
    const all = JSON.parse((await cli(['lab', 'get', 'pods', '--lab', name, '-o', 'json'])).stdout) as Array<PodJson & { cluster: string; node: string | null }>;
    for (const c of st.clusters) {
      const pod = all.find((p) => p.cluster === c.name && p.namespace === 'clustermesh-system' && p.name.startsWith('clustermesh-apiserver-'));
      const node = st.nodes.find((n) => n.cluster === c.name && n.name === pod?.node);
      assert.ok(node, `apiserver pod of ${c.name} on a node of the lab: ${JSON.stringify(pod)}`);
      const m = await scrape(node.netns, `${node.underlayIP}:9963`);
      const nonZero = (family: string, ...must: string[]): void => assert.ok(total(m, family, ...must) > 0, `apiserver ${c.name}: ${family}${must.join('')} is 0 or missing`);
      nonZero('clustermesh_apiserver_exported_objects', 'kind="nodes"');
      nonZero('clustermesh_apiserver_exported_objects', 'kind="ip"');
      nonZero('clustermesh_apiserver_kvstore_operations_total', 'operation="put"');
      nonZero('clustermesh_apiserver_heartbeats_total');
      nonZero('clustermesh_apiserver_kvstore_connected');
      assert.equal(total(m, 'clustermesh_apiserver_synced'), 4, `apiserver ${c.name}: every prefix synced`);
      for (const f of ['clustermesh_apiserver_export_errors_total', 'clustermesh_apiserver_kvstore_errors_total', 'clustermesh_apiserver_kvstore_queued'])
        assert.ok(m.has(`# TYPE ${f}`), `apiserver ${c.name}: ${f} is served`);
    }

    // Prometheus scraped the drop counter (scrape interval 5 s).
    const want = after.get(policyIn)!;
    let last = '';
    for (const end = Date.now() + 60_000; ; await sleep(1000)) {
      const q = encodeURIComponent('clustermesh_drop_count_total{reason="DROP_POLICY",direction="ingress",cluster="cluster2"}');
      const r = (await (await fetch(`${url}/api/v1/query?query=${q}`)).json()) as { status: string; data: { result: { metric: Record<string, string>; value: [number, string] }[] } };
      last = JSON.stringify(r);
      const v = r.data.result[0];
      if (v && Number(v.value[1]) >= want) {
        assert.equal(v.metric.job, 'clustermesh-agent');
        assert.equal(v.metric.node, n2.name);
        break;
      }
      if (Date.now() > end) assert.fail(`prometheus has no DROP_POLICY >= ${want} for cluster2 after 60 s: ${last}`);
    }
    type Target = { labels: Record<string, string>; health: string };
    const activeTargets = async (): Promise<Target[]> => ((await (await fetch(`${url}/api/v1/targets?state=active`)).json()) as { data: { activeTargets: Target[] } }).data.activeTargets;
    assert.deepEqual((await activeTargets()).map((t) => `${t.labels.job} ${t.labels.cluster} ${t.health}`).sort(), [
      'clustermesh-agent cluster1 up',
      'clustermesh-agent cluster2 up',
      'clustermesh-apiserver cluster1 up',
      'clustermesh-apiserver cluster2 up',
    ]);
    // The targets are the install's pods as listed from each cluster's Kubernetes API (`lab prometheus-sd`): cluster2's
    // apiserver pod deleted, prometheus scrapes the Deployment's new pod (its instance is its node's address).
    const kubectl = (args: string[]): Promise<Run> => run('kubectl', ['--kubeconfig', st.kubeconfig!, '--context', 'cluster2', '-n', 'clustermesh-system', ...args], { env, timeoutMs: 60_000 });
    const apiPods = async (): Promise<string[]> => (await kubectl(['get', 'pods', '-l', 'app.kubernetes.io/name=clustermesh-apiserver', '-o', 'jsonpath={.items[*].metadata.name}'])).stdout.trim().split(/\s+/).filter(Boolean);
    const [oldPod] = await apiPods();
    assert.ok(oldPod, 'the apiserver pod of cluster2');
    const del = await kubectl(['delete', 'pod', oldPod, '--wait=false']);
    assert.equal(del.code, 0, show(del));
    let seen = '';
    for (const end = Date.now() + 180_000; ; await sleep(1000)) {
      const pods = await apiPods();
      const ts = (await activeTargets()).filter((t) => t.labels.job === 'clustermesh-apiserver' && t.labels.cluster === 'cluster2');
      seen = `pods ${pods.join(',')}; targets ${JSON.stringify(ts.map((t) => [t.labels.instance, t.health]))}`;
      const fresh = pods.length === 1 && pods[0] !== oldPod;
      const ready = fresh && (await kubectl(['get', 'pod', pods[0]!, '-o', 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'])).stdout.trim() === 'True';
      if (ready && ts.length === 1 && ts[0]!.health === 'up') {
        const m = await scrape(st.router.netns, ts[0]!.labels.instance!);
        if ((m.get('clustermesh_apiserver_kvstore_connected') ?? 0) > 0) break;
      }
      if (Date.now() > end) assert.fail(`prometheus did not follow the replaced apiserver pod ${oldPod} within 180 s: ${seen}`);
    }
    const status = await cli(['status', '--lab', name]);
    assert.match(status.stdout, new RegExp(`prometheus: ok  ${url.replace(/[.]/g, '\\.')}/`));

    const procs = st.processes.filter((p) => /^prometheus/.test(p.name));
    assert.deepEqual(procs.map((p) => p.name).sort(), ['prometheus', 'prometheus-forward', 'prometheus-sd'], 'prometheus, its forwarder and its service discovery are recorded');
    const down = await cli(['lab', 'down', '--lab', name]);
    assert.equal(down.code, 0, show(down));
    assert.deepEqual(procs.filter((p) => sameProcessAlive(p)).map((p) => p.name), [], 'down stopped prometheus and its forwarder');
    await assert.rejects(fetch(`${url}/-/ready`), 'nothing answers on the UI address any more');
  });
});
