// `clustermesh lab …`: a whole mesh on this machine (test bed).
import { spawn } from 'node:child_process';
import { createReadStream, existsSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { isPodReady, type Pod, type Service } from '../model/index.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import type { KubeConfig } from '@kubernetes/client-node';
import { labDown, labUp, validateLatency, validateLoss } from '../lab/lab.ts';
import { LAB_INSTALL_IMAGE } from '../lab/lab-install.ts';
import { podRecordsOf, type PodRecord } from '../lab/kubelet-config.ts';
import { inCgroup, nodeCgroupPath } from '../lab/cgroup.ts';
import { ManifestError, readManifestFile, type ApplyLine } from '../lab/kube-apply.ts';
import { DEFAULT_LAB_NAME, findCluster, labDir, listLabs, readLabState, sameProcessAlive, type LabCluster, type LabState } from '../lab/state.ts';
import { CLIENT_DEFAULTS, ECHO_DEFAULTS, parseCount, parsePort, runClient, runEcho, type ClientOptions, type EchoOptions } from '../lab/workload-main.ts';
import { sweepOrphanedTopologies } from '../lab/topology.js';
import { ROUTING_MODES, type RoutingMode } from '../datapath/maps/config.ts';
import { dnsWorkloadCommand } from './lab-dns.ts';
import { netpolWorkloadCommand } from './lab-netpol.ts';
import { exitWhenFlushed, labOption } from './common.ts';

function parseSmallCount(max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < 1 || n > max) throw new InvalidArgumentError(`must be an integer 1..${max}, got '${value}'`);
    return n;
  };
}

function parseReplicas(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 1000) throw new InvalidArgumentError(`must be an integer 0..1000, got '${value}'`);
  return n;
}

function checked<T>(fn: (v: string) => T) {
  return (v: string): T => {
    try {
      return fn(v);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

/** Runs an action; an error is printed as one message (no stack) with exit code 2 (1 for refused input). */
function action<A extends unknown[]>(fn: (...args: A) => Promise<number | void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    let code = 0;
    try {
      code = (await fn(...args)) ?? 0;
    } catch (err) {
      console.error(`error: ${(err as Error).message}`);
      code = err instanceof ManifestError ? 1 : 2;
    }
    // Open etcd clients would keep the process alive.
    await exitWhenFlushed(code);
  };
}

interface LabOpts {
  lab: string;
}
const nameOption = (c: Command): Command => labOption(c, DEFAULT_LAB_NAME, 'lab name');

function clusterOf(state: LabState, name: string | undefined): LabCluster {
  if (name === undefined) {
    const first = state.clusters[0];
    if (!first) throw new Error(`lab ${state.name} has no clusters (phase ${state.phase}); bring it up with: clustermesh lab up --lab ${state.name}`);
    return first;
  }
  return findCluster(state, name);
}

function requireUp(state: LabState): void {
  if (state.phase !== 'up') throw new Error(`lab ${state.name} is not up (phase ${state.phase}${state.error ? `: ${state.error}` : ''}); remove it with: clustermesh lab down --lab ${state.name}`);
}

/** Runs `viaApi` against one cluster of a lab that is up (a client of the cluster's Kubernetes API, like kubectl) and prints what it did. */
async function changeCluster(o: LabOpts & { cluster?: string | undefined }, viaApi: (kc: KubeConfig) => Promise<readonly ApplyLine[]>): Promise<void> {
  const state = readLabState(o.lab);
  requireUp(state);
  const c = clusterOf(state, o.cluster);
  printLines(await viaApi(labKubeConfig(state, c)), c.name);
}

function printLines(lines: readonly ApplyLine[], cluster: string): void {
  for (const l of lines) console.log(`${l.ref} ${l.action} in ${cluster}${l.detail ? ` (${l.detail})` : ''}`);
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 3))).join('').trimEnd()).join('\n');
}

function age(iso: string | undefined): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
}

/** One row of `lab get pods -o json`. */
export interface PodView {
  cluster: string;
  namespace: string;
  name: string;
  ready: boolean;
  phase: string;
  podIP: string | null;
  node: string | null;
  labels: Record<string, string>;
  deployment: string | null;
  netns: string | null;
  restarts: number;
  createdAt: string | null;
}

/** The lab kubeconfig's context of cluster `c`. */
function labKubeConfig(state: LabState, c: LabCluster): KubeConfig {
  if (state.kubeconfig === undefined || state.source !== 'kubernetes') throw new Error(`lab ${state.name} was started by an older clustermesh (its clusters have no Kubernetes API as their source); recreate it: clustermesh lab down --lab ${state.name} && clustermesh lab up --lab ${state.name}`);
  return loadKubeConnection({ kubeconfig: state.kubeconfig, context: c.name }).kubeConfig;
}

