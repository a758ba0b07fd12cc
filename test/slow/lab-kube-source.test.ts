// A lab whose one local source is the Kubernetes API (the default). Everything
// here goes through real kubectl against the lab's API servers; the agents,
// apiservers and kubelets read that API (through the node-local endpoint
// 127.0.0.1:6443 of their namespaces), the lab's scheduler binds the pods,
// the kubelets write their status. Then real traffic: a pod of cluster1
// reaches a pod of cluster2 and the global service's backends in both
// clusters, also by its name (the cluster DNS reads the API); `lab apply`
// is an API client; a scale-down is forgotten by the datapath; a CiliumNetworkPolicy
// applied with kubectl is enforced (the drop counter grows); deleting a
// namespace removes its pods and their endpoints.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readNodeMetrics } from '../../src/lab/datapath.ts';
import { podRecordsOf } from '../../src/lab/kubelet-config.ts';
import { labStateSchema, type LabState } from '../../src/lab/state.ts';
import { eventually, ok } from '../helpers/kube.ts';
import { labFixture } from '../helpers/lab-fixture.ts';

const ROOT_DIR = resolve(import.meta.dirname, '..', '..');
const lab = labFixture('cmtks', { up: ['--clusters', '2', '--nodes', '1'] });
const { name, root, files, cli } = lab;
const { kubectl, kubectlOk } = lab.kube;
const readState = (): LabState => labStateSchema.parse(JSON.parse(readFileSync(join(root, name, 'lab.json'), 'utf8')));

/** DROP_POLICY + DROP_POLICY_DENY packets of a node (its pinned metrics map). */
const policyDrops = (pinDir: string): number =>
  readNodeMetrics(pinDir)
    .filter((r) => r.reasonName === 'DROP_POLICY' || r.reasonName === 'DROP_POLICY_DENY')
    .reduce((a, r) => a + Number(r.packets), 0);

/** `clustermesh lab workload client URL -n N` from a pod; per answering cluster/node/pod, how many answers. */
async function fromPod(cluster: string, pod: string, url: string, n = 10, namespace = 'default'): Promise<{ answered: number; by: Map<string, number>; out: string }> {
  const r = await cli(['lab', 'exec', '--lab', name, '--cluster', cluster, '-n', namespace, pod, '--', 'clustermesh', 'lab', 'workload', 'client', url, '-n', String(n), '--timeout', '1000'], 60_000);
  const out = r.stdout + r.stderr;
  const answered = Number(/(\d+) answered/.exec(out)?.[1] ?? 0);
  const by = new Map<string, number>();
  for (const m of out.matchAll(/^\s+(\d+)\s+(\S+\/\S+\/\S+)$/gm)) by.set(m[2]!, Number(m[1]));
  return { answered, by, out };
}

const podIPs = async (ctx: string, selector: string, namespace = 'default'): Promise<Array<{ name: string; ip: string }>> => {
  const out = await kubectlOk('--context', ctx, '-n', namespace, 'get', 'pods', '-l', selector, '-o', 'jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{"\\n"}{end}');
  return out
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const [n, ip] = l.trim().split(' ');
      return { name: n!, ip: ip ?? '' };
    });
};

