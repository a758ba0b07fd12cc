// The lab's node runtime ("kubelet"): one process per node, in the node's
// network namespace (entered with nsenter, so it shares the machine's mount
// namespace and the pod namespaces it adds are everyone's). It watches the
// cluster's Kubernetes API for Pods scheduled to its node and for each one:
//   1. records the pod (kubelet-config.ts), adds the pod's network namespace and
//      /etc/netns/<ns>/resolv.conf (iproute2 binds it over /etc/resolv.conf);
//   2. calls the CNI plugin exactly as a kubelet does: the executable named by
//      the config's `type` in CNI_PATH, CNI_COMMAND=ADD, CNI_CONTAINERID,
//      CNI_NETNS, CNI_IFNAME, CNI_ARGS, the network config on stdin, the result
//      JSON on stdout;
//   3. starts each container's command inside the namespace (`ip netns exec`,
//      own session, log file) and the node's cgroup (socket-level load
//      balancing is attached there), restarting it with backoff when it exits;
//   4. writes the Pod's status back: podIP, phase, and Ready when every
//      process runs and every declared TCP port accepts a connection.
// A Pod that is gone from the API (or replaced: another uid) is torn down:
// processes stopped (by pid), CNI DEL, namespace and resolv.conf removed.
//
// Where pods come from and where their status goes (a PodFeed): the
// cluster's Kubernetes API (`kubeconfig` in its config: the node-local
// endpoint) as a real kubelet uses it: it registers its Node (InternalIP, spec.podCIDRs, Ready) when
// absent, watches the Pods with fieldSelector spec.nodeName=<node>, and
// writes status (phase, podIP, hostIP, the Ready condition) through the pods'
// status subresource (a JSON merge patch).
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, realpathSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { connect } from 'node:net';
import { dirname, join, posix } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig, type V1ConfigMap, type V1Container, type V1Pod, type V1Probe, type V1Secret, type V1ServiceAccount } from '@kubernetes/client-node';
import { parseObject, type Pod } from '../model/index.ts';
import { reuseConnections } from '../sources/kubernetes/http.ts';
import { loadKubeConnection, SERVICE_ACCOUNT_DIR } from '../sources/kubernetes/kubeconfig.ts';
import { NODE_LOCAL_API_HOST, NODE_LOCAL_API_PORT } from './kube-api-endpoint.ts';
import { apiCode, apiMessage, watchKind } from './controllers/runtime.ts';
import { recordThenRelease } from '../util/held-start.ts';
import { run } from './exec.ts';
import { childEnv } from './process.ts';
import { processStartTime, sameProcessAlive } from './state.ts';
import {
  chooseCniConf,
  containerArgv,
  DEFAULT_SHARED_HOST_PATHS,
  mapHostPath,
  podstartArgv,
  netconfOfFile,
  PodConfigError,
  projectedFiles,
  resolveEnv,
  type ContainerMount,
  type ProjectedFile,
} from './pod-spec.ts';
import {
  kubeletConfigSchema,
  mountsUnder,
  readPodRecords,
  removePodRecord,
  writePodRecord,
  type KubeletConfig,
  type PodRecord,
} from './kubelet-config.ts';

const log = (msg: string, extra: Record<string, unknown> = {}): void => {
  process.stdout.write(JSON.stringify({ time: new Date().toISOString(), msg, ...extra }) + '\n');
};

/** Outputs of one plugin call. */
interface PluginResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function podNetnsName(prefix: string, namespace: string, name: string): string {
  return `${prefix}_${namespace}_${name}`;
}

/** Pods starting at once per node (netns, CNI ADD, first container start until it answers): more only compete for the CPU. */
const MAX_PARALLEL_STARTS = 8;
/** How long a starting pod holds its start slot waiting for its ports to answer. */
const START_READY_WAIT_MS = 10_000;
/** A pod found ready with its status written, and unchanged since, is probed again only after this long. */
const READY_RECHECK_MS = 10_000;

/** The CNI container ID of a pod: its uid (what a runtime's sandbox id is for). */
export const podContainerID = (uid: string): string => `pod-${uid}`;

/** A pod of this node, and how its status is written. */
interface FedPod {
  pod: Pod;
  /** The Pod as the API has it (volumes, env, init containers, probes, hostNetwork). */
  api: V1Pod;
  /** Changes whenever the pod object does (store modRevision, API resourceVersion). */
  revision: string;
  /** Merge-patches the pod's status (the whole `status` the kubelet computed). */
  writeStatus(status: Record<string, unknown>): Promise<void>;
}

/** Where a kubelet's pods come from. start() resolves once the first list is in; onChange: look again. */
interface PodFeed {
  start(onChange: () => void): Promise<void>;
  list(): Promise<FedPod[]>;
  configMap(namespace: string, name: string): V1ConfigMap | undefined;
  secret(namespace: string, name: string): V1Secret | undefined;
  /** The ServiceAccount, read from the API (undefined: there is none). */
  serviceAccount(namespace: string, name: string): Promise<V1ServiceAccount | undefined>;
  /** A token of the ServiceAccount bound to the pod (TokenRequest); PodConfigError when the ServiceAccount does not exist. */
  requestToken(namespace: string, serviceAccount: string, pod: { name: string; uid: string }, seconds: number): Promise<string>;
  stop(): Promise<void>;
}

/** A Pod of the API as the model's Pod (what the kubelet reads: metadata, containers with command, args and ports, status). */
export function podFromApi(p: V1Pod): Pod {
  const raw = JSON.parse(JSON.stringify(p)) as { metadata?: Record<string, unknown>; spec?: Record<string, unknown>; status?: Record<string, unknown> };
  const spec = raw.spec ?? {};
  const status = raw.status ?? {};
  const m = raw.metadata ?? {};
  return parseObject(
    'Pod',
    {
      kind: 'Pod',
      metadata: { name: m.name, namespace: m.namespace, uid: m.uid, labels: m.labels ?? {}, annotations: m.annotations ?? {} },
      spec: {
        nodeName: spec.nodeName,
        ...(spec.serviceAccountName ? { serviceAccountName: spec.serviceAccountName } : {}),
        containers: ((spec.containers ?? []) as Array<Record<string, unknown>>).map((c) => ({
          name: c.name,
          image: c.image,
          command: c.command,
          args: c.args,
          ports: ((c.ports ?? []) as Array<Record<string, unknown>>).map((x) => ({ name: x.name, containerPort: x.containerPort, protocol: x.protocol ?? 'TCP' })),
        })),
      },
      status: {
        ...(status.phase ? { phase: status.phase } : {}),
        ...(status.podIP ? { podIP: status.podIP } : {}),
        conditions: ((status.conditions ?? []) as Array<Record<string, unknown>>).map((c) => ({ type: c.type, status: c.status })),
      },
    },
    `pod ${String(m.namespace)}/${String(m.name)} of the API`,
  );
}

