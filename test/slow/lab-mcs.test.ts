// The Multi-Cluster Services API on a lab of three clusters
// (issue 18), through real kubectl: a Service exported from cluster1 and
// cluster2 is imported by cluster3 (a ServiceImport with a VIP, both clusters
// in its status); a pod of cluster3 reaches it by its clusterset.local name and
// is answered by pods of both exporting clusters (real traffic through the
// datapath); a protocol clash on a port sets the Conflict condition on the
// exports and changing it back clears it; an export without a Service is not
// Valid (NoService); deleting the exports removes the import.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventually, ok } from '../helpers/kube.ts';
import { labFixture } from '../helpers/lab-fixture.ts';

const lab = labFixture('cmtmcs', { up: ['--clusters', '3', '--nodes', '1'], upTimeoutMs: 900_000 });
const { name, files, cli } = lab;
const ns = `cmt-mcs-${randomBytes(3).toString('hex')}`;
const CLUSTERS = ['cluster1', 'cluster2', 'cluster3'];

const { kubectl, kubectlOk } = lab.kube;

/** `clustermesh lab workload client URL -n N` from a pod; per answering cluster, how many answers. */
async function fromPod(cluster: string, pod: string, url: string, n: number): Promise<{ answered: number; clusters: Map<string, number>; out: string }> {
  const r = await cli(['lab', 'exec', '--lab', name, '--cluster', cluster, '-n', ns, pod, '--', 'clustermesh', 'lab', 'workload', 'client', url, '-n', String(n), '--timeout', '1000'], 60_000);
  const out = r.stdout + r.stderr;
  const clusters = new Map<string, number>();
  for (const m of out.matchAll(/^\s+(\d+)\s+(\S+)\/\S+\/\S+$/gm)) clusters.set(m[2]!, (clusters.get(m[2]!) ?? 0) + Number(m[1]));
  return { answered: Number(/(\d+) answered/.exec(out)?.[1] ?? 0), clusters, out };
}

interface Cond {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}
const exportConditions = async (ctx: string, svc = 'echo'): Promise<Cond[]> => {
  const r = await kubectl('--context', ctx, '-n', ns, 'get', 'serviceexport', svc, '-o', 'json');
  if (r.code !== 0) return [];
  return ((JSON.parse(r.stdout) as { status?: { conditions?: Cond[] } }).status?.conditions ?? []) as Cond[];
};
const cond = (cs: Cond[], type: string): Cond | undefined => cs.find((c) => c.type === type);

const serviceYaml = (protocol: string) =>
  `apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: ${ns}\n  annotations: {service.cilium.io/global: "true"}\nspec:\n  selector: {app: echo}\n  ports:\n    - name: http\n      port: 80\n      targetPort: 8080\n      protocol: ${protocol}\n`;
const exportYaml = (svc: string) => `apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: ${svc}\n  namespace: ${ns}\n`;

