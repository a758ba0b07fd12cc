// `clustermesh lab …`: the test bed on one machine.
import { Command, InvalidArgumentError } from 'commander';
import { httpGet, startEchoServer } from '../lab/workload.js';
import { sweepOrphanedTopologies } from '../lab/topology.js';

export function parsePort(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError(`must be a port number 1..65535, got '${value}'`);
  return n;
}

export function parseCount(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1_000_000) throw new InvalidArgumentError(`must be an integer 1..1000000, got '${value}'`);
  return n;
}

export function labCommand(): Command {
  const lab = new Command('lab').description('a whole mesh of clusters, nodes and pods on this machine (test bed)');
  lab
    .command('sweep')
    .description('remove the namespaces of topologies whose creating process died (a crashed test or demo); running ones are left alone')
    .action(async () => {
      const swept = await sweepOrphanedTopologies();
      console.log(swept.length ? `swept: ${swept.join(' ')}` : 'nothing to sweep');
    });
  const workload = lab.command('workload').description('built-in workloads that pods of the lab run');
  workload
    .command('echo')
    .description('HTTP server answering with its cluster, node and pod name; GET /bytes?n=N sends N bytes with their SHA-256 in x-sha256')
    .option('--port <port>', 'TCP port to listen on', parsePort, 8080)
    .option('--cluster <name>', 'cluster name to report', process.env.CLUSTERMESH_CLUSTER ?? 'unknown')
    .option('--node <name>', 'node name to report', process.env.CLUSTERMESH_NODE ?? 'unknown')
    .option('--pod <name>', 'pod name to report', process.env.CLUSTERMESH_POD ?? 'unknown')
    .action(async (o: { port: number; cluster: string; node: string; pod: string }) => {
      const server = await startEchoServer({ cluster: o.cluster, node: o.node, pod: o.pod }, o.port);
      console.log(`echo: listening on :${o.port} as ${o.cluster}/${o.node}/${o.pod}`);
      const stop = () => server.close(() => process.exit(0));
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
  workload
    .command('client')
    .description('make N requests to a URL and tally which cluster/node/pod answered (JSON on stdout)')
    .argument('<url>', 'URL to GET, e.g. http://10.102.1.11:8080/')
    .option('-n, --count <n>', 'number of requests', parseCount, 10)
    .option('--timeout <ms>', 'per-request timeout in ms', parseCount, 3000)
    .action(async (url: string, o: { count: number; timeout: number }) => {
      const tally: Record<string, number> = {};
      let failures = 0;
      let lastError = '';
      for (let i = 0; i < o.count; i++) {
        try {
          const r = await httpGet(url, o.timeout);
          const who = JSON.parse(r.body.toString()) as { cluster: string; node: string; pod: string };
          const k = `${who.cluster}/${who.node}/${who.pod}`;
          tally[k] = (tally[k] ?? 0) + 1;
        } catch (err) {
          failures++;
          lastError = (err as Error).message;
        }
      }
      console.log(JSON.stringify({ url, requests: o.count, failures, tally, ...(lastError ? { lastError } : {}) }));
      if (failures === o.count) process.exitCode = 1;
    });
  return lab;
}