/** The cluster's Kubernetes API: this node's Pods by field selector, status through the status subresource. */
class ApiPodFeed implements PodFeed {
  private readonly core: CoreV1Api;
  private informer: ReturnType<typeof watchKind<V1Pod>> | undefined;
  private cache: (() => V1Pod[]) | undefined;
  /** ConfigMaps and Secrets (for volumes and env), by namespace/name, kept current by informers. */
  private readonly configMaps = new Map<string, V1ConfigMap>();
  private readonly secrets = new Map<string, V1Secret>();
  /** ServiceAccounts (whether a pod's token is mounted), by namespace/name: a pod's start reads them here, not from the API. */
  private readonly serviceAccounts = new Map<string, V1ServiceAccount>();
  private objectInformers: Array<{ start: () => Promise<void>; stop: () => Promise<void> }> = [];
  private nodeTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly cfg: KubeletConfig,
    private readonly kc: KubeConfig,
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
  }

  async start(onChange: () => void): Promise<void> {
    await this.stop(); // a start that failed half way (the API not reachable yet) is tried again from scratch
    await this.registerNode();
    // Re-registered when deleted (as a kubelet does), checked every 10 s.
    this.nodeTimer = setInterval(() => void this.registerNode().catch((err: unknown) => log('node registration failed', { error: apiMessage(err) })), 10_000);
    const fieldSelector = `spec.nodeName=${this.cfg.node}`;
    const pods = new Map<string, V1Pod>();
    this.cache = () => [...pods.values()];
    this.informer = watchKind<V1Pod>(
      this.kc,
      `/api/v1/pods?fieldSelector=${encodeURIComponent(fieldSelector)}`,
      () => this.core.listPodForAllNamespaces({ fieldSelector }),
      (p, deleted) => {
        const key = `${p.metadata?.namespace}/${p.metadata?.name}`;
        if (deleted) pods.delete(key);
        else pods.set(key, p);
        onChange();
      },
    );
    const keep = <T extends V1ConfigMap | V1Secret | V1ServiceAccount>(into: Map<string, T>) => (o: T, deleted: boolean) => {
      const key = `${o.metadata?.namespace}/${o.metadata?.name}`;
      if (deleted) into.delete(key);
      else into.set(key, o);
      onChange();
    };
    this.objectInformers = [
      watchKind<V1ConfigMap>(this.kc, '/api/v1/configmaps', () => this.core.listConfigMapForAllNamespaces(), keep(this.configMaps)),
      watchKind<V1Secret>(this.kc, '/api/v1/secrets', () => this.core.listSecretForAllNamespaces(), keep(this.secrets)),
      watchKind<V1ServiceAccount>(this.kc, '/api/v1/serviceaccounts', () => this.core.listServiceAccountForAllNamespaces(), keep(this.serviceAccounts)),
    ];
    await Promise.all(this.objectInformers.map((i) => i.start()));
    await this.informer.start();
  }

  configMap(namespace: string, name: string): V1ConfigMap | undefined {
    return this.configMaps.get(`${namespace}/${name}`);
  }

  secret(namespace: string, name: string): V1Secret | undefined {
    return this.secrets.get(`${namespace}/${name}`);
  }

  async serviceAccount(namespace: string, name: string): Promise<V1ServiceAccount | undefined> {
    // The informer's copy; one it has not seen (yet) is read from the API, which has the last word.
    const known = this.serviceAccounts.get(`${namespace}/${name}`);
    if (known) return known;
    try {
      return await this.core.readNamespacedServiceAccount({ namespace, name });
    } catch (err) {
      if (apiCode(err) === 404) return undefined;
      throw new Error(`serviceaccount ${namespace}/${name}: ${apiMessage(err)}`);
    }
  }

  async requestToken(namespace: string, serviceAccount: string, pod: { name: string; uid: string }, seconds: number): Promise<string> {
    try {
      const tr = await this.core.createNamespacedServiceAccountToken({
        namespace,
        name: serviceAccount,
        body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { audiences: [], expirationSeconds: seconds, boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: pod.name, uid: pod.uid } } },
      });
      if (!tr.status?.token) throw new Error('the TokenRequest came back without a token');
      return tr.status.token;
    } catch (err) {
      if (apiCode(err) === 404) throw new PodConfigError(`serviceaccount "${serviceAccount}" not found in namespace ${namespace} (its token is mounted at ${SERVICE_ACCOUNT_DIR})`);
      throw new Error(`token of serviceaccount ${namespace}/${serviceAccount}: ${apiMessage(err)}`);
    }
  }

  /** Creates this node's Node when absent and marks it Ready with its InternalIP and pod CIDR. */
  private async registerNode(): Promise<void> {
    const name = this.cfg.node;
    const podCIDR = this.cfg.podCIDR ?? String((this.cfg.netconf.ipam as { podCIDR?: string } | undefined)?.podCIDR ?? '');
    try {
      await this.core.readNode({ name });
      return;
    } catch (err) {
      if (apiCode(err) !== 404) throw err;
    }
    await this.core
      .createNode({
        body: {
          apiVersion: 'v1',
          kind: 'Node',
          metadata: { name, labels: { 'kubernetes.io/hostname': name, 'kubernetes.io/os': 'linux', 'topology.kubernetes.io/region': this.cfg.cluster } },
          spec: podCIDR ? { podCIDR, podCIDRs: [podCIDR] } : {},
        },
      })
      .catch((err: unknown) => {
        if (apiCode(err) !== 409) throw err;
      });
    const now = new Date().toISOString();
    await this.core.patchNodeStatus(
      {
        name,
        body: {
          status: {
            addresses: [...(this.cfg.nodeIP ? [{ type: 'InternalIP', address: this.cfg.nodeIP }] : []), { type: 'Hostname', address: name }],
            conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'the lab kubelet is running', lastHeartbeatTime: now, lastTransitionTime: now }],
          },
        },
      },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    log('node registered', { node: name, nodeIP: this.cfg.nodeIP, podCIDR });
  }

  async list(): Promise<FedPod[]> {
    const out: FedPod[] = [];
    const seen = new Set<V1Pod>();
    for (const p of this.cache?.() ?? []) {
      seen.add(p);
      // A pass runs on every event and every second: each object the informer holds is read once
      // (podFromApi validates it), not once per pass (200 pods: most of a kubelet's CPU).
      let f = this.fed.get(p);
      if (f === undefined) {
        let pod: Pod;
        try {
          pod = podFromApi(p);
        } catch (err) {
          log('pod not understood', { error: (err as Error).message });
          this.fed.set(p, null);
          continue;
        }
        f = pod.spec.nodeName === this.cfg.node ? this.fedPod(pod, p) : null;
        this.fed.set(p, f);
      }
      if (f) out.push(f);
    }
    for (const p of this.fed.keys()) if (!seen.has(p)) this.fed.delete(p);
    return out;
  }

  /** The informer's objects as FedPods (null: not understood, or not this node's), by object: an update is a new object. */
  private readonly fed = new Map<V1Pod, FedPod | null>();

  private fedPod(pod: Pod, p: V1Pod): FedPod {
    return {
      pod,
      api: p,
      revision: p.metadata?.resourceVersion ?? '',
      writeStatus: async (status) => {
        try {
          await this.core.patchNamespacedPodStatus({ namespace: pod.metadata.namespace, name: pod.metadata.name, body: { status } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
        } catch (err) {
          if (apiCode(err) !== 404) throw new Error(`status of pod ${pod.metadata.namespace}/${pod.metadata.name}: ${apiMessage(err)}`);
        }
      },
    };
  }

  async stop(): Promise<void> {
    if (this.nodeTimer) clearInterval(this.nodeTimer);
    await this.informer?.stop().catch(() => undefined);
    await Promise.all(this.objectInformers.map((i) => i.stop().catch(() => undefined)));
    this.objectInformers = [];
  }
}

/** The phase, pod IP and Ready condition of a status the kubelet wrote, as the model reads them back. */
function modelKey(s: Pod['status']): string {
  return JSON.stringify([s.phase, s.podIP ?? null, s.conditions.filter((c) => c.type === 'Ready').map((c) => [c.type, c.status])]);
}

const isHostNetwork = (p: V1Pod): boolean => p.spec?.hostNetwork === true;

/** The readiness probe's state of one container: consecutive results. */
interface ProbeState {
  ready: boolean;
  failures: number;
  successes: number;
  /** When an exec or httpGet probe last ran (ms): those are rate-limited (PROBE_MIN_INTERVAL_MS). */
  lastRunAt?: number;
}

/**
 * How often a probe runs at most while its container is not ready yet; once
 * it is, every periodSeconds, as a kubelet runs it. An exec probe starts
 * processes (nsenter and the command: 30-60 ms of CPU each here, e.g.
 * `sh -c 'curl … | grep …'`), an httpGet one request from this process.
 * Without the limit a starting pod was probed at every poll of its start
 * (50 ms) and every pass: the installed lab's apiserver and agent pods ran
 * some 90 exec probes in a 2x1 installed `lab up`. tcpSocket probes (a
 * connect) keep the fast polls.
 */
const PROBE_MIN_INTERVAL_MS = { exec: 1000, httpGet: 250 } as const;

export class Kubelet {
  private readonly feed: PodFeed;
  private readonly pods = new Map<string, PodRecord>();
  private readonly retryAt = new Map<string, { at: number; attempts: number }>();
  private readonly restartAt = new Map<string, number>();
  private readonly ready = new Map<string, boolean>();
  private running: Promise<void> | undefined;
  private readonly busy = new Set<string>();
  private readonly tasks = new Set<Promise<void>>();
  private again = false;
  /** uid → the pod revision at which the pod was last found ready with its status in place, and when. */
  private readonly settled = new Map<string, { revision: string; at: number }>();
  private starting = 0;
  private readonly startQueue: Array<() => void> = [];
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  /** uid → why the pod cannot start yet (network not ready, a missing ConfigMap, a hostPath of the wrong type). */
  private readonly waitingWhy = new Map<string, { reason: string; message: string }>();
  /** uid/container → why the container cannot start yet (CreateContainerConfigError). */
  private readonly containerWhy = new Map<string, string>();
  /** uid/volume → the content stamp of a ConfigMap or Secret volume as last written. */
  private readonly volumeStamp = new Map<string, string>();
  /** uid/container → readiness probe state. */
  private readonly probes = new Map<string, ProbeState>();
  /** uid → the status last written (timestamps aside). */
  private readonly written = new Map<string, string>();
  /** uid → when the pod's service-account token is due for a refresh (ms), and whether one is under way. */
  private readonly tokenDue = new Map<string, number>();
  private readonly tokenBusy = new Set<string>();
  /** The cluster's CA certificate (ca.crt of the service-account directory). */
  private readonly clusterCA: Buffer;
  /**
   * uid → when (ms since the epoch) each stage of the pod's start ended, from the pass that first
   * saw it to its first Ready: logged as 'pod start stages' (a few numbers per starting pod).
   */
  private readonly stages = new Map<string, Record<string, number>>();

  constructor(readonly cfg: KubeletConfig) {
    // Its API clients and informers keep their connections (client-node alone opens one, with a TLS handshake, per request).
    const kc = reuseConnections(loadKubeConnection({ kubeconfig: cfg.kubeconfig }).kubeConfig);
    this.feed = new ApiPodFeed(cfg, kc);
    const cluster = kc.getCurrentCluster();
    this.clusterCA = cluster?.caData ? Buffer.from(cluster.caData, 'base64') : cluster?.caFile ? readFileSync(cluster.caFile) : Buffer.alloc(0);
    for (const r of readPodRecords(cfg.nodeDir)) this.pods.set(r.uid, r);
  }

  static fromFile(file: string): Kubelet {
    return new Kubelet(kubeletConfigSchema.parse(JSON.parse(readFileSync(file, 'utf8'))));
  }

  /** The node's host filesystem (made on first use; /var/run is a symlink to /run there, as on a host). */
  private get hostRoot(): string {
    const root = this.cfg.hostRoot ?? join(this.cfg.nodeDir, 'root');
    if (!existsSync(join(root, 'var', 'run'))) {
      mkdirSync(join(root, 'run'), { recursive: true });
      mkdirSync(join(root, 'var'), { recursive: true });
      symlinkSync('../run', join(root, 'var', 'run'));
    }
    return root;
  }

  async start(): Promise<void> {
    // Watch, then a first full pass (adopts pods a previous kubelet of this node left running).
    await this.feed.start(() => this.kick());
    await this.reconcile();
    this.timer = setInterval(() => this.kick(), 1000);
    writeFileSync(join(this.cfg.nodeDir, 'kubelet.ready'), `${process.pid}\n`);
    log('kubelet ready', { cluster: this.cfg.cluster, node: this.cfg.node, pods: this.pods.size });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.running?.catch(() => undefined);
    await Promise.all([...this.tasks]);
    await this.feed.stop();
  }

  /** Runs reconcile now, or once more after the running one. */
  private kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.reconcile()
      .then(() => undefined)
      .catch((err: unknown) => log('reconcile failed', { error: (err as Error).message }))
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  /** One pass over this node's pods. */
  private async reconcile(): Promise<void> {
    const mine = new Map<string, FedPod>();
    for (const f of await this.feed.list()) if (f.pod.metadata.uid) mine.set(f.pod.metadata.uid, f);
    // Each pod is worked on by at most one task at a time; a pass never waits for a slow pod.
    // Gone or replaced pods first (a replacement may reuse the namespace name).
    for (const uid of this.stages.keys()) if (!mine.has(uid) && !this.pods.has(uid)) this.stages.delete(uid);
    const gone = [...this.pods.values()].filter((r) => !mine.has(r.uid) && !this.busy.has(r.uid));
    const byNetns = new Map(gone.map((r) => [r.netns, this.track(r.uid, () => this.teardown(r))]));
    for (const f of mine.values()) {
      const { pod, api, revision } = f;
      const uid = pod.metadata.uid!;
      if (!this.pods.has(uid) && !this.stages.has(uid)) this.stages.set(uid, { seen: Date.now() });
      if (this.busy.has(uid)) continue;
      // ConfigMap and Secret volumes follow their objects, also for a settled pod.
      const known = this.pods.get(uid);
      if (known) {
        this.refreshProjectedVolumes(api, known);
        this.refreshToken(known);
      }
      if (this.isSettled(uid, revision)) continue;
      const before = byNetns.get(podNetnsName(this.cfg.netnsPrefix, pod.metadata.namespace, pod.metadata.name));
      void this.track(uid, async () => {
        await before;
        try {
          let rec = this.pods.get(uid);
          if (!rec) {
            const retry = this.retryAt.get(uid);
            if (retry && Date.now() < retry.at) {
              await this.writeStatus(f, undefined);
              return;
            }
            const notReady = !isHostNetwork(api) ? this.networkNotReady() : undefined;
            if (notReady) {
              this.waitingWhy.set(uid, { reason: 'NetworkNotReady', message: notReady });
              await this.writeStatus(f, undefined);
              return;
            }
            // A bounded number of pods start at once; each holds its slot until it answers (or a deadline).
            rec = await this.inStartSlot(async () => {
              this.mark(uid, 'slot');
              const created = await this.create(pod, api);
              if (created) {
                await this.superviseContainers(api, created);
                this.mark(uid, 'started');
                await this.untilReady(pod, api, created);
                this.mark(uid, 'answers');
              }
              return created;
            });
            if (!rec) {
              await this.writeStatus(f, undefined);
              return;
            }
          }
          await this.superviseContainers(api, rec);
          await this.writeStatus(f, rec);
        } catch (err) {
          log('pod sync failed', { pod: `${pod.metadata.namespace}/${pod.metadata.name}`, error: (err as Error).message });
        }
      });
    }
  }

  /** Notes that stage `stage` of a starting pod's start ended now (see `stages`). */
  private mark(uid: string, stage: string): void {
    const s = this.stages.get(uid);
    if (s && s[stage] === undefined) s[stage] = Date.now();
  }

  /** A started pod's stages as ms after the pass that first saw it (`seen`: the time), in the order they ended. */
  private stageReport(uid: string): Record<string, unknown> | undefined {
    const s = this.stages.get(uid);
    if (!s?.seen) return undefined;
    const out: Record<string, unknown> = { seen: new Date(s.seen).toISOString() };
    for (const [k, v] of Object.entries(s).sort(([, a], [, b]) => a - b)) if (k !== 'seen') out[k] = v - s.seen;
    return out;
  }

  /** Ready with its status written at this modRevision, checked recently, and its processes still run: nothing to do. */
  private isSettled(uid: string, revision: string): boolean {
    const s = this.settled.get(uid);
    const rec = this.pods.get(uid);
    if (!s || !rec || s.revision !== revision || Date.now() - s.at > READY_RECHECK_MS) return false;
    return rec.containers.every((c) => c.init || sameProcessAlive({ pid: c.pid, startTime: c.startTime }));
  }

  private async inStartSlot<T>(fn: () => Promise<T>): Promise<T> {
    while (this.starting >= MAX_PARALLEL_STARTS) await new Promise<void>((r) => this.startQueue.push(r));
    this.starting++;
    try {
      return await fn();
    } finally {
      this.starting--;
      this.startQueue.shift()?.();
    }
  }

  /** Waits (bounded) until a just-started pod's processes run and its ports answer. */
  private async untilReady(pod: Pod, api: V1Pod, rec: PodRecord): Promise<void> {
    const end = Date.now() + START_READY_WAIT_MS;
    while (!this.stopped && Date.now() < end && (rec.initDone ?? 0) >= (api.spec?.initContainers?.length ?? 0) && !(await this.probe(pod, api, rec)).every((x) => x)) await sleep(50);
  }

  /** Runs fn as the one task of pod `uid`; when it ends, another pass looks at the pod again. */
  private track(uid: string, fn: () => Promise<unknown>): Promise<void> {
    this.busy.add(uid);
    const p = fn()
      .then(() => undefined)
      .catch((err: unknown) => log('pod task failed', { uid, error: (err as Error).message }))
      .finally(() => {
        this.busy.delete(uid);
        this.tasks.delete(p);
      });
    this.tasks.add(p);
    return p;
  }

  /** With cniConfDir: why pods cannot get a network yet (no configuration there), else undefined. */
  private networkNotReady(): string | undefined {
    if (!this.cfg.cniConfDir) return undefined;
    return this.cniConfFile() ? undefined : `network not ready: no CNI configuration in ${this.cfg.cniConfDir}`;
  }

  private cniConfFile(): string | undefined {
    const dir = this.cfg.cniConfDir!;
    const files = existsSync(dir) ? readdirSync(dir) : [];
    const f = chooseCniConf(files);
    return f ? join(dir, f) : undefined;
  }

  /** The network config for a pod's ADD: the chosen file of cniConfDir, or `netconf`. */
  private netconfForAdd(): Record<string, unknown> {
    if (!this.cfg.cniConfDir) return this.cfg.netconf;
    const file = this.cniConfFile();
    if (!file) throw new Error(`network not ready: no CNI configuration in ${this.cfg.cniConfDir}`);
    return netconfOfFile(readFileSync(file, 'utf8'), file);
  }

  private async create(pod: Pod, api: V1Pod): Promise<PodRecord | undefined> {
    const uid = pod.metadata.uid!;
    const { namespace, name } = pod.metadata;
    const netns = podNetnsName(this.cfg.netnsPrefix, namespace, name);
    const dir = join(this.cfg.nodeDir, 'pods', `${namespace}_${name}_${uid.slice(0, 8)}`);
    const hostNetwork = isHostNetwork(api);
    const rec: PodRecord = {
      uid,
      namespace,
      name,
      cluster: this.cfg.cluster,
      node: this.cfg.node,
      netns,
      containerID: podContainerID(uid),
      dir,
      containers: [],
      createdAt: new Date().toISOString(),
      ...(hostNetwork ? { hostNetwork } : {}),
    };
    // Recorded before anything exists, so a crash in between leaves a trace for `down`.
    writePodRecord(this.cfg.nodeDir, rec);
    this.pods.set(uid, rec);
    const t0 = Date.now();
    // The token is asked for while the network is made (an API round trip and a signature); awaited before the pod counts as created.
    let token: Promise<void> | undefined;
    try {
      mkdirSync(dir, { recursive: true });
      // Volumes and the ServiceAccount first: a pod whose ConfigMap or ServiceAccount is missing waits without a network half made.
      this.prepareVolumes(api, rec);
      this.mark(uid, 'volumes');
      const sa = await this.tokenServiceAccount(api, rec);
      if (sa !== undefined) {
        token = this.writeToken(rec, sa).then(() => this.mark(uid, 'token'));
        token.catch(() => undefined); // awaited below; this only keeps an early failure from counting as unhandled
      }
      const search = `search ${namespace}.svc.cluster.local svc.cluster.local cluster.local`;
      const resolv = `# cluster DNS of ${this.cfg.cluster} (lab ${this.cfg.lab})\nnameserver ${this.cfg.dnsIP}\n${search}\noptions ndots:5\n`;
      if (hostNetwork) {
        // The node's network namespace: no pod namespace, no CNI; the pod's IP is the node's.
        writeFileSync(join(dir, 'resolv.conf'), resolv);
        await token;
        rec.ip = this.cfg.nodeIP ?? '127.0.0.1';
        writePodRecord(this.cfg.nodeDir, rec);
        this.retryAt.delete(uid);
        this.waitingWhy.delete(uid);
        log('pod uses the node network', { pod: `${namespace}/${name}`, ip: rec.ip });
        return rec;
      }
      rec.netconf = this.netconfForAdd();
      writePodRecord(this.cfg.nodeDir, rec);
      await run(['ip', 'netns', 'add', netns]).catch(async (err: unknown) => {
        // A namespace of the same name left by a pod that was replaced while we were down.
        await run(['ip', 'netns', 'del', netns]);
        await run(['ip', 'netns', 'add', netns]).catch(() => {
          throw err;
        });
      });
      this.mark(uid, 'netns');
      const etc = join('/etc/netns', netns);
      mkdirSync(etc, { recursive: true });
      writeFileSync(join(etc, 'resolv.conf'), resolv);
      const res = await this.cni('ADD', rec, pod);
      this.mark(uid, 'cni');
      if (res.code !== 0) {
        let msg = res.stdout.trim() || res.stderr.trim();
        try {
          const e = JSON.parse(res.stdout) as { code?: number; msg?: string; details?: string };
          msg = `CNI error ${e.code}: ${e.msg}${e.details ? ` (${e.details})` : ''}`;
        } catch {
          /* not JSON */
        }
        throw new Error(`CNI ADD failed: ${msg}`);
      }
      const result = JSON.parse(res.stdout) as { ips?: Array<{ address: string }> };
      const ip = result.ips?.[0]?.address.split('/')[0];
      if (!ip) throw new Error(`CNI ADD returned no address: ${res.stdout.trim()}`);
      await token;
      rec.ip = ip;
      writePodRecord(this.cfg.nodeDir, rec);
      this.retryAt.delete(uid);
      this.waitingWhy.delete(uid);
      log('pod network ready', { pod: `${namespace}/${name}`, ip, netns, ms: Date.now() - t0 });
      return rec;
    } catch (err) {
      const attempts = (this.retryAt.get(uid)?.attempts ?? 0) + 1;
      const wait = Math.min(30_000, 500 * 2 ** attempts);
      this.retryAt.set(uid, { at: Date.now() + wait, attempts });
      const message = (err as Error).message;
      this.waitingWhy.set(uid, { reason: err instanceof PodConfigError ? 'CreateContainerConfigError' : 'ContainerCreating', message });
      log('pod create failed; retrying', { pod: `${namespace}/${name}`, error: message, retryInMs: wait });
      await token?.catch(() => undefined); // it writes into the pod's dir, which teardown removes
      await this.teardown(rec, false);
      return undefined;
    }
  }

  /** `<pod dir>/volumes/<name>`: where an emptyDir, ConfigMap or Secret volume's files are. */
  private volumeDir(rec: PodRecord, name: string): string {
    return join(rec.dir, 'volumes', name);
  }

  /** Makes every volume of the pod: emptyDirs, ConfigMap and Secret files, hostPaths (type checked). Throws PodConfigError. */
  private prepareVolumes(api: V1Pod, rec: PodRecord): void {
    const containers = [...(api.spec?.initContainers ?? []), ...(api.spec?.containers ?? [])];
    for (const v of api.spec?.volumes ?? []) {
      if (v.emptyDir) mkdirSync(this.volumeDir(rec, v.name), { recursive: true });
      else if (v.configMap || v.secret) this.writeProjectedVolume(api, rec, v.name);
      else if (v.hostPath) {
        const propagated = containers.some((c) => c.volumeMounts?.some((m) => m.name === v.name && (m.mountPropagation === 'Bidirectional' || m.mountPropagation === 'HostToContainer')));
        this.prepareHostPath(v.name, v.hostPath.path, v.hostPath.type ?? '', propagated);
      } else {
        const kind = Object.keys(v).find((k) => k !== 'name') ?? 'unknown';
        throw new PodConfigError(`volume ${v.name}: ${kind} volumes are not supported by the lab kubelet (configMap, secret, emptyDir, hostPath)`);
      }
    }
  }

  /** A hostPath on this node's host filesystem, checked against its type (created for the *OrCreate types and for none). */
  private prepareHostPath(volume: string, path: string, type: string, propagated: boolean): string {
    const { path: p, shared } = mapHostPath(path, this.hostRoot, this.cfg.sharedHostPaths ?? DEFAULT_SHARED_HOST_PATHS);
    const where = `volume ${volume}: hostPath ${path} (${p} on node ${this.cfg.node})`;
    const st = existsSync(p) ? statSync(p) : undefined;
    switch (type) {
      case '':
        if (!st && !shared) mkdirSync(p, { recursive: true });
        break;
      case 'DirectoryOrCreate':
        if (!st && !shared) mkdirSync(p, { recursive: true, mode: 0o755 });
        else if (st && !st.isDirectory()) throw new PodConfigError(`${where}: type DirectoryOrCreate, but it is not a directory`);
        break;
      case 'FileOrCreate':
        if (!st && !shared) {
          mkdirSync(dirname(p), { recursive: true });
          writeFileSync(p, '', { mode: 0o644 });
        } else if (st && !st.isFile()) throw new PodConfigError(`${where}: type FileOrCreate, but it is not a file`);
        break;
      case 'Directory':
      case 'File':
      case 'Socket':
      case 'CharDevice':
      case 'BlockDevice': {
        const ok = st && { Directory: st.isDirectory(), File: st.isFile(), Socket: st.isSocket(), CharDevice: st.isCharacterDevice(), BlockDevice: st.isBlockDevice() }[type];
        if (!ok) throw new PodConfigError(`${where}: type ${type}, but ${st ? `it is not a ${type}` : 'it does not exist'}`);
        break;
      }
      default:
        throw new PodConfigError(`${where}: unknown type ${JSON.stringify(type)}`);
    }
    if (!existsSync(p)) throw new PodConfigError(`${where}: does not exist`);
    // Mount propagation needs a shared mount on the node's side: the path bound onto itself, made shared
    // (recorded by being under the lab dir: lab down unmounts everything there).
    const real = realpathSync(p);
    if (propagated && !shared && statSync(real).isDirectory() && !mountsUnder(real).includes(real)) {
      for (const argv of [['mount', '--bind', real, real], ['mount', '--make-shared', real]]) {
        const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`${where}: ${argv.join(' ')}: ${(r.stderr || r.error?.message || '').trim()}`);
      }
    }
    return p;
  }

  /** The files of a ConfigMap or Secret volume, written when they changed (the `..data` symlink swapped at once). */
  private writeProjectedVolume(api: V1Pod, rec: PodRecord, name: string): void {
    const v = api.spec?.volumes?.find((x) => x.name === name);
    if (!v) return;
    const ns = rec.namespace;
    const obj = v.configMap ? this.feed.configMap(ns, v.configMap.name ?? '') : this.feed.secret(ns, v.secret?.secretName ?? '');
    const files = projectedFiles(v, obj);
    const stamp = createHash('sha256').update(JSON.stringify(files.map((f) => [f.path, f.mode, f.data.toString('base64')]))).digest('hex');
    const key = `${rec.uid}/${name}`;
    const dir = this.volumeDir(rec, name);
    if (this.volumeStamp.get(key) === stamp && existsSync(join(dir, '..data'))) return;
    writeAtomicDir(dir, files);
    this.volumeStamp.set(key, stamp);
  }

  /** `<pod dir>/serviceaccount`: the pod's token, ca.crt and namespace (SERVICE_ACCOUNT_DIR in its containers). */
  private tokenDir(rec: PodRecord): string {
    return join(rec.dir, 'serviceaccount');
  }

  /**
   * What Kubernetes' ServiceAccount admission and the kubelet do for a pod
   * together: unless automountServiceAccountToken is false (the pod's, else
   * its ServiceAccount's), a token of spec.serviceAccountName (default
   * `default`) bound to the pod, with the cluster's CA and the namespace, in
   * the pod's token directory (written as a ConfigMap volume is), which every
   * container gets read-only at SERVICE_ACCOUNT_DIR. Throws PodConfigError
   * while the ServiceAccount does not exist (the pod waits). Returns the
   * ServiceAccount whose token the pod gets (writeToken), or undefined: none.
   */
  private async tokenServiceAccount(api: V1Pod, rec: PodRecord): Promise<string | undefined> {
    const spec = api.spec ?? { containers: [] };
    const sa = spec.serviceAccountName || 'default';
    let automount = spec.automountServiceAccountToken;
    if (automount === undefined) {
      const obj = await this.feed.serviceAccount(rec.namespace, sa);
      if (!obj) throw new PodConfigError(`serviceaccount "${sa}" not found in namespace ${rec.namespace} (its token is mounted at ${SERVICE_ACCOUNT_DIR})`);
      automount = obj.automountServiceAccountToken;
      this.mark(rec.uid, 'serviceaccount');
    }
    return automount === false ? undefined : sa;
  }

  /** A new token of the pod's ServiceAccount in its token directory (the `..data` symlink swapped at once). */
  private async writeToken(rec: PodRecord, serviceAccount: string): Promise<void> {
    const token = await this.feed.requestToken(rec.namespace, serviceAccount, { name: rec.name, uid: rec.uid }, TOKEN_SECONDS);
    writeAtomicDir(this.tokenDir(rec), [
      { path: 'ca.crt', data: this.clusterCA, mode: 0o644 },
      { path: 'namespace', data: Buffer.from(rec.namespace), mode: 0o644 },
      { path: 'token', data: Buffer.from(token), mode: 0o644 },
    ]);
    this.tokenDue.set(rec.uid, tokenRefreshAt(token) ?? Date.now() + 60_000);
  }

  /** A pod's token again once 80% of its life has passed (as the kubelet does); in the background, one at a time per pod. */
  private refreshToken(rec: PodRecord): void {
    if (this.tokenBusy.has(rec.uid)) return;
    let due = this.tokenDue.get(rec.uid);
    if (due === undefined) {
      // A pod this kubelet adopted: when its token (if it has one) is due.
      const file = join(this.tokenDir(rec), 'token');
      due = existsSync(file) ? (tokenRefreshAt(readFileSync(file, 'utf8')) ?? 0) : Infinity;
      this.tokenDue.set(rec.uid, due);
    }
    if (Date.now() < due) return;
    const file = join(this.tokenDir(rec), 'token');
    const sa = existsSync(file) ? tokenServiceAccount(readFileSync(file, 'utf8')) : undefined;
    if (!sa) {
      this.tokenDue.set(rec.uid, Infinity);
      return;
    }
    this.tokenBusy.add(rec.uid);
    void this.writeToken(rec, sa)
      .then(() => log('service account token refreshed', { pod: `${rec.namespace}/${rec.name}` }))
      .catch((err: unknown) => {
        // Tried again in 10 s; the old token stays until it expires (as with a real kubelet).
        this.tokenDue.set(rec.uid, Date.now() + 10_000);
        log('service account token refresh failed', { pod: `${rec.namespace}/${rec.name}`, error: (err as Error).message });
      })
      .finally(() => this.tokenBusy.delete(rec.uid));
  }

  /** Brings a running pod's ConfigMap and Secret volumes up to date with their objects. */
  private refreshProjectedVolumes(api: V1Pod, rec: PodRecord): void {
    for (const v of api.spec?.volumes ?? []) {
      if (!v.configMap && !v.secret) continue;
      try {
        const before = this.volumeStamp.get(`${rec.uid}/${v.name}`);
        this.writeProjectedVolume(api, rec, v.name);
        if (before !== undefined && before !== this.volumeStamp.get(`${rec.uid}/${v.name}`)) log('volume updated', { pod: `${rec.namespace}/${rec.name}`, volume: v.name });
      } catch (err) {
        // The object is gone: a real kubelet keeps the last files too.
        if (!(err instanceof PodConfigError)) log('volume update failed', { pod: `${rec.namespace}/${rec.name}`, volume: v.name, error: (err as Error).message });
      }
    }
  }

  /** A container's bind mounts: its volumeMounts, the image's files, and the cluster resolv.conf of a ClusterFirstWithHostNet pod. */
  private containerMounts(api: V1Pod, rec: PodRecord, c: V1Container): { mounts: ContainerMount[]; bidirectional: string[] } {
    const mounts: ContainerMount[] = [];
    const bidirectional: string[] = [];
    for (const m of c.volumeMounts ?? []) {
      const v = api.spec?.volumes?.find((x) => x.name === m.name);
      if (!v) throw new PodConfigError(`container ${c.name}: volumeMount ${m.name}: no volume of that name`);
      let source: string;
      let readOnly = m.readOnly === true;
      if (v.hostPath) {
        const mapped = mapHostPath(v.hostPath.path, this.hostRoot, this.cfg.sharedHostPaths ?? DEFAULT_SHARED_HOST_PATHS);
        source = mapped.path;
        if (mapped.shared) readOnly = true;
        if (m.mountPropagation === 'Bidirectional') {
          if (rec.hostNetwork !== true) throw new PodConfigError(`container ${c.name}: volumeMount ${m.name}: mountPropagation Bidirectional needs a hostNetwork pod in the lab`);
          // Its node-side mount (prepareHostPath made it shared) stays a peer in the container's namespace.
          bidirectional.push(realpathSync(source));
        }
      } else source = this.volumeDir(rec, m.name);
      if (v.configMap || v.secret) readOnly = true;
      if (m.subPath) source = join(source, m.subPath);
      if (!existsSync(source)) {
        if (m.subPath && (v.emptyDir || v.hostPath)) mkdirSync(source, { recursive: true });
        else throw new PodConfigError(`container ${c.name}: volumeMount ${m.name}: ${source} does not exist`);
      }
      mounts.push({ source, target: m.mountPath, readOnly, file: !statSync(source).isDirectory(), recursive: v.hostPath !== undefined });
    }
    for (const [target, source] of Object.entries(this.cfg.images?.[c.image ?? ''] ?? {})) {
      if (!existsSync(source)) throw new PodConfigError(`container ${c.name}: image ${c.image}: ${source} (for ${target}) does not exist`);
      mounts.push({ source, target, readOnly: true, file: !statSync(source).isDirectory(), recursive: false });
    }
    if (rec.hostNetwork && api.spec?.dnsPolicy === 'ClusterFirstWithHostNet') {
      mounts.push({ source: join(rec.dir, 'resolv.conf'), target: '/etc/resolv.conf', readOnly: true, file: true, recursive: false });
    }
    // The service-account token, unless the container mounts something of its own there.
    if (existsSync(join(this.tokenDir(rec), '..data')) && !(c.volumeMounts ?? []).some((m) => posix.normalize(m.mountPath).replace(/\/$/, '') === SERVICE_ACCOUNT_DIR)) {
      mounts.push({ source: this.tokenDir(rec), target: SERVICE_ACCOUNT_DIR, readOnly: true, file: false, recursive: false });
    }
    return { mounts, bidirectional };
  }

  /**
   * What `$(VAR)`, fieldRef, configMapKeyRef and secretKeyRef of a container
   * give, after what every container of a hostNetwork pod gets: the cluster's
   * API as KUBERNETES_SERVICE_HOST/PORT (the node-local endpoint; the
   * container's own env wins).
   */
  private containerEnv(api: V1Pod, rec: PodRecord, c: V1Container): Record<string, string> {
    return resolveEnv(
      c,
      {
        pod: api,
        hostIP: this.cfg.nodeIP,
        podIP: rec.ip,
        configMap: (n) => this.feed.configMap(rec.namespace, n),
        secret: (n) => this.feed.secret(rec.namespace, n),
      },
      kubernetesServiceEnv(rec),
    );
  }

  private cni(command: 'ADD' | 'DEL', rec: PodRecord, pod?: Pod): Promise<PluginResult> {
    const netconf = rec.netconf ?? this.cfg.netconf;
    const type = String(netconf.type ?? 'clustermesh');
    const conf = {
      ...netconf,
      dns: { nameservers: [this.cfg.dnsIP], search: [`${rec.namespace}.svc.cluster.local`, 'svc.cluster.local', 'cluster.local'] },
      runtimeConfig: {
        ...(pod ? { labels: pod.metadata.labels, serviceAccount: pod.spec.serviceAccountName } : {}),
      },
    };
    const env = childEnv({
      CNI_COMMAND: command,
      CNI_CONTAINERID: rec.containerID,
      CNI_NETNS: `/var/run/netns/${rec.netns}`,
      CNI_IFNAME: 'eth0',
      CNI_PATH: this.cfg.cniPath,
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${rec.namespace};K8S_POD_NAME=${rec.name}`,
    });
    const plugin = join(this.cfg.cniPath, type);
    // The plugin sees the node's host filesystem at cniHostPaths (a private mount namespace for the call).
    const views = (this.cfg.cniHostPaths ?? []).map((p) => ({ source: mapHostPath(p, this.hostRoot, []).path, target: p, readOnly: false, file: false, recursive: true }));
    const scratch = join(this.cfg.nodeDir, 'cni-mnt', `${rec.containerID}.${command}`);
    const argv = views.length ? podstartArgv({ mountNs: 'slave', mounts: { list: views, bidirectional: [], scratch } }, [plugin]) : [plugin];
    if (views.length) for (const v of views) mkdirSync(v.source, { recursive: true });
    return new Promise((resolve, reject) => {
      const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.once('error', reject);
      // 'close', not 'exit': a plugin that exits right after writing may still have output in the pipe.
      child.once('close', (code) => {
        // The call's mount namespace is gone with it: its scratch holds only empty directories.
        if (views.length) rmSync(scratch, { recursive: true, force: true });
        resolve({ code, stdout, stderr });
      });
      child.stdin.end(JSON.stringify(conf));
    });
  }

  /**
   * Runs the init containers in order, each to a successful exit (a failed one
   * again with backoff), then starts the containers that do not run (first
   * start, or restart with backoff after an exit).
   */
  private async superviseContainers(api: V1Pod, rec: PodRecord): Promise<void> {
    const inits = api.spec?.initContainers ?? [];
    let initDone = rec.initDone ?? 0;
    while (initDone < inits.length) {
      const c = inits[initDone]!;
      const cr = rec.containers.find((x) => x.name === c.name && x.init);
      if (cr && sameProcessAlive({ pid: cr.pid, startTime: cr.startTime })) return;
      if (cr?.pid !== undefined && cr.exitCode === 0) {
        initDone++;
        rec.initDone = initDone;
        writePodRecord(this.cfg.nodeDir, rec);
        log('init container completed', { pod: `${rec.namespace}/${rec.name}`, container: c.name });
        continue;
      }
      // Not started, failed, or ended while no kubelet watched (run again: init containers are idempotent).
      await this.startIfDue(api, rec, c, true);
      return;
    }
    for (const c of api.spec?.containers ?? []) {
      const cr = rec.containers.find((x) => x.name === c.name && !x.init);
      if (cr && sameProcessAlive({ pid: cr.pid, startTime: cr.startTime })) continue;
      await this.startIfDue(api, rec, c, false);
    }
  }

  /** Starts container c, or, when it ran before, again once its backoff has passed. */
  private async startIfDue(api: V1Pod, rec: PodRecord, c: V1Container, init: boolean): Promise<void> {
    let cr = rec.containers.find((x) => x.name === c.name && (x.init ?? false) === init);
    const key = `${rec.uid}/${c.name}`;
    if (cr?.pid !== undefined) {
      // It exited: again with backoff (restartPolicy Always; for an init container: until it succeeds).
      if (!this.restartAt.has(key)) {
        const wait = Math.min(30_000, 1000 * 2 ** Math.min(cr.restarts, 5));
        this.restartAt.set(key, Date.now() + wait);
        cr.exit = `exited${cr.exitCode !== undefined ? ` with ${cr.exitCode}` : ''} at ${new Date().toISOString()}`;
        delete cr.startedAt;
        log(init ? 'init container failed; running it again' : 'container exited; restarting', { pod: `${rec.namespace}/${rec.name}`, container: c.name, exitCode: cr.exitCode, inMs: wait });
        writePodRecord(this.cfg.nodeDir, rec);
      }
      if (Date.now() < this.restartAt.get(key)!) return;
      this.restartAt.delete(key);
    }
    const logFile = join(rec.dir, `${c.name}.log`);
    let env: Record<string, string>;
    let argv: string[];
    let mounts: ReturnType<Kubelet['containerMounts']>;
    try {
      env = this.containerEnv(api, rec, c);
      argv = containerArgv(c, env);
      mounts = this.containerMounts(api, rec, c);
      this.containerWhy.delete(key);
    } catch (err) {
      if (!(err instanceof PodConfigError)) throw err;
      if (this.containerWhy.get(key) !== err.message) log('container cannot start yet', { pod: `${rec.namespace}/${rec.name}`, container: c.name, error: err.message });
      this.containerWhy.set(key, err.message);
      return;
    }
    if (!cr) {
      cr = { name: c.name, logFile, restarts: 0, ...(init ? { init } : {}) };
      rec.containers.push(cr);
    } else if (cr.pid !== undefined) cr.restarts++;
    if (argv.length === 0) {
      if (!rec.error) {
        rec.error = `container ${c.name} has no command (the lab runs programs of this machine, not images)`;
        log('pod cannot run', { pod: `${rec.namespace}/${rec.name}`, error: rec.error });
        writePodRecord(this.cfg.nodeDir, rec);
      }
      return;
    }
    // How the command runs (one process, clustermesh-podstart, that execs it at the end): held until its pid
    // is recorded, in the node's cgroup, in the pod's network namespace (as `ip netns exec` runs it, with the
    // pod's resolv.conf) or the node's (hostNetwork); the volumes mounted in a private mount namespace (for
    // hostNetwork pods one of its own).
    const scratch = join(rec.dir, `${c.name}.mnt`);
    const start = podstartArgv(
      {
        hold: true,
        ...(this.cfg.cgroup !== undefined ? { cgroup: this.cfg.cgroup } : {}),
        ...(rec.hostNetwork ? (mounts.mounts.length ? { mountNs: mounts.bidirectional.length ? ('unchanged' as const) : ('slave' as const) } : {}) : { netns: rec.netns }),
        ...(mounts.mounts.length ? { mounts: { list: mounts.mounts, bidirectional: mounts.bidirectional, scratch } } : {}),
      },
      argv,
    );
    const fd = openSync(logFile, 'a');
    try {
      const binDir = join(this.cfg.nodeDir, '..', '..', 'bin');
      // Held until its pid is in the pod record (src/util/held-start.ts): a kubelet killed
      // in between (lab down stops kubelets first) leaves no container nobody can find.
      const [cmd, ...args] = start;
      const child = spawn(cmd!, args, {
        stdio: ['pipe', fd, fd],
        detached: true,
        env: {
          // The machine's environment (there is no image), but not the kubelet's way to the API: a
          // pod finds its cluster's API by KUBERNETES_SERVICE_* and its token, as in Kubernetes.
          ...withoutKubeEnv(childEnv()),
          PATH: `${binDir}:${process.env.PATH ?? '/usr/bin:/bin'}`,
          CLUSTERMESH_CLUSTER: this.cfg.cluster,
          CLUSTERMESH_NODE: this.cfg.node,
          CLUSTERMESH_POD: rec.name,
          CLUSTERMESH_NAMESPACE: rec.namespace,
          ...(rec.ip ? { POD_IP: rec.ip } : {}),
          ...env,
        },
      });
      child.unref();
      await new Promise<void>((resolve) => {
        child.once('spawn', () => resolve());
        child.once('error', () => resolve());
      });
      this.mark(rec.uid, `spawned:${c.name}`);
      if (child.pid !== undefined) {
        const started = cr;
        child.once('exit', (code, signal) => {
          if (started.pid !== child.pid) return;
          started.exitCode = code ?? (signal ? -1 : 0);
          if (this.pods.get(rec.uid) === rec) writePodRecord(this.cfg.nodeDir, rec);
          this.kick();
        });
        await recordThenRelease(child, (pid) => {
          started.pid = pid;
          started.startTime = processStartTime(pid);
          started.startedAt = new Date().toISOString();
          delete started.exit;
          delete started.exitCode;
          writePodRecord(this.cfg.nodeDir, rec);
        });
        this.mark(rec.uid, `released:${c.name}`);
        log(init ? 'init container started' : 'container started', { pod: `${rec.namespace}/${rec.name}`, container: c.name, pid: child.pid, argv });
      }
    } finally {
      closeSync(fd);
    }
  }

  /** Each container's readiness: its readinessProbe when it has one, else its process runs and its TCP ports answer. */
  private async probe(pod: Pod, api: V1Pod, rec: PodRecord): Promise<boolean[]> {
    const containers = api.spec?.containers ?? [];
    if (rec.error || !rec.ip || (rec.initDone ?? 0) < (api.spec?.initContainers?.length ?? 0)) return containers.map(() => false);
    return Promise.all(
      containers.map(async (c) => {
        const cr = rec.containers.find((x) => x.name === c.name && !x.init);
        if (!cr || !sameProcessAlive({ pid: cr.pid, startTime: cr.startTime })) return false;
        if (c.readinessProbe) return this.runReadinessProbe(api, rec, c, cr.pid!, c.readinessProbe);
        const ports = pod.spec.containers.find((x) => x.name === c.name)?.ports.filter((p) => p.protocol === 'TCP').map((p) => p.containerPort) ?? [];
        for (const port of ports) if (!(await tcpOpen(rec.ip!, port, 500))) return false;
        return true;
      }),
    );
  }

  /** One run of a readinessProbe; the container's readiness changes after successThreshold / failureThreshold results in a row. */
  private async runReadinessProbe(api: V1Pod, rec: PodRecord, c: V1Container, pid: number, p: V1Probe): Promise<boolean> {
    const key = `${rec.uid}/${c.name}`;
    const st = this.probes.get(key) ?? { ready: false, failures: 0, successes: 0 };
    this.probes.set(key, st);
    const startedAt = Date.parse(rec.containers.find((x) => x.name === c.name && !x.init)?.startedAt ?? '') || 0;
    if (Date.now() - startedAt < (p.initialDelaySeconds ?? 0) * 1000) return false;
    if (p.exec || p.httpGet) {
      const every = st.ready ? Math.max(1, p.periodSeconds ?? 10) * 1000 : PROBE_MIN_INTERVAL_MS[p.exec ? 'exec' : 'httpGet'];
      if (st.lastRunAt !== undefined && Date.now() - st.lastRunAt < every) return st.ready;
      st.lastRunAt = Date.now();
    }
    const timeoutMs = Math.max(1, p.timeoutSeconds ?? 1) * 1000;
    let ok = false;
    try {
      ok = await probeOnce(p, c, rec.ip!, timeoutMs, () => ({ pid, env: this.containerEnv(api, rec, c) }));
    } catch (err) {
      log('readiness probe cannot run', { pod: `${rec.namespace}/${rec.name}`, container: c.name, error: (err as Error).message });
    }
    if (ok) {
      st.failures = 0;
      st.successes++;
      if (st.successes >= (p.successThreshold ?? 1)) st.ready = true;
    } else {
      st.successes = 0;
      st.failures++;
      if (!st.ready || st.failures >= (p.failureThreshold ?? 3)) st.ready = false;
    }
    return st.ready;
  }

  /** The pod's status as a kubelet reports it: phase, IPs, conditions, container and init container states. */
  private async writeStatus(f: FedPod, rec: PodRecord | undefined): Promise<void> {
    const { pod, api, revision } = f;
    const uid = pod.metadata.uid!;
    const containers = api.spec?.containers ?? [];
    const inits = api.spec?.initContainers ?? [];
    const readiness = rec ? await this.probe(pod, api, rec) : containers.map(() => false);
    const ready = readiness.length > 0 && readiness.every((x) => x);
    if (rec && this.ready.get(uid) !== ready) log(ready ? 'pod ready' : 'pod not ready', { pod: `${rec.namespace}/${rec.name}` });
    this.ready.set(uid, ready);
    const initDone = rec?.initDone ?? 0;
    const initializing = initDone < inits.length;
    const phase = rec?.error ? 'Failed' : rec?.ip && !initializing ? 'Running' : 'Pending';
    const why = rec ? undefined : this.waitingWhy.get(uid);
    const stateOf = (c: V1Container, init: boolean, i: number): Record<string, unknown> => {
      const cr = rec?.containers.find((x) => x.name === c.name && (x.init ?? false) === init);
      const alive = cr !== undefined && sameProcessAlive({ pid: cr.pid, startTime: cr.startTime });
      let state: Record<string, unknown>;
      if (init && i < initDone) state = { terminated: { exitCode: 0, reason: 'Completed' } };
      else if (alive) state = { running: { startedAt: cr.startedAt ?? rec!.createdAt } };
      else if (this.containerWhy.has(`${uid}/${c.name}`)) state = { waiting: { reason: 'CreateContainerConfigError', message: this.containerWhy.get(`${uid}/${c.name}`) } };
      else if (cr?.pid !== undefined) state = { waiting: { reason: 'CrashLoopBackOff', message: `back-off restarting failed container ${c.name} (${cr.exit ?? 'exited'})` } };
      else state = { waiting: { reason: why?.reason ?? (init ? 'PodInitializing' : initializing ? 'PodInitializing' : 'ContainerCreating'), ...(why ? { message: why.message } : {}) } };
      return {
        name: c.name,
        image: c.image ?? '',
        imageID: '',
        ...(cr?.pid !== undefined ? { containerID: `lab://${uid}/${c.name}` } : {}),
        ready: init ? i < initDone : readiness[i] === true,
        restartCount: cr?.restarts ?? 0,
        started: alive,
        state,
      };
    };
    const podReady = phase === 'Running' && ready;
    const message = why?.message;
    const status: Record<string, unknown> = {
      phase,
      ...(why ? { reason: why.reason, message } : { reason: null, message: null }),
      ...(rec?.ip ? { podIP: rec.ip, podIPs: [{ ip: rec.ip }] } : {}),
      ...(this.cfg.nodeIP ? { hostIP: this.cfg.nodeIP, hostIPs: [{ ip: this.cfg.nodeIP }] } : {}),
      conditions: [
        { type: 'Initialized', status: initializing ? 'False' : 'True', ...(initializing ? { reason: 'ContainersNotInitialized' } : {}) },
        { type: 'Ready', status: podReady ? 'True' : 'False', ...(message ? { reason: why!.reason, message } : {}) },
      ],
      containerStatuses: containers.map((c, i) => stateOf(c, false, i)),
      ...(inits.length ? { initContainerStatuses: inits.map((c, i) => stateOf(c, true, i)) } : {}),
    };
    const modelStatus: Pod['status'] = { phase: phase as Pod['status']['phase'], ...(rec?.ip ? { podIP: rec.ip } : {}), conditions: [{ type: 'Ready', status: podReady ? 'True' : 'False' }] };
    const key = JSON.stringify(status);
    const sameAsApi = modelKey(pod.status) === modelKey(modelStatus) || (phase === 'Pending' && pod.status.phase === 'Pending' && !pod.status.conditions.some((c) => c.type === 'Ready' && c.status === 'True'));
    if (sameAsApi && this.written.get(uid) === key) {
      if (podReady) this.settled.set(uid, { revision, at: Date.now() });
      return;
    }
    this.settled.delete(uid);
    const now = new Date().toISOString();
    await f.writeStatus({ ...status, conditions: (status.conditions as Array<Record<string, unknown>>).map((c) => ({ ...c, lastTransitionTime: now })) });
    this.written.set(uid, key);
    if (podReady && this.stages.has(uid)) {
      this.mark(uid, 'status');
      log('pod start stages', { pod: `${pod.metadata.namespace}/${pod.metadata.name}`, ms: this.stageReport(uid) });
      this.stages.delete(uid);
    }
  }

  private async teardown(rec: PodRecord, forget = true): Promise<void> {
    const t0 = Date.now();
    await Promise.all(rec.containers.map((c) => (c.pid !== undefined ? stopGroup({ pid: c.pid, startTime: c.startTime }) : undefined)));
    if (!rec.hostNetwork) {
      if (rec.ip !== undefined || rec.containers.length) {
        const res = await this.cni('DEL', rec).catch((err: unknown) => ({ code: -1, stdout: '', stderr: (err as Error).message }));
        if (res.code !== 0) log('CNI DEL failed (the namespace is removed anyway)', { pod: `${rec.namespace}/${rec.name}`, out: res.stdout + res.stderr });
      } else if (rec.netconf || !this.cfg.cniConfDir) {
        // ADD may have got half way; DEL is idempotent.
        await this.cni('DEL', rec).catch(() => undefined);
      }
      await run(['ip', 'netns', 'del', rec.netns]).catch(() => undefined);
      rmSync(join('/etc/netns', rec.netns), { recursive: true, force: true });
    }
    rmSync(rec.dir, { recursive: true, force: true });
    removePodRecord(this.cfg.nodeDir, rec.uid);
    this.pods.delete(rec.uid);
    this.ready.delete(rec.uid);
    this.settled.delete(rec.uid);
    this.tokenDue.delete(rec.uid);
    if (forget) this.stages.delete(rec.uid);
    for (const c of rec.containers) {
      this.restartAt.delete(`${rec.uid}/${c.name}`);
      this.probes.delete(`${rec.uid}/${c.name}`);
      this.containerWhy.delete(`${rec.uid}/${c.name}`);
    }
    for (const k of this.volumeStamp.keys()) if (k.startsWith(`${rec.uid}/`)) this.volumeStamp.delete(k);
    if (forget) {
      this.written.delete(rec.uid);
      this.waitingWhy.delete(rec.uid);
    }
    log('pod removed', { pod: `${rec.namespace}/${rec.name}`, ms: Date.now() - t0 });
  }
}

