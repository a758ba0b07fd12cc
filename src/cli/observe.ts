// `clustermesh observe`: flow events from the nodes' datapath ring buffers
// (cm_events): every drop with its reason, and forwarded packets while
// forward tracing is on (cm_settings). Addresses are named through the
// directory (pods, identities with labels, clusters, nodes).
//
// The ring buffer has ONE consumer position, shared by every reader: two
// readers split the events between them. No agent reads cm_events today, so
// observe is the consumer; a second observe of the same node is warned
// about (a pid file per pin dir). Events nobody read wait in the ring (256
// KiB, about 4,600 events); once it is full, newer events are lost (counted
// as TRACE_EVENT_LOST), so the first read may show old events.
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { events as eventsMap, metrics as metricsMap, reasonDescription, settings as settingsMap, TraceReason } from '../datapath/maps/index.ts';
import type { DatapathEvent } from '../datapath/maps/events.ts';
import { action, CliError, Closer, EXIT_ERROR, EXIT_OK, example, outputOption, parsePositiveInt, type OutputFormat } from './common.ts';
import { clusterOfIdentity, labelsOf, loadDirectory, shortLabels, type Directory } from './directory.ts';
import { openNodeMap } from './inspect.ts';
import { addTargetFlags, resolveTargets, type NodeTarget, type TargetFlags } from './targets.ts';

export type Verdict = 'DROPPED' | 'FORWARDED' | 'LOST';

export interface FlowPeer {
  ip: string;
  port: number | null;
  identity: number;
  labels: string[];
  cluster: string | null;
  /** 'namespace/name' of the pod, null when the address is no known pod. */
  pod: string | null;
  node: string | null;
}

export interface Flow {
  time: string;
  node: string;
  verdict: Verdict;
  reason: string;
  description: string;
  direction: string;
  protocol: string;
  source: FlowPeer;
  destination: FlowPeer;
  tunnelEndpoint: string | null;
  tunnelNode: string | null;
  length: number;
}

/** CLOCK_MONOTONIC ns (bpf_ktime_get_ns) -> wall-clock time, by the offset between the clocks now. */
export function monotonicToDate(ns: bigint, nowMonoNs = process.hrtime.bigint(), nowMs = Date.now()): Date {
  return new Date(nowMs - Number((nowMonoNs - ns) / 1_000_000n));
}

export function verdictOf(e: Pick<DatapathEvent, 'type' | 'reason'>): Verdict {
  if (e.type === 'drop') return 'DROPPED';
  return e.reason === TraceReason.TRACE_EVENT_LOST ? 'LOST' : 'FORWARDED';
}

function protoName(p: number): string {
  return p === 6 ? 'TCP' : p === 17 ? 'UDP' : p === 1 ? 'ICMP' : p === 0 ? '-' : String(p);
}

function peer(d: Directory, ip: string, port: number | null, eventIdentity: number): FlowPeer {
  const p = d.pods.get(ip);
  // The datapath's identity when it had one, else what the directory knows of the address.
  const identity = eventIdentity || p?.identity || 0;
  return {
    ip,
    port,
    identity,
    labels: labelsOf(d, identity),
    cluster: p?.cluster ?? clusterOfIdentity(d, identity) ?? null,
    pod: p && p.pod ? `${p.namespace}/${p.pod}` : null,
    node: p?.node ?? null,
  };
}

export function toFlow(e: DatapathEvent, node: string, d: Directory, when: Date): Flow {
  const ports = e.protocol === 6 || e.protocol === 17;
  return {
    time: when.toISOString(),
    node,
    verdict: verdictOf(e),
    reason: e.reasonName,
    description: reasonDescription(e.reason),
    direction: e.direction,
    protocol: protoName(e.protocol),
    source: peer(d, e.srcIp, ports ? e.srcPort : null, e.srcIdentity),
    destination: peer(d, e.dstIp, ports ? e.dstPort : null, e.dstIdentity),
    tunnelEndpoint: e.tunnelEndpoint,
    tunnelNode: e.tunnelEndpoint ? (d.nodesByIP.get(e.tunnelEndpoint) ?? null) : null,
    length: e.length,
  };
}

