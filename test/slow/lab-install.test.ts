// Issue 14's "done when": two lab clusters with no mesh (`lab up --bare`: the
// Kubernetes API, a kubelet per node, the cluster DNS waiting for a CNI), then
// `clustermesh install` and `clustermesh connect` by kube context, run as a
// user would, with the lab's kubeconfig. The agent DaemonSet and the
// apiserver Deployment run from the very manifests a real cluster gets (the
// lab kubelet runs them; no lab agent or apiserver process exists). Then the
// demo's story holds on them (a global Service answered from both clusters,
// the cross-cluster policy admitting the x-wing and dropping the tie-fighter,
// the drop seen by `clustermesh observe`), and `clustermesh uninstall` leaves
// each cluster as it was before the install.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient } from '../../src/agent/client.ts';
import { podRecordsOf } from '../../src/lab/kubelet-config.ts';
import type { LabState } from '../../src/lab/state.ts';
import { startTransfer } from '../../src/lab/transfer.ts';
import { LAB_INSTALL_IMAGE } from '../../src/lab/lab-install.ts';
import { byCluster, EXAMPLES_DIR, REBEL_BASE_URL } from '../../src/cli/demo-lab.ts';
import { eventually, show } from '../helpers/kube.ts';
import { labFixture } from '../helpers/lab-fixture.ts';

const lab = labFixture('cmtin', { up: ['--bare', '--clusters', '2', '--nodes', '1'] });
const { name, labDir, cli, ws, kubectl, kubectlOk, client } = lab;
const CLUSTERS = ['cluster1', 'cluster2'] as const;
/** What install makes is compared without what lives and changes on its own. */
const SNAPSHOT_KINDS = 'namespaces,serviceaccounts,configmaps,secrets,services,deployments,daemonsets,clusterroles,clusterrolebindings,customresourcedefinitions';

/** kind/namespace/name of every object of SNAPSHOT_KINDS in `cluster`. */
async function snapshot(cluster: string): Promise<string[]> {
  const out = await kubectlOk(cluster, ['get', SNAPSHOT_KINDS, '-A', '-o', 'jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}{"\\n"}{end}']);
  return out.split('\n').filter(Boolean).sort();
}

/** The files of every node's CNI configuration directory (its host filesystem's /etc/cni/net.d). */
function cniConfs(): string[] {
  const out: string[] = [];
  for (const c of CLUSTERS) {
    const cdir = join(labDir, c);
    if (!existsSync(cdir)) continue;
    for (const n of readdirSync(cdir)) {
      const d = join(cdir, n, 'root', 'etc', 'cni', 'net.d');
      if (existsSync(d)) for (const f of readdirSync(d)) out.push(`${c}/${n}/${f}`);
    }
  }
  return out.sort();
}

const before0: Record<string, string[]> = {};

