// `clustermesh lab workload dns`: the cluster DNS server a lab cluster runs as
// a pod (Deployment kube-system/cluster-dns behind Service kube-system/kube-dns).
import { Command, InvalidArgumentError, Option } from 'commander';
import { OptionError } from '../apiserver/option-error.ts';
import { CLUSTER_DOMAIN, DEFAULT_DNS_TTL, startClusterDns } from '../lab/dns.ts';
import { untilSignal } from './signals.ts';

function parseListen(value: string): { host: string; port: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})?:?(\d{1,5})?$/.exec(value);
  const port = m?.[2] === undefined ? 53 : Number(m[2]);
  if (!m || !value || port < 0 || port > 65535) throw new InvalidArgumentError(`must be [ADDRESS]:PORT or ADDRESS, e.g. 0.0.0.0:53, got '${value}'`);
  return { host: m[1] ?? '0.0.0.0', port };
}

function parseTtl(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 86400) throw new InvalidArgumentError(`must be seconds 0..86400, got '${value}'`);
  return n;
}

export function dnsWorkloadCommand(): Command {
  return new Command('dns')
    .description(
      `authoritative DNS for ${CLUSTER_DOMAIN} from the cluster's Kubernetes API: <svc>.<ns>.svc.${CLUSTER_DOMAIN} -> ClusterIP (headless: ready pod IPs), ` +
        `and for clusterset.local (the MCS API): <svc>.<ns>.svc.clusterset.local -> the ServiceImport's IP (headless: every exporting cluster's ready endpoints; ` +
        `<hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local -> that endpoint); ` +
        `NXDOMAIN for unknown names in the domains, REFUSED outside them (no forwarding); UDP and TCP`,
    )
    .requiredOption('--kubeconfig <file>', "the cluster's Kubernetes API: this kubeconfig (its current context)")
    .option('--kube-api-socket <path>', "the kube-apiserver's TLS unix socket, forwarded from 127.0.0.1:6443 here first (the pod's own node-local endpoint)")
    .addOption(new Option('--listen <addr>', 'address and port to serve on (UDP and TCP)').argParser(parseListen).default({ host: '0.0.0.0', port: 53 }, '0.0.0.0:53'))
    .option('--domain <domain>', 'cluster domain', CLUSTER_DOMAIN)
    .option('--ttl <seconds>', 'TTL of answers and negative answers', parseTtl, DEFAULT_DNS_TTL)
    .option('--no-tcp', 'serve UDP only')
    .option('--quiet', 'do not log every query')
    .addHelpText(
      'after',
      '\nExample (what the lab runs in each cluster, as the pod behind 10.96.0.10):\n' +
        '  clustermesh lab workload dns --kubeconfig /var/lib/clustermesh/labs/default/cluster1/kube-api/local.kubeconfig --kube-api-socket /var/lib/clustermesh/labs/default/cluster1/kube-api/api.sock\n' +
        '  ip netns exec <pod-netns> getent hosts rebel-base.default.svc.cluster.local\n',
    )
    .action(async (o: { kubeconfig: string; kubeApiSocket?: string; listen: { host: string; port: number }; domain: string; ttl: number; tcp: boolean; quiet?: boolean }, cmd: Command) => {
      const log = (line: string): void => console.log(`${new Date().toISOString()} ${line}`);
      let dns;
      try {
        dns = await startClusterDns({
          kubeconfig: o.kubeconfig,
          ...(o.kubeApiSocket !== undefined ? { kubeApiSocket: o.kubeApiSocket } : {}),
          host: o.listen.host,
          port: o.listen.port,
          tcp: o.tcp,
          domain: o.domain,
          ttl: o.ttl,
          log: o.quiet ? (l) => (l.startsWith('udp ') || l.startsWith('tcp ') ? undefined : log(l)) : log,
        });
      } catch (err) {
        cmd.error(`error: ${err instanceof OptionError ? err.message : `cluster DNS failed to start: ${(err as Error).message}`}`, { exitCode: err instanceof OptionError ? 2 : 1 });
      }
      log(`dns: serving ${o.domain} on ${o.listen.host}:${dns.server.udpPort}/udp${dns.server.tcpPort !== undefined ? ` and :${dns.server.tcpPort}/tcp` : ''}`);
      await untilSignal();
      await dns.stop().catch(() => undefined);
      process.exit(0);
    });
}
