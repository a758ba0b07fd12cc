// The README's first command, end to end, as a user would run it: the demo
// drives `clustermesh lab up / exec / observe / status` and real `kubectl
// apply / get / scale` (the lab's kubeconfig, a context per cluster) as
// separate processes against a fresh lab (its own name and CLUSTERMESH_LAB_ROOT)
// and checks each step; the lab is kept for one more look (`status -o json`,
// exactly what a script reads) and then taken down, and nothing may be left.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { runLabDemo } from '../src/cli/demo-lab.ts';
import type { StatusReport } from '../src/cli/status.ts';
import { childEnv } from '../src/lab/process.ts';
import { listNamespaces } from '../src/lab/topology.ts';
import { labNetnsPrefix } from '../src/lab/lab.ts';

const CLI = resolve(import.meta.dirname, '..', 'bin', 'clustermesh.js');
const run = promisify(execFile);

test('demo: the seed story on a fresh lab, then status -o json and lab down', { timeout: 900_000 }, async () => {
  const root = mkdtempSync(join(tmpdir(), 'cmtdemo-root-'));
  const name = `cmtdemo${randomBytes(3).toString('hex')}`;
  const env = childEnv({ CLUSTERMESH_LAB_ROOT: root });
  const cm = (args: string[]) => run(process.execPath, [CLI, ...args], { env, timeout: 180_000, maxBuffer: 16 << 20 });
  const lines: string[] = [];
  try {
    const ok = await runLabDemo({ name, keep: true, env, print: (l) => lines.push(l) });
    const out = lines.join('\n');
    assert.ok(ok, `the demo failed:\n${out}`);
    for (const want of [
      'ok   lab up',
      'ok   cluster DNS answers the Service name in the pod',
      'ok   answers from both clusters',
      'ok   cluster1 imports rebel-base from both clusters',
      'ok   answers by the clusterset name from both clusters',
      'ok   x-wing (app=frontend) is answered',
      'ok   tie-fighter (no app label) is refused',
      'ok   observe shows the drop with its reason',
      'ok   every answer from cluster2',
    ]) {
      assert.ok(out.includes(want), `missing '${want}' in:\n${out}`);
    }
    assert.match(out, /DROP_POLICY/);
    // The story is told through real kubectl against the lab's kubeconfig, each command printed as it runs.
    const kubeconfig = join(root, name, 'kubeconfig');
    const esc = (x: string): string => x.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    for (const [cluster, rest] of [
      ['cluster1', `apply -f \\S+/examples/rebel-base/rebel-base\\.yaml`],
      ['cluster2', `apply -f \\S+/examples/rebel-base/rebel-base\\.yaml`],
      ['cluster1', `apply -f \\S+/examples/rebel-base/clients\\.yaml`],
      ['cluster1', 'get pods -o wide'],
      ['cluster1', `apply -f \\S+/examples/mcs/rebel-base-export\\.yaml`],
      ['cluster2', `apply -f \\S+/examples/mcs/rebel-base-export\\.yaml`],
      ['cluster1', 'get serviceimports'],
      ['cluster2', `apply -f \\S+/examples/rebel-base/policy\\.yaml`],
      ['cluster1', 'scale deployment/rebel-base --replicas 0'],
    ]) {
      assert.match(out, new RegExp(`\\$ kubectl --kubeconfig ${esc(kubeconfig)} --context ${cluster} ${rest}\\n`), `the demo prints 'kubectl … --context ${cluster} ${rest}'`);
    }
    assert.match(out, /deployment\.apps\/rebel-base created/, 'what kubectl apply printed');
    assert.match(out, /deployment\.apps\/rebel-base scaled/, 'what kubectl scale printed');
    assert.ok(!/\$ clustermesh lab (apply|scale)/.test(out), 'no lab apply/scale shortcut in the story');

    const { stdout } = await cm(['status', '--lab', name, '-o', 'json']);
    const status = JSON.parse(stdout) as StatusReport;
    assert.equal(status.ready, true, `status not ready: ${status.notReady.join('; ')}`);
    assert.deepEqual(status.clusters.map((c) => c.name).sort(), ['cluster1', 'cluster2']);
    for (const c of status.clusters) {
      // The mesh's etcd is the install's pod, which status does not probe from this host (null); the agents' connections
      // to each other cluster's etcd (connectivity) show that it serves.
      assert.equal(c.etcd.reachable, null, `${c.name}: etcd`);
      assert.deepEqual({ total: c.nodes.total, ready: c.nodes.ready }, { total: 2, ready: 2 }, `${c.name}: nodes`);
      assert.equal(c.connectivity.min, 1, `${c.name}: every node connected to the other cluster`);
    }
    // Without the clusters' etcds (reached from the host only in a --direct lab), each cluster's exports are what one
    // of its agents programs as global and shared: rebel-base, applied to both clusters, and the derived Service of its
    // ServiceImport (the MCS controller's derived-<hash>, global, the same name in every cluster).
    assert.deepEqual(status.clusters.map((c) => [c.name, c.exportedServices, c.exportedServicesFrom]).sort(), [['cluster1', 2, 'agent'], ['cluster2', 2, 'agent']]);
    assert.equal(status.globalServices, 2, 'rebel-base and its derived Service, each counted once over the clusters');
  } finally {
    await cm(['lab', 'down', '--lab', name]).catch((err: unknown) => lines.push(`lab down failed: ${(err as Error).message}`));
    const left = (await listNamespaces()).filter((n) => n.startsWith(labNetnsPrefix(name)));
    rmSync(root, { recursive: true, force: true });
    assert.deepEqual(left, [], 'namespaces left behind');
    assert.ok(!existsSync(join(root, name)), 'lab dir left behind');
  }
});
