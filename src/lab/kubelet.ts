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
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { isPodReady, parseObject, type Pod } from '../model/index.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import { apiCode, apiMessage, watchKind } from './controllers/runtime.ts';
import { inCgroup } from './cgroup.ts';
import { heldArgv, recordThenRelease } from '../util/held-start.ts';
import { run } from './exec.ts';
import { childEnv } from './process.ts';
import { processStartTime, sameProcessAlive } from './state.ts';
import {
  kubeletConfigSchema,
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
  /** Changes whenever the pod object does (store modRevision, API resourceVersion). */
  revision: string;
  writeStatus(status: Pod['status']): Promise<void>;
}

/** Where a kubelet's pods come from. start() resolves once the first list is in; onChange: look again. */
interface PodFeed {
  start(onChange: () => void): Promise<void>;
  list(): Promise<FedPod[]>;
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
    await this.informer.start();
  }

  /** Creates this node's Node when absent and marks it Ready with its InternalIP and pod CIDR. */
  private async registerNode(): Promise<void> {
    const name = this.cfg.node;
    const podCIDR = String((this.cfg.netconf.ipam as { podCIDR?: string } | undefined)?.podCIDR ?? '');
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
    for (const p of this.cache?.() ?? []) {
      let pod: Pod;
      try {
        pod = podFromApi(p);
      } catch (err) {
        log('pod not understood', { error: (err as Error).message });
        continue;
      }
      if (pod.spec.nodeName !== this.cfg.node) continue;
      out.push({
        pod,
        revision: p.metadata?.resourceVersion ?? '',
        writeStatus: async (status) => {
          const body = {
            status: {
              phase: status.phase,
              ...(status.podIP ? { podIP: status.podIP, podIPs: [{ ip: status.podIP }] } : {}),
              ...(this.cfg.nodeIP ? { hostIP: this.cfg.nodeIP, hostIPs: [{ ip: this.cfg.nodeIP }] } : {}),
              conditions: status.conditions.map((c) => ({ ...c, lastTransitionTime: new Date().toISOString() })),
              // What `kubectl get pods` counts in READY and shows in STATUS.
              containerStatuses: pod.spec.containers.map((c) => ({
                name: c.name,
                image: c.image ?? '',
                imageID: '',
                ready: isPodReady({ ...pod, status }),
                restartCount: 0,
                started: status.phase === 'Running',
                state: status.phase === 'Running' ? { running: { startedAt: new Date().toISOString() } } : { waiting: { reason: status.phase === 'Failed' ? 'CreateContainerError' : 'ContainerCreating' } },
              })),
            },
          };
          try {
            await this.core.patchNamespacedPodStatus({ namespace: pod.metadata.namespace, name: pod.metadata.name, body }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
          } catch (err) {
            if (apiCode(err) !== 404) throw new Error(`status of pod ${pod.metadata.namespace}/${pod.metadata.name}: ${apiMessage(err)}`);
          }
        },
      });
    }
    return out;
  }

  async stop(): Promise<void> {
    if (this.nodeTimer) clearInterval(this.nodeTimer);
    await this.informer?.stop().catch(() => undefined);
  }
}

