// The lab's controllers (test-bed code): what kube-controller-manager does for
// the kinds the lab runs, as clients of a cluster's Kubernetes API with
// @kubernetes/client-node. `lab up` runs them inside each cluster's
// kube-apiserver process (src/lab/kube-apiserver.ts); tests start them beside
// a server of their own.
//
// Informers on Deployments, Pods, Services and EndpointSlices only say what
// to look at again (see runtime.ts):
//   Deployment         -> that Deployment
//   DaemonSet          -> that DaemonSet
//   Pod                -> its controlling Deployment or DaemonSet; every Service of its namespace
//   Service            -> that Service
//   EndpointSlice      -> the Service it is labelled with
//   Pod without a node -> a scheduling pass over every such pod (scheduler.ts; only with `scheduler: true`)
//   Node               -> a scheduling pass when a pod waits for a node; every DaemonSet
//   Namespace          -> that namespace's `default` ServiceAccount (serviceaccount.ts)
//   ServiceAccount     -> its namespace (a deleted `default` is made again)
// and every key is looked at again every `resyncMs` (default 30 s).
import { AppsV1Api, CoreV1Api, DiscoveryV1Api, KubeConfig, type V1DaemonSet, type V1Deployment, type V1EndpointSlice, type V1Namespace, type V1Node, type V1Pod, type V1Service, type V1ServiceAccount } from '@kubernetes/client-node';
import { DaemonSetController } from './daemonset.ts';
import { DeploymentController } from './deployment.ts';
import { EndpointSliceController, SERVICE_NAME_LABEL } from './endpointslice.ts';
import { SchedulerController, needsScheduling } from './scheduler.ts';
import { ServiceAccountController } from './serviceaccount.ts';
import { WorkQueue, keyOf, log, watchKind } from './runtime.ts';

export { DeploymentController, POD_TEMPLATE_HASH, podTemplateHash } from './deployment.ts';
export { DaemonSetController, CONTROLLER_REVISION_HASH, daemonSetHash, daemonSetMaxUnavailable, nodeMatches } from './daemonset.ts';
export { SchedulerController, pickNode, needsScheduling, isNodeReady } from './scheduler.ts';
export { ServiceAccountController, DEFAULT_SERVICE_ACCOUNT } from './serviceaccount.ts';
export { EndpointSliceController, desiredSlices, resolvePorts, SERVICE_NAME_LABEL, MANAGED_BY, MANAGED_BY_LABEL } from './endpointslice.ts';

export interface ControllersOptions {
  resyncMs?: number;
  /** Also run the scheduler: pods without spec.nodeName are bound to a Ready node (the lab, whose kubelets run pods from the API). */
  scheduler?: boolean;
}

export interface RunningControllers {
  stop(): Promise<void>;
}

/** A KubeConfig for a server URL and a client certificate (no file). */
export function kubeConfigFor(server: string, tls: { caFile: string; certFile: string; keyFile: string }, user = 'controller-manager'): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'lab', server, caFile: tls.caFile, skipTLSVerify: false }],
    users: [{ name: user, certFile: tls.certFile, keyFile: tls.keyFile }],
    contexts: [{ name: 'lab', cluster: 'lab', user }],
    currentContext: 'lab',
  });
  return kc;
}

/**
 * A Deployment, DaemonSet or Service is reconciled at most this often: each of its pods' events
 * queues it, and each reconcile lists its pods afresh (200 starting pods: hundreds of lists).
 */
const RECONCILE_MIN_INTERVAL_MS = 500;

