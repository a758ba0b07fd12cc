// How the Kubernetes source connects with client-node: a kubeconfig
// (`--kubeconfig`, then KUBECONFIG, then ~/.kube/config) with an optional
// context, or the pod's service account (in-cluster, KubeConfig.loadFromCluster).
// Every failure names the file or what is missing. The file and the names are
// read and checked by kube-access.ts (the same reader the agent and the
// apiserver use without client-node); this module is for the clients that
// need client-node's KubeConfig (the lab, install, the CLI).
import { KubeConfig } from '@kubernetes/client-node';
import { clientNodeKubeConfig, readKubeAccess, type KubeConnectionOptions } from './kube-access.ts';

export { SERVICE_ACCOUNT_DIR, type KubeConnectionOptions } from './kube-access.ts';

/** Where a KubeConfig came from, for logs and status. */
export interface KubeConnection {
  kubeConfig: KubeConfig;
  /** `kubeconfig /path (context c)` or `in-cluster service account`. */
  description: string;
  server: string;
}

/**
 * Builds the KubeConfig the source connects with. Order: `kubeconfig`, then
 * KUBECONFIG (a list of files, as kubectl reads it; missing entries are
 * skipped), then the in-cluster service account when asked for or when
 * KUBERNETES_SERVICE_HOST is set, then ~/.kube/config. Throws with the file
 * and the reason when nothing usable is found or the context is unknown.
 */
export function loadKubeConnection(opts: KubeConnectionOptions = {}): KubeConnection {
  const conn = readKubeAccess(opts);
  let kc: KubeConfig;
  if (conn.source.kind === 'in-cluster') {
    kc = new KubeConfig();
    kc.loadFromCluster(conn.source.serviceAccountRoot);
  } else {
    kc = clientNodeKubeConfig(KubeConfig, conn.source, conn.context);
  }
  return { kubeConfig: kc, description: conn.description, server: conn.server };
}
