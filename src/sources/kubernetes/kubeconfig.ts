// How the Kubernetes source connects: a kubeconfig (`--kubeconfig`, then
// KUBECONFIG, then ~/.kube/config) with an optional context, or the pod's
// service account (in-cluster, KubeConfig.loadFromCluster). Every failure
// names the file or what is missing.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';

/** The in-cluster service account files (what KubeConfig.loadFromCluster reads). */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface KubeConnectionOptions {
  /** A kubeconfig file (`--kubeconfig`); wins over KUBECONFIG. */
  kubeconfig?: string | undefined;
  /** A context of the kubeconfig (default: its current-context). */
  context?: string | undefined;
  /** Use the pod's service account; the default when no kubeconfig is found and KUBERNETES_SERVICE_HOST is set. */
  inCluster?: boolean | undefined;
  /** Where KUBECONFIG is read (default process.env). In-cluster always reads process.env, as KubeConfig.loadFromCluster does. */
  env?: NodeJS.ProcessEnv;
  /** Home directory for ~/.kube/config (default os.homedir()). */
  home?: string;
  /** Prefix of SERVICE_ACCOUNT_DIR for in-cluster (tests; default ''). */
  serviceAccountRoot?: string;
}

/** Where a KubeConfig came from, for logs and status. */
export interface KubeConnection {
  kubeConfig: KubeConfig;
  /** `kubeconfig /path (context c)` or `in-cluster service account`. */
  description: string;
  server: string;
}

function fail(msg: string): never {
  throw new Error(`kubernetes connection: ${msg}`);
}

function loadFiles(files: string[], what: string): KubeConfig {
  const kc = new KubeConfig();
  files.forEach((file, i) => {
    if (!existsSync(file)) fail(`${what} ${file}: no such file`);
    const target = i === 0 ? kc : new KubeConfig();
    try {
      target.loadFromFile(file);
      if (target !== kc) kc.mergeConfig(target, true);
    } catch (err) {
      fail(`${what} ${file}: ${(err as Error).message}`);
    }
  });
  return kc;
}

/**
 * Builds the KubeConfig the source connects with. Order: `kubeconfig`, then
 * KUBECONFIG (a list of files, as kubectl reads it; missing entries are
 * skipped), then the in-cluster service account when asked for or when
 * KUBERNETES_SERVICE_HOST is set, then ~/.kube/config. Throws with the file
 * and the reason when nothing usable is found or the context is unknown.
 */
export function loadKubeConnection(opts: KubeConnectionOptions = {}): KubeConnection {
  const env = opts.env ?? process.env;
  let kc: KubeConfig;
  let description: string;
  const fromEnv = (env.KUBECONFIG ?? '').split(delimiter).filter((p) => p !== '');
  const saRoot = opts.serviceAccountRoot ?? '';
  const homeConfig = join(opts.home ?? homedir(), '.kube', 'config');
  if (opts.kubeconfig !== undefined && opts.kubeconfig !== '') {
    kc = loadFiles([opts.kubeconfig], 'kubeconfig');
    description = `kubeconfig ${opts.kubeconfig}`;
  } else if (fromEnv.length > 0 && !opts.inCluster) {
    const present = fromEnv.filter((p) => existsSync(p));
    if (present.length === 0) fail(`KUBECONFIG=${env.KUBECONFIG}: no such file`);
    kc = loadFiles(present, 'KUBECONFIG file');
    description = `kubeconfig ${present.join(delimiter)}`;
  } else if (opts.inCluster || (process.env.KUBERNETES_SERVICE_HOST && !existsSync(homeConfig))) {
    // loadFromCluster reads KUBERNETES_SERVICE_HOST/PORT from process.env and the files under saRoot.
    if (!process.env.KUBERNETES_SERVICE_HOST || !process.env.KUBERNETES_SERVICE_PORT) fail('in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not running in a pod?)');
    for (const f of ['token', 'ca.crt']) {
      const file = `${saRoot}${SERVICE_ACCOUNT_DIR}/${f}`;
      if (!existsSync(file)) fail(`in-cluster: ${file}: no such file (no service account token mounted?)`);
    }
    kc = new KubeConfig();
    kc.loadFromCluster(saRoot);
    description = 'in-cluster service account';
  } else if (existsSync(homeConfig)) {
    kc = loadFiles([homeConfig], 'kubeconfig');
    description = `kubeconfig ${homeConfig}`;
  } else {
    fail('no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account');
  }
  if (opts.context !== undefined && opts.context !== '') {
    const names = kc.getContexts().map((c) => c.name);
    if (!names.includes(opts.context)) fail(`${description}: no context "${opts.context}" (it has ${names.length > 0 ? names.map((n) => `"${n}"`).join(', ') : 'none'})`);
    kc.setCurrentContext(opts.context);
  }
  const current = kc.getCurrentContext();
  if (!current) fail(`${description}: no current-context; pass a context`);
  if (description !== 'in-cluster service account') description += ` (context ${current})`;
  const ctx = kc.getContextObject(current);
  if (!ctx) fail(`${description}: context "${current}" is not defined`);
  const cluster = kc.getCurrentCluster();
  if (!cluster) fail(`${description}: context "${current}" names cluster "${ctx.cluster}", which is not defined`);
  if (!cluster.server) fail(`${description}: cluster "${cluster.name}" has no server`);
  if (ctx.user && !kc.getCurrentUser()) fail(`${description}: context "${current}" names user "${ctx.user}", which is not defined`);
  return { kubeConfig: kc, description, server: cluster.server };
}