function peerText(p: FlowPeer): string {
  const who = p.pod ? `${p.cluster ? `${p.cluster}:` : ''}${p.pod}` : p.ip;
  const addr = p.pod ? ` ${p.ip}${p.port !== null ? `:${p.port}` : ''}` : p.port !== null ? `:${p.port}` : '';
  const id = p.labels.length ? `${p.identity} ${shortLabels(p.labels)}` : String(p.identity);
  return `${who}${addr} (id ${id})`;
}

/** One line per flow, Hubble-like. */
export function formatFlow(f: Flow): string {
  const via = f.tunnelEndpoint ? ` via ${f.tunnelNode ?? f.tunnelEndpoint}` : '';
  return `${f.time} ${f.node} ${f.verdict.padEnd(9)} ${f.reason} (${f.description}) ${f.direction} ${peerText(f.source)} -> ${peerText(f.destination)} ${f.protocol}${via}`;
}

export function matchesVerdict(f: Flow, want: Verdict | undefined): boolean {
  return want === undefined || f.verdict === want;
}

export function parseVerdict(v: string): Verdict {
  const u = v.toUpperCase();
  if (u !== 'DROPPED' && u !== 'FORWARDED') throw new InvalidArgumentError(`must be DROPPED or FORWARDED, got '${v}'`);
  return u;
}

// ---- one reader per node -----------------------------------------------------

const LOCK_DIR = '/run/clustermesh/observe';

/** Records that this process reads a node's ring; returns who else does (pid) and a release function. */
function claimRing(pinDir: string): { other: number | undefined; release: () => void } {
  const file = join(LOCK_DIR, `${createHash('sha256').update(pinDir).digest('hex').slice(0, 16)}.pid`);
  let other: number | undefined;
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid) {
      try {
        process.kill(pid, 0);
        other = pid;
      } catch {
        // gone
      }
    }
  } catch {
    // no reader recorded
  }
  try {
    mkdirSync(LOCK_DIR, { recursive: true });
    const fd = openSync(file, 'w');
    writeSync(fd, `${process.pid}\n`);
    closeSync(fd);
  } catch {
    return { other, release: () => undefined };
  }
  return {
    other,
    release: () => {
      try {
        if (readFileSync(file, 'utf8').trim() === String(process.pid)) rmSync(file, { force: true });
      } catch {
        // already gone
      }
    },
  };
}

interface NodeReader {
  node: NodeTarget;
  consume(): number;
}

function openReaders(nodes: NodeTarget[], onEvent: (node: NodeTarget, e: DatapathEvent) => void, closer: Closer, warn: (s: string) => void): NodeReader[] {
  return nodes.map((node) => {
    const map = openNodeMap(node, eventsMap.MAP_NAME, closer);
    const claim = claimRing(node.pinDir!);
    closer.add(claim.release);
    if (claim.other !== undefined) warn(`another reader (pid ${claim.other}) consumes ${node.key}'s events: each event goes to one reader only, so both see a part`);
    const reader = eventsMap.openReader(map, (e) => onEvent(node, e));
    closer.add(() => reader.close());
    return { node, consume: () => reader.consume() };
  });
}

/** TRACE_EVENT_LOST packets of a node (both directions). */
function lostEvents(node: NodeTarget, closer: Closer): number {
  const rows = metricsMap.read(openNodeMap(node, metricsMap.MAP_NAME, closer));
  return rows.filter((r) => r.reason === TraceReason.TRACE_EVENT_LOST).reduce((a, r) => a + Number(r.packets), 0);
}

// ---- the command -------------------------------------------------------------

interface ObserveFlags extends TargetFlags {
  output: OutputFormat;
  verdict?: Verdict;
  follow?: boolean;
  last?: number;
  traceForwards?: boolean;
}