describe('clustermesh install and connect by context on bare lab clusters, the demo story, uninstall', { timeout: 1_200_000 }, () => {
  before(() => lab.up());
  after(() => lab.down());

  test('a bare cluster: no mesh, no Cilium CRDs, pods wait for a CNI configuration', async () => {
    for (const c of CLUSTERS) {
      before0[c] = await snapshot(c);
      assert.ok(!before0[c]!.some((o) => o.includes('clustermesh') || o.includes('cilium.io')), `${c}: ${before0[c]!.join(' ')}`);
      // The cluster DNS is a pod-network Deployment: Pending, NetworkNotReady, until an agent writes its conflist.
      const dns = await kubectlOk(c, ['-n', 'kube-system', 'get', 'pods', '-o', 'jsonpath={range .items[*]}{.status.phase} {.status.conditions[?(@.type=="PodScheduled")].status} {.status.reason}{"\\n"}{end}']);
      assert.match(dns, /Pending/, `${c} DNS pods: ${dns}`);
    }
    assert.deepEqual(cniConfs(), [], 'no CNI configuration on any node');
  });

  test('install and connect by kube context, then the demo story: global service across clusters, cross-cluster policy', async () => {
    // A mixed mesh: cluster1's agents dial cluster2's etcd; cluster2 runs the cache tier (--kvstoremesh), its agents read cluster1 from their own etcd.
    for (const c of CLUSTERS) {
      const id = c.slice('cluster'.length);
      const r = await ws(['install', '--context', c, '--cluster-name', c, '--cluster-id', id, '--service-type', 'LoadBalancer', '--image', LAB_INSTALL_IMAGE, ...(c === 'cluster2' ? ['--kvstoremesh'] : [])]);
      assert.equal(r.code, 0, show(r));
      assert.match(r.stdout, /daemonset\/clustermesh-agent created/);
    }
    for (const c of CLUSTERS) {
      await kubectlOk(c, ['-n', 'clustermesh-system', 'rollout', 'status', 'daemonset/clustermesh-agent', '--timeout', '300s']);
      await kubectlOk(c, ['-n', 'clustermesh-system', 'rollout', 'status', 'deployment/clustermesh-apiserver', '--timeout', '300s']);
    }
    // Every node got the installed CNI configuration (written by its agent once ready).
    assert.deepEqual(cniConfs(), ['cluster1/node1/05-clustermesh.conflist', 'cluster2/node1/05-clustermesh.conflist']);
    // connect: the LoadBalancer address is there once the apiserver's pod is ready; until then connect refuses, naming it.
    const conn = await eventually('clustermesh connect --context cluster1 --destination-context cluster2', async () => {
      const r = await ws(['connect', '--context', 'cluster1', '--destination-context', 'cluster2']);
      if (r.code !== 0) {
        assert.match(r.stderr, /no address yet|not reachable|unreachable|tried/i, show(r));
        return undefined;
      }
      return r;
    }, 180_000, 2000);
    console.log(`# ${conn.stdout.trim().split('\n').join('\n# ')}`);
    const st = await cli(['status', '--lab', name, '--wait', '--wait-duration', '3m'], 240_000);
    assert.equal(st.code, 0, show(st));
    const report = JSON.parse((await cli(['status', '--lab', name, '-o', 'json'], 60_000)).stdout) as { clusters: Array<{ name: string; remoteClusters: Array<{ name: string; nodes: number; ready: number; viaCache: number }> }> };
    const remote = (c: string) => report.clusters.find((x) => x.name === c)!.remoteClusters[0]!;
    assert.deepEqual([remote('cluster1').name, remote('cluster1').viaCache], ['cluster2', 0], 'cluster1 dials cluster2 directly');
    assert.deepEqual([remote('cluster2').name, remote('cluster2').viaCache, remote('cluster2').ready], ['cluster1', remote('cluster2').nodes, remote('cluster2').nodes], "cluster2's agents read cluster1 through the cache tier");

    // The demo's story.
    for (const [file, c] of [['rebel-base.yaml', 'cluster1'], ['rebel-base.yaml', 'cluster2'], ['clients.yaml', 'cluster1']] as const) await kubectlOk(c, ['apply', '-f', join(EXAMPLES_DIR, file)]);
    for (const c of CLUSTERS) await kubectlOk(c, ['rollout', 'status', 'deployment/rebel-base', '--timeout', '240s']);
    await kubectlOk('cluster1', ['wait', '--for=condition=Ready', 'pod/x-wing', 'pod/tie-fighter', '--timeout', '240s']);
    const both = await eventually('answers from both clusters through the global Service', async () => {
      const t = await client('x-wing', REBEL_BASE_URL, 10);
      return t.failures === 0 && Object.keys(byCluster(t)).length === 2 ? t : undefined;
    }, 120_000, 1000);
    console.log(`# x-wing -> ${REBEL_BASE_URL}: ${JSON.stringify(byCluster(both))}`);

    for (const c of ['cluster2', 'cluster1']) await kubectlOk(c, ['apply', '-f', join(EXAMPLES_DIR, 'policy.yaml')]);
    await eventually('the tie-fighter refused', async () => ((await client('tie-fighter', REBEL_BASE_URL, 2, 1000)).failures === 2 ? true : undefined), 60_000, 500);
    const xw = await client('x-wing', REBEL_BASE_URL, 10);
    assert.equal(xw.failures, 0, `x-wing still answered: ${JSON.stringify(xw)}`);
    // A refusal is proven by the datapath's drop, not by a failed request: the agents' flows hold policy drops of the tie-fighter.
    const tfIp = (await kubectlOk('cluster1', ['get', 'pod', 'tie-fighter', '-o', 'jsonpath={.status.podIP}'])).trim();
    const obs = await cli(['observe', '--lab', name, '--verdict', 'DROPPED', '--last', '50', '-o', 'json'], 60_000);
    assert.equal(obs.code, 0, show(obs));
    const drops = obs.stdout.split('\n').filter((l) => l.includes(tfIp) && /POLICY/i.test(l));
    assert.ok(drops.length > 0, `a policy drop of ${tfIp} in: ${obs.stdout.slice(0, 2000)}`);
  });

  test("the agent pod deleted: the DaemonSet's new one re-adopts the node's endpoints and a long connection to the other cluster survives", async () => {
    const xw = podRecordsOf(labDir).find((r) => r.cluster === 'cluster1' && r.name === 'x-wing');
    assert.ok(xw, 'x-wing runs in cluster1');
    const target = (await kubectlOk('cluster2', ['get', 'pods', '-l', 'name=rebel-base', '-o', 'jsonpath={.items[0].status.podIP}'])).trim();
    const state = JSON.parse(readFileSync(join(labDir, 'lab.json'), 'utf8')) as LabState;
    const node = state.nodes.find((n) => n.cluster === 'cluster1' && n.name === 'node1')!;
    const api = new AgentClient(node.socket, { timeoutMs: 10_000 });
    const view = async (): Promise<string[]> => (await api.listEndpoints()).map((e) => `${e.namespace}/${e.podName} ${e.ip} ${e.hostIfName} ep${e.endpointID} id${e.identity}`).sort();
    const agentPod = async (): Promise<string> => (await kubectlOk('cluster1', ['-n', 'clustermesh-system', 'get', 'pods', '-l', 'app.kubernetes.io/name=clustermesh-agent', '-o', 'jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'])).trim();
    try {
      const before = await view();
      assert.ok(before.some((l) => l.startsWith('default/x-wing ')), before.join('\n'));
      // 12 MiB read at 256 KiB/s: about 48 s, spanning the agent's replacement (x-wing is admitted to app=rebel-base by the policy).
      const bytes = 12 << 20;
      const t = startTransfer(xw!.netns, `http://${target}:8080/bytes?n=${bytes}`, { rateBytesPerSec: 256 << 10, idleTimeoutSeconds: 60 });
      await eventually('the transfer started', () => (t.received() > 0 ? true : undefined), 60_000, 100);
      const old = (await agentPod()).split(' ')[0]!;
      await kubectlOk('cluster1', ['-n', 'clustermesh-system', 'delete', 'pod', old, '--wait=true']);
      const fresh = await eventually('a new agent pod, ready', async () => {
        const [name, ready] = (await agentPod()).split(' ');
        return name && name !== old && ready === 'True' ? name : undefined;
      }, 180_000, 500);
      const backAt = t.received();
      const r = await t.done;
      console.log(`# agent pod ${old} deleted, ${fresh} ready with ${backAt} of ${bytes} bytes received; transfer: ${JSON.stringify(r)}`);
      assert.ok(backAt < bytes, `the new agent was ready before the transfer ended (${backAt} of ${bytes} bytes by then)`);
      assert.equal(r.error, '', t.describe());
      assert.equal(r.status, 200);
      assert.equal(r.bytes, bytes);
      assert.equal(r.sha256, r.announcedSha256);
      // The same endpoints: same interfaces, endpoint IDs and identities (re-adopted, not regenerated).
      assert.deepEqual(await view(), before);
      assert.equal((await client('x-wing', REBEL_BASE_URL, 4)).failures, 0, 'new connections through the global Service after the restart');
    } finally {
      api.close();
    }
  });

  test('clustermesh uninstall leaves each cluster as it was', async () => {
    for (const [file, c] of [['policy.yaml', 'cluster1'], ['policy.yaml', 'cluster2'], ['clients.yaml', 'cluster1'], ['rebel-base.yaml', 'cluster1'], ['rebel-base.yaml', 'cluster2']] as const) {
      await kubectlOk(c, ['delete', '--ignore-not-found', '--wait=true', '-f', join(EXAMPLES_DIR, file)]);
    }
    for (const c of CLUSTERS) {
      const r = await ws(['uninstall', '--context', c]);
      assert.equal(r.code, 0, show(r));
    }
    for (const c of CLUSTERS) {
      await eventually(`${c} as before the install`, async () => {
        const now = await snapshot(c);
        return JSON.stringify(now) === JSON.stringify(before0[c]) ? true : undefined;
      }, 180_000, 1000).catch(async (err: unknown) => {
        assert.deepEqual(await snapshot(c), before0[c], (err as Error).message);
      });
      const left = await kubectl(c, ['get', 'pods', '-A', '-o', 'name']);
      assert.ok(!/clustermesh/.test(left.stdout), `${c}: ${left.stdout}`);
    }
    // The agents removed their CNI configuration when they stopped.
    await eventually('no CNI configuration left', () => (cniConfs().length === 0 ? true : undefined), 60_000, 500);
    await sleep(0);
  });
});
