// `clustermesh ui`: a live web view of the mesh served on a local HTTP port
// (src/ui/server.ts). It finds the agents the way observe does (a lab,
// explicit --socket / --agent-config, or --context: installed clusters' agents
// over their read-only API with mutual TLS) and reads the same flow streams.
// By kube context it lists the agent pods again every 10 s and after a stream
// fails, so nodes added and agents restarted elsewhere are read too.
import { isIP } from 'node:net';
import { Command, InvalidArgumentError, Option } from 'commander';
import { isLoopback, missingAssets, UiServer } from '../ui/server.ts';
import { action, CliError, EXIT_ERROR, EXIT_OK, example, parseDurationFlag } from './common.ts';
import { addTargetFlags, isExplicit, resolveTargets, targetsAgain, type TargetFlags } from './targets.ts';

interface UiFlags extends TargetFlags {
  port: number;
  address: string;
  refresh: number;
}

function parsePort(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) > 65535) throw new InvalidArgumentError(`must be a TCP port 0..65535 (0: any free port), got '${v}'`);
  return Number(v);
}

function parseAddress(v: string): string {
  if (v !== 'localhost' && isIP(v) === 0) throw new InvalidArgumentError(`must be an IP address to listen on (127.0.0.1, ::1, 0.0.0.0) or localhost, got '${v}'`);
  return v;
}

export function uiCommand(): Command {
  const cmd = new Command('ui').description(
    'serve a live web view of the mesh: clusters as groups with their nodes and pods, services, an edge per pair of workloads seen talking in the agents\' flows (cross-cluster edges dashed, drops red with their reason on hover), and the status of every remote-cluster connection; updated live (server-sent events). By --context, the agent pods are listed again every 10 s and after a flow stream fails (nodes added, agents restarted on another address). Runs until interrupted (Ctrl-C)',
  );
  addTargetFlags(cmd, { contexts: true });
  cmd
    .addOption(new Option('--port <port>', 'TCP port to serve on (0: any free port, printed)').argParser(parsePort).default(8080))
    .addOption(new Option('--address <ip>', 'address to listen on; the default serves this machine only (the page shows pod names, addresses and labels to whoever reaches it)').argParser(parseAddress).default('127.0.0.1'))
    .addOption(new Option('--refresh <duration>', 'how often nodes, pods, services and remote-cluster status are read again (flows are live)').argParser(parseDurationFlag).default(2000, '2s'))
    .action(
      action('ui', async (closer, o: UiFlags) => {
        const missing = await missingAssets();
        if (missing.length) throw new CliError(`the page's files are missing: ${missing.join(', ')} (run ./scripts/setup.sh to install the npm packages)`, EXIT_ERROR);
        const t = await resolveTargets(o, closer, { contexts: true });
        const problems = t.problems ?? [];
        if (t.nodes.length === 0) {
          if (problems.length > 0) throw new CliError(`no agent to show:\n  ${problems.join('\n  ')}`, EXIT_ERROR);
          throw new CliError(`no nodes to show${t.lab ? ` in lab ${t.lab.name}` : ''}; name them with --node, --socket, --agent-config or --context`, EXIT_ERROR);
        }
        // Shown without them (the page lists the nodes it reads); by kube context, the agents are looked for again while it runs.
        for (const p of problems) process.stderr.write(`warning: ${p}\n`);
        const byContext = t.lab === undefined && !isExplicit(o);
        const resolve = targetsAgain(o);
        const noAgent = t.nodes.filter((n) => !n.socket && !n.remote);
        if (noAgent.length > 0) throw new CliError(`the view reads the agents; ${noAgent.map((n) => n.key).join(', ')} has no agent socket (name the node with --socket or --agent-config)`, EXIT_ERROR);
        if (!isLoopback(o.address))
          process.stderr.write(`warning: serving on ${o.address}: anyone who reaches this address sees the mesh's pods, addresses and flows (no authentication)\n`);
        const server = new UiServer({ targets: t, address: o.address, port: o.port, refreshMs: o.refresh, ...(byContext ? { resolve } : {}), warn: (s) => void process.stderr.write(`warning: ${s}\n`) });
        closer.add(() => server.stop());
        let url: string;
        try {
          url = await server.start();
        } catch (err) {
          const e = err as NodeJS.ErrnoException;
          if (e.code === 'EADDRINUSE') throw new CliError(`--port ${o.port}: ${o.address}:${o.port} is in use; pick another port (--port 0 takes any free one)`, EXIT_ERROR);
          if (e.code === 'EADDRNOTAVAIL') throw new CliError(`--address ${o.address}: not an address of this machine`, EXIT_ERROR);
          if (e.code === 'EACCES') throw new CliError(`--port ${o.port}: not allowed to listen on it (ports below 1024 need privileges)`, EXIT_ERROR);
          throw err;
        }
        const contexts = [...new Set(t.nodes.flatMap((n) => (n.context ? [n.context] : [])))];
        process.stdout.write(`clustermesh ui: serving ${t.lab ? `lab ${t.lab.name} ` : contexts.length ? `context${contexts.length === 1 ? '' : 's'} ${contexts.join(', ')} ` : ''}(${t.nodes.length} node${t.nodes.length === 1 ? '' : 's'}) on ${url} (Ctrl-C stops)\n`);
        await new Promise<void>((resolve) => {
          process.once('SIGINT', resolve);
          process.once('SIGTERM', resolve);
        });
        return EXIT_OK;
      }),
    );
  return example(
    cmd,
    'clustermesh ui                                   # the lab named default, on http://127.0.0.1:8080/',
    'clustermesh ui --lab demo --port 9000',
    'clustermesh ui --socket /var/run/clustermesh/node1/agent.sock --socket /var/run/clustermesh/node2/agent.sock',
    'clustermesh ui --context c1 --context c2          # installed clusters (clustermesh install), by kube context',
    'ssh -L 8080:127.0.0.1:8080 host   # then open http://127.0.0.1:8080/ on your machine',
  );
}