describe('the Multi-Cluster Services API on a lab of three clusters (kubectl)', { timeout: 1_800_000 }, () => {
  after(() => lab.down());

  test('lab up (3 clusters x 1 node); the MCS CRDs, created by the install lab up runs, are served', async () => {
    await lab.up();
    for (const c of CLUSTERS) {
      // No kubectl apply here: the `clustermesh install` that lab up runs creates the MCS CRDs (deploy/crds/mcs-api.yaml).
      const crds = await kubectlOk('--context', c, 'get', 'crd', '-o', 'name');
      for (const crd of ['serviceexports.multicluster.x-k8s.io', 'serviceimports.multicluster.x-k8s.io']) assert.ok(crds.split('\n').includes(`customresourcedefinition.apiextensions.k8s.io/${crd}`), `${crd} in ${c}: ${crds}`);
      assert.equal((await kubectl('--context', c, 'get', 'serviceexports', '-A')).code, 0, `serviceexports served in ${c}`);
    }
  });

  test('exported from cluster1 and cluster2: cluster3 gets a ServiceImport with a VIP and both clusters; Valid, Ready, no Conflict', async () => {
    const deployment = `apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: echo\n  namespace: ${ns}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: echo}\n  template:\n    metadata:\n      labels: {app: echo}\n    spec:\n      containers:\n        - name: echo\n          command: ["clustermesh", "lab", "workload", "echo", "--port", "8080"]\n          ports: [{containerPort: 8080}]\n`;
    const nsYaml = `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ${ns}\n`;
    const server = join(files, 'server.yaml');
    writeFileSync(server, `${nsYaml}---\n${deployment}---\n${serviceYaml('TCP')}`);
    const client = join(files, 'client.yaml');
    writeFileSync(client, `${nsYaml}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: ${ns}\nspec:\n  containers:\n    - name: client\n      command: ["sleep", "infinity"]\n`);
    for (const c of ['cluster1', 'cluster2']) await kubectlOk('--context', c, 'apply', '-f', server);
    await kubectlOk('--context', 'cluster3', 'apply', '-f', client);
    const exp = join(files, 'export.yaml');
    writeFileSync(exp, exportYaml('echo'));
    await kubectlOk('--context', 'cluster1', 'apply', '-f', exp);
    await kubectlOk('--context', 'cluster2', 'apply', '-f', exp);

    const imported = await eventually('the ServiceImport in cluster3 with a VIP and both clusters', async () => {
      const r = await kubectl('--context', 'cluster3', '-n', ns, 'get', 'serviceimport', 'echo', '-o', 'json');
      if (r.code !== 0) return undefined;
      const si = JSON.parse(r.stdout) as { spec: { type: string; ips?: string[]; ports?: Array<{ name?: string; port: number; protocol: string }> }; status?: { clusters?: Array<{ cluster: string }> } };
      const clusters = (si.status?.clusters ?? []).map((c) => c.cluster).sort();
      return si.spec.ips?.length === 1 && clusters.join(',') === 'cluster1,cluster2' ? si : undefined;
    }, 180_000, 1000);
    assert.equal(imported.spec.type, 'ClusterSetIP');
    assert.match(imported.spec.ips![0]!, /^\d+\.\d+\.\d+\.\d+$/);
    assert.deepEqual(imported.spec.ports, [{ name: 'http', protocol: 'TCP', port: 80 }]);
    for (const c of ['cluster1', 'cluster2']) {
      const cs = await eventually(`conditions of the export in ${c}`, async () => {
        const x = await exportConditions(c);
        return cond(x, 'Conflict') ? x : undefined;
      }, 60_000, 500);
      assert.equal(cond(cs, 'Valid')?.status, 'True', JSON.stringify(cs));
      assert.equal(cond(cs, 'Ready')?.status, 'True', JSON.stringify(cs));
      assert.equal(cond(cs, 'Conflict')?.status, 'False', JSON.stringify(cs));
    }
    // The exporters import it too (every cluster with the namespace does).
    await eventually('a ServiceImport in cluster1', async () => (await kubectl('--context', 'cluster1', '-n', ns, 'get', 'serviceimport', 'echo')).code === 0, 60_000, 1000);
  });

  test('a pod of cluster3 reaches echo.<ns>.svc.clusterset.local and is answered by both exporting clusters', async () => {
    await kubectlOk('--context', 'cluster3', '-n', ns, 'wait', '--for=condition=Ready', 'pod/client', '--timeout=180s');
    for (const c of ['cluster1', 'cluster2']) await kubectlOk('--context', c, '-n', ns, 'wait', '--for=condition=Ready', 'pod', '-l', 'app=echo', '--timeout=180s');
    const r = await eventually('answers from cluster1 and cluster2 by the clusterset name', async () => {
      const x = await fromPod('cluster3', 'client', `http://echo.${ns}.svc.clusterset.local/`, 20);
      return x.answered === 20 && (x.clusters.get('cluster1') ?? 0) > 0 && (x.clusters.get('cluster2') ?? 0) > 0 ? x : undefined;
    }, 180_000, 2000);
    assert.equal(r.answered, 20, r.out);
    assert.ok(![...r.clusters.keys()].includes('cluster3'), r.out);
  });

  test('the exported Service is also an annotated global service: its VIP and the import VIP each balance over the same two pods, once each', async () => {
    const vipOf = async (what: string, path: string) => (await kubectlOk('--context', 'cluster1', '-n', ns, 'get', what, '-o', `jsonpath={${path}}`)).trim();
    const importVip = await vipOf('serviceimport/echo', '.spec.ips[0]');
    const globalVip = await vipOf('service/echo', '.spec.clusterIP');
    assert.notEqual(importVip, globalVip);
    const backendsOf = (rows: Array<{ frontend: string; vipHinted: boolean; backends: Array<{ address: string; cluster: string | null; flags: string[] }> }>, vip: string) => {
      const row = rows.find((r) => r.frontend === `${vip}:80/TCP`);
      // the agent keeps cm_lb_hint: every VIP and backend it programmed has its bit
      if (row) assert.ok(row.vipHinted && row.backends.every((b) => !b.flags.includes('no-hint-bit')), JSON.stringify(row));
      return row?.backends.map((b) => b.address.split(':')[0]!).sort() ?? [];
    };
    const sets = await eventually("cluster1's datapath: both VIPs with one backend per cluster", async () => {
      const r = await cli(['inspect', 'services', '--lab', name, '--node', 'cluster1/node1', '-o', 'json']);
      if (r.code !== 0) return undefined;
      const rows = (JSON.parse(r.stdout) as { nodes: Array<{ entries: Parameters<typeof backendsOf>[0] }> }).nodes[0]!.entries;
      const [imp, glob] = [backendsOf(rows, importVip), backendsOf(rows, globalVip)];
      return imp.length === 2 && glob.length === 2 ? { imp, glob } : undefined;
    }, 90_000, 1000);
    assert.deepEqual(sets.imp, sets.glob);
    const pods = [];
    for (const c of ['cluster1', 'cluster2']) pods.push((await kubectlOk('--context', c, '-n', ns, 'get', 'pods', '-l', 'app=echo', '-o', 'jsonpath={.items[0].status.podIP}')).trim());
    assert.deepEqual(sets.imp, pods.sort());
  });

  test('a protocol clash on port "http" sets Conflict (PortConflict) on both exports; changing it back clears it', async () => {
    const udp = join(files, 'svc-udp.yaml');
    writeFileSync(udp, serviceYaml('UDP'));
    await kubectlOk('--context', 'cluster2', 'apply', '-f', udp);
    for (const c of ['cluster1', 'cluster2']) {
      const cs = await eventually(`Conflict True in ${c}`, async () => {
        const x = await exportConditions(c);
        return cond(x, 'Conflict')?.status === 'True' ? x : undefined;
      }, 90_000, 1000);
      assert.match(cond(cs, 'Conflict')!.reason ?? '', /PortConflict/);
      assert.match(cond(cs, 'Conflict')!.message ?? '', /80\/UDP in cluster2/);
    }
    const tcp = join(files, 'svc-tcp.yaml');
    writeFileSync(tcp, serviceYaml('TCP'));
    await kubectlOk('--context', 'cluster2', 'apply', '-f', tcp);
    for (const c of ['cluster1', 'cluster2']) await eventually(`Conflict False again in ${c}`, async () => cond(await exportConditions(c), 'Conflict')?.status === 'False', 90_000, 1000);
  });

  test('an export without a Service is not Valid (NoService); status and inspect services show exports and imports', async () => {
    const exp = join(files, 'export-missing.yaml');
    writeFileSync(exp, exportYaml('nothing-here'));
    await kubectlOk('--context', 'cluster1', 'apply', '-f', exp);
    const cs = await eventually('Valid False on the export of a missing Service', async () => {
      const x = await exportConditions('cluster1', 'nothing-here');
      return cond(x, 'Valid')?.status === 'False' ? x : undefined;
    }, 60_000, 1000);
    assert.equal(cond(cs, 'Valid')!.reason, 'NoService');
    await kubectlOk('--context', 'cluster1', 'delete', '-f', exp);
    const status = (await cli(['status', '--lab', name])).stdout;
    assert.match(status, new RegExp(`export\\s+${ns}/echo\\s+Valid=True Ready=True Conflict=False`), status);
    assert.match(status, new RegExp(`import\\s+${ns}/echo\\s+ClusterSetIP \\d+\\.\\d+\\.\\d+\\.\\d+ .*cluster1,cluster2`), status);
    const inspect = (await ok(cli(['inspect', 'services', '--lab', name, '--node', 'cluster3/node1']), 'inspect services')).toString();
    assert.match(inspect, /== cluster3: Multi-Cluster Services/);
    assert.match(inspect, new RegExp(`import\\s+${ns}/echo\\s+ClusterSetIP \\d+\\.\\d+\\.\\d+\\.\\d+\\s+ports http:80/TCP\\s+from cluster1,cluster2`), inspect);
  });

  test('a headless Service exported from cluster1 and cluster2: from a pod of cluster3 its clusterset name has the pods of both, <hostname>.<cluster>.db... each one', async () => {
    // Pods named by hostname + subdomain (as a StatefulSet's are): the same hostname in both clusters, told apart by the cluster label of the name.
    const dbPod = (podName: string) =>
      `apiVersion: v1\nkind: Pod\nmetadata:\n  name: ${podName}\n  namespace: ${ns}\n  labels: {app: db}\nspec:\n  hostname: db-0\n  subdomain: db\n  containers:\n    - name: db\n      command: ["clustermesh", "lab", "workload", "echo", "--port", "8080"]\n`;
    const dbService = `apiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: ${ns}\nspec:\n  clusterIP: None\n  selector: {app: db}\n  ports:\n    - name: tcp\n      port: 8080\n`;
    const f = join(files, 'db.yaml');
    for (const c of ['cluster1', 'cluster2']) {
      writeFileSync(f, `${dbPod(`db-${c}`)}---\n${dbService}---\n${exportYaml('db')}`);
      await kubectlOk('--context', c, 'apply', '-f', f);
    }
    const ips: Record<string, string> = {};
    for (const c of ['cluster1', 'cluster2']) {
      await kubectlOk('--context', c, '-n', ns, 'wait', '--for=condition=Ready', `pod/db-${c}`, '--timeout=180s');
      ips[c] = (await kubectlOk('--context', c, '-n', ns, 'get', 'pod', `db-${c}`, '-o', 'jsonpath={.status.podIP}')).trim();
    }
    const imported = await eventually('a Headless ServiceImport of db in cluster3 from both clusters', async () => {
      const r = await kubectl('--context', 'cluster3', '-n', ns, 'get', 'serviceimport', 'db', '-o', 'jsonpath={.spec.type} {.status.clusters[*].cluster}');
      return r.code === 0 && /^Headless cluster[12] cluster[12]$/.test(r.stdout.trim()) ? r.stdout : undefined;
    }, 120_000, 1000);
    assert.match(imported, /Headless/);
    // What CoreDNS's multicluster plugin would read on a real cluster: one slice per exporting cluster, with the hostname.
    const slices = await eventually("cluster3's EndpointSlices of the import, one per exporting cluster", async () => {
      const r = await kubectl('--context', 'cluster3', '-n', ns, 'get', 'endpointslices', '-l', 'multicluster.kubernetes.io/service-name=db', '-o', 'json');
      if (r.code !== 0) return undefined;
      const items = (JSON.parse(r.stdout) as { items: Array<{ metadata: { labels: Record<string, string> }; endpoints?: Array<{ addresses: string[]; hostname?: string; conditions?: { ready?: boolean } }> }> }).items;
      const by = Object.fromEntries(items.map((i) => [i.metadata.labels['multicluster.kubernetes.io/source-cluster'], (i.endpoints ?? []).map((e) => `${e.hostname}=${e.addresses.join(',')}/${e.conditions?.ready}`)]));
      return by.cluster1?.length === 1 && by.cluster2?.length === 1 ? by : undefined;
    }, 120_000, 1000);
    assert.deepEqual(slices, { cluster1: [`db-0=${ips.cluster1}/true`], cluster2: [`db-0=${ips.cluster2}/true`] });

    // Resolved inside cluster3's client pod, through its resolv.conf (the lab DNS at 10.96.0.10).
    const resolve = async (host: string): Promise<string[]> => {
      const r = await cli(['lab', 'exec', '--lab', name, '--cluster', 'cluster3', '-n', ns, 'client', '--', 'getent', 'ahostsv4', host], 60_000);
      return [...new Set(r.stdout.split('\n').map((l) => l.split(/\s+/)[0]!).filter(Boolean))].sort();
    };
    const all = await eventually('db.<ns>.svc.clusterset.local with both pods', async () => {
      const got = await resolve(`db.${ns}.svc.clusterset.local`);
      return got.length === 2 ? got : undefined;
    }, 60_000, 1000);
    assert.deepEqual(all, [ips.cluster1!, ips.cluster2!].sort());
    for (const c of ['cluster1', 'cluster2']) assert.deepEqual(await resolve(`db-0.${c}.db.${ns}.svc.clusterset.local`), [ips[c]!], `db-0.${c}`);
    assert.deepEqual(await resolve(`db-0.cluster3.db.${ns}.svc.clusterset.local`), [], 'cluster3 exports no db');

    // The last exports gone: the import's slices go with it.
    for (const c of ['cluster1', 'cluster2']) await kubectlOk('--context', c, '-n', ns, 'delete', 'serviceexport', 'db');
    await eventually('no EndpointSlice of the db import left in cluster3', async () => (await kubectlOk('--context', 'cluster3', '-n', ns, 'get', 'endpointslices', '-l', 'multicluster.kubernetes.io/service-name=db', '-o', 'name')).trim() === '', 120_000, 1000);
  });

  test('deleting both exports removes the ServiceImport (and its derived Service) from cluster3', async () => {
    for (const c of ['cluster1', 'cluster2']) await kubectlOk('--context', c, '-n', ns, 'delete', 'serviceexport', 'echo');
    await eventually('the ServiceImport gone from cluster3', async () => (await kubectl('--context', 'cluster3', '-n', ns, 'get', 'serviceimport', 'echo')).code !== 0, 120_000, 1000);
    await eventually('no derived Service left in cluster3', async () => !(await kubectlOk('--context', 'cluster3', '-n', ns, 'get', 'services', '-o', 'name')).includes('derived-'), 60_000, 1000);
  });
});
