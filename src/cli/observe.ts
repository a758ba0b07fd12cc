// `clustermesh observe`: flows from the agents of every node of every cluster
// (GET /v1/flows on each agent's socket), merged by time. Each agent is the
// one reader of its node's cm_events ring buffer and keeps the last N flows
// (flowBufferSize), named with what it knows (pods, identities with labels,
// clusters, nodes); observe only asks, so any number of observers and the
// agents' own bookkeeping see every event. Events the datapath had no room
// for are counted by the agents and reported here as warnings.
//
// Where the agents are: a lab's node sockets, explicit --socket/--agent-config,
// or (--context, clusters of `clustermesh install`) each agent pod's read-only
// API on its node's address, with mutual TLS (targets.ts). A context or node
// that cannot be reached is a warning naming it; the others are still shown,
// and the exit code is 2 (as for an unreachable node of a lab). With --follow
// by context, the agent pods are listed again every 10 s and after a stream
// fails (observe-follow.ts, with targets.ts's mergeTargets, as `ui --context`).
import { Command, InvalidArgumentError, Option } from 'commander';
import type { AgentClient } from '../agent/client.ts';
import { FlowQueryError, parseProtocol, parseSince, parseVerdict as parseVerdictQuery, type Flow, type FlowPeer, type FlowQuery, type Verdict } from '../agent/flows.ts';
import { settings as settingsMap } from '../datapath/maps/index.ts';
import { action, CliError, EXIT_ERROR, EXIT_OK, example, parsePositiveInt } from './common.ts';
import { shortLabels } from './directory.ts';
import { openNodeMap } from './inspect.ts';
import { FlowFollower, mergeByTime } from './observe-follow.ts';
import { addTargetFlags, agentClientFor, isExplicit, nodeLabel, resolveTargets, targetsAgain, type NodeTarget, type TargetFlags } from './targets.ts';

export type { Flow, FlowPeer, Verdict };

function peerText(p: FlowPeer): string {
  const who = p.pod ? `${p.cluster ? `${p.cluster}:` : ''}${p.pod}` : p.ip;
  const addr = p.pod ? ` ${p.ip}${p.port !== null ? `:${p.port}` : ''}` : p.port !== null ? `:${p.port}` : '';
  const id = p.labels.length ? `${p.identity} ${shortLabels(p.labels)}` : String(p.identity);
  return `${who}${addr} (id ${id})`;
}

/** One line per flow, Hubble-like. */
export function formatFlow(f: Flow): string {
  const via = f.tunnelEndpoint ? ` via ${f.tunnelNode ?? f.tunnelEndpoint}` : '';
  const svc = f.service ? ` [service ${f.service.ip}:${f.service.port}]` : '';
  const flags = f.tcpFlags && f.tcpFlags.length > 0 ? ` ${f.tcpFlags.join(',')}` : '';
  return `${f.time} ${f.node} ${f.verdict.padEnd(9)} ${f.reason} (${f.description}) ${f.direction} ${peerText(f.source)} -> ${peerText(f.destination)}${svc} ${f.protocol}${flags}${via}`;
}

/** Commander's parser for a FlowQuery value: the query's own check, as a usage error. */
function arg<T>(parse: (v: string) => T): (v: string) => T {
  return (v) => {
    try {
      return parse(v);
    } catch (err) {
      if (err instanceof FlowQueryError) throw new InvalidArgumentError(err.message.replace(/^[a-z-]+=[^:]*: /, ''));
      throw err;
    }
  };
}

export const parseVerdict = arg(parseVerdictQuery);

function parsePort(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) > 65535) throw new InvalidArgumentError(`must be a port 0..65535, got '${v}'`);
  return Number(v);
}

function parseIdentity(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) > 0xffffffff) throw new InvalidArgumentError(`must be a numeric identity, got '${v}'`);
  return Number(v);
}

export { mergeByTime };

interface ObserveFlags extends TargetFlags {
  output: 'compact' | 'text' | 'json';
  verdict?: Verdict;
  fromPod?: string;
  toPod?: string;
  pod?: string;
  fromCluster?: string;
  toCluster?: string;
  namespace?: string;
  identity?: number;
  port?: number;
  protocol?: string;
  since?: Date;
  last?: number;
  follow?: boolean;
  traceForwards?: boolean;
}