/** The Pods of a cluster's Kubernetes API as the model's Pods, each with its Deployment (from the controlling ownerReference). */
async function listApiPods(state: LabState, c: LabCluster): Promise<Array<{ pod: Pod; deployment: string | null }>> {
  const { CoreV1Api } = await import('@kubernetes/client-node');
  const { podFromApi } = await import('../lab/kubelet.ts');
  const kc = labKubeConfig(state, c);
  const list = await kc.makeApiClient(CoreV1Api).listPodForAllNamespaces();
  return list.items.map((p) => ({ pod: podFromApi(p), deployment: p.metadata?.ownerReferences?.find((r) => r.controller && r.kind === 'Deployment')?.name ?? null }));
}

async function podViews(state: LabState, clusters: LabCluster[]): Promise<PodView[]> {
  const records = podRecordsOf(state.dir ?? labDir(state.name));
  const out: PodView[] = [];
  for (const c of clusters) {
    for (const { pod: p, deployment } of await listApiPods(state, c)) {
        const rec = records.find((r) => r.uid === p.metadata.uid);
        out.push({
          cluster: c.name,
          namespace: p.metadata.namespace,
          name: p.metadata.name,
          ready: isPodReady(p),
          phase: p.status.phase,
          podIP: p.status.podIP ?? null,
          node: p.spec.nodeName ?? null,
          labels: p.metadata.labels,
          deployment,
          netns: rec?.netns ?? null,
          restarts: rec?.containers.reduce((n, x) => n + x.restarts, 0) ?? 0,
          createdAt: rec?.createdAt ?? null,
        });
    }
  }
  return out.sort((a, b) => a.cluster.localeCompare(b.cluster) || a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name));
}

/** The pod `ref` ('name' or 'namespace/name') of the lab: its API object and its runtime record. */
async function findPod(state: LabState, ref: string, clusterName: string | undefined, namespace: string): Promise<{ pod: PodView; rec: PodRecord }> {
  const [ns, name] = ref.includes('/') ? (ref.split('/', 2) as [string, string]) : [namespace, ref];
  const clusters = clusterName ? [findCluster(state, clusterName)] : state.clusters;
  const found = (await podViews(state, clusters)).filter((p) => p.name === name && p.namespace === ns);
  if (found.length === 0) throw new Error(`no pod ${ns}/${name} in ${clusterName ?? `lab ${state.name}`}; see: clustermesh lab get pods --lab ${state.name}`);
  if (found.length > 1) throw new Error(`pod ${ns}/${name} exists in ${found.map((p) => p.cluster).join(' and ')}; say which with --cluster`);
  const pod = found[0]!;
  const rec = podRecordsOf(state.dir ?? labDir(state.name)).find((r) => r.cluster === pod.cluster && r.namespace === ns && r.name === name);
  if (!rec || !rec.ip) throw new Error(`pod ${ns}/${name} in ${pod.cluster} is not running yet (phase ${pod.phase}); see its node's kubelet log: clustermesh lab logs kubelet/${pod.node ?? '?'} --cluster ${pod.cluster}`);
  return { pod, rec };
}

/** An installed lab: the install's agent container on `node` (or its apiserver container) as the kubelet records it (pid, start, log). */
function installedContainer(state: LabState, cluster: string, container: 'agent' | 'apiserver', node?: string): PodRecord['containers'][number] | undefined {
  const prefix = container === 'agent' ? 'clustermesh-agent-' : 'clustermesh-apiserver-';
  const rec = podRecordsOf(state.dir ?? labDir(state.name)).find((r) => r.cluster === cluster && r.namespace === state.install!.namespace && r.name.startsWith(prefix) && (node === undefined || r.node === node));
  return rec?.containers.find((c) => c.name === container);
}

/** A node's agent: the lab process, or in an installed lab the DaemonSet pod's container on the node as the kubelet records it. */
function agentProcess(state: LabState, n: LabState['nodes'][number]): { pid: number | null; running: boolean; log: string | null } {
  const a: { pid?: number | undefined; startTime?: string | undefined; logFile?: string | undefined } = state.install ? (installedContainer(state, n.cluster, 'agent', n.name) ?? {}) : n;
  return { pid: a.pid ?? null, running: sameProcessAlive(a), log: a.logFile || null };
}

function parsePrometheusPort(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) > 65535) throw new InvalidArgumentError(`'${v}' is no port (0..65535)`);
  return Number(v);
}

/** --routing: 'tunnel', 'native' or a comma list, one per cluster. */
function parseRouting(v: string): RoutingMode[] {
  const list = v.split(',').map((x) => x.trim());
  for (const r of list) if (!(ROUTING_MODES as readonly string[]).includes(r)) throw new InvalidArgumentError(`'${r}' is no routing mode: use ${ROUTING_MODES.join(' or ')}, or one per cluster separated by commas`);
  return list as RoutingMode[];
}