/** Do two statuses say the same (phase, pod IP, conditions)? */
function sameStatus(a: Pod['status'], b: Pod['status']): boolean {
  const key = (s: Pod['status']): string => JSON.stringify([s.phase, s.podIP ?? null, s.conditions.map((c) => [c.type, c.status])]);
  return key(a) === key(b);
}

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

  constructor(readonly cfg: KubeletConfig) {
    this.feed = new ApiPodFeed(cfg, loadKubeConnection({ kubeconfig: cfg.kubeconfig }).kubeConfig);
    for (const r of readPodRecords(cfg.nodeDir)) this.pods.set(r.uid, r);
  }

  static fromFile(file: string): Kubelet {
    return new Kubelet(kubeletConfigSchema.parse(JSON.parse(readFileSync(file, 'utf8'))));
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
    const gone = [...this.pods.values()].filter((r) => !mine.has(r.uid) && !this.busy.has(r.uid));
    const byNetns = new Map(gone.map((r) => [r.netns, this.track(r.uid, () => this.teardown(r))]));
    for (const { pod, revision, writeStatus } of mine.values()) {
      const uid = pod.metadata.uid!;
      if (this.busy.has(uid) || this.isSettled(uid, revision)) continue;
      const before = byNetns.get(podNetnsName(this.cfg.netnsPrefix, pod.metadata.namespace, pod.metadata.name));
      void this.track(uid, async () => {
        await before;
        try {
          let rec = this.pods.get(uid);
          if (!rec) {
            const retry = this.retryAt.get(uid);
            if (retry && Date.now() < retry.at) return;
            // A bounded number of pods start at once; each holds its slot until it answers (or a deadline).
            rec = await this.inStartSlot(async () => {
              const created = await this.create(pod);
              if (created) {
                await this.superviseContainers(pod, created);
                await this.untilReady(pod, created);
              }
              return created;
            });
            if (!rec) return;
          }
          await this.superviseContainers(pod, rec);
          await this.writeStatus(pod, revision, rec, writeStatus);
        } catch (err) {
          log('pod sync failed', { pod: `${pod.metadata.namespace}/${pod.metadata.name}`, error: (err as Error).message });
        }
      });
    }
  }

  /** Ready with its status written at this modRevision, checked recently, and its processes still run: nothing to do. */
  private isSettled(uid: string, revision: string): boolean {
    const s = this.settled.get(uid);
    const rec = this.pods.get(uid);
    if (!s || !rec || s.revision !== revision || Date.now() - s.at > READY_RECHECK_MS) return false;
    return rec.containers.every((c) => sameProcessAlive({ pid: c.pid, startTime: c.startTime }));
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
  private async untilReady(pod: Pod, rec: PodRecord): Promise<void> {
    const end = Date.now() + START_READY_WAIT_MS;
    while (!this.stopped && Date.now() < end && !(await this.probe(pod, rec))) await sleep(50);
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

  private async create(pod: Pod): Promise<PodRecord | undefined> {
    const uid = pod.metadata.uid!;
    const { namespace, name } = pod.metadata;
    const netns = podNetnsName(this.cfg.netnsPrefix, namespace, name);
    const dir = join(this.cfg.nodeDir, 'pods', `${namespace}_${name}_${uid.slice(0, 8)}`);
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
    };
    // Recorded before anything exists, so a crash in between leaves a trace for `down`.
    writePodRecord(this.cfg.nodeDir, rec);
    this.pods.set(uid, rec);
    const t0 = Date.now();
    try {
      mkdirSync(dir, { recursive: true });
      await run(['ip', 'netns', 'add', netns]).catch(async (err: unknown) => {
        // A namespace of the same name left by a pod that was replaced while we were down.
        await run(['ip', 'netns', 'del', netns]);
        await run(['ip', 'netns', 'add', netns]).catch(() => {
          throw err;
        });
      });
      const etc = join('/etc/netns', netns);
      mkdirSync(etc, { recursive: true });
      writeFileSync(
        join(etc, 'resolv.conf'),
        `# cluster DNS of ${this.cfg.cluster} (lab ${this.cfg.lab})\nnameserver ${this.cfg.dnsIP}\nsearch ${namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n`,
      );
      const res = await this.cni('ADD', rec, pod);
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
      rec.ip = ip;
      writePodRecord(this.cfg.nodeDir, rec);
      this.retryAt.delete(uid);
      log('pod network ready', { pod: `${namespace}/${name}`, ip, netns, ms: Date.now() - t0 });
      return rec;
    } catch (err) {
      const attempts = (this.retryAt.get(uid)?.attempts ?? 0) + 1;
      const wait = Math.min(30_000, 500 * 2 ** attempts);
      this.retryAt.set(uid, { at: Date.now() + wait, attempts });
      log('pod create failed; retrying', { pod: `${namespace}/${name}`, error: (err as Error).message, retryInMs: wait });
      await this.teardown(rec);
      return undefined;
    }
  }

  private cni(command: 'ADD' | 'DEL', rec: PodRecord, pod?: Pod): Promise<PluginResult> {
    const type = String(this.cfg.netconf.type ?? 'clustermesh');
    const conf = {
      ...this.cfg.netconf,
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
    return new Promise((resolve, reject) => {
      const child = spawn(join(this.cfg.cniPath, type), [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.once('error', reject);
      // 'close', not 'exit': a plugin that exits right after writing may still have output in the pipe.
      child.once('close', (code) => resolve({ code, stdout, stderr }));
      child.stdin.end(JSON.stringify(conf));
    });
  }

  /** Starts containers that do not run (first start, or restart with backoff after an exit). */
  private async superviseContainers(pod: Pod, rec: PodRecord): Promise<void> {
    let changed = false;
    for (const c of pod.spec.containers) {
      let cr = rec.containers.find((x) => x.name === c.name);
      if (cr && sameProcessAlive({ pid: cr.pid, startTime: cr.startTime })) continue;
      const key = `${rec.uid}/${c.name}`;
      if (cr?.pid !== undefined) {
        // It exited: restart with backoff (restartPolicy Always).
        if (!this.restartAt.has(key)) {
          const wait = Math.min(30_000, 1000 * 2 ** Math.min(cr.restarts, 5));
          this.restartAt.set(key, Date.now() + wait);
          cr.exit = `exited at ${new Date().toISOString()}`;
          log('container exited; restarting', { pod: `${rec.namespace}/${rec.name}`, container: c.name, inMs: wait });
          changed = true;
        }
        if (Date.now() < this.restartAt.get(key)!) continue;
        this.restartAt.delete(key);
      }
      const argv = [...(c.command ?? []), ...(c.args ?? [])];
      const logFile = join(rec.dir, `${c.name}.log`);
      if (!cr) {
        cr = { name: c.name, logFile, restarts: 0 };
        rec.containers.push(cr);
      } else if (cr.pid !== undefined) cr.restarts++;
      if (argv.length === 0) {
        if (!rec.error) {
          rec.error = `container ${c.name} has no command (the lab runs programs of this machine, not images)`;
          log('pod cannot run', { pod: `${rec.namespace}/${rec.name}`, error: rec.error });
          changed = true;
        }
        continue;
      }
      const fd = openSync(logFile, 'a');
      try {
        const binDir = join(this.cfg.nodeDir, '..', '..', 'bin');
        // Held until its pid is in the pod record (src/util/held-start.ts): a kubelet killed
        // in between (lab down stops kubelets first) leaves no container nobody can find.
        const [cmd, ...args] = heldArgv(inCgroup(this.cfg.cgroup, ['ip', 'netns', 'exec', rec.netns, ...argv]));
        const child = spawn(cmd!, args, {
          stdio: ['pipe', fd, fd],
          detached: true,
          env: childEnv({
            PATH: `${binDir}:${process.env.PATH ?? '/usr/bin:/bin'}`,
            CLUSTERMESH_CLUSTER: this.cfg.cluster,
            CLUSTERMESH_NODE: this.cfg.node,
            CLUSTERMESH_POD: rec.name,
            CLUSTERMESH_NAMESPACE: rec.namespace,
            ...(rec.ip ? { POD_IP: rec.ip } : {}),
          }),
        });
        child.unref();
        await new Promise<void>((resolve) => {
          child.once('spawn', () => resolve());
          child.once('error', () => resolve());
        });
        if (child.pid !== undefined) {
          const started = cr;
          await recordThenRelease(child, (pid) => {
            started.pid = pid;
            started.startTime = processStartTime(pid);
            delete started.exit;
            writePodRecord(this.cfg.nodeDir, rec);
          });
          log('container started', { pod: `${rec.namespace}/${rec.name}`, container: c.name, pid: child.pid, argv });
        }
      } finally {
        closeSync(fd);
      }
      changed = true;
    }
    if (changed) writePodRecord(this.cfg.nodeDir, rec);
  }

  private async probe(pod: Pod, rec: PodRecord): Promise<boolean> {
    if (rec.error || !rec.ip) return false;
    for (const c of pod.spec.containers) {
      const cr = rec.containers.find((x) => x.name === c.name);
      if (!cr || !sameProcessAlive({ pid: cr.pid, startTime: cr.startTime })) return false;
    }
    const ports = pod.spec.containers.flatMap((c) => c.ports.filter((p) => p.protocol === 'TCP').map((p) => p.containerPort));
    for (const port of ports) if (!(await tcpOpen(rec.ip, port, 500))) return false;
    return true;
  }

  private async writeStatus(pod: Pod, revision: string, rec: PodRecord, write: FedPod['writeStatus']): Promise<void> {
    const ready = await this.probe(pod, rec);
    if (this.ready.get(rec.uid) !== ready) log(ready ? 'pod ready' : 'pod not ready', { pod: `${rec.namespace}/${rec.name}` });
    this.ready.set(rec.uid, ready);
    const status: Pod['status'] = rec.error
      ? { phase: 'Failed', ...(rec.ip ? { podIP: rec.ip } : {}), conditions: [{ type: 'Ready', status: 'False' }] }
      : rec.ip
        ? { phase: 'Running', podIP: rec.ip, conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }] }
        : { phase: 'Pending', conditions: [] };
    if (sameStatus(pod.status, status)) {
      if (ready) this.settled.set(rec.uid, { revision, at: Date.now() });
      return;
    }
    this.settled.delete(rec.uid);
    await write(status);
  }

  private async teardown(rec: PodRecord): Promise<void> {
    const t0 = Date.now();
    await Promise.all(rec.containers.map((c) => (c.pid !== undefined ? stopGroup({ pid: c.pid, startTime: c.startTime }) : undefined)));
    if (rec.ip !== undefined || rec.containers.length) {
      const res = await this.cni('DEL', rec).catch((err: unknown) => ({ code: -1, stdout: '', stderr: (err as Error).message }));
      if (res.code !== 0) log('CNI DEL failed (the namespace is removed anyway)', { pod: `${rec.namespace}/${rec.name}`, out: res.stdout + res.stderr });
    } else {
      // ADD may have got half way; DEL is idempotent.
      await this.cni('DEL', rec).catch(() => undefined);
    }
    await run(['ip', 'netns', 'del', rec.netns]).catch(() => undefined);
    rmSync(join('/etc/netns', rec.netns), { recursive: true, force: true });
    rmSync(rec.dir, { recursive: true, force: true });
    removePodRecord(this.cfg.nodeDir, rec.uid);
    this.pods.delete(rec.uid);
    this.ready.delete(rec.uid);
    this.settled.delete(rec.uid);
    for (const c of rec.containers) this.restartAt.delete(`${rec.uid}/${c.name}`);
    log('pod removed', { pod: `${rec.namespace}/${rec.name}`, ms: Date.now() - t0 });
  }
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