/** A service-account token's lifetime as the kubelet requests it (Kubernetes' kubelet asks for 3607 s). */
export const TOKEN_SECONDS = 3607;

/** The claims of a JWT, not verified (the kubelet only reads its own tokens' times). */
function jwtClaims(token: string): { iat?: number; exp?: number; sub?: string } | undefined {
  try {
    return JSON.parse(Buffer.from(token.trim().split('.')[1] ?? '', 'base64url').toString('utf8')) as { iat?: number; exp?: number; sub?: string };
  } catch {
    return undefined;
  }
}

/** When a token is refreshed (ms since the epoch): once 80% of its life has passed, or after 24 h (as Kubernetes' kubelet). */
export function tokenRefreshAt(token: string): number | undefined {
  const c = jwtClaims(token);
  if (typeof c?.iat !== 'number' || typeof c.exp !== 'number') return undefined;
  return Math.min(c.iat + 0.8 * (c.exp - c.iat), c.iat + 24 * 3600) * 1000;
}

/** The ServiceAccount name of a token's subject `system:serviceaccount:<ns>:<name>`. */
function tokenServiceAccount(token: string): string | undefined {
  return /^system:serviceaccount:[^:]+:([^:]+)$/.exec(jwtClaims(token)?.sub ?? '')?.[1];
}