export function labCommand(): Command {
  const lab = new Command('lab').description('a whole mesh of clusters, nodes and pods on this machine (test bed)').addHelpText(
    'after',
    `
Example:
  clustermesh lab up --clusters 2 --nodes 2
  export KUBECONFIG=$(clustermesh lab kubeconfig)
  kubectl --context cluster1 apply -f examples/rebel-base/rebel-base.yaml
  kubectl --context cluster1 get pods -o wide
  clustermesh lab down

Every cluster serves the Kubernetes API, the one source of its agents, apiservers, kubelets
and DNS; \`lab apply|delete|scale\` are shortcuts that talk to it like kubectl.`,
  );

  // ---- up / down / list ------------------------------------------------
  nameOption(
    lab
      .command('up')
      .description("build a lab: router, node namespaces, per cluster a Kubernetes-shaped cluster (its etcd, a Kubernetes API server with controllers and scheduler, a kubelet per node, the cluster DNS), then the mesh put on them as on real clusters: clustermesh install --context clusterN and clustermesh connect for every pair, each command printed, so the agents (a DaemonSet) and apiservers (a Deployment with its etcd) are pods of the install's manifests; returns when every agent is connected to every cluster. --direct runs the agents and apiservers as lab processes instead, --bare leaves the install to you")
      .option('--clusters <n>', 'number of clusters', parseSmallCount(16), 2)
      .option('--nodes <n>', 'nodes per cluster', parseSmallCount(16), 2)
      .option('--latency <delay>', 'one-way delay between clusters (netem on the router), e.g. 20ms', checked(validateLatency))
      .option('--loss <percent>', 'packet loss between clusters (netem on the router), e.g. 0.1%', checked(validateLoss))
      .option('--socket-lb', "socket-level load balancing: services translated once per connection at connect() in each node's pod cgroup")
      .option('--routing <modes>', "tunnel (VXLAN between nodes), native (the router routes every node's pod CIDR, nothing encapsulated), or one per cluster, e.g. native,native,tunnel (native clusters tunnel to tunnel ones)", parseRouting, ['tunnel'] as RoutingMode[])
      .option('--prometheus', "run Debian's prometheus (./scripts/setup.sh --prometheus installs it) scraping every agent and apiserver of the lab; its web UI on 127.0.0.1 of this host")
      .option('--prometheus-port <port>', 'port of the prometheus UI on 127.0.0.1 (0: any free one)', parsePrometheusPort, 9090)
      .option('--direct', "the mesh's agents, apiservers and their etcds run as lab processes on the nodes, started by the lab rather than by clustermesh install's manifests: about 30% less CPU for a 4x2 lab; clustermesh connect --lab works on this kind only")
      .option('--install', 'no effect (accepted until the next release): the mesh is always installed unless --direct or --bare')
      .option('--bare', "bare clusters only (the Kubernetes API, kubelets, DNS waiting for a CNI): install the mesh yourself, from the lab's workstation: clustermesh lab run -- clustermesh install --context clusterN --cluster-name clusterN --cluster-id N --service-type LoadBalancer --image " + LAB_INSTALL_IMAGE + ', then clustermesh lab run -- clustermesh connect --context clusterA --destination-context clusterB (or --connection-mode mesh --context cluster1 --context cluster2 --context cluster3 ...) and clustermesh lab run -- clustermesh status --context clusterA --wait')
      .option('--kube-source', 'no effect (accepted until the next release): the Kubernetes API is always the local source')
      .option('--json', 'print the lab state as JSON at the end'),
  )
    .addHelpText('after', '\nExample:\n  clustermesh lab up --clusters 2 --nodes 2 --latency 20ms --lab geo\n\nProcesses keep running after this command returns; remove everything with: clustermesh lab down --lab NAME\n\nkubectl: export KUBECONFIG=$(clustermesh lab kubeconfig --lab NAME); the contexts are the cluster names.')
    .action(
      action(async (o: LabOpts & { clusters: number; nodes: number; latency?: string; loss?: string; socketLb?: boolean; routing: RoutingMode[]; prometheus?: boolean; prometheusPort: number; install?: boolean; direct?: boolean; bare?: boolean; json?: boolean }) => {
        const say = (l: string): void => void (o.json ? console.error(l) : console.log(l));
        let interrupted = false;
        const up = labUp({
          name: o.lab,
          clusters: o.clusters,
          nodes: o.nodes,
          ...(o.latency ? { latency: o.latency } : {}),
          ...(o.loss ? { loss: o.loss } : {}),
          ...(o.socketLb ? { socketLB: true } : {}),
          routing: o.routing.length === 1 ? Array.from({ length: o.clusters }, () => o.routing[0]!) : o.routing,
          ...(o.prometheus ? { prometheus: true, prometheusPort: o.prometheusPort } : {}),
          ...(o.direct ? { direct: true } : {}),
          ...(o.bare ? { bare: true } : {}),
          progress: say,
        });
        const onSignal = (): void => {
          if (interrupted) return;
          interrupted = true;
          say('interrupted: removing what was made');
          // Remove what exists now, then let up's own failure path remove whatever it was still starting.
          void labDown(o.lab, { progress: say })
            .catch((e: unknown) => console.error(`error: ${(e as Error).message}`))
            .then(() => Promise.race([up.then(() => labDown(o.lab, { progress: say })).catch(() => undefined), new Promise((r) => setTimeout(r, 60_000))]))
            .finally(() => process.exit(130));
        };
        process.once('SIGINT', onSignal);
        process.once('SIGTERM', onSignal);
        const r = await up.catch((err: unknown) => {
          if (interrupted) return new Promise<never>(() => undefined); // the signal handler exits
          throw err;
        });
        if (o.json) console.log(JSON.stringify({ ...r.state, totalMs: r.totalMs }, null, 2));
        else {
          const lab = o.lab !== DEFAULT_LAB_NAME ? ` --lab ${o.lab}` : '';
          if (!o.bare) console.log(`time to all-connected: ${(r.readyMs / 1000).toFixed(2)} s`);
          if (o.bare) {
            const cs = r.state.clusters;
            console.log(`next (on the lab's workstation, which reaches every cluster's API and load balancers):`);
            for (const c of cs) console.log(`      clustermesh lab run${lab} -- clustermesh install --context ${c.name} --cluster-name ${c.name} --cluster-id ${c.id} --service-type LoadBalancer --image ${LAB_INSTALL_IMAGE}`);
            if (cs.length > 2) console.log(`      clustermesh lab run${lab} -- clustermesh connect --connection-mode mesh ${cs.map((c) => `--context ${c.name}`).join(' ')}`);
            else for (const [i, a] of cs.entries()) for (const b of cs.slice(i + 1)) console.log(`      clustermesh lab run${lab} -- clustermesh connect --context ${a.name} --destination-context ${b.name}`);
            if (cs[0]) console.log(`      clustermesh lab run${lab} -- clustermesh status --context ${cs[0].name} --wait`);
          } else console.log(`next: export KUBECONFIG=$(clustermesh lab kubeconfig${lab}); kubectl --context ${r.state.clusters[0]?.name ?? 'cluster1'} apply -f FILE`);
          if (r.state.prometheus) console.log(`prometheus: ${r.state.prometheus.url}/ (e.g. ${r.state.prometheus.url}/graph?g0.expr=rate(clustermesh_drop_count_total[1m]))`);
        }
      }),
    );

  nameOption(lab.command('down').description('remove everything a lab created (processes by pid, namespaces, pins, files), also after a crashed up'))
    .addHelpText('after', '\nExample:\n  clustermesh lab down --lab geo')
    .action(
      action(async (o: LabOpts) => {
        await labDown(o.lab, { progress: (l) => console.log(l) });
      }),
    );

  lab
    .command('list')
    .description('the labs on this machine and whether they run')
    .addHelpText('after', '\nExample:\n  clustermesh lab list')
    .action(
      action(async () => {
        const rows = [['NAME', 'PHASE', 'CLUSTERS', 'NODES', 'RUNNING', 'AGE']];
        for (const n of listLabs()) {
          try {
            const s = readLabState(n);
            const procs = [...s.processes];
            rows.push([n, s.phase, String(s.clusters.length), String(s.nodes.length), `${procs.filter((p) => sameProcessAlive(p)).length}/${procs.length}`, age(s.createdAt)]);
          } catch (err) {
            rows.push([n, 'unreadable', '-', '-', '-', (err as Error).message]);
          }
        }
        console.log(rows.length > 1 ? table(rows) : 'no labs; start one with: clustermesh lab up');
      }),
    );

  nameOption(lab.command('kubeconfig').description("print the path of the lab's kubeconfig: one context per cluster, named like the cluster"))
    .addHelpText('after', '\nExample:\n  export KUBECONFIG=$(clustermesh lab kubeconfig)\n  kubectl --context cluster2 get pods -A')
    .action(
      action(async (o: LabOpts) => {
        const state = readLabState(o.lab);
        requireUp(state);
        if (state.kubeconfig === undefined || !existsSync(state.kubeconfig)) {
          throw new Error(`lab ${state.name} has no kubeconfig (it was started by an older clustermesh); recreate it: clustermesh lab down --lab ${state.name} && clustermesh lab up --lab ${state.name}`);
        }
        console.log(state.kubeconfig);
      }),
    );

  // ---- apply / delete / scale -------------------------------------------
  nameOption(
    lab
      .command('apply')
      .description("create or update what a YAML file holds in a cluster's Kubernetes API, like kubectl apply (a shortcut: every document first checked by a server dry run, so a refused one stops the apply before anything changes, exit 1; then each created or merge-patched in order)")
      .requiredOption('-f, --filename <file>', 'YAML file, several documents separated by ---')
      .option('--cluster <name>', 'cluster to apply to (default: the first)'),
  )
    .addHelpText('after', '\nExample:\n  clustermesh lab apply -f echo.yaml --cluster cluster2')
    .action(
      action(async (o: LabOpts & { filename: string; cluster?: string }) => {
        const text = readManifestFile(o.filename);
        await changeCluster(
          o,
          async (kc) => (await import('../lab/kube-apply.ts')).applyToApi(kc, (await import('../lab/kube-apply.ts')).manifestDocuments(text, o.filename)),
        );
      }),
    );

  nameOption(
    lab
      .command('delete')
      .description('delete what a YAML file names (a Deployment with its pods)')
      .requiredOption('-f, --filename <file>', 'YAML file')
      .option('--cluster <name>', 'cluster (default: the first)'),
  )
    .addHelpText('after', '\nExample:\n  clustermesh lab delete -f echo.yaml --cluster cluster2')
    .action(
      action(async (o: LabOpts & { filename: string; cluster?: string }) => {
        const text = readManifestFile(o.filename);
        await changeCluster(
          o,
          async (kc) => (await import('../lab/kube-apply.ts')).deleteFromApi(kc, (await import('../lab/kube-apply.ts')).manifestDocuments(text, o.filename)),
        );
      }),
    );

  nameOption(
    lab
      .command('scale')
      .description('set the replicas of a Deployment')
      .argument('<deployment>', 'deployment/NAME')
      .requiredOption('--replicas <n>', 'number of pods', parseReplicas)
      .option('-n, --namespace <ns>', 'namespace', 'default')
      .option('--cluster <name>', 'cluster (default: the first)'),
  )
    .addHelpText('after', '\nExample:\n  clustermesh lab scale deployment/rebel-base --replicas 0 --cluster cluster1')
    .action(
      action(async (ref: string, o: LabOpts & { replicas: number; namespace: string; cluster?: string }) => {
        const m = /^(deployment|deployments|deploy|deployment\.apps)\/([a-z0-9.-]+)$/.exec(ref);
        if (!m) throw new Error(`'${ref}' is not deployment/NAME (e.g. deployment/echo)`);
        await changeCluster(
          o,
          async (kc) => [await (await import('../lab/kube-apply.ts')).scaleInApi(kc, o.namespace, m[2]!, o.replicas)],
        );
      }),
    );

  // ---- get / exec / logs -------------------------------------------------
  nameOption(
    lab
      .command('get')
      .description('list pods, services, deployments or nodes of the lab')
      .argument('<what>', 'pods | services | deployments | nodes')
      .option('--cluster <name>', 'only this cluster')
      .option('-o, --output <format>', 'wide | json'),
  )
    .addHelpText('after', '\nExample:\n  clustermesh lab get pods -o wide\n  clustermesh lab get services --cluster cluster1 -o json')
    .action(
      action(async (what: string, o: LabOpts & { cluster?: string; output?: string }) => {
        if (o.output !== undefined && o.output !== 'wide' && o.output !== 'json') throw new Error(`-o must be wide or json, got '${o.output}'`);
        const kind = ({ pod: 'pods', pods: 'pods', po: 'pods', service: 'services', services: 'services', svc: 'services', node: 'nodes', nodes: 'nodes', no: 'nodes', deployment: 'deployments', deployments: 'deployments', deploy: 'deployments' } as Record<string, string>)[what];
        if (!kind) throw new Error(`cannot get '${what}'; use pods, services, deployments or nodes`);
        const state = readLabState(o.lab);
        const clusters = o.cluster ? [findCluster(state, o.cluster)] : state.clusters;
        const wide = o.output === 'wide';
        if (kind === 'nodes') {
          const pods = state.phase === 'up' ? await podViews(state, clusters) : [];
          const nodes = state.nodes.filter((n) => clusters.some((c) => c.name === n.cluster)).map((n) => ({
            cluster: n.cluster,
            name: n.name,
            underlayIP: n.underlayIP,
            podCIDR: n.podCIDR,
            netns: n.netns,
            agent: agentProcess(state, n),
            kubelet: { pid: n.kubelet?.pid ?? null, running: n.kubelet ? sameProcessAlive(n.kubelet) : false, log: n.kubelet?.logFile ?? null },
            pods: pods.filter((p) => p.cluster === n.cluster && p.node === n.name).length,
          }));
          if (o.output === 'json') return void console.log(JSON.stringify(nodes, null, 2));
          const rows = [['CLUSTER', 'NAME', 'STATUS', 'UNDERLAY-IP', 'POD-CIDR', 'PODS', ...(wide ? ['AGENT-PID', 'KUBELET-PID', 'NETNS'] : [])]];
          for (const n of nodes) rows.push([n.cluster, n.name, n.agent.running && n.kubelet.running ? 'Ready' : n.agent.running ? 'NoKubelet' : 'NotReady', n.underlayIP, n.podCIDR, String(n.pods), ...(wide ? [String(n.agent.pid ?? '-'), String(n.kubelet.pid ?? '-'), n.netns] : [])]);
          return void console.log(table(rows));
        }
        requireUp(state);
        if (kind === 'pods') {
          const pods = await podViews(state, clusters);
          if (o.output === 'json') return void console.log(JSON.stringify(pods, null, 2));
          if (!pods.length) return void console.log('no pods');
          const rows = [['CLUSTER', 'NAMESPACE', 'NAME', 'READY', 'STATUS', 'RESTARTS', 'AGE', ...(wide ? ['IP', 'NODE', 'NETNS'] : [])]];
          for (const p of pods) rows.push([p.cluster, p.namespace, p.name, p.ready ? '1/1' : '0/1', p.phase, String(p.restarts), age(p.createdAt ?? undefined), ...(wide ? [p.podIP ?? '<none>', p.node ?? '<none>', p.netns ?? '<none>'] : [])]);
          return void console.log(table(rows));
        }
        if (kind === 'deployments') {
          const all: Array<{ cluster: string; namespace: string; name: string; replicas: number; ready: number }> = [];
          const { AppsV1Api } = await import('@kubernetes/client-node');
          for (const c of clusters) {
            for (const d of (await labKubeConfig(state, c).makeApiClient(AppsV1Api).listDeploymentForAllNamespaces()).items) {
              all.push({ cluster: c.name, namespace: d.metadata!.namespace!, name: d.metadata!.name!, replicas: d.spec?.replicas ?? 1, ready: d.status?.readyReplicas ?? 0 });
            }
          }
          if (o.output === 'json') return void console.log(JSON.stringify(all, null, 2));
          if (!all.length) return void console.log('no deployments');
          const rows = [['CLUSTER', 'NAMESPACE', 'NAME', 'READY']];
          for (const d of all) rows.push([d.cluster, d.namespace, d.name, `${d.ready}/${d.replicas}`]);
          return void console.log(table(rows));
        }
        const svcs: Array<{ cluster: string; service: Service }> = [];
        const { CoreV1Api } = await import('@kubernetes/client-node');
        const { fromKubernetes } = await import('../sources/kubernetes/convert.ts');
        for (const c of clusters) {
          for (const raw of (await labKubeConfig(state, c).makeApiClient(CoreV1Api).listServiceForAllNamespaces()).items) {
            const conv = fromKubernetes('Service', JSON.parse(JSON.stringify(raw)));
            if ('object' in conv) svcs.push({ cluster: c.name, service: conv.object });
          }
        }
        if (o.output === 'json') {
          return void console.log(JSON.stringify(svcs.map(({ cluster, service }) => ({ cluster, ...service })), null, 2));
        }
        if (!svcs.length) return void console.log('no services');
        const rows = [['CLUSTER', 'NAMESPACE', 'NAME', 'TYPE', 'CLUSTER-IP', 'PORT(S)', 'GLOBAL', ...(wide ? ['SELECTOR'] : [])]];
        for (const { cluster, service: s } of svcs) {
          rows.push([
            cluster,
            s.metadata.namespace,
            s.metadata.name,
            s.spec.type,
            s.spec.clusterIP ?? '<none>',
            s.spec.ports.map((p) => `${p.port}/${p.protocol}`).join(',') || '<none>',
            (s.metadata.annotations['service.cilium.io/global'] ?? 'false').toLowerCase() === 'true' ? 'yes' : 'no',
            ...(wide ? [Object.entries(s.spec.selector ?? {}).map(([k, v]) => `${k}=${v}`).join(',') || '<none>'] : []),
          ]);
        }
        console.log(table(rows));
      }),
    );

  nameOption(
    lab
      .command('exec')
      .description("run a command inside a pod's network namespace (its exit code is passed through)")
      .argument('<pod>', 'pod name or namespace/name')
      .argument('<command...>', 'the command, after --')
      .option('--cluster <name>', 'cluster of the pod (needed when the name exists in several)')
      .option('-n, --namespace <ns>', 'namespace of the pod', 'default'),
  )
    .addHelpText('after', '\nExample:\n  clustermesh lab exec client --cluster cluster1 -- clustermesh lab workload client http://10.96.0.11:8080/ -n 20')
    .action(
      action(async (podRef: string, argv: string[], o: LabOpts & { cluster?: string; namespace: string }) => {
        const state = readLabState(o.lab);
        requireUp(state);
        const { rec } = await findPod(state, podRef, o.cluster, o.namespace);
        const binDir = `${state.dir ?? labDir(state.name)}/bin`;
        // In the node's cgroup, like the pod's own processes (socket LB applies), when the lab made one.
        const nodeNs = state.nodes.find((n) => n.cluster === rec.cluster && n.name === rec.node)?.netns;
        const cgroup = nodeNs !== undefined ? nodeCgroupPath(nodeNs, { mount: false }) : undefined;
        const [cmd, ...args] = inCgroup(cgroup !== undefined && existsSync(cgroup) ? cgroup : undefined, ['ip', 'netns', 'exec', rec.netns, ...argv]);
        const child = spawn(cmd!, args, {
          stdio: 'inherit',
          env: { ...process.env, PATH: `${binDir}:${process.env.PATH ?? '/usr/bin:/bin'}`, CLUSTERMESH_CLUSTER: rec.cluster, CLUSTERMESH_NODE: rec.node, CLUSTERMESH_POD: rec.name },
        });
        return await new Promise<number>((resolve) => {
          child.once('error', (err) => {
            console.error(`error: cannot run ${argv[0]}: ${err.message}`);
            resolve(127);
          });
          child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 + 15 : 1)));
        });
      }),
    );

  nameOption(
    lab
      .command('run')
      .description(
        "run a command on the lab's workstation: the router namespace, which reaches every cluster's underlay (nodes, load balancer addresses) and, in every lab but one of --direct, " +
          "every cluster's Kubernetes API at the address of the lab's kubeconfig (KUBECONFIG is set); its exit code is passed through. What a user's machine is to real clusters.",
      )
      .argument('<command...>', 'the command, after --'),
  )
    .addHelpText('after', '\nExample:\n  clustermesh lab run --lab demo -- clustermesh connect --context cluster1 --destination-context cluster2\n  clustermesh lab run -- kubectl --context cluster2 -n clustermesh-system get svc')
    .action(
      action(async (argv: string[], o: LabOpts) => {
        const state = readLabState(o.lab);
        requireUp(state);
        const binDir = `${state.dir ?? labDir(state.name)}/bin`;
        const child = spawn('ip', ['netns', 'exec', state.router.netns, ...argv], {
          stdio: 'inherit',
          env: { ...process.env, PATH: `${binDir}:${process.env.PATH ?? '/usr/bin:/bin'}`, ...(state.kubeconfig ? { KUBECONFIG: state.kubeconfig } : {}) },
        });
        return await new Promise<number>((resolve) => {
          child.once('error', (err) => {
            console.error(`error: cannot run ${argv[0]}: ${err.message}`);
            resolve(127);
          });
          child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 + 15 : 1)));
        });
      }),
    );

  nameOption(
    lab
      .command('logs')
      .description("print a log: a pod's container, node/NAME (agent), kubelet/NAME, apiserver, kube-apiserver (the Kubernetes API and the lab's controllers), etcd (the mesh's), kube-etcd (the Kubernetes API's) or prometheus (lab up --prometheus)")
      .argument('<what>', 'POD | namespace/POD | node/NAME | kubelet/NAME | apiserver | kube-apiserver | etcd | kube-etcd | prometheus')
      .option('--cluster <name>', 'cluster (default: the first; for pods: where the pod is)')
      .option('-n, --namespace <ns>', 'namespace of the pod', 'default')
      .option('-c, --container <name>', 'container of the pod (default: the first)'),
  )
    .addHelpText('after', '\nExample:\n  clustermesh lab logs echo-1a2b3 --cluster cluster2\n  clustermesh lab logs node/node1 --cluster cluster1\n  clustermesh lab logs apiserver --cluster cluster2')
    .action(
      action(async (what: string, o: LabOpts & { cluster?: string; namespace: string; container?: string }) => {
        const state = readLabState(o.lab);
        let file: string | undefined;
        const nodeRef = /^(node|kubelet)\/(.+)$/.exec(what);
        if (nodeRef) {
          const c = clusterOf(state, o.cluster);
          const n = state.nodes.find((x) => x.cluster === c.name && x.name === nodeRef[2]);
          if (!n) throw new Error(`no node ${nodeRef[2]} in ${c.name}; its nodes: ${state.nodes.filter((x) => x.cluster === c.name).map((x) => x.name).join(', ')}`);
          file = nodeRef[1] === 'node' ? (state.install ? installedContainer(state, c.name, 'agent', n.name)?.logFile : n.logFile) : n.kubelet?.logFile;
        } else if (what === 'apiserver') file = state.install ? installedContainer(state, clusterOf(state, o.cluster).name, 'apiserver')?.logFile : clusterOf(state, o.cluster).apiserver.logFile;
        else if (what === 'kube-apiserver') file = clusterOf(state, o.cluster).kubeApi?.logFile;
        else if (what === 'etcd') file = clusterOf(state, o.cluster).etcd.logFile;
        // A lab of an older clustermesh kept the Kubernetes objects in its one etcd.
        else if (what === 'kube-etcd') file = (clusterOf(state, o.cluster).kubeEtcd ?? clusterOf(state, o.cluster).etcd).logFile;
        else if (what === 'prometheus') {
          if (!state.prometheus) throw new Error(`lab ${state.name} runs no prometheus (start a lab with: clustermesh lab up --prometheus)`);
          file = state.prometheus.logFile;
        } else {
          const { rec } = await findPod(state, what, o.cluster, o.namespace);
          const cont = o.container ? rec.containers.find((c) => c.name === o.container) : rec.containers[0];
          if (!cont) throw new Error(`pod ${rec.namespace}/${rec.name} has no container ${o.container ?? ''}; its containers: ${rec.containers.map((c) => c.name).join(', ') || '(none started)'}`);
          file = cont.logFile;
        }
        if (!file || !existsSync(file)) throw new Error(`no log for ${what} yet${file ? ` (${file})` : ''}`);
        await new Promise<void>((resolve, reject) => {
          const s = createReadStream(file);
          s.on('error', reject);
          s.on('end', () => resolve());
          s.pipe(process.stdout, { end: false });
        });
      }),
    );

  // ---- runtime, sweep, workloads ----------------------------------------
  lab
    .command('kubelet', { hidden: true })
    .description("the lab's node runtime (started by `lab up`, one per node)")
    .requiredOption('--config <file>', 'kubelet.json written by lab up')
    .action(async (o: { config: string }) => {
      await (await import('../lab/kubelet.ts')).runKubelet(o.config);
    });

  lab
    .command('kube-api-endpoint', { hidden: true })
    .description("a node-local Kubernetes API endpoint: 127.0.0.1:6443 in this network namespace, piped to the cluster's kube-apiserver socket (started by `lab up`, one per node and control plane)")
    .requiredOption('--socket <path>', "the kube-apiserver's TLS unix socket")
    .option('--listen <host:port>', 'where to listen', '127.0.0.1:6443')
    .option('--ready-file <file>', 'written once listening')
    .action(async (o: { socket: string; listen: string; readyFile?: string }) => {
      await (await import('../lab/kube-api-endpoint.ts')).runKubeApiEndpoint(o);
    });

  lab
    .command('kube-apiserver', { hidden: true })
    .description("a cluster's Kubernetes API server and the lab's controllers (started by `lab up`, one per cluster)")
    .requiredOption('--config <file>', 'kube-apiserver.json written by lab up')
    .action(async (o: { config: string }) => {
      await (await import('../lab/kube-apiserver.ts')).runKubeApiServer(o.config);
    });

  lab
    .command('forward', { hidden: true })
    .description('relay connections on the listening socket fd 3 to --to (started by `lab up --prometheus` in the router namespace)')
    .requiredOption('--to <host:port>', 'where to relay to, in this namespace')
    .action(async (o: { to: string }) => {
      (await import('../lab/prometheus.ts')).runForwarder(o.to);
      await new Promise(() => undefined);
    });

  lab
    .command('prometheus-sd', { hidden: true })
    .description("Prometheus HTTP service discovery of an installed lab's agent and apiserver pods, listed from each cluster's Kubernetes API per request (started by `lab up --prometheus` in the router namespace)")
    .requiredOption('--kubeconfig <file>', "the lab's kubeconfig")
    .requiredOption('--namespace <ns>', "the install's namespace")
    .requiredOption('--context <name>', 'a cluster (repeat for each)', (v: string, prev: string[] = []) => [...prev, v])
    .requiredOption('--listen <host:port>', 'where to listen, in this namespace')
    .option('--ready-file <file>', 'written once listening')
    .action(async (o: { kubeconfig: string; namespace: string; context: string[]; listen: string; readyFile?: string }) => {
      await (await import('../lab/prometheus-sd.ts')).runPrometheusSd({ ...o, contexts: o.context });
      await new Promise(() => undefined);
    });

  lab
    .command('sweep')
    .description('remove the namespaces of topologies whose creating process died (a crashed test or demo); running ones are left alone')
    .addHelpText('after', '\nExample:\n  clustermesh lab sweep\n')
    .action(async () => {
      const swept = await sweepOrphanedTopologies();
      console.log(swept.length ? `swept: ${swept.join(' ')}` : 'nothing to sweep');
    });
  const workload = lab.command('workload').description('built-in workloads that pods of the lab run');
  workload
    .command('echo')
    .description('HTTP server answering with its cluster, node and pod name; GET /bytes?n=N sends N bytes with their SHA-256 in x-sha256')
    .option('--port <port>', 'TCP port to listen on', checked(parsePort), ECHO_DEFAULTS.port)
    .option('--cluster <name>', 'cluster name to report', ECHO_DEFAULTS.cluster)
    .option('--node <name>', 'node name to report', ECHO_DEFAULTS.node)
    .option('--pod <name>', 'pod name to report', ECHO_DEFAULTS.pod)
    .addHelpText(
      'after',
      '\nThe server is a small C program (dist/lab/clustermesh-echo, built by ./scripts/setup.sh); lab pods run it directly. ' +
        'HTTP/1.1 with keep-alive; SIGTERM finishes the answers in flight, then exits 0.\n' +
        '\nExample (a container command of a lab pod):\n  command: ["clustermesh", "lab", "workload", "echo", "--port", "8080"]',
    )
    .action((o: EchoOptions) => runEcho(o));
  workload
    .command('client')
    .description('make N requests to a URL and tally which cluster/node/pod answered')
    .argument('<url>', 'URL to GET, e.g. http://10.102.1.11:8080/')
    .option('-n, --count <n>', 'number of requests', checked(parseCount), CLIENT_DEFAULTS.count)
    .option('--timeout <ms>', 'per-request timeout in ms', checked(parseCount), CLIENT_DEFAULTS.timeout)
    .option('--json', 'print the tally as one JSON object')
    .addHelpText('after', '\nExample:\n  clustermesh lab exec client -- clustermesh lab workload client http://rebel-base.default.svc.cluster.local:8080/ -n 20')
    .action((url: string, o: ClientOptions) => runClient(url, o));
  workload.addCommand(dnsWorkloadCommand());
  workload.addCommand(netpolWorkloadCommand());
  return lab;
}


