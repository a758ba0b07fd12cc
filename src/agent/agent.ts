// `clustermesh agent`: the composition root. One per node, inside the node's
// network namespace. Wires the datapath, the local cluster source, the
// identity allocator, the remote-cluster import, the reconcilers and the
// local API; the logic lives in the modules it wires:
//
//   config.ts           settings, validated once
//   endpoints.ts        local endpoints (API add/delete, persisted, restored)
//   ipcache-desired.ts  desired ipcache from every source
//   store-publisher.ts  this node's Endpoint objects in the cluster's etcd
//   reconciler.ts       desired state → maps / store
//   resync-grace.ts     remote withdrawals held back while that remote resyncs
//   services.ts         Services and global services → the service maps
//   policy.ts           network policy → cm_policy / cm_policy_enforce
//   datapath.ts         the map targets and the datapath status
//   flows.ts, flow-reader.ts  the one reader of cm_events: flows kept for the API
//   api.ts, status.ts   the local API and what it reports
//
// Start order (restart without loss): the datapath first — maps pinned and
// reused, from_overlay replaced atomically — then the persisted endpoints
// re-adopted with their identities, so the maps' desired state is right for
// every local pod before anything is written; then the reconcilers start and
// only write differences, and prune nothing until every source (the local
// store, every remote cluster's canaries) has synced; healthz turns ready
// once the sources synced (or syncTimeoutSeconds passed) and a full pass ran.
// stop() keeps programs attached and maps pinned: traffic flows while the
// agent is down; SIGKILL leaves the same state behind.
//
// As the install's DaemonSet runs it: podCIDR and nodeIP may come from this
// node's Kubernetes Node (node-from-api.ts), the etcd endpoint may be the
// apiserver's Service name (etcd-service.ts), and with cniConfDir set the CNI
// network configuration is written once ready and removed by stop()
// (cni-conf.ts).
import { mkdir } from 'node:fs/promises';
import pino, { type Logger } from 'pino';
import promClient from 'prom-client';
import { ClusterMesh } from '../clustermesh/clustermesh.ts';
import { runCni } from '../cni/plugin.ts';
import { sleep, systemClock, type Clock, type TimerHandle } from '../util/clock.ts';
import type * as endpointsMap from '../datapath/maps/endpoints.ts';
import { NodeDatapath } from '../datapath/node.ts';
import { IdentityAllocator } from '../identity/allocator.ts';
import { KvClient } from '../kvstore/client.ts';
import type { Endpoint } from '../model/index.ts';
import { EndpointWriter, serviceBackendInput, type ClusterSource, type Unsubscribe } from '../sources/index.ts';
import { openLocalSource } from '../sources/local.ts';
import { startApiServer, startRemoteApiServer, type ApiHandlers, type ApiServer } from './api.ts';
import { AgentFlowNamer, FlowReader } from './flow-reader.ts';
import { agentRegistry, startMetricsServer } from './metrics.ts';
import { Buckets } from '../util/metrics.ts';
import { checkTlsPems, readTlsFiles, type TlsFileWatcher } from '../util/tls-files.ts';
import { AgentConfigError, resolveNodeConfig, type AgentConfig, type ResolvedAgentConfig } from './config.ts';
import { CniConfFile, cniConflist, underlayMtuOf } from './cni-conf.ts';
import { waitForNode } from './node-from-api.ts';
import { etcdThroughServices } from './etcd-service.ts';
import { readKubeAccess, type KubeAccessConnection } from '../sources/kubernetes/kube-access.ts';
import { KubeHttp } from '../sources/kubernetes/http.ts';
import { runPodStatusWriter, type PodStatusInput } from './pod-status.ts';
import { datapathStatus, endpointDatapath, endpointsTarget, ipcacheTarget, refusedByMap } from './datapath.ts';
import { EndpointManager } from './endpoints.ts';
import {
  IpcacheTable,
  clusterEndpointContributions,
  clusterNodeContributions,
  ownerKeys,
  remoteEndpointContributions,
  remoteNodeContributions,
  selfContributions,
  localNodeClaims,
  type Contribution,
  type IpcacheEntry,
} from './ipcache-desired.ts';
import { Reconciler } from './reconciler.ts';
import { ResyncGrace } from './resync-grace.ts';
import { ServiceManager } from './services.ts';
import { PolicyManager, policyTargets, restoredCidrIdentities, type LocalEndpointView } from './policy.ts';
import { remoteSummary, waitingFor, type AgentPhase, type AgentStatus, type LocalSyncStatus } from './status.ts';
import { publishKeys, samePublished, storeTarget } from './store-publisher.ts';

export interface AgentDeps {
  logger?: Logger;
  clock?: Clock;
  /** The local cluster source (default: the Kubernetes API, Endpoint objects from the cluster's etcd: openLocalSource). */
  source?: ClusterSource;
}