/**
 * KUBERNETES_SERVICE_HOST/PORT of a pod's containers: the node-local endpoint
 * of the cluster's API (127.0.0.1:6443 in the node's network namespace) for a
 * hostNetwork pod. A pod-network pod gets none: nothing listens on
 * 127.0.0.1:6443 of its own namespace (docs/lab-kubelet.md).
 */
export function kubernetesServiceEnv(rec: Pick<PodRecord, 'hostNetwork'>): Record<string, string> {
  return rec.hostNetwork ? { KUBERNETES_SERVICE_HOST: NODE_LOCAL_API_HOST, KUBERNETES_SERVICE_PORT: String(NODE_LOCAL_API_PORT), KUBERNETES_SERVICE_PORT_HTTPS: String(NODE_LOCAL_API_PORT) } : {};
}

/** The machine's environment without what would point a container at the kubelet's own way to the API. */
function withoutKubeEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env };
  for (const k of ['KUBECONFIG', 'KUBERNETES_SERVICE_HOST', 'KUBERNETES_SERVICE_PORT', 'KUBERNETES_SERVICE_PORT_HTTPS']) delete out[k];
  return out;
}

/**
 * Writes a volume's files as Kubernetes does, so a reader never sees half an
 * update: the files go to a new hidden dir, `..data` is switched to it with one
 * rename, and each top-level name is a symlink through `..data`.
 */