describe('lab: kubectl drives the lab, the agents read the Kubernetes API', { timeout: 1_500_000 }, () => {
  after(() => lab.down());

  test('up records the Kubernetes API as the source; status shows it; every node registered itself in the API', async () => {
    await lab.up();
    const state = readState();
    assert.equal(state.source, 'kubernetes');
    const status = await ok(cli(['status', '--lab', name]), 'status');
    assert.match(status, /source:\s+kubernetes/);
    assert.doesNotMatch(status, /source:\s+store/);
    for (const c of ['cluster1', 'cluster2']) {
      const nodes = await eventually(`${c}'s node Ready in the API`, async () => {
        const out = await kubectlOk('--context', c, 'get', 'nodes', '-o', 'jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.status.addresses[?(@.type=="InternalIP")].address} {.spec.podCIDRs[0]}{"\\n"}{end}');
        return out.includes(' True ') ? out : undefined;
      }, 60_000, 500);
      const node = state.nodes.find((n) => n.cluster === c)!;
      assert.match(nodes, new RegExp(`node1 True ${node.underlayIP.replace(/\./g, '\\.')} ${node.podCIDR.replace(/\./g, '\\.')}`));
    }
  });

  test('kubectl apply of a Deployment ends in running, Ready pods (scheduled, started, status written); rollout status succeeds', async () => {
    for (const c of ['cluster1', 'cluster2']) await kubectlOk('--context', c, 'apply', '-f', join(ROOT_DIR, 'examples', 'rebel-base', 'rebel-base.yaml'));
    await kubectlOk('--context', 'cluster1', 'apply', '-f', join(ROOT_DIR, 'examples', 'rebel-base', 'clients.yaml'));
    for (const c of ['cluster1', 'cluster2']) {
      await kubectlOk('--context', c, 'wait', '--for=condition=Ready', 'pod', '-l', 'name=rebel-base', '--timeout=180s');
      await kubectlOk('--context', c, 'rollout', 'status', 'deployment/rebel-base', '--timeout=120s');
      const pods = await podIPs(c, 'name=rebel-base');
      assert.equal(pods.length, 2, JSON.stringify(pods));
      for (const p of pods) assert.match(p.ip, new RegExp(`^10\\.10${c.slice(-1)}\\.`), `pod IP of ${p.name} in ${c}'s pod CIDR`);
      const wide = await kubectlOk('--context', c, 'get', 'pods', '-l', 'name=rebel-base', '-o', 'wide');
      assert.match(wide, /1\/1\s+Running/);
      assert.match(wide, /node1/);
    }
    await kubectlOk('--context', 'cluster1', 'wait', '--for=condition=Ready', 'pod/x-wing', 'pod/tie-fighter', '--timeout=180s');
  });

  test('a pod of cluster1 reaches a pod of cluster2 and the global service backends of both clusters (real traffic)', async () => {
    const [remote] = await podIPs('cluster2', 'name=rebel-base');
    const direct = await eventually('x-wing -> a cluster2 pod', async () => {
      const r = await fromPod('cluster1', 'x-wing', `http://${remote!.ip}:8080/`, 3);
      return r.answered === 3 ? r : undefined;
    }, 60_000, 1000);
    assert.ok([...direct.by.keys()].every((k) => k === `cluster2/node1/${remote!.name}`), direct.out);
    const vip = (await kubectlOk('--context', 'cluster1', 'get', 'service', 'rebel-base', '-o', 'jsonpath={.spec.clusterIP}')).trim();
    const both = await eventually('the global service answered from both clusters', async () => {
      const r = await fromPod('cluster1', 'x-wing', `http://${vip}/`, 20);
      const clusters = new Set([...r.by.keys()].map((k) => k.split('/')[0]));
      return r.answered === 20 && clusters.has('cluster1') && clusters.has('cluster2') ? r : undefined;
    }, 90_000, 1000);
    assert.equal(both.answered, 20, both.out);
    // By name: the cluster DNS reads the Services from the API too.
    const byName = await eventually('the global service by its DNS name', async () => {
      const r = await fromPod('cluster1', 'x-wing', 'http://rebel-base.default.svc.cluster.local/', 5);
      return r.answered === 5 ? r : undefined;
    }, 60_000, 1000);
    assert.equal(byName.answered, 5, byName.out);
  });

  test('lab apply, delete and scale are clients of the API (like kubectl): created, unchanged on the second apply, scaled, deleted', async () => {
    const manifest = join(files, 'echo.yaml');
    writeFileSync(
      manifest,
      `apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: lab-echo\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: lab-echo}\n  template:\n    metadata:\n      labels: {app: lab-echo}\n    spec:\n      containers:\n        - name: echo\n          command: ["clustermesh", "lab", "workload", "echo", "--port", "8080"]\n          ports: [{containerPort: 8080}]\n`,
    );
    const first = await ok(cli(['lab', 'apply', '--lab', name, '--cluster', 'cluster2', '-f', manifest]), 'lab apply');
    assert.match(first, /deployment\.apps\/lab-echo created in cluster2/);
    const again = await ok(cli(['lab', 'apply', '--lab', name, '--cluster', 'cluster2', '-f', manifest]), 'lab apply again');
    assert.match(again, /deployment\.apps\/lab-echo unchanged in cluster2/);
    await kubectlOk('--context', 'cluster2', 'rollout', 'status', 'deployment/lab-echo', '--timeout=120s');
    // lab get reads the API too.
    const deployments = JSON.parse(await ok(cli(['lab', 'get', 'deployments', '--lab', name, '--cluster', 'cluster2', '-o', 'json']), 'lab get deployments')) as Array<{ name: string; replicas: number; ready: number }>;
    assert.deepEqual(deployments.filter((d) => d.name === 'lab-echo').map((d) => [d.replicas, d.ready]), [[1, 1]]);
    const services = await ok(cli(['lab', 'get', 'services', '--lab', name, '--cluster', 'cluster2']), 'lab get services');
    assert.match(services, /default\s+rebel-base\s+ClusterIP/);
    const pods = await ok(cli(['lab', 'get', 'pods', '--lab', name, '--cluster', 'cluster2', '-o', 'wide']), 'lab get pods');
    assert.match(pods, /lab-echo-\S+\s+1\/1\s+Running/);
    await ok(cli(['lab', 'scale', '--lab', name, '--cluster', 'cluster2', 'deployment/lab-echo', '--replicas', '2']), 'lab scale');
    assert.equal((await kubectlOk('--context', 'cluster2', 'get', 'deployment', 'lab-echo', '-o', 'jsonpath={.spec.replicas}')).trim(), '2');
    const gone = await ok(cli(['lab', 'delete', '--lab', name, '--cluster', 'cluster2', '-f', manifest]), 'lab delete');
    assert.match(gone, /deployment\.apps\/lab-echo deleted in cluster2/);
    await eventually('the pods of lab-echo gone', async () => (await podIPs('cluster2', 'app=lab-echo')).length === 0, 90_000, 500);
  });

  test('kubectl scale down removes a pod; the datapath of the other cluster forgets it', async () => {
    const before = await podIPs('cluster2', 'name=rebel-base');
    await kubectlOk('--context', 'cluster2', 'scale', 'deployment/rebel-base', '--replicas=1');
    const after1 = await eventually('cluster2 down to one rebel-base pod', async () => {
      const now = await podIPs('cluster2', 'name=rebel-base');
      return now.length === 1 ? now : undefined;
    }, 90_000, 500);
    const gone = before.find((p) => p.name !== after1[0]!.name)!;
    const c1 = readState().nodes.find((n) => n.cluster === 'cluster1')!;
    await eventually(`cluster1's ipcache without ${gone.ip}`, async () => {
      const r = await cli(['inspect', 'ipcache', '--lab', name, '--node', `cluster1/${c1.name}`, '-o', 'json']);
      if (r.code !== 0) return undefined;
      const out = JSON.parse(r.stdout) as { nodes: Array<{ entries: Array<{ prefix: string }> }> };
      const prefixes = out.nodes.flatMap((n) => n.entries.map((e) => e.prefix));
      return prefixes.includes(`${after1[0]!.ip}/32`) && !prefixes.includes(`${gone.ip}/32`);
    }, 60_000, 500);
    const vip = (await kubectlOk('--context', 'cluster1', 'get', 'service', 'rebel-base', '-o', 'jsonpath={.spec.clusterIP}')).trim();
    const r = await eventually('service traffic without the removed pod', async () => {
      const x = await fromPod('cluster1', 'x-wing', `http://${vip}/`, 20);
      return x.answered === 20 ? x : undefined;
    }, 60_000, 1000);
    assert.ok(![...r.by.keys()].some((k) => k.endsWith(`/${gone.name}`)), `the removed pod ${gone.name} still answered:\n${r.out}`);
  });

  test('a CiliumNetworkPolicy applied with kubectl is enforced: the frontend gets in, another pod is dropped (drop counter)', async () => {
    await kubectlOk('--context', 'cluster2', 'apply', '-f', join(ROOT_DIR, 'deploy', 'crds', 'cilium-policies.yaml'));
    await eventually('ciliumnetworkpolicies served', async () => (await kubectl('--context', 'cluster2', 'get', 'ciliumnetworkpolicies')).code === 0, 60_000, 500);
    await kubectlOk('--context', 'cluster2', 'apply', '-f', join(ROOT_DIR, 'examples', 'rebel-base', 'policy.yaml'));
    const [target] = await podIPs('cluster2', 'name=rebel-base');
    const c2 = readState().nodes.find((n) => n.cluster === 'cluster2')!;
    // The policy is in force once tie-fighter (no app=frontend) is refused while x-wing still gets in.
    await eventually('tie-fighter refused by the policy', async () => (await fromPod('cluster1', 'tie-fighter', `http://${target!.ip}:8080/`, 1)).answered === 0, 90_000, 1000);
    const drops0 = policyDrops(c2.pinDir);
    const refused = await fromPod('cluster1', 'tie-fighter', `http://${target!.ip}:8080/`, 3);
    assert.equal(refused.answered, 0, refused.out);
    await eventually('the policy drop counter of cluster2 grew', () => policyDrops(c2.pinDir) > drops0, 10_000, 200);
    const allowed = await fromPod('cluster1', 'x-wing', `http://${target!.ip}:8080/`, 3);
    assert.equal(allowed.answered, 3, allowed.out);
  });

  test('kubectl delete namespace removes its pods: runtime, API and the agents forget them', async () => {
    const ns = `cmt-${randomBytes(3).toString('hex')}`;
    const manifest = join(files, 'ns.yaml');
    writeFileSync(
      manifest,
      `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ${ns}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: echo\n  namespace: ${ns}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: echo}\n  template:\n    metadata:\n      labels: {app: echo}\n    spec:\n      containers:\n        - name: echo\n          command: ["clustermesh", "lab", "workload", "echo", "--port", "8080"]\n          ports: [{containerPort: 8080}]\n`,
    );
    await kubectlOk('--context', 'cluster1', 'apply', '-f', manifest);
    await eventually(`a pod in ${ns}`, async () => (await podIPs('cluster1', 'app=echo', ns)).length === 1, 60_000, 500);
    await kubectlOk('--context', 'cluster1', '-n', ns, 'wait', '--for=condition=Ready', 'pod', '-l', 'app=echo', '--timeout=180s');
    const [pod] = await podIPs('cluster1', 'app=echo', ns);
    const labDir = join(root, name);
    assert.ok(podRecordsOf(labDir).some((r) => r.namespace === ns), 'the kubelet runs the pod');
    await kubectlOk('--context', 'cluster1', 'delete', 'namespace', ns, '--timeout=120s');
    await eventually(`namespace ${ns} gone`, async () => (await kubectl('--context', 'cluster1', 'get', 'namespace', ns)).code !== 0, 120_000, 500);
    await eventually(`the pod of ${ns} torn down by the kubelet`, () => !podRecordsOf(labDir).some((r) => r.namespace === ns), 60_000, 500);
    const c1 = readState().nodes.find((n) => n.cluster === 'cluster1')!;
    await eventually(`cluster1's ipcache without ${pod!.ip}`, async () => {
      const r = await cli(['inspect', 'ipcache', '--lab', name, '--node', `cluster1/${c1.name}`, '-o', 'json']);
      if (r.code !== 0) return undefined;
      return !r.stdout.includes(`"${pod!.ip}/32"`);
    }, 60_000, 500);
  });
});
