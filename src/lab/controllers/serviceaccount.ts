// The ServiceAccount controller (kube-controller-manager's
// serviceaccounts-controller): a ServiceAccount `default` in every namespace
// that is not terminating, made again when deleted. A controller rather than
// the API server making it at namespace creation, as in Kubernetes: it also
// covers namespaces that existed before (a lab's etcd kept across restarts,
// the namespaces the server creates at start) and a `default` deleted later.
import type { CoreV1Api } from '@kubernetes/client-node';
import { apiCode, log } from './runtime.ts';

export const DEFAULT_SERVICE_ACCOUNT = 'default';

export class ServiceAccountController {
  constructor(private readonly core: CoreV1Api) {}

  /** Key: a namespace name. */
  async reconcile(namespace: string): Promise<void> {
    let ns;
    try {
      ns = await this.core.readNamespace({ name: namespace });
    } catch (err) {
      if (apiCode(err) === 404) return;
      throw err;
    }
    if (ns.metadata?.deletionTimestamp) return;
    try {
      await this.core.readNamespacedServiceAccount({ namespace, name: DEFAULT_SERVICE_ACCOUNT });
      return;
    } catch (err) {
      if (apiCode(err) !== 404) throw err;
    }
    try {
      await this.core.createNamespacedServiceAccount({ namespace, body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: DEFAULT_SERVICE_ACCOUNT, namespace } } });
      log('serviceaccount: created', { namespace, name: DEFAULT_SERVICE_ACCOUNT });
    } catch (err) {
      // 409: made meanwhile; 403: the namespace began terminating.
      if (apiCode(err) !== 409 && apiCode(err) !== 403) throw err;
    }
  }
}