export function observeCommand(): Command {
  const cmd = new Command('observe').description(
    "flows from the agents of every node of every cluster, merged by time: drops with their reason (always), forwarded TCP connection openings (SYN; the agents' traceNewConnections, on by default) and every forwarded packet while forward tracing is on, with source and destination cluster, pod, identity with labels, port, and the tunnel node. Each agent keeps its node's last flowBufferSize (default 4096) flows",
  );
  addTargetFlags(cmd, { contexts: true });
  cmd
    .addOption(new Option('-o, --output <format>', 'compact (one line per flow; text is the same) or json (one object per line)').choices(['compact', 'text', 'json']).default('compact'))
    .addOption(new Option('--verdict <verdict>', 'only flows with this verdict: DROPPED or FORWARDED').argParser(parseVerdict))
    .option('--from-pod <pod>', "only flows from this pod: 'name' or 'namespace/name'")
    .option('--to-pod <pod>', "only flows to this pod: 'name' or 'namespace/name'")
    .option('--pod <pod>', "only flows from or to this pod: 'name' or 'namespace/name'")
    .option('--from-cluster <name>', 'only flows whose source is in this cluster')
    .option('--to-cluster <name>', 'only flows whose destination is in this cluster')
    .option('--namespace <ns>', 'only flows from or to a pod of this namespace')
    .option('--identity <id>', 'only flows from or to this security identity', parseIdentity)
    .option('--port <port>', 'only flows from or to this TCP/UDP port', parsePort)
    .addOption(new Option('--protocol <proto>', 'only flows of this protocol: TCP, UDP, ICMP or SCTP').argParser(arg(parseProtocol)))
    .addOption(new Option('--since <time>', "only flows at or after this time: ISO-8601, or a duration back from now ('30s', '5m', '2h')").argParser(arg((v) => parseSince(v))))
    .option('--last <n>', 'of the kept flows that match, print only the last n (over all nodes)', parsePositiveInt)
    .option('-f, --follow', 'after the kept flows, print new ones as they happen until interrupted (Ctrl-C); by --context, the agent pods are listed again every 10 s and after a flow stream fails, so a node added or an agent pod restarted on another address is followed too')
    .option('--trace-forwards', 'switch forward tracing on (cm_settings) on the observed nodes while observing, and back off afterwards')
    .action(
      action('observe', async (closer, o: ObserveFlags) => {
        const t = await resolveTargets(o, closer, { contexts: true });
        const warn = (s: string): void => void process.stderr.write(`warning: ${s}\n`);
        const problems = t.problems ?? [];
        if (t.nodes.length === 0) {
          if (problems.length > 0) throw new CliError(`no agent to observe:\n  ${problems.join('\n  ')}`, EXIT_ERROR);
          throw new CliError(`no nodes to observe${t.lab ? ` in lab ${t.lab.name}` : ''}; name them with --node, --socket, --agent-config or --context`, EXIT_ERROR);
        }
        for (const p of problems) warn(p);
        const noAgent = t.nodes.filter((n) => !n.socket && !n.remote);
        if (noAgent.length > 0)
          throw new CliError(`observe reads the agents' flows; ${noAgent.map((n) => n.key).join(', ')} has no agent socket (name the node with --socket or --agent-config, or use 'clustermesh inspect' for its maps)`, EXIT_ERROR);
        if (o.traceForwards && t.nodes.some((n) => !n.pinDir))
          throw new CliError(`--trace-forwards sets a flag in the node's pinned maps, which ${t.nodes.filter((n) => !n.pinDir).map(nodeLabel).join(', ')} does not expose here (with --context: set traceForwards in the agents' config)`, EXIT_ERROR);
        /** EXIT_ERROR when a context or node could not be read, after printing what the others had. */
        const exitFor = (allReached: boolean): number => (allReached && problems.length === 0 ? EXIT_OK : EXIT_ERROR);

        // Forward tracing: a datapath flag in the node's pinned cm_settings.
        for (const n of t.nodes) {
          if (!n.pinDir) continue;
          const settings = openNodeMap(n, settingsMap.MAP_NAME, closer);
          const cur = settingsMap.get(settings);
          if (o.traceForwards && !cur.traceForward) {
            settingsMap.set(settings, { ...cur, traceForward: true });
            closer.add(() => settingsMap.set(settings, { ...settingsMap.get(settings), traceForward: false }));
          } else if (!cur.traceForward && o.verdict !== 'DROPPED' && !o.traceForwards) {
            warn(
              cur.traceNew
                ? `forward tracing is off on ${n.key}: of forwarded packets only TCP connection openings (SYN) are reported (add --trace-forwards to see every forwarded packet)`
                : `forward tracing is off on ${n.key}: only drops are reported (add --trace-forwards to see forwarded packets)`,
            );
          }
        }

        const q: FlowQuery = {
          ...(o.since ? { since: o.since } : {}),
          ...(o.verdict ? { verdict: o.verdict } : {}),
          ...(o.fromPod ? { fromPod: o.fromPod } : {}),
          ...(o.toPod ? { toPod: o.toPod } : {}),
          ...(o.pod ? { pod: o.pod } : {}),
          ...(o.fromCluster ? { fromCluster: o.fromCluster } : {}),
          ...(o.toCluster ? { toCluster: o.toCluster } : {}),
          ...(o.namespace ? { namespace: o.namespace } : {}),
          ...(o.identity !== undefined ? { identity: o.identity } : {}),
          ...(o.port !== undefined ? { port: o.port } : {}),
          ...(o.protocol ? { protocol: o.protocol } : {}),
          ...(o.last !== undefined ? { limit: o.last } : {}),
        };
        const emit = (f: Flow): void => void process.stdout.write((o.output === 'json' ? JSON.stringify(f) : formatFlow(f)) + '\n');
        const lastOf = (fs: Flow[]): Flow[] => (o.last !== undefined ? fs.slice(-o.last) : fs);

        /** Lost events, from each agent's status: the datapath's count, and what a follower missed. */
        const reportLost = async (agents: Array<[NodeTarget, AgentClient]>): Promise<void> => {
          await Promise.all(
            agents.map(async ([n, c]) => {
              try {
                const lost = (await c.status()).flows?.lost;
                if (lost && lost.datapath > 0)
                  warn(`${nodeLabel(n)}: ${lost.datapath} events could not be reported since its maps were created (${lost.sinceStart} since its agent started): the ring buffer was full`);
              } catch {
                // reported where the flows failed
              }
            }),
          );
        };

        if (!o.follow) {
          const clients = new Map<NodeTarget, AgentClient>();
          for (const n of t.nodes) {
            const c = agentClientFor(n, { timeoutMs: 10_000 });
            closer.add(() => c.close());
            clients.set(n, c);
          }
          let reached = 0;
          const lists = await Promise.all(
            t.nodes.map(async (n) => {
              try {
                const fs = await clients.get(n)!.flows(q);
                reached++;
                return fs;
              } catch (err) {
                warn(`${nodeLabel(n)}: ${(err as Error).message}`);
                return [];
              }
            }),
          );
          if (reached === 0) throw new CliError(t.lab ? 'no agent answered; is the lab up? (clustermesh status)' : 'no agent answered (see the warnings above)', EXIT_ERROR);
          for (const f of lastOf(mergeByTime(lists))) emit(f);
          await reportLost([...clients]);
          return exitFor(reached === t.nodes.length);
        }

        // Follow (observe-follow.ts): kept flows merged by time, then live ones. By kube context the agent
        // pods are listed again every 10 s and after a stream fails: nodes added are followed, agents
        // restarted elsewhere dialled there, nodes gone let go.
        const byContext = t.lab === undefined && !isExplicit(o);
        const resolve = targetsAgain(o);
        const follower = new FlowFollower({
          targets: t,
          query: q,
          emit,
          warn,
          note: (s) => void process.stderr.write(`observe: ${s}\n`),
          ...(o.last !== undefined ? { last: o.last } : {}),
          ...(byContext ? { resolve } : {}),
        });
        closer.add(() => follower.close());
        const stop = new AbortController();
        const onSignal = (): void => stop.abort();
        process.once('SIGINT', onSignal);
        process.once('SIGTERM', onSignal);
        follower.start();
        await Promise.race([new Promise((r) => stop.signal.addEventListener('abort', r, { once: true })), follower.done]);
        follower.stop();
        await reportLost(follower.agents);
        return follower.allEnded ? EXIT_ERROR : exitFor(follower.troubles === 0);
      }),
    );
  return example(
    cmd,
    'clustermesh observe --verdict DROPPED                        # the kept flows of every node, then exit',
    'clustermesh observe --to-cluster cluster2 --follow -o json   # one JSON object per line, new ones as they come',
    'clustermesh observe --from-pod frontend --to-pod default/backend --port 80 --protocol TCP --since 5m',
    'clustermesh observe --node cluster1/node1 --trace-forwards --follow',
    'clustermesh observe --socket /var/run/clustermesh/node1/agent.sock --last 20',
    'clustermesh observe --context c1 --context c2 --verdict DROPPED -o json   # installed clusters (clustermesh install), by kube context',
  );
}