/** Starts the Deployment, DaemonSet and EndpointSlice controllers (and the scheduler, when asked) against the API of `kc`. */
export async function startControllers(kc: KubeConfig, o: ControllersOptions = {}): Promise<RunningControllers> {
  const apps = kc.makeApiClient(AppsV1Api);
  const core = kc.makeApiClient(CoreV1Api);
  const discovery = kc.makeApiClient(DiscoveryV1Api);
  const deployments = new DeploymentController(apps, core);
  const slices = new EndpointSliceController(core, discovery);
  const dq = new WorkQueue('deployment', (k) => deployments.reconcile(k), RECONCILE_MIN_INTERVAL_MS);
  const daemonSets = new DaemonSetController(apps, core);
  const dsq = new WorkQueue('daemonset', (k) => daemonSets.reconcile(k), RECONCILE_MIN_INTERVAL_MS);
  const daemonSetKeys = new Set<string>();
  const sq = new WorkQueue('endpointslice', (k) => slices.reconcile(k), RECONCILE_MIN_INTERVAL_MS);
  const scheduler = o.scheduler ? new SchedulerController(core) : undefined;
  // One key: a pass schedules every waiting pod, events during a pass queue one more.
  const bq = new WorkQueue('scheduler', () => scheduler!.scheduleAll());
  const SCHEDULE = 'all';
  const serviceAccounts = new ServiceAccountController(core);
  const saq = new WorkQueue('serviceaccount', (ns) => serviceAccounts.reconcile(ns));
  const namespaces = new Set<string>();
  /** Pods waiting for a node (scheduler only). */
  const unbound = new Set<string>();
  /** Services by namespace, from the Service informer's events (for pod events). */
  const services = new Map<string, Set<string>>();
  const deploymentKeys = new Set<string>();

  const informers = [
    watchKind<V1Deployment>(kc, '/apis/apps/v1/deployments', () => apps.listDeploymentForAllNamespaces(), (d, deleted) => {
      const k = keyOf(d.metadata?.namespace, d.metadata?.name);
      if (deleted) deploymentKeys.delete(k);
      else deploymentKeys.add(k);
      dq.add(k);
    }),
    watchKind<V1DaemonSet>(kc, '/apis/apps/v1/daemonsets', () => apps.listDaemonSetForAllNamespaces(), (d, deleted) => {
      const k = keyOf(d.metadata?.namespace, d.metadata?.name);
      if (deleted) daemonSetKeys.delete(k);
      else daemonSetKeys.add(k);
      dsq.add(k);
    }),
    watchKind<V1Node>(kc, '/api/v1/nodes', () => core.listNode(), () => {
      for (const k of daemonSetKeys) dsq.add(k);
      if (unbound.size) bq.add(SCHEDULE);
    }),
    watchKind<V1Pod>(kc, '/api/v1/pods', () => core.listPodForAllNamespaces(), (p, deleted) => {
      for (const k of DeploymentController.keysOfPod(p)) dq.add(k);
      for (const k of DaemonSetController.keysOfPod(p)) dsq.add(k);
      if (scheduler) {
        const k = keyOf(p.metadata?.namespace, p.metadata?.name);
        if (!deleted && needsScheduling(p)) {
          unbound.add(k);
          bq.add(SCHEDULE);
        } else unbound.delete(k);
      }
      for (const name of services.get(p.metadata?.namespace ?? '') ?? []) sq.add(keyOf(p.metadata?.namespace, name));
    }),
    watchKind<V1Service>(kc, '/api/v1/services', () => core.listServiceForAllNamespaces(), (s, deleted) => {
      const ns = s.metadata?.namespace ?? '';
      let set = services.get(ns);
      if (!set) services.set(ns, (set = new Set()));
      if (deleted) set.delete(s.metadata!.name!);
      else set.add(s.metadata!.name!);
      sq.add(keyOf(ns, s.metadata?.name));
    }),
    watchKind<V1Namespace>(kc, '/api/v1/namespaces', () => core.listNamespace(), (n, deleted) => {
      if (deleted) namespaces.delete(n.metadata!.name!);
      else namespaces.add(n.metadata!.name!);
      saq.add(n.metadata!.name!);
    }),
    watchKind<V1ServiceAccount>(kc, '/api/v1/serviceaccounts', () => core.listServiceAccountForAllNamespaces(), (sa, deleted) => {
      if (deleted) saq.add(sa.metadata!.namespace!);
    }),
    watchKind<V1EndpointSlice>(kc, '/apis/discovery.k8s.io/v1/endpointslices', () => discovery.listEndpointSliceForAllNamespaces(), (s) => {
      const svc = s.metadata?.labels?.[SERVICE_NAME_LABEL];
      if (svc) sq.add(keyOf(s.metadata?.namespace, svc));
    }),
  ];
  await Promise.all(informers.map((i) => i.start()));
  const resync = setInterval(() => {
    for (const k of deploymentKeys) dq.add(k);
    for (const k of daemonSetKeys) dsq.add(k);
    for (const [ns, names] of services) for (const n of names) sq.add(keyOf(ns, n));
    if (unbound.size) bq.add(SCHEDULE);
    for (const ns of namespaces) saq.add(ns);
  }, o.resyncMs ?? 30_000);
  resync.unref();
  log(`controllers started: deployment, daemonset, endpointslice, serviceaccount${scheduler ? ', scheduler' : ''}`);
  return {
    stop: async () => {
      clearInterval(resync);
      await Promise.all(informers.map((i) => i.stop().catch(() => undefined)));
      await Promise.all([dq.stop(), dsq.stop(), sq.stop(), bq.stop(), saq.stop()]);
    },
  };
}