export function writeAtomicDir(dir: string, files: ProjectedFile[]): void {
  mkdirSync(dir, { recursive: true });
  const gen = `..${new Date().toISOString().replace(/[:.]/g, '_')}.${process.pid}.${Math.random().toString(36).slice(2, 8)}`;
  const genDir = join(dir, gen);
  mkdirSync(genDir);
  for (const f of files) {
    const p = join(genDir, f.path);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, f.data);
    chmodSync(p, f.mode & 0o7777);
  }
  let old: string | undefined;
  try {
    old = readlinkSync(join(dir, '..data'));
  } catch {
    /* first write */
  }
  symlinkSync(gen, join(dir, '..data_tmp'));
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  const tops = new Set(files.map((f) => f.path.split('/')[0]!));
  for (const t of tops) {
    const link = join(dir, t);
    if (!existsSync(link)) symlinkSync(join('..data', t), link);
  }
  for (const e of readdirSync(dir)) {
    if (e.startsWith('..')) continue;
    if (!tops.has(e)) rmSync(join(dir, e), { force: true });
  }
  if (old && old !== gen) rmSync(join(dir, old), { recursive: true, force: true });
}

/** One probe run: exec in the container's mount and network namespaces, tcpSocket, or httpGet. */
async function probeOnce(p: V1Probe, c: V1Container, ip: string, timeoutMs: number, container: () => { pid: number; env: Record<string, string> }): Promise<boolean> {
  const port = (v: number | string | undefined): number => {
    if (typeof v === 'number') return v;
    const named = c.ports?.find((x) => x.name === v)?.containerPort;
    if (named !== undefined) return named;
    if (v !== undefined && /^\d+$/.test(v)) return Number(v);
    throw new PodConfigError(`container ${c.name}: probe port ${JSON.stringify(v)} is not a number nor a named port`);
  };
  if (p.exec) {
    const { pid, env } = container();
    const argv = ['nsenter', `--target=${pid}`, '--mount', '--net', '--', ...(p.exec.command ?? [])];
    return await new Promise<boolean>((resolve) => {
      const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore', env: childEnv({ ...env }), detached: true });
      const t = setTimeout(() => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          /* gone */
        }
      }, timeoutMs);
      child.once('error', () => resolve(false));
      child.once('exit', (code) => {
        clearTimeout(t);
        resolve(code === 0);
      });
    });
  }
  if (p.tcpSocket) return tcpOpen(p.tcpSocket.host ?? ip, port(p.tcpSocket.port), timeoutMs);
  if (p.httpGet) {
    const g = p.httpGet;
    const host = g.host ?? ip;
    const url = `${(g.scheme ?? 'HTTP').toLowerCase()}://${host.includes(':') ? `[${host}]` : host}:${port(g.port)}${g.path ?? '/'}`;
    // node:http(s), not fetch: no undici to load and compile in each kubelet, less work per probe. Like a
    // kubelet: redirects are not followed (3xx passes), an HTTPS server's certificate is not verified.
    const headers = Object.fromEntries((g.httpHeaders ?? []).map((h) => [h.name, h.value]));
    const get = url.startsWith('https:') ? httpsGet : httpGet;
    return await new Promise<boolean>((resolve) => {
      const req = get(url, { headers, agent: false, rejectUnauthorized: false, timeout: timeoutMs }, (res) => {
        res.resume();
        const code = res.statusCode ?? 0;
        resolve(code >= 200 && code < 400);
      });
      req.once('timeout', () => req.destroy(new Error('timeout')));
      req.once('error', () => resolve(false));
    });
  }
  throw new PodConfigError(`container ${c.name}: readinessProbe: only exec, tcpSocket and httpGet are supported by the lab kubelet`);
}

