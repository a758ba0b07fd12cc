// `lab up` (its default, installed lab): the lab's clusters are bare Kubernetes-shaped clusters
// (API, kubelets, DNS) and the mesh is put on them the way a user puts it on
// real clusters: `clustermesh install` and `clustermesh connect` by kube
// context, each run as its own process and printed. The agent DaemonSet and
// the apiserver Deployment then run as lab-kubelet pods from the very
// manifests a real cluster gets (src/install/manifests.ts); no lab agent or
// apiserver process exists.
//
// What the lab adds for that (the kubelet's side, docs/lab-kubelet.md):
// - each node's host filesystem (<node dir>/root) holds /opt/cni/bin and
//   /etc/cni/net.d; pods wait with NetworkNotReady until the installed agent
//   writes its conflist there;
// - the install's image is mapped to this checkout's files (the CNI plugin
//   executable the init container copies), every other file of a container is
//   the machine's (etcd, curl, the `clustermesh` launcher on the pod's PATH);
// - the plugin sees the node's /var/run/clustermesh (the agent socket);
// - `type: LoadBalancer` Services get an address on the cluster's underlay
//   (src/lab/cloud-lb.ts), which is how each cluster's etcd is reached by the
//   others (`install --service-type LoadBalancer`).
//
// `lab up --routing native`, `--socket-lb` and `--prometheus` become install's
// flags (labInstallFlags): native routing with the lab's routed ranges, socket
// LB at LAB_SOCKET_LB_CGROUP (each node's own cgroup), and the metrics ports,
// whose pods the lab's Prometheus finds through `lab prometheus-sd`.
import { spawn } from 'node:child_process';
import type { KubeConfig, KubernetesListObject, KubernetesObject, V1DaemonSet, V1Deployment, V1Service } from '@kubernetes/client-node';
import { existsSync, mkdirSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { AgentClient } from '../agent/client.ts';
import { CNI_PLUGIN_PATH } from '../cni/main.ts';
import type { RoutingMode, TunnelEncap } from '../datapath/maps/config.ts';
import { AGENT_METRICS_PORT, APISERVER_METRICS_PORT, DEFAULT_NAMESPACE } from '../install/settings.ts';
import { NAMES, PATHS } from '../install/manifests.ts';
import { pollUntil, PollTimeoutError } from '../util/poll.ts';
import { nodeCgroupPath } from './cgroup.ts';
import { routingSettings } from './topology.ts';
import { childEnv } from './process.ts';
import type { KubeletConfig } from './kubelet-config.ts';
import type { LabState } from './state.ts';

/** The image reference `lab up` gives `clustermesh install`; the kubelets map it to this checkout. */
export const LAB_INSTALL_IMAGE = 'clustermesh.lab/clustermesh:dev';
/** Where the image holds the CNI plugin executable (the agent pod's install-cni-plugin init container copies it). */
export const IMAGE_CNI_PLUGIN = '/usr/local/lib/clustermesh/clustermesh-cni';

/** A node's host filesystem (the kubelet's hostRoot default). */
export function nodeHostRoot(nodeDir: string): string {
  return join(nodeDir, 'root');
}

/** The kubelet config fields of a node of an installed lab: CNI from the host filesystem, the install's image. */
export function installedKubeletFields(nodeDir: string): Pick<KubeletConfig, 'netconf' | 'cniConfDir' | 'cniPath' | 'images' | 'cniHostPaths' | 'hostRoot'> {
  const root = nodeHostRoot(nodeDir);
  return {
    hostRoot: root,
    // Unused with cniConfDir (the conflist the agent writes is the network config).
    netconf: {},
    cniConfDir: join(root, 'etc', 'cni', 'net.d'),
    cniPath: join(root, 'opt', 'cni', 'bin'),
    images: { [LAB_INSTALL_IMAGE]: { [IMAGE_CNI_PLUGIN]: CNI_PLUGIN_PATH } },
    cniHostPaths: [PATHS.state],
  };
}

/** Where an installed agent's files are on the machine (its hostPath volumes under the node's host filesystem). */
export function installedAgentPaths(nodeDir: string, cluster: string, node: string): { socket: string; stateDir: string; pinDir: string } {
  const root = nodeHostRoot(nodeDir);
  // The manifests' agent config: stateDir <state>/agent; pinDir the agent's default, <bpffs>/<cluster>-<node>.
  const stateDir = join(root, PATHS.state, 'agent');
  return { stateDir, socket: join(stateDir, 'agent.sock'), pinDir: join(root, PATHS.bpffs, `${cluster}-${node}`) };
}

export interface InstallMeshOptions {
  state: LabState;
  /** How `clustermesh` is run: [node, bin/clustermesh.js]. */
  cli: string[];
  progress: (line: string) => void;
  /** Bound for every wait (rollouts, connections); default 240 s. */
  timeoutMs?: number;
  /** Each cluster's routing, in cluster order (lab up --routing): native ones are installed with --routing-mode native and the lab's routed ranges. */
  routing?: readonly RoutingMode[];
  /** Who writes the tunnel's headers in every cluster (the topology's tunnelEncap): install --tunnel-encap when not the default. */
  tunnelEncap?: TunnelEncap;
  /** install --socket-lb, at each node's own cgroup (lab up --socket-lb). */
  socketLB?: boolean;
  /** install --agent-metrics-port/--apiserver-metrics-port (lab up --prometheus scrapes them). */
  metrics?: boolean;
}

/**
 * Where `lab up --socket-lb` tells install the host's cgroup v2
 * mount is (--socket-lb-cgroup), as Cilium mounts one at /run/cilium/cgroupv2:
 * on each lab node's own host filesystem this path is its node's cgroup
 * (src/lab/cgroup.ts), so from the node the cgroup v2 root is its own cgroup,
 * where its kubelet runs the pods; never the machine's root cgroup (the
 * install's default, /sys/fs/cgroup, would be the machine's: the kubelet
 * shares /sys).
 */
export const LAB_SOCKET_LB_CGROUP = '/run/clustermesh/cgroupv2';

/** Each node's LAB_SOCKET_LB_CGROUP: a link to its cgroup. Throws naming a node without one (no cgroup v2 here). */
function linkNodeCgroups(state: LabState): void {
  for (const n of state.nodes) {
    const cg = nodeCgroupPath(n.netns, { mount: false });
    if (cg === undefined || !existsSync(cg)) throw new Error(`--socket-lb: node ${n.cluster}/${n.name} has no cgroup of its own (this machine has no cgroup v2 the lab could mount at /run/clustermesh/cgroup2)`);
    if (n.dir === undefined) throw new Error(`--socket-lb: node ${n.cluster}/${n.name} has no directory in the lab state`);
    const link = join(nodeHostRoot(n.dir), LAB_SOCKET_LB_CGROUP);
    mkdirSync(dirname(link), { recursive: true });
    rmSync(link, { force: true });
    symlinkSync(cg, link);
  }
}

/** The install flags of cluster number `index` (1-based) beyond name, ID and image. */
export function labInstallFlags(o: Pick<InstallMeshOptions, 'routing' | 'tunnelEncap' | 'socketLB' | 'metrics'>, index: number): string[] {
  const r = routingSettings({ routing: [...(o.routing ?? [])], ...(o.tunnelEncap ? { tunnelEncap: o.tunnelEncap } : {}) }, index);
  return [
    ...(r.routingMode === 'native' ? ['--routing-mode', 'native', ...r.nativeRoutingCIDRs!.flatMap((c) => ['--native-routing-cidr', c])] : []),
    ...(r.tunnelEncap ? ['--tunnel-encap', r.tunnelEncap] : []),
    ...(o.socketLB ? ['--socket-lb', '--socket-lb-cgroup', LAB_SOCKET_LB_CGROUP] : []),
    ...(o.metrics ? ['--agent-metrics-port', String(AGENT_METRICS_PORT), '--apiserver-metrics-port', String(APISERVER_METRICS_PORT)] : []),
  ];
}

interface Ran {
  code: number | null;
  out: string;
}

/**
 * Runs one `clustermesh …` command as its own process on the lab's workstation
 * (`clustermesh lab run`: the router namespace, which reaches every cluster's
 * API and load balancer addresses).
 */
async function cm(o: InstallMeshOptions, args: string[]): Promise<Ran> {
  const child = spawn('ip', ['netns', 'exec', o.state.router.netns, ...o.cli, ...args], { env: { ...childEnv(), KUBECONFIG: o.state.kubeconfig! }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', resolve);
  });
  return { code, out };
}

function show(o: InstallMeshOptions, args: string[], r: Ran): void {
  o.progress(`      $ clustermesh lab run${o.state.name === 'default' ? '' : ` --lab ${o.state.name}`} -- clustermesh ${args.join(' ')}`);
  for (const l of r.out.trimEnd().split('\n')) if (l) o.progress(`        ${l}`);
}

/**
 * Installs the mesh on every cluster of the lab and connects every pair, as
 * `clustermesh install` / `connect` by context; waits until every agent is
 * ready and sees every other cluster. Throws naming the command or the wait
 * that failed.
 */
export async function installMesh(o: InstallMeshOptions): Promise<void> {
  // Loaded here: `clustermesh lab` commands that never install should not pay for the Kubernetes client.
  const { AppsV1Api, CoreV1Api } = await import('@kubernetes/client-node');
  const { loadKubeConfig } = await import('../install/apply.ts');
  const timeoutMs = o.timeoutMs ?? 240_000;
  const { state } = o;
  // 1. install, every cluster at once (each command's lines printed together).
  if (o.socketLB) linkNodeCgroups(state);
  const installs = state.clusters.map((c, i) => ['install', '--context', c.name, '--cluster-name', c.name, '--cluster-id', String(c.id), '--service-type', 'LoadBalancer', '--image', LAB_INSTALL_IMAGE, ...labInstallFlags(o, i + 1)]);
  const results = await Promise.all(installs.map((args) => cm(o, args)));
  for (const [i, args] of installs.entries()) {
    show(o, args, results[i]!);
    if (results[i]!.code !== 0) throw new Error(`clustermesh ${args.join(' ')} exited ${results[i]!.code}: ${results[i]!.out.trim().split('\n').slice(-3).join(' | ')}`);
  }

  // 2. what connect needs of each cluster (its apiserver available, its Service with a load balancer address)
  //    and every node's agent ready, waited for together: connect runs as soon as the apiservers are there,
  //    while the agents still start (they pick the remote clusters up from their Secret whenever it changes).
  //    Watched, not polled: one list+watch per kind and cluster (a poll every 250 ms was some 90 GETs per cluster
  //    and wait, each a request the cluster's API server answers).
  const kcs = new Map(state.clusters.map((c) => [c.name, loadKubeConfig({ kubeconfig: state.kubeconfig!, context: c.name })] as const));
  const ns = DEFAULT_NAMESPACE;
  const agentsReady = Promise.all(
    state.clusters.map(async (c) => {
      const kc = kcs.get(c.name)!;
      const apps = kc.makeApiClient(AppsV1Api);
      const nodes = state.nodes.filter((n) => n.cluster === c.name).length;
      await watchUntil<V1DaemonSet>(kc, `/apis/apps/v1/namespaces/${ns}/daemonsets`, () => apps.listNamespacedDaemonSet({ namespace: ns }), NAMES.agent, (ds) => {
        const st = ds?.status;
        return (st?.desiredNumberScheduled === nodes && st.numberReady === nodes) || `${st?.numberReady ?? 0}/${st?.desiredNumberScheduled ?? 0} ready`;
      }, { timeoutMs, describe: `${c.name}: daemonset/${NAMES.agent} ready on its ${nodes} nodes` });
    }),
  ).then(() => o.progress(`      every agent pod ready (${state.nodes.length})`));
  const connected = (async () => {
    await Promise.all(
      state.clusters.map(async (c) => {
        const kc = kcs.get(c.name)!;
        const apps = kc.makeApiClient(AppsV1Api);
        const core = kc.makeApiClient(CoreV1Api);
        await Promise.all([
          watchUntil<V1Deployment>(kc, `/apis/apps/v1/namespaces/${ns}/deployments`, () => apps.listNamespacedDeployment({ namespace: ns }), NAMES.apiserver, (d) => {
            const available = d?.status?.availableReplicas ?? 0;
            return available >= 1 || `${available} available`;
          }, { timeoutMs, describe: `${c.name}: deployment/${NAMES.apiserver} available` }),
          watchUntil<V1Service>(kc, `/api/v1/namespaces/${ns}/services`, () => core.listNamespacedService({ namespace: ns }), NAMES.apiserver, (svc) => {
            return (svc?.status?.loadBalancer?.ingress ?? []).length > 0 || 'no load balancer address';
          }, { timeoutMs, describe: `${c.name}: service/${NAMES.apiserver} with a load balancer address` }),
        ]);
      }),
    );
    o.progress(`      every cluster's apiserver available, its Service with a load balancer address`);

    // 3. connect every pair: two clusters as a pair, more with one `connect --connection-mode mesh` (every Secret written once).
    const connects =
      state.clusters.length > 2
        ? [['connect', '--connection-mode', 'mesh', ...state.clusters.flatMap((c) => ['--context', c.name])]]
        : state.clusters.flatMap((a, i) => state.clusters.slice(i + 1).map((b) => ['connect', '--context', a.name, '--destination-context', b.name]));
    for (const args of connects) {
      let r: Ran = { code: null, out: '' };
      // The apiserver may not have written its cluster-config yet (connect checks it): retry while connect refuses.
      await pollUntil(
        async ({ notYet }) => {
          r = await cm(o, args);
          return r.code === 0 || notYet(r.out.trim().split('\n').slice(-2).join(' | '));
        },
        { timeoutMs, intervalMs: 500, describe: `clustermesh ${args.join(' ')}` },
      );
      show(o, args, r);
    }
  })();
  await Promise.all([agentsReady, connected]);

  // 4. every agent sees every other cluster, connected and ready.
  await Promise.all(
    state.nodes.map(async (n) => {
      const api = new AgentClient(n.socket, { timeoutMs: 10_000 });
      const others = state.clusters.filter((c) => c.name !== n.cluster).map((c) => c.name);
      try {
        await pollUntil(
          async ({ notYet }) => {
            const st = await api.status();
            const missing = others.filter((name) => !st.remoteClusters.some((r) => r.name === name && r.connected && r.ready));
            return missing.length === 0 || notYet(`not yet: ${missing.join(', ')}`);
          },
          { timeoutMs, intervalMs: 250, describe: `agent ${n.cluster}/${n.name} connected to ${others.join(', ')}` },
        );
      } finally {
        api.close();
      }
    }),
  );
}

/**
 * Resolves when `check` holds for the object `name` of the list+watch at
 * `path` (`check` gets undefined while it does not exist, and returns true or
 * why not yet). A failed watch starts again after a pause. Throws a
 * PollTimeoutError with the last reason after `timeoutMs`.
 */
export async function watchUntil<T extends KubernetesObject>(
  kc: KubeConfig,
  path: string,
  list: () => Promise<KubernetesListObject<T>>,
  name: string,
  check: (o: T | undefined) => true | string,
  o: { timeoutMs: number; describe: string },
): Promise<void> {
  const { makeInformer } = await import('@kubernetes/client-node');
  const informer = makeInformer<T>(kc, path, list);
  let last: unknown = 'not there yet';
  let done = false;
  let timer: NodeJS.Timeout | undefined;
  let restart: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      const look = (obj: T | undefined): void => {
        if (done) return;
        const r = check(obj);
        if (r === true) {
          done = true;
          resolve();
        } else last = r;
      };
      informer.on('add', (x) => x.metadata?.name === name && look(x));
      informer.on('update', (x) => x.metadata?.name === name && look(x));
      informer.on('delete', (x) => x.metadata?.name === name && look(undefined));
      informer.on('error', (err: unknown) => {
        last = err;
        if (!done) restart = setTimeout(() => void informer.start().catch((e: unknown) => (last = e)), 500);
      });
      timer = setTimeout(() => {
        done = true;
        reject(new PollTimeoutError(o.describe, o.timeoutMs, last));
      }, o.timeoutMs);
      informer.start().catch((err: unknown) => {
        last = err;
        restart = setTimeout(() => void informer.start().catch((e: unknown) => (last = e)), 500);
      });
    });
  } finally {
    done = true;
    clearTimeout(timer);
    clearTimeout(restart);
    await informer.stop().catch(() => undefined);
  }
}