export interface Agent {
  readonly config: ResolvedAgentConfig;
  /** Resolves when healthz turns ready. */
  readonly ready: Promise<void>;
  status(): AgentStatus;
  /** Stops the agent; programs stay attached and maps pinned (traffic keeps flowing). */
  stop(): Promise<void>;
}

/** The kinds of the local source the agent needs listed before it may prune. */
const LOCAL_KINDS = ['Node', 'Endpoint', 'Namespace', 'Service', 'Pod'] as const;

/** The local cluster's key in its ResyncGrace (no remote cluster has this name). */
const LOCAL_SOURCE = '(local)';
/** Deletions of local objects after a local kvstore failure are held this long at least (the watch's longest backoff is 10 s). */
const LOCAL_RESYNC_GRACE_MS = 10_000;

export async function startAgent(config: AgentConfig, deps: AgentDeps = {}): Promise<Agent> {
  const log = deps.logger ?? pino({ name: 'clustermesh-agent', level: config.logLevel });
  const clock = deps.clock ?? systemClock;
  // The Kubernetes API (config `kubeconfig`, else KUBECONFIG, the in-cluster service account, ~/.kube/config), opened when first needed.
  let kubeConn: KubeAccessConnection | undefined;
  const kube = (why: string, setting: string): KubeAccessConnection => {
    try {
      return (kubeConn ??= readKubeAccess(config.kubeconfig !== undefined ? { kubeconfig: config.kubeconfig } : {}));
    } catch (err) {
      throw new AgentConfigError(config.file ?? 'flags', setting, `${why}, but ${(err as Error).message}`);
    }
  };
  const cfg = await resolveNodeConfig(config, {
    node: async (need) => {
      const setting = need.podCIDR ? 'podCIDR' : 'nodeIP';
      const conn = kube(`is not set, so it is read from Node ${config.nodeName} in the Kubernetes API`, setting);
      log.info({ node: config.nodeName, api: conn.server, podCIDR: need.podCIDR, nodeIP: need.internalIP }, 'reading this node\'s addressing from its Kubernetes Node');
      return await waitForNode(new KubeHttp(conn.access), { nodeName: config.nodeName, need, timeoutMs: config.nodeWaitTimeoutMs, log, clock });
    },
  });
  const self = { nodeName: cfg.nodeName, nodeIP: cfg.nodeIP, podCIDR: cfg.podCIDR };
  const startedAt = new Date(clock.now()).toISOString();
  let phase: AgentPhase = 'starting';
  let readyAt: string | null = null;
  const initialSync = { done: false, timedOut: false, waitedMs: null as number | null };
  const stopCtl = new AbortController();
  const cleanups: Array<() => unknown> = [];
  const runCleanups = async (): Promise<void> => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'shutdown step failed');
      }
    }
  };

  log.info({ cluster: cfg.clusterName, clusterID: cfg.clusterID, node: cfg.nodeName, nodeIP: cfg.nodeIP, podCIDR: cfg.podCIDR, pinDir: cfg.pinDir }, 'agent starting');
  await mkdir(cfg.stateDir, { recursive: true, mode: 0o700 });

  // ---- datapath: reuse pins, replace from_overlay atomically
  const dp = new NodeDatapath({
    nodeName: cfg.nodeName,
    nodeIP: cfg.nodeIP,
    clusterID: cfg.clusterID,
    vxlanDevice: cfg.vxlanDevice,
    tunnelPort: cfg.tunnelPort,
    pinDir: cfg.pinDir,
    redirectPeer: cfg.redirectPeer,
    traceForward: cfg.traceForwards,
    traceNew: cfg.traceNewConnections,
    ...(cfg.objectsDir !== undefined ? { objectsDir: cfg.objectsDir } : {}),
    ...(cfg.eventsRingBytes !== undefined ? { eventsRingBytes: cfg.eventsRingBytes } : {}),
    mapSizes: cfg.mapSizes,
    ...(cfg.socketLBCgroup !== undefined ? { socketLBCgroup: cfg.socketLBCgroup } : {}),
    routingMode: cfg.routingMode,
    nativeRoutingCIDRs: cfg.nativeRoutingCIDRs,
    tunnelEncap: cfg.tunnelEncap,
    tcAttach: cfg.tcAttach,
  });
  await dp.start();
  cleanups.push(() => dp.stop({ detach: false }));
  for (const r of dp.replacedPins)
    log.warn(
      { map: r.map, pinned: r.pinned, wanted: r.wanted, ...(r.carriedOver ? { carriedOver: r.carriedOver } : {}), ...(r.renamedTo ? { renamedTo: r.renamedTo } : {}) },
      r.renamedTo
        ? `pinned map of an older version: replaced by ${r.renamedTo} and removed${r.carriedOver ? ', its live entries carried over as far as they fit' : ''}`
        : r.carriedOver
          ? 'pinned conntrack table had another definition (an upgrade or a changed mapSizes): replaced by a new one, its live entries carried over as far as they fit'
          : 'pinned map had another definition (an upgrade or a changed mapSizes): replaced by a new, empty one, refilled by the reconcilers',
    );

  try {
    // ---- control-plane clients
    // An endpoint named by a Kubernetes Service (the install's) is reached through the API's EndpointSlices, not DNS.
    const etcdConn = await etcdThroughServices(cfg.etcd, () => new KubeHttp(kube('names a Kubernetes Service, resolved through the Kubernetes API', 'etcd.endpoints').access), log.child({ component: 'etcd-service' }));
    cleanups.push(() => Promise.all(etcdConn.proxies.map((p) => p.close())));
    const kv = new KvClient(etcdConn.etcd, { sessionTtlSeconds: cfg.sessionTtlSeconds });
    cleanups.push(() => kv.close());
    // Set once the ResyncGrace below exists; a source failure before that has nothing to hold back yet.
    let localGrace: ResyncGrace | undefined;
    let localSettled: TimerHandle | undefined;
    const onLocalSourceError = (kind: string): void => {
      if (kind !== 'Endpoint' && kind !== 'Node') return;
      localGrace?.observe(LOCAL_SOURCE, 'disconnected');
      // Past the watch's longest retry backoff without another failure: the re-list has run; the grace window starts.
      if (localSettled) clock.clearTimeout(localSettled);
      localSettled = clock.setTimeout(() => localGrace?.observe(LOCAL_SOURCE, 'ready'), LOCAL_RESYNC_GRACE_MS);
    };
    cleanups.push(() => {
      if (localSettled) clock.clearTimeout(localSettled);
    });
    // The local source: the Kubernetes API (config `kubeconfig`, else KUBECONFIG or the in-cluster service account), Endpoint objects from etcd.
    const local = deps.source
      ? { source: deps.source, description: deps.source.type }
      : openLocalSource(kv, {
          kubeconfig: cfg.kubeconfig,
          onProblem: (p) => log.warn({ kind: p.kind, key: p.key }, `local source: ${p.message}`),
          onError: (kind, err) => {
            log.warn({ kind, err: err.message }, 'local source watch failed; re-listing');
            onLocalSourceError(kind);
          },
          onHandlerError: (kind, err) => log.error({ kind, err: (err as Error).stack }, 'local source handler failed'),
          clock,
        });
    const source: ClusterSource = local.source;
    log.info({ source: local.description }, 'local cluster source');
    // This node's Node object is the kubelet's (registered in the API); only Endpoints are published to etcd.
    const writer = new EndpointWriter(kv);
    const allocator = new IdentityAllocator({
      kv,
      cluster: cfg.clusterName,
      clusterId: cfg.clusterID,
      maxConnectedClusters: cfg.maxConnectedClusters,
      user: cfg.nodeName,
      clock,
      onError: (err) => log.warn({ err: (err as Error).message }, 'identity reference maintenance failed'),
    });
    cleanups.push(() => allocator.close());
    const mesh = new ClusterMesh({
      localCluster: { name: cfg.clusterName, id: cfg.clusterID, maxConnectedClusters: cfg.maxConnectedClusters },
      configDir: cfg.clustermeshConfigDir,
      clock,
      logger: log.child({ component: 'clustermesh' }),
      heartbeatStaleMs: cfg.remoteHeartbeatStaleMs,
      ...(cfg.clustermeshCache ? { cache: { client: kv } } : {}),
    });

    // ---- sync state (what pruning waits for)
    const localKinds = (): Record<string, boolean> => Object.fromEntries(LOCAL_KINDS.map((k) => [k, source.resource(k).synced]));
    const localStatus = (): LocalSyncStatus => {
      const kinds = localKinds();
      return {
        source: source.type,
        synced: Object.values(kinds).every(Boolean),
        kinds,
        counts: { nodes: source.nodes.list().length, endpoints: source.endpoints.list().length, namespaces: source.namespaces.list().length },
      };
    };
    let meshStarted = false;
    // Asked before every prune and every 250 ms: no full status (O(entries) at hundreds of remotes), no list copies.
    const unsynced = (): string[] => (meshStarted ? waitingFor(localKinds(), mesh.unsyncedRemotes()) : ['the remote-cluster config directory']);
    const pruneBlocker = (): string | null => {
      const w = unsynced();
      return w.length ? `waiting for ${w.join(', ')} to sync` : null;
    };
    let restored = false;

    // ---- reconcilers
    const recOpts = { clock, fullSyncIntervalMs: cfg.fullSyncIntervalMs };
    const onRecError = (name: string) => (key: string | null, err: unknown, attempt: number) =>
      log.warn({ reconciler: name, key, attempt, err: (err as Error).message }, 'reconcile failed; retrying with backoff');
    // Propagation delay of remote endpoints: from the watch event's receipt to the cm_ipcache write.
    const remoteReceivedAt = new Map<string, { cluster: string; at: number }>();
    const propagation = new Map<string, Buckets>();
    const ipcacheRec = new Reconciler<IpcacheEntry>({
      name: 'ipcache',
      target: ipcacheTarget(dp),
      pruneBlocker,
      onError: onRecError('ipcache'),
      onApplied: (prefix) => {
        const r = remoteReceivedAt.get(prefix);
        if (!r) return;
        remoteReceivedAt.delete(prefix);
        let b = propagation.get(r.cluster);
        if (!b) propagation.set(r.cluster, (b = new Buckets()));
        b.observe(Math.max(0, clock.now() - r.at) / 1000);
      },
      ...recOpts,
    });
    const endpointsRec = new Reconciler<endpointsMap.Value>({
      name: 'endpoints',
      target: endpointsTarget(dp),
      pruneBlocker: () => (restored ? null : 'restoring endpoints'),
      onError: onRecError('endpoints'),
      ...recOpts,
    });
    const publisher = new Reconciler<Endpoint>({
      name: 'store',
      target: storeTarget(source, writer, cfg.nodeName),
      equals: samePublished,
      pruneBlocker: () => (source.endpoints.synced ? null : 'waiting for the Endpoint objects in etcd to sync'),
      backoff: { initialMs: 200, maxMs: 10_000 },
      onError: onRecError('store'),
      ...recOpts,
    });
    const reconcilers = [ipcacheRec, endpointsRec, publisher] as const;
    cleanups.push(() => Promise.all(reconcilers.map((r) => r.stop())));

    const grace = new ResyncGrace({ graceMs: cfg.remoteResyncGraceMs, clock });
    cleanups.push(() => grace.stop());
    // The same for this cluster's own Endpoint and Node objects: after the local kvstore failed
    // (possibly coming back empty, then refilled by each node re-publishing), a re-list prunes what
    // is not there *yet*. Deletions while the local source re-lists, and for a while after its last
    // failure, are held back; a re-publish cancels them. A pod deleted in a healthy store goes at once.
    localGrace = new ResyncGrace({ graceMs: cfg.remoteResyncGraceMs > 0 ? Math.max(cfg.remoteResyncGraceMs, LOCAL_RESYNC_GRACE_MS) : 0, clock });
    localGrace.observe(LOCAL_SOURCE, 'ready');
    cleanups.push(() => localGrace?.stop());
    /** Follows every remote's state changes (remotes come and go with the config dir). */
    const followed = new WeakSet<object>();
    const followRemotes = (): void => {
      for (const r of mesh.status().remotes) {
        const remote = mesh.remote(r.name);
        if (!remote || followed.has(remote)) continue;
        followed.add(remote);
        grace.observe(r.name, r.state);
        remote.onStatus((s) => grace.observe(r.name, s.state));
      }
    };

    /** Policy and services write nothing derived from half-listed sources. */
    const mayProgram = (): boolean => initialSync.done || (meshStarted && unsynced().length === 0);
    const table = new IpcacheTable({ upsert: (p, v) => ipcacheRec.upsert(p, v), remove: (p) => ipcacheRec.remove(p) });
    // Network policy: written once the local policy kinds are listed; sees endpoint changes through the tap below.
    const policyMaps = policyTargets(dp);
    const policy = new PolicyManager({
      clusterName: cfg.clusterName,
      policyDefaultLocalCluster: cfg.policyDefaultLocalCluster,
      source,
      remoteIdentities: mesh.identities,
      remoteEndpoints: mesh.ipcache,
      localEndpoints: (): LocalEndpointView[] => endpoints.list(),
      targets: { policy: policyMaps.policy, enforce: policyMaps.enforce, cidr: policyMaps.cidr },
      gcPolicyCt: policyMaps.gcPolicyCt,
      restoredCidrIdentities: restoredCidrIdentities(dp),
      pruneBlocker,
      canWrite: mayProgram,
      log: log.child({ component: 'policy' }),
      clock,
      fullSyncIntervalMs: cfg.fullSyncIntervalMs,
      onReconcileError: onRecError,
    });
    cleanups.push(() => policy.stop());
    table.setOwner(ownerKeys.self(), selfContributions(self));
    // What no remote may claim: this cluster's pod CIDRs and node addresses (this node's now, the others' from their Node objects).
    mesh.setLocalNode(cfg.nodeName, { cidrs: [cfg.podCIDR], addresses: [cfg.nodeIP] });

    // ---- endpoints: restored before anything is written
    const endpoints = new EndpointManager({
      clusterName: cfg.clusterName,
      nodeName: cfg.nodeName,
      nodeIP: cfg.nodeIP,
      podCIDR: cfg.podCIDR,
      stateDir: cfg.stateDir,
      datapath: endpointDatapath(dp, cfg.vxlanDevice),
      identities: allocator,
      namespaceLabels: (ns) => source.namespaces.get({ name: ns })?.metadata.labels,
      podLabels: (namespace, name) => source.pods.get({ namespace, name })?.metadata.labels,
      labelsKnown: () => source.namespaces.synced && source.pods.synced,
      // Before an endpoint's (new) identity reaches the maps: the policy has its entries written.
      policySettled: async () => {
        policy.syncEndpoints();
        if (policy.synced) await policy.whenIdle(5000);
      },
      endpointsMap: policy.tapEndpointsMap(endpointsRec),
      ipcache: table,
      ipcacheMap: ipcacheRec,
      publisher,
      log: log.child({ component: 'endpoints' }),
      clock,
    });
    cleanups.push(() => endpoints.stop());
    await endpoints.recover();
    restored = true;

    // ---- services: ids re-adopted from the pinned maps; nothing programmed before the sources synced
    const services = new ServiceManager({
      clusterName: cfg.clusterName,
      clusterId: cfg.clusterID,
      services: source.services,
      backends: serviceBackendInput(source),
      mesh,
      maps: () => dp.maps,
      canProgram: mayProgram,
      pruneBlocker,
      cacheTTLMs: cfg.serviceCacheTTLMs,
      fullSyncIntervalMs: cfg.fullSyncIntervalMs,
      clock,
      log: log.child({ component: 'services' }),
      onReconcileError: onRecError,
    });
    const adopted = services.adoptIds();
    if (adopted.services + adopted.backends > 0) log.info(adopted, 'service and backend ids adopted from the pinned maps');
    cleanups.push(() => services.stop());

    // An address changing identity (a pod relabelled on another node or in another cluster): the
    // policy takes the new identity first (its verdicts written), then the ipcache classifies the
    // address with it — the fail-closed order. A later event for the same owner supersedes a waiting one.
    let ipcacheSeq = 0;
    const waitingOwners = new Map<string, number>();
    const setOwnerPolicyFirst = (owner: string, contributions: Contribution[]): void => {
      const changes = contributions.some((c) => {
        const cur = table.get(c.prefix);
        return cur !== undefined && cur.identity !== c.entry.identity;
      });
      if (!changes || !policy.synced) {
        waitingOwners.delete(owner);
        table.setOwner(owner, contributions);
        return;
      }
      const seq = ++ipcacheSeq;
      waitingOwners.set(owner, seq);
      void (async () => {
        await Promise.resolve(); // the policy's own watcher of the same event runs first
        await policy.whenIdle(5000);
        if (waitingOwners.get(owner) !== seq) return;
        waitingOwners.delete(owner);
        table.setOwner(owner, contributions);
      })();
    };
    const removeOwner = (owner: string): void => {
      waitingOwners.delete(owner);
      table.removeOwner(owner);
    };

    // ---- sources → desired state (event-driven; each change is one incremental update)
    const subs: Unsubscribe[] = [
      source.endpoints.watch((ev) => {
        if (ev.kind === 'synced') return;
        const owner = ownerKeys.clusterEndpoint(ev.object.metadata.namespace, ev.object.metadata.name);
        if (ev.kind === 'upsert') {
          localGrace!.claim(owner);
          setOwnerPolicyFirst(owner, clusterEndpointContributions(ev.object, self));
        } else localGrace!.withdraw(owner, LOCAL_SOURCE, () => removeOwner(owner));
      }),
      source.nodes.watch((ev) => {
        if (ev.kind === 'synced') return;
        const owner = ownerKeys.clusterNode(ev.object.metadata.name);
        if (ev.kind === 'upsert') {
          localGrace!.claim(owner);
          table.setOwner(owner, clusterNodeContributions(ev.object, self));
        } else localGrace!.withdraw(owner, LOCAL_SOURCE, () => table.removeOwner(owner));
        if (ev.object.metadata.name === cfg.nodeName) return;
        if (ev.kind === 'upsert') mesh.setLocalNode(ev.object.metadata.name, localNodeClaims(ev.object));
        else mesh.removeLocalNode(ev.object.metadata.name);
      }),
      // Labels follow the cluster while pods run: a relabelled namespace or pod gets its new identity.
      source.namespaces.watch((ev) => {
        if (ev.kind !== 'synced') endpoints.refreshNamespace(ev.object.metadata.name);
      }),
      source.pods.watch((ev) => {
        if (ev.kind === 'upsert') endpoints.refreshPod(ev.object.metadata.namespace, ev.object.metadata.name);
      }),
      // What this node publishes, deleted or changed in the store behind its back
      // (the store came back empty, someone deleted it): written again at once.
      source.endpoints.watch((ev) => {
        if (ev.kind === 'synced') return;
        const key = publishKeys.endpoint(ev.object.metadata.namespace, ev.object.metadata.name);
        const want = publisher.desired.get(key);
        if (!want) return;
        if (ev.kind === 'delete' || (ev.object.status.networking.nodeName === cfg.nodeName && !samePublished(want, ev.object))) publisher.refresh([key]);
      }),
      // Remote state: withdrawals held back briefly while that remote resyncs (resync-grace.ts).
      mesh.ipcache.subscribe((ev) => {
        const owner = ownerKeys.remoteEndpoint(ev.key);
        if (ev.kind === 'upsert') {
          grace.claim(owner);
          const contributions = remoteEndpointContributions(ev.value);
          const at = clock.now();
          // Only changes the map will see (an unchanged entry is never written, so never measured).
          for (const c of contributions) if (JSON.stringify(table.get(c.prefix)) !== JSON.stringify(c.entry)) remoteReceivedAt.set(c.prefix, { cluster: ev.value.cluster, at });
          setOwnerPolicyFirst(owner, contributions);
        } else grace.withdraw(owner, ev.previous.cluster, () => removeOwner(owner));
      }),
      mesh.nodes.subscribe((ev) => {
        const owner = ownerKeys.remoteNode(ev.key);
        if (ev.kind === 'upsert') {
          grace.claim(owner);
          table.setOwner(owner, remoteNodeContributions(ev.value));
        } else grace.withdraw(owner, ev.previous.cluster, () => table.removeOwner(owner));
      }),
    ];
    subs.push(...services.subscribe());
    cleanups.push(() => subs.forEach((u) => u()));

    // Writing starts now: differences only, nothing pruned until the sources have synced.
    await endpointsRec.start();
    await ipcacheRec.start();
    void publisher.start().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'store publisher: first pass failed; retrying'));
    await services.start();
    policy.start();

    // The etcd session lost (etcd came back empty, or was away longer than the
    // session TTL): whatever this node wrote may be gone; write it all again now
    // rather than at the next full pass.
    void (async () => {
      let delay = 500;
      while (!stopCtl.signal.aborted) {
        let session;
        try {
          session = await kv.lease();
          delay = 500;
        } catch {
          if (!(await sleep(clock, delay, stopCtl.signal))) return;
          delay = Math.min(delay * 2, 10_000);
          continue;
        }
        const lost = await new Promise<boolean>((resolve) => {
          if (session.lost) return resolve(true);
          session.once('lost', () => resolve(true));
          stopCtl.signal.addEventListener('abort', () => resolve(false), { once: true });
        });
        if (!lost || stopCtl.signal.aborted) return;
        log.warn('etcd session lost; writing what this node publishes again');
        publisher.refresh();
      }
    })();

    // ---- flows: this agent is the one reader of the node's event ring buffer
    const flowReader = new FlowReader(
      { events: dp.maps.events, metrics: dp.maps.metrics, retiredEvents: dp.takeRetiredEvents() },
      new AgentFlowNamer({
        cluster: cfg.clusterName,
        clusterID: cfg.clusterID,
        maxConnectedClusters: cfg.maxConnectedClusters,
        nodeName: cfg.nodeName,
        localEndpoints: () => endpoints.list(),
        clusterEndpoints: () => source.endpoints.list(),
        clusterNodes: () => source.nodes.list(),
        remoteIpcache: mesh.ipcache,
        remoteIdentities: mesh.identities,
        remoteNodes: mesh.nodes,
      }),
      cfg.flowBufferSize,
      log.child({ component: 'flows' }),
    );
    flowReader.start();
    cleanups.push(() => flowReader.close());

    const allReconcilers = () => [...reconcilers, ...services.reconcilerList, ...policy.reconcilers];

    // ---- Prometheus metrics (read at scrape time); a port in use is reported, not fatal
    const metricsState: { address: string | null; error: string | null } = { address: null, error: null };
    if (cfg.metricsAddress !== '') {
      const registry = agentRegistry({
        datapath: () => dp.metrics(),
        maps: () => datapathStatus(dp, [], refusedByMap(allReconcilers().map((r) => r.status()), dp)).maps,
        socketLB: () => dp.socketLB().stats,
        remotes: () => mesh.status().remotes.map(remoteSummary),
        flows: () => flowReader.status(),
        reconcilers: allReconcilers,
        propagation: () => propagation,
      });
      try {
        // GET /readyz: what the unix socket's /healthz says (the install's readinessProbe, an httpGet at the node's loopback).
        const server = await startMetricsServer(cfg.metricsAddress, [promClient.register, registry], { ready: () => phase === 'ready' || `phase ${phase}` });
        metricsState.address = server.address;
        cleanups.push(() => server.close());
        log.info({ address: server.address }, 'metrics served on /metrics');
      } catch (err) {
        metricsState.error = `${cfg.metricsAddress}: ${(err as Error).message}`;
        log.warn({ address: cfg.metricsAddress, err: (err as Error).message }, 'metrics endpoint not started');
      }
    }

    // ---- the local API (the CNI may add endpoints while the sources sync)
    const remoteApiState: { address: string | null; error: string | null } = { address: null, error: null };
    let remoteApiCerts: TlsFileWatcher | undefined;
    const status = (): AgentStatus => {
      const ms = mesh.status();
      const recs = allReconcilers().map((r) => r.status());
      return {
        node: { name: cfg.nodeName, cluster: cfg.clusterName, clusterID: cfg.clusterID, nodeIP: cfg.nodeIP, podCIDR: cfg.podCIDR },
        phase,
        ready: phase === 'ready',
        startedAt,
        readyAt,
        initialSync: { ...initialSync, waitingFor: unsynced() },
        local: localStatus(),
        remoteClusters: ms.remotes.map(remoteSummary),
        clustermesh: { ready: ms.ready, configDir: ms.configDir, configErrors: ms.configErrors, counts: ms.counts, ipConflicts: ms.ipConflicts, ownership: ms.ownership, resyncGrace: grace.status() },
        reconcilers: recs,
        endpoints: endpoints.status(),
        services: services.status(),
        policy: policy.status(),
        datapath: datapathStatus(
          dp,
          endpoints.list().map((e) => e.hostIfName),
          refusedByMap(recs, dp),
        ),
        flows: flowReader.status(),
        metrics: metricsState,
        ...(cfg.remoteApi ? { remoteApi: { ...remoteApiState, certificateError: remoteApiCerts?.lastError?.message ?? null } } : {}),
      };
    };
    const handlers: ApiHandlers = {
        addEndpoint: (id, body) => endpoints.add(id, body),
        deleteEndpoint: (id) => endpoints.delete(id),
        listEndpoints: () => endpoints.list(),
        listServices: () => services.list(),
        policy: () => policy.inspect(),
        status,
        health: () => ({ ready: phase === 'ready', phase }),
        flows: (q) => {
          flowReader.consume();
          return flowReader.store.query(q);
        },
        followFlows: (w, q) => flowReader.store.follow(w, q),
        // The plugin executable's requests: the plugin's work runs here, its agent calls are these handlers.
        cni: (env, stdin) =>
          runCni(env, stdin, () => ({
            socketPath: cfg.socketPath,
            health: async () => ({ ready: phase === 'ready', phase }),
            putEndpoint: (id, body) => endpoints.add(id, body),
            deleteEndpoint: (id) => endpoints.delete(id),
            listEndpoints: async () => endpoints.list(),
            close: () => undefined,
          })),
    };
    const api: ApiServer = await startApiServer(cfg.socketPath, handlers, log.child({ component: 'api' }));
    cleanups.push(() => api.close());
    // ---- its summary in its Pod's annotation, for `clustermesh status --context` (pod-status.ts)
    if (cfg.statusPod) {
      const http = new KubeHttp(kube('statusPod is set (the status summary goes into that Pod through the Kubernetes API)', 'statusPod').access);
      const brief = (): PodStatusInput => {
        const ms = mesh.brief();
        return { node: { name: cfg.nodeName, cluster: cfg.clusterName }, phase, ready: phase === 'ready', remoteClusters: ms.remotes, clustermesh: ms };
      };
      void runPodStatusWriter({ http, pod: cfg.statusPod, status: brief, clock, log: log.child({ component: 'pod-status' }), signal: stopCtl.signal }).catch((err: unknown) => log.error({ err: (err as Error).message }, 'status annotation writer stopped'));
    }

    // ---- the read-only API over mutual TLS on the node's address (remoteApi); like metrics, a failure is reported, not fatal
    if (cfg.remoteApi) {
      const r = cfg.remoteApi;
      const host = r.address ?? cfg.nodeIP;
      try {
        // The files of a mounted Secret: read again every 10 s, a rotated certificate is served to new connections.
        const files = { caFile: r.caFile, certFile: r.certFile, keyFile: r.keyFile };
        const pems = await readTlsFiles(files);
        checkTlsPems(files, pems);
        const server = await startRemoteApiServer({ host, port: r.port, ...pems, clients: r.clients, reload: { files } }, handlers, log.child({ component: 'remote-api' }));
        remoteApiState.address = server.address;
        remoteApiCerts = server.certificates;
        cleanups.push(() => server.close());
        log.info({ address: server.address, clients: r.clients }, 'read-only API served with mutual TLS');
      } catch (err) {
        remoteApiState.error = `${host}:${r.port}: ${(err as Error).message}`;
        log.warn({ address: `${host}:${r.port}`, err: (err as Error).message }, 'remote API not started');
      }
    }

    // ---- sources
    await source.start();
    cleanups.push(() => (deps.source ? undefined : source.stop()));
    await mesh.start();
    await mesh.rescan();
    meshStarted = true;
    cleanups.push(() => mesh.stop()); // keeps what was learned
    followRemotes();
    void (async () => {
      while (await sleep(clock, 200, stopCtl.signal)) followRemotes();
    })();
    phase = 'syncing';

    // ---- initial sync (bounded), then a full pass by difference
    const syncStart = clock.now();
    let resolveReady!: () => void;
    let rejectReady!: (err: unknown) => void;
    const ready = new Promise<void>((resolve, reject) => {
      resolveReady = resolve;
      rejectReady = reject;
    });
    ready.catch((err: unknown) => log.error({ err: (err as Error).message }, 'initial reconcile failed'));
    void (async () => {
      while (unsynced().length > 0 && clock.now() - syncStart < cfg.syncTimeoutMs) {
        if (!(await sleep(clock, 25, stopCtl.signal))) return;
      }
      initialSync.waitedMs = clock.now() - syncStart;
      initialSync.timedOut = unsynced().length > 0;
      initialSync.done = true;
      if (initialSync.timedOut)
        log.warn({ waitingFor: unsynced(), timeoutMs: cfg.syncTimeoutMs }, 'initial sync timed out; going ahead without pruning until those sources sync');
      await Promise.all([ipcacheRec.fullSync(), endpointsRec.fullSync(), services.fullSync()]);
      if (stopCtl.signal.aborted) return;
      phase = 'ready';
      readyAt = new Date(clock.now()).toISOString();
      log.info({ waitedMs: initialSync.waitedMs, endpoints: endpoints.size, ipcache: table.size }, 'agent ready');
      resolveReady();

      // A source that syncs late (or again, after a remote was re-added) unblocks
      // pruning: run a full pass at that moment, not a period later.
      let wasBlocked = pruneBlocker() !== null;
      while (await sleep(clock, 250, stopCtl.signal)) {
        const blocked = pruneBlocker() !== null;
        if (wasBlocked && !blocked) {
          log.info('every source synced; pruning stale entries');
          await ipcacheRec.fullSync().catch(() => undefined);
          await services.fullSync().catch(() => undefined);
        }
        wasBlocked = blocked;
      }
    })().catch(rejectReady);

    let stopping: Promise<void> | undefined;
    // ---- the CNI network configuration: written once ready (the runtime then sends pods here), removed by stop()
    const cniConf = cfg.cniConfDir !== undefined ? new CniConfFile(cfg.cniConfDir, cfg.cniConfName) : undefined;
    let cniWriting: Promise<unknown> = Promise.resolve();
    if (cniConf) {
      void (async () => {
        try {
          await ready;
        } catch {
          return;
        }
        const mtu = await underlayMtuOf(cfg.nodeIP);
        // Checked again now and then: a file changed or deleted behind the agent's back is rewritten.
        do {
          if (stopCtl.signal.aborted) return;
          try {
            const wrote = cniConf.write(cniConflist(cfg, mtu));
            cniWriting = wrote.catch(() => undefined);
            if (await wrote) log.info({ file: cniConf.path, type: cfg.cniBinaryName, podCIDR: cfg.podCIDR, underlayMtu: mtu }, 'CNI network configuration written');
          } catch (err) {
            log.error({ file: cniConf.path, err: (err as Error).message }, 'cannot write the CNI network configuration; retrying');
          }
        } while (await sleep(clock, 10_000, stopCtl.signal));
      })();
    }
    return {
      config: cfg,
      ready,
      status,
      stop: () =>
        (stopping ??= (async () => {
          phase = 'stopping';
          log.info('agent stopping; programs stay attached and maps pinned');
          stopCtl.abort();
          rejectReady(new Error('agent stopped before it was ready'));
          // First, so the runtime sends no new pod to an agent going away.
          if (cniConf) await cniWriting.then(() => cniConf.remove()).then(() => log.info({ file: cniConf.path }, 'CNI network configuration removed'), (err: unknown) => log.warn({ file: cniConf.path, err: (err as Error).message }, 'cannot remove the CNI network configuration'));
          await runCleanups();
          log.info('agent stopped');
        })()),
    };
  } catch (err) {
    stopCtl.abort();
    await runCleanups();
    throw err;
  }
}