/** SIGTERM to the process group (the container runs in its own session), SIGKILL after graceMs. */
export async function stopGroup(ref: { pid: number; startTime?: string | undefined }, graceMs = 2000): Promise<void> {
  if (!sameProcessAlive(ref)) return;
  const signal = (sig: NodeJS.Signals): void => {
    try {
      process.kill(-ref.pid, sig);
    } catch {
      try {
        process.kill(ref.pid, sig);
      } catch {
        /* gone */
      }
    }
  };
  signal('SIGTERM');
  const end = Date.now() + graceMs;
  while (Date.now() < end && sameProcessAlive(ref)) await sleep(20);
  if (sameProcessAlive(ref)) signal('SIGKILL');
  for (let i = 0; i < 100 && sameProcessAlive(ref); i++) await sleep(10);
}

function tcpOpen(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** `clustermesh lab kubelet --config FILE`: runs until SIGTERM/SIGINT (pods keep running, like a kubelet's). */
export async function runKubelet(configFile: string): Promise<void> {
  const k = Kubelet.fromFile(configFile);
  for (let attempt = 1; ; attempt++) {
    try {
      await k.start();
      break;
    } catch (err) {
      if (attempt >= 20) throw err;
      log('cannot reach the Kubernetes API yet; retrying', { error: (err as Error).message });
      await sleep(250 * attempt);
    }
  }
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await k.stop();
  process.exit(0);
}