export function observeCommand(): Command {
  const cmd = new Command('observe').description(
    "flow events from the nodes' eBPF datapath: drops with their reason (always) and forwarded packets (while forward tracing is on), with source and destination pod, identity, cluster and port",
  );
  addTargetFlags(cmd);
  cmd
    .addOption(outputOption())
    .addOption(new Option('--verdict <verdict>', 'only flows with this verdict: DROPPED or FORWARDED').argParser(parseVerdict))
    .option('-f, --follow', 'keep printing new flows until interrupted (Ctrl-C)')
    .option('--last <n>', 'of the flows waiting in the ring buffers, print only the last n (per run, after filtering)', parsePositiveInt)
    .option('--trace-forwards', 'switch forward tracing on (cm_settings) while observing, and back off afterwards')
    .action(
      action('observe', async (closer, o: ObserveFlags) => {
        const t = await resolveTargets(o, closer);
        if (t.nodes.length === 0) throw new CliError(`no nodes to observe${t.lab ? ` in lab ${t.lab.name}` : ''}; name them with --node, --pin-dir or --socket`, EXIT_ERROR);
        const warn = (s: string): void => void process.stderr.write(`warning: ${s}\n`);
        let d = await loadDirectory(t, closer);
        for (const w of d.warnings) warn(w);

        // Forward tracing.
        for (const n of t.nodes) {
          const settings = openNodeMap(n, settingsMap.MAP_NAME, closer);
          const cur = settingsMap.get(settings);
          if (o.traceForwards && !cur.traceForward) {
            settingsMap.set(settings, { traceForward: true });
            closer.add(() => settingsMap.set(settings, { traceForward: false }));
          } else if (!cur.traceForward && o.verdict !== 'DROPPED' && !o.traceForwards) {
            warn(`forward tracing is off on ${n.key}: only drops are reported (add --trace-forwards to see forwarded packets)`);
          }
        }

        const pending: Flow[] = [];
        let live = false;
        const emit = (f: Flow): void => {
          if (o.output === 'json') process.stdout.write(JSON.stringify(f) + '\n');
          else process.stdout.write(formatFlow(f) + '\n');
        };
        const onEvent = (node: NodeTarget, e: DatapathEvent): void => {
          const f = toFlow(e, node.key, d, monotonicToDate(e.timestamp));
          if (!matchesVerdict(f, o.verdict)) return;
          if (live) emit(f);
          else pending.push(f);
        };
        const readers = openReaders(t.nodes, onEvent, closer, warn);
        // What is waiting in the rings, in time order across nodes.
        for (const r of readers) r.consume();
        pending.sort((a, b) => a.time.localeCompare(b.time));
        for (const f of o.last !== undefined ? pending.slice(-o.last) : pending) emit(f);
        // Events the datapath had no room for are only counted (cm_metrics, TRACE_EVENT_LOST).
        const lostAtStart = new Map(t.nodes.map((n) => [n.key, lostEvents(n, closer)] as const));
        for (const [key, n] of lostAtStart) if (n > 0) warn(`${key}: ${n} events could not be reported since its maps were created (the ring buffer was full while nobody read it)`);
        const reportLost = (): void => {
          for (const n of t.nodes) {
            const more = lostEvents(n, closer) - (lostAtStart.get(n.key) ?? 0);
            if (more > 0) warn(`${n.key}: ${more} events were lost while observing (the ring buffer was full)`);
          }
        };
        if (!o.follow) return EXIT_OK;

        live = true;
        const stop = new AbortController();
        const onSignal = (): void => stop.abort();
        process.once('SIGINT', onSignal);
        process.once('SIGTERM', onSignal);
        let lastRefresh = Date.now();
        while (!stop.signal.aborted) {
          for (const r of readers) r.consume();
          // New pods and identities appear while following.
          if (Date.now() - lastRefresh > 10_000) {
            lastRefresh = Date.now();
            const inner = new Closer();
            d = await loadDirectory(t, inner).catch(() => d);
            await inner.closeAll();
          }
          await new Promise((r) => setTimeout(r, 100));
        }
        for (const r of readers) r.consume();
        reportLost();
        return EXIT_OK;
      }),
    );
  return example(
    cmd,
    'clustermesh observe --verdict DROPPED                     # what is waiting, then exit',
    'clustermesh observe --cluster cluster2 --follow -o json   # one JSON object per line',
    'clustermesh observe --node cluster1/node1 --trace-forwards --follow',
    'clustermesh observe --pin-dir /run/clustermesh/bpffs/node1 --last 20',
  );
}
