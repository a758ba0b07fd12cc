// `clustermesh lab workload netpol`: the pod program of the network-policy
// conformance model (src/lab/netpol.ts).
import { Command, InvalidArgumentError } from 'commander';
import { startNetpolServer } from '../lab/netpol.ts';
import { untilSignal } from './signals.ts';

function parsePorts(value: string): number[] {
  if (value === '') return [];
  return value.split(',').map((v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < 1 || n > 65535) throw new InvalidArgumentError(`must be a comma-separated list of ports 1..65535, got '${value}'`);
    return n;
  });
}

export function netpolWorkloadCommand(): Command {
  const env = process.env;
  const who = `${env.CLUSTERMESH_CLUSTER ?? 'unknown'}/${env.CLUSTERMESH_NAMESPACE ?? 'unknown'}/${env.CLUSTERMESH_POD ?? 'unknown'}`;
  return new Command('netpol')
    .description(
      'server of the network-policy test model: answers every TCP connection and UDP datagram on its ports with its name ' +
        '(cluster/namespace/pod); with --control, probes other pods from its own network namespace on request (POST /probe, GET /healthz)',
    )
    .option('--tcp <ports>', 'TCP ports to serve, comma-separated', parsePorts, [80, 81])
    .option('--udp <ports>', 'UDP ports to serve, comma-separated', parsePorts, [80, 81])
    .option('--control <socket>', 'unix socket for probe requests (HTTP; see src/lab/netpol.ts)')
    .option('--name <who>', 'the name to answer with', who)
    .addHelpText(
      'after',
      '\nExample (a container command of a lab pod):\n' +
        '  command: ["clustermesh", "lab", "workload", "netpol", "--tcp", "80,81", "--udp", "80,81", "--control", "/tmp/model/x-a.sock"]\n' +
        '  curl --unix-socket /tmp/model/x-a.sock -d \'{"probes":[{"ip":"10.101.2.11","port":80,"protocol":"tcp"}]}\' http://pod/probe\n',
    )
    .action(async (o: { tcp: number[]; udp: number[]; control?: string; name: string }, cmd: Command) => {
      let server;
      try {
        server = await startNetpolServer({ who: o.name, tcpPorts: o.tcp, udpPorts: o.udp, ...(o.control ? { controlSocket: o.control } : {}) });
      } catch (err) {
        cmd.error(`error: netpol server failed to start: ${(err as Error).message}`, { exitCode: 1 });
      }
      console.log(`netpol: ${o.name} serving tcp ${o.tcp.join(',') || '-'} udp ${o.udp.join(',') || '-'}${o.control ? `; probes on ${o.control}` : ''}`);
      await untilSignal();
      await server.stop();
      process.exit(0);
    });
}
