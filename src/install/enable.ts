// `clustermesh enable / disable --context C`: the Service remote clusters
// reach an install's etcd by. `install` already exposes it (its
// --service-type, NodePort by default), so `enable` is what changes or checks
// that afterwards: it re-renders the very Service install renders
// (manifests.ts apiserverService) with the type asked for, or keeps the one
// there, applies it (server dry run first), waits until the Service has an
// address and that address answers as other clusters' agents will dial it
// (connect.ts probeCluster), and prints it. Idempotent: an unchanged Service
// is not written. `disable` turns it into a ClusterIP Service: other clusters'
// agents lose their connection to this cluster (the clusters importing it keep
// their entry until `disconnect`).
//
// A re-install renders the Service with install's own --service-type again.
import { KubernetesObjectApi, type KubeConfig } from '@kubernetes/client-node';
import { CliError, EXIT_ERROR } from '../cli/common.ts';
import { applyObjects, describe, read } from './apply.ts';
import { probeCluster, readInstalledCluster } from './connect.ts';
import { apiserverService, NAMES } from './manifests.ts';
import { compileInstallSettings, InstallSettingsError, type ServiceType } from './settings.ts';
import { PollTimeoutError, pollUntil } from '../util/poll.ts';

interface ServiceSpec {
  type?: string;
  ports?: Array<{ nodePort?: number }>;
}

export interface ExposeResult {
  cluster: string;
  id: number;
  context: string;
  /** The Service's type before and after. */
  was: string;
  type: ServiceType;
  changed: boolean;
  /** Where remote clusters reach the etcd (empty after disable). */
  endpoints: string[];
}

/**
 * Sets the install's Service to `serviceType` (undefined: keep its type;
 * ClusterIP: not exposed) and, unless ClusterIP, waits up to `timeoutMs`
 * until its endpoints answer. `say` reports progress.
 */
export async function exposeInstalled(kc: KubeConfig, namespace: string, want: { serviceType?: ServiceType | undefined; nodePort?: string | undefined }, timeoutMs: number, say: (line: string) => void): Promise<ExposeResult> {
  const context = kc.getCurrentContext();
  const c = await readInstalledCluster(kc, namespace, undefined, '--context', false);
  const api = KubernetesObjectApi.makeApiClient(kc);
  const svc = (await read(api, { apiVersion: 'v1', kind: 'Service', metadata: { name: NAMES.apiserver, namespace } })) as { spec?: ServiceSpec } | undefined;
  if (!svc) throw new CliError(`--context ${context}: no service/${NAMES.apiserver} in namespace ${namespace} (re-run clustermesh install --context ${context})`);
  const was = svc.spec?.type ?? 'ClusterIP';
  const currentNodePort = svc.spec?.ports?.[0]?.nodePort;
  // Without --service-type: keep an exposed Service as it is; expose a ClusterIP one as install would (NodePort).
  const type: ServiceType = want.serviceType ?? (was === 'LoadBalancer' || was === 'NodePort' ? was : 'NodePort');
  if (type === 'ClusterIP' && want.nodePort !== undefined) throw new CliError('--node-port: only with --service-type NodePort');
  let settings;
  try {
    settings = compileInstallSettings({
      clusterName: c.name,
      clusterId: String(c.id),
      maxConnectedClusters: String(c.maxConnectedClusters),
      namespace,
      serviceType: type === 'ClusterIP' ? 'NodePort' : type,
      // A NodePort Service keeps its port unless told another.
      nodePort: type === 'NodePort' ? (want.nodePort ?? (was === 'NodePort' && currentNodePort !== undefined ? String(currentNodePort) : undefined)) : want.nodePort,
    });
  } catch (err) {
    if (err instanceof InstallSettingsError) throw new CliError(err.message, EXIT_ERROR);
    throw err;
  }
  const wanted = apiserverService(type === 'ClusterIP' ? { ...settings, serviceType: 'ClusterIP', nodePort: undefined } : settings);
  const changed = was !== type || (type === 'NodePort' && currentNodePort !== settings.nodePort);
  if (changed) {
    await applyObjects(kc, [wanted], (o, r) => say(`${describe(o)} ${r}: ${was}${was === 'NodePort' && currentNodePort ? ` ${currentNodePort}` : ''} -> ${type}${type === 'NodePort' ? ` ${settings.nodePort}` : ''}`));
  } else {
    say(`${describe(wanted)} unchanged: ${type}${type === 'NodePort' ? ` ${settings.nodePort}` : ''}`);
  }
  const base = { cluster: c.name, id: c.id, context, was, type, changed };
  if (type === 'ClusterIP') return { ...base, endpoints: [] };
  // The address (a load balancer's comes once its pod is ready) and an answer from it, as remote agents will dial it.
  try {
    const endpoints = await pollUntil(async () => await probeCluster(await readInstalledCluster(kc, namespace, undefined, '--context', true)), {
      timeoutMs,
      intervalMs: 1000,
      describe: `service/${NAMES.apiserver} (${type}) to be reachable`,
    });
    return { ...base, endpoints };
  } catch (err) {
    throw err instanceof PollTimeoutError ? new CliError(`${context}: ${err.message}`, EXIT_ERROR) : err;
  }
}
