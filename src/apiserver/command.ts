// The `clustermesh apiserver` subcommand: parse and check options, run until SIGINT/SIGTERM.
import { Command } from 'commander';
import { startApiserver } from './apiserver.ts';
import { APISERVER_DEFAULTS, compileApiserverOptions, loadEtcdConfig, OptionError, type ApiserverRawOptions } from './options.ts';
import { untilSignal } from '../cli/signals.ts';

export function apiserverCommand(): Command {
  return new Command('apiserver')
    .description("export this cluster's nodes, identities, endpoint IPs and global services into its mesh kvstore")
    .requiredOption('--cluster-name <name>', 'name of this cluster (at most 32 lowercase alphanumerics and "-")')
    .requiredOption('--cluster-id <id>', 'ID of this cluster in the mesh (1..max-connected-clusters)')
    .requiredOption('--etcd-config <file>', "YAML client config of the cluster's etcd (endpoints, trusted-ca-file, cert-file, key-file)")
    .option('--max-connected-clusters <n>', '255 or 511', String(APISERVER_DEFAULTS.maxConnectedClusters))
    .option('--heartbeat-interval <duration>', 'how often cilium/.heartbeat is rewritten', '15s')
    .option('--session-ttl <seconds>', 'TTL of the lease exported keys live on', String(APISERVER_DEFAULTS.sessionTtlSeconds))
    .option('--identity-gc-interval <duration>', 'how often unused identities are looked for', '1m')
    .option('--identity-gc-grace <duration>', 'how long an identity must be unused before it is deleted', '5m')
    .option('--log-level <level>', 'trace, debug, info, warn, error, fatal or silent', APISERVER_DEFAULTS.logLevel)
    .addHelpText('after', '\nExample (one per cluster, next to its etcd):\n  clustermesh apiserver --cluster-name cluster1 --cluster-id 1 --etcd-config /etc/clustermesh/etcd-apiserver.yaml\n')
    .action(async (raw: ApiserverRawOptions, cmd: Command) => {
      let server;
      try {
        const cfg = compileApiserverOptions(raw);
        server = await startApiserver(cfg, { connection: await loadEtcdConfig(cfg.etcdConfigFile) });
      } catch (err) {
        if (err instanceof OptionError) cmd.error(`error: ${err.message}`, { exitCode: 2 });
        throw err;
      }
      await untilSignal();
      await server.stop();
    });
}
