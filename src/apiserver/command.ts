// The `clustermesh apiserver` subcommand: parse and check options, run until SIGINT/SIGTERM.
import { setTimeout as sleep } from 'node:timers/promises';
import { Command } from 'commander';
import { startApiserver } from './apiserver.ts';
import { APISERVER_DEFAULTS, compileApiserverOptions, loadEtcdConfig, OptionError, type ApiserverRawOptions } from './options.ts';
import { untilSignal } from '../cli/signals.ts';
import { MESH_ROLES } from '../clustermesh/etcd.ts';
import { configureEtcdAuth } from '../kvstore/etcd-process.ts';
import type { KvConnectionConfig } from '../kvstore/types.ts';

/**
 * Sets up the etcd next to this apiserver (its roles and users, then
 * authentication) as root, idempotently, retrying while that etcd is still
 * starting (a sidecar in the same pod starts at the same time).
 */
async function bootstrapEtcd(conn: KvConnectionConfig, signal: AbortSignal, deadlineMs = 120_000): Promise<void> {
  const t0 = Date.now();
  for (let attempt = 1; ; attempt++) {
    if (signal.aborted) throw new Error('--etcd-bootstrap-config: stopped while setting up etcd');
    try {
      await configureEtcdAuth({ ...conn, timeoutMs: 5000 }, MESH_ROLES);
      return;
    } catch (err) {
      if (Date.now() - t0 > deadlineMs) throw new Error(`--etcd-bootstrap-config: could not set up etcd's roles at ${conn.endpoints.join(', ')} in ${Math.round(deadlineMs / 1000)} s (${attempt} attempts): ${(err as Error).message}`);
      await sleep(Math.min(5000, 250 * attempt), undefined, { signal }).catch(() => undefined);
    }
  }
}

export function apiserverCommand(): Command {
  return new Command('apiserver')
    .description("export this cluster's nodes, identities, endpoint IPs and global services into its mesh kvstore")
    .requiredOption('--cluster-name <name>', 'name of this cluster (at most 32 lowercase alphanumerics and "-")')
    .requiredOption('--cluster-id <id>', 'ID of this cluster in the mesh (1..max-connected-clusters)')
    .requiredOption('--etcd-config <file>', "YAML client config of the cluster's etcd (endpoints, trusted-ca-file, cert-file, key-file)")
    .option('--etcd-bootstrap-config <file>', "the same, for etcd's root user: create the mesh's etcd roles and users and turn authentication on first (idempotent; for an etcd set up with the apiserver, as `clustermesh install` does)")
    .option('--kubeconfig <file>', "read the cluster's Namespaces, Pods, Services, EndpointSlices, Nodes, policies and ServiceExports from this Kubernetes API (the file's current context); Endpoint objects (mesh state) stay in etcd. Default: KUBECONFIG, else the in-cluster service account, else ~/.kube/config")
    .option('--clustermesh-config-dir <dir>', "one file per remote cluster (as the agents'); the Multi-Cluster Services controller reads the other clusters' ServiceExports through them")
    .option('--kvstoremesh', "the cache tier (Cilium's KVStoreMesh): import every remote of --clustermesh-config-dir once and write it into this cluster's etcd under cilium/cache/, so that agents with clustermeshCache hold one connection (to their own etcd) instead of one per remote")
    .option('--max-connected-clusters <n>', '255 or 511', String(APISERVER_DEFAULTS.maxConnectedClusters))
    .option('--heartbeat-interval <duration>', 'how often cilium/.heartbeat is rewritten', '15s')
    .option('--session-ttl <seconds>', "TTL of the lease exported keys live on: how long they outlive an apiserver that died (its successor rewrites them and prunes at once what went away). Keep it longer than any restart: a key that expires first makes every remote drop what it names", String(APISERVER_DEFAULTS.sessionTtlSeconds))
    .option('--identity-gc-interval <duration>', 'how often unused identities are looked for', '1m')
    .option('--identity-gc-grace <duration>', 'how long an identity must be unused before it is deleted', '5m')
    .option('--metrics-address <host:port>', "where GET /metrics (Prometheus text) is served, from the start (before etcd answers: clustermesh_apiserver_phase), and GET /readyz (200 once the start is done: the install's readinessProbe); '' for nowhere", APISERVER_DEFAULTS.metricsAddress)
    .option('--log-level <level>', 'trace, debug, info, warn, error, fatal or silent', APISERVER_DEFAULTS.logLevel)
    .addHelpText('after', '\nExample (one per cluster, next to its etcd):\n  clustermesh apiserver --cluster-name cluster1 --cluster-id 1 --etcd-config /etc/clustermesh/etcd-apiserver.yaml\n')
    .action(async (raw: ApiserverRawOptions & { etcdBootstrapConfig?: string }, cmd: Command) => {
      let server;
      try {
        const cfg = compileApiserverOptions(raw);
        const root = raw.etcdBootstrapConfig !== undefined ? await loadEtcdConfig(raw.etcdBootstrapConfig, { flag: '--etcd-bootstrap-config' }) : undefined;
        // The metrics endpoint serves from the start, the etcd set-up included (phase etcd-bootstrap).
        server = await startApiserver(cfg, { connection: await loadEtcdConfig(cfg.etcdConfigFile), ...(root ? { bootstrap: (signal: AbortSignal) => bootstrapEtcd(root, signal) } : {}) });
      } catch (err) {
        if (err instanceof OptionError) cmd.error(`error: ${err.message}`, { exitCode: 2 });
        throw err;
      }
      await untilSignal();
      await server.stop();
    });
}
