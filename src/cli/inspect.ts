// `clustermesh inspect ipcache|endpoints|services|policy|ct|metrics`: a
// node's pinned datapath maps, decoded with the codecs of
// src/datapath/maps/, identities shown with their labels and clusters by
// name (directory.ts). The row builders are pure: decoded entries plus a
// Directory in, rows out.
import { probeMcs } from './status.ts';
import { formatMcsView } from '../mcs/view.ts';
import { join } from 'node:path';
import { Command } from 'commander';
import { BpfMap } from '../datapath/libbpf/index.ts';
import {
  backends as backendsMap,
  backendSlots,
  ct as ctMap,
  endpoints as endpointsMap,
  ipcache as ipcacheMap,
  lbHint,
  maglev as maglevMap,
  metrics as metricsMap,
  policy as policyMap,
  reasonDescription,
  revnat as revnatMap,
  services as servicesMap,
} from '../datapath/maps/index.ts';
import { action, CliError, EXIT_ERROR, EXIT_OK, example, outputOption, printJson, table, type Closer, type OutputFormat } from './common.ts';
import { clusterOfIdentity, describeIdentity, labelsOf, loadDirectory, podName, type Directory } from './directory.ts';
import { addTargetFlags, resolveTargets, type NodeTarget, type TargetFlags } from './targets.ts';

// ---- rows ------------------------------------------------------------------

export interface IpcacheRow {
  prefix: string;
  identity: number;
  labels: string[];
  cluster: string | null;
  pod: string | null;
  tunnelEndpoint: string | null;
  /** The node behind tunnelEndpoint ('cluster/node'), when known. */
  tunnelNode: string | null;
}

export function ipcacheRows(entries: Iterable<[ipcacheMap.Key, ipcacheMap.Value]>, d: Directory): IpcacheRow[] {
  const rows: IpcacheRow[] = [];
  for (const [k, v] of entries) {
    const prefix = ipcacheMap.formatPrefix(k);
    rows.push({
      prefix,
      identity: v.identity,
      labels: labelsOf(d, v.identity),
      cluster: clusterOfIdentity(d, v.identity) ?? null,
      pod: k.prefixLen === 32 ? (podName(d, k.addr) ?? null) : null,
      tunnelEndpoint: v.tunnelEndpoint,
      tunnelNode: v.tunnelEndpoint ? (d.nodesByIP.get(v.tunnelEndpoint) ?? null) : null,
    });
  }
  return rows.sort((a, b) => cmpPrefix(a.prefix, b.prefix));
}

function ipNum(ip: string): number {
  return ip.split('.').reduce((a, o) => a * 256 + Number(o), 0);
}

function cmpPrefix(a: string, b: string): number {
  const [ia, la] = a.split('/');
  const [ib, lb] = b.split('/');
  return ipNum(ia!) - ipNum(ib!) || Number(la) - Number(lb);
}

export interface EndpointRow {
  ip: string;
  endpointId: number;
  identity: number;
  labels: string[];
  pod: string | null;
  ifindex: number;
  mac: string;
  nodeMac: string;
}

export function endpointRows(entries: Iterable<[endpointsMap.Key, endpointsMap.Value]>, d: Directory): EndpointRow[] {
  const rows: EndpointRow[] = [];
  for (const [k, v] of entries) {
    rows.push({ ip: k.ip, endpointId: v.endpointId, identity: v.identity, labels: labelsOf(d, v.identity), pod: podName(d, k.ip) ?? null, ifindex: v.ifindex, mac: v.mac, nodeMac: v.nodeMac });
  }
  return rows.sort((a, b) => ipNum(a.ip) - ipNum(b.ip));
}

export interface BackendRow {
  id: number;
  address: string;
  cluster: string | null;
  clusterId: number;
  pod: string | null;
  /** In the frontend's selection table and not flagged: new connections may go to it. */
  active: boolean;
  flags: string[];
}

export interface ServiceRow {
  frontend: string;
  serviceId: number;
  revnatId: number;
  /** The VIP:port replies are rewritten to come from (cm_revnat), null when the entry is missing. */
  revnat: string | null;
  mode: 'slots' | 'maglev';
  backendCount: number;
  sessionAffinity: boolean;
  affinityTimeout: number;
  backends: BackendRow[];
  /** Per cluster name: active / total backends. */
  byCluster: Record<string, { active: number; total: number }>;
  /** Whether the programs look the VIP up (cm_lb_hint has its bit or is not valid); false: its traffic goes untranslated. */
  vipHinted: boolean;
}

export interface ServiceMaps {
  services: Array<[servicesMap.Key, servicesMap.Value]>;
  backends: Map<number, backendsMap.Value>;
  slots: Array<[backendSlots.Key, number]>;
  maglev: Map<number, ArrayLike<number>>;
  revnat: Map<number, revnatMap.Value>;
  /** cm_lb_hint's value (absent: taken as not valid, every address looked up). */
  hint?: Buffer;
}

export function backendFlags(b: backendsMap.Value): string[] {
  return [...(b.terminating ? ['terminating'] : []), ...(b.clusterGone ? ['cluster-gone'] : []), ...(b.notReady ? ['not-ready'] : [])];
}

export function serviceRows(m: ServiceMaps, d: Directory): ServiceRow[] {
  const rows: ServiceRow[] = [];
  const hinted = (set: 'vip' | 'backend', addr: string) => m.hint === undefined || lbHint.mayBe(m.hint, set, addr);
  for (const [k, v] of m.services) {
    // Which backend ids the frontend selects from: its slots 0..count-1, or its Maglev table.
    let selected: number[];
    if (v.maglev) selected = [...new Set(Array.from(m.maglev.get(v.serviceId) ?? []))].filter((id) => id !== 0);
    else selected = m.slots.filter(([s]) => s.serviceId === v.serviceId && s.slot < v.backendCount).sort((a, b) => a[0].slot - b[0].slot).map(([, id]) => id);
    // Slots beyond the count (being pruned) still name backends of the frontend.
    const stale = v.maglev ? [] : m.slots.filter(([s]) => s.serviceId === v.serviceId && s.slot >= v.backendCount).map(([, id]) => id);
    const ids = [...new Set([...selected, ...stale])];
    const backends: BackendRow[] = ids.map((id) => {
      const b = m.backends.get(id);
      if (!b) return { id, address: '?', cluster: null, clusterId: 0, pod: null, active: false, flags: ['missing'] };
      const flags = backendFlags(b);
      const active = selected.includes(id) && flags.length === 0;
      // without its bit, its replies are not reverse-translated (cm_lb_hint)
      if (!hinted('backend', b.ip)) flags.push('no-hint-bit');
      return {
        id,
        address: `${b.ip}:${b.port}`,
        cluster: d.clusterById.get(b.clusterId) ?? (b.clusterId ? `cluster-id-${b.clusterId}` : null),
        clusterId: b.clusterId,
        pod: podName(d, b.ip) ?? null,
        active,
        flags,
      };
    });
    const byCluster: ServiceRow['byCluster'] = {};
    for (const b of backends) {
      const c = (byCluster[b.cluster ?? 'unknown'] ??= { active: 0, total: 0 });
      c.total++;
      if (b.active) c.active++;
    }
    const rn = m.revnat.get(v.revnatId);
    rows.push({
      frontend: `${k.vip}:${k.port}/${k.protocol}`,
      serviceId: v.serviceId,
      revnatId: v.revnatId,
      revnat: rn ? `${rn.vip}:${rn.port}` : null,
      mode: v.maglev ? 'maglev' : 'slots',
      backendCount: v.backendCount,
      sessionAffinity: v.sessionAffinity,
      affinityTimeout: v.affinityTimeout,
      backends,
      byCluster,
      vipHinted: hinted('vip', k.vip),
    });
  }
  return rows.sort((a, b) => a.frontend.localeCompare(b.frontend));
}

export interface PolicyRow {
  endpointId: number;
  pod: string | null;
  direction: 'ingress' | 'egress';
  /** 0 = any identity. */
  identity: number;
  labels: string[];
  protocol: string;
  /** 'any', '80' or '8080-8087'. */
  ports: string;
  verdict: 'allow' | 'deny' | 'none';
}

export interface PolicyEnforceRow {
  endpointId: number;
  pod: string | null;
  ingress: boolean;
  egress: boolean;
}

export function protocolLabel(p: number): string {
  return p === 0 ? 'any' : p === 6 ? 'TCP' : p === 17 ? 'UDP' : p === 1 ? 'ICMP' : String(p);
}

export function portRange(port: number, prefixLen: number): string {
  if (prefixLen === 0) return 'any';
  const last = port + (1 << (16 - prefixLen)) - 1;
  return last === port ? String(port) : `${port}-${last}`;
}

export function policyRows(
  entries: Iterable<[policyMap.Key, policyMap.Value]>,
  enforce: Iterable<[policyMap.EnforceKey, policyMap.EnforceValue]>,
  podOfEndpoint: Map<number, string>,
  d: Directory,
): { rules: PolicyRow[]; enforced: PolicyEnforceRow[] } {
  const rules: PolicyRow[] = [];
  for (const [k, v] of entries) {
    rules.push({
      endpointId: k.endpointId,
      pod: podOfEndpoint.get(k.endpointId) ?? null,
      direction: k.direction,
      identity: k.identity,
      labels: k.identity === 0 ? [] : labelsOf(d, k.identity),
      protocol: protocolLabel(k.protocol),
      ports: portRange(k.port, k.portPrefixLen),
      verdict: v.deny ? 'deny' : v.allow ? 'allow' : 'none',
    });
  }
  rules.sort((a, b) => a.endpointId - b.endpointId || a.direction.localeCompare(b.direction) || a.identity - b.identity || a.ports.localeCompare(b.ports));
  const enforced: PolicyEnforceRow[] = [];
  for (const [k, v] of enforce) if (v.active) enforced.push({ endpointId: k.endpointId, pod: podOfEndpoint.get(k.endpointId) ?? null, ingress: v.ingress, egress: v.egress });
  return { rules, enforced: enforced.sort((a, b) => a.endpointId - b.endpointId) };
}

export interface CtRow {
  dir: 'service' | 'revnat';
  protocol: string;
  src: string;
  dst: string;
  srcPod: string | null;
  backend: string | null;
  backendCluster: string | null;
  revnat: string | null;
  /** Seconds until the entry expires (negative: expired, waiting for GC). */
  expiresIn: number;
  closing: boolean;
  hairpin: boolean;
}

export function ctRows(entries: Iterable<[ctMap.Key, ctMap.Value]>, backends: Map<number, backendsMap.Value>, revnat: Map<number, revnatMap.Value>, d: Directory, nowSeconds: number): CtRow[] {
  const rows: CtRow[] = [];
  for (const [k, v] of entries) {
    const b = v.backendId ? backends.get(v.backendId) : undefined;
    const rn = v.revnatId ? revnat.get(v.revnatId) : undefined;
    rows.push({
      dir: k.dir,
      protocol: k.protocol,
      src: `${k.src}:${k.sport}`,
      dst: `${k.dst}:${k.dport}`,
      srcPod: podName(d, k.src, true) ?? null,
      backend: b ? `${b.ip}:${b.port}` : v.backendId ? `id ${v.backendId}` : null,
      backendCluster: b ? (d.clusterById.get(b.clusterId) ?? null) : null,
      revnat: rn ? `${rn.vip}:${rn.port}` : null,
      expiresIn: v.lifetime - nowSeconds,
      closing: v.closing,
      hairpin: v.hairpin,
    });
  }
  return rows.sort((a, b) => a.src.localeCompare(b.src) || a.dst.localeCompare(b.dst) || a.dir.localeCompare(b.dir));
}

export interface MetricRow {
  direction: string;
  reason: number;
  reasonName: string;
  description: string;
  drop: boolean;
  packets: number;
  bytes: number;
}

export function metricRows(rows: metricsMap.Row[]): MetricRow[] {
  return rows.map((r) => ({
    direction: r.direction,
    reason: r.reason,
    reasonName: r.reasonName,
    description: reasonDescription(r.reason),
    drop: r.drop,
    packets: Number(r.packets),
    bytes: Number(r.bytes),
  }));
}

// ---- reading the maps ------------------------------------------------------

/** Opens a pinned map of a node, with an error that says where and what to do. */
export function openNodeMap(node: NodeTarget, name: string, closer: Closer): BpfMap {
  if (!node.pinDir) throw new CliError(`node ${node.key}: its pin directory is not known; give --pin-dir`);
  const path = join(node.pinDir, name);
  try {
    const m = BpfMap.openPinned(path);
    closer.add(() => m.close());
    return m;
  } catch (err) {
    throw new CliError(`node ${node.key}: cannot open the pinned map ${path} (${(err as Error).message}); is the node's agent running and the bpffs mounted?`);
  }
}

function toMap<K, V>(entries: Iterable<[K, V]>): Map<K, V> {
  return new Map(entries);
}

export type MapKind = 'ipcache' | 'endpoints' | 'services' | 'policy' | 'ct' | 'metrics';

export function readNodeRows(kind: MapKind, node: NodeTarget, d: Directory, closer: Closer): unknown {
  const open = (name: string) => openNodeMap(node, name, closer);
  switch (kind) {
    case 'ipcache':
      return ipcacheRows(ipcacheMap.entries(open(ipcacheMap.MAP_NAME)), d);
    case 'endpoints':
      return endpointRows(endpointsMap.entries(open(endpointsMap.MAP_NAME)), d);
    case 'services':
      return serviceRows(
        {
          services: [...servicesMap.entries(open(servicesMap.MAP_NAME))],
          backends: toMap(backendsMap.entries(open(backendsMap.MAP_NAME))),
          slots: [...backendSlots.entries(open(backendSlots.MAP_NAME))],
          maglev: toMap(maglevMap.entries(open(maglevMap.MAP_NAME))),
          revnat: toMap(revnatMap.entries(open(revnatMap.MAP_NAME))),
          hint: lbHint.read(open(lbHint.MAP_NAME)),
        },
        d,
      );
    case 'policy': {
      const podOfEndpoint = new Map<number, string>();
      for (const [k, v] of endpointsMap.entries(open(endpointsMap.MAP_NAME))) podOfEndpoint.set(v.endpointId, podName(d, k.ip) ?? k.ip);
      return policyRows(policyMap.entries(open(policyMap.MAP_NAME)), policyMap.enforce.entries(open(policyMap.ENFORCE_MAP_NAME)), podOfEndpoint, d);
    }
    case 'ct':
      return ctRows(ctMap.entries(open(ctMap.MAP_NAME)), toMap(backendsMap.entries(open(backendsMap.MAP_NAME))), toMap(revnatMap.entries(open(revnatMap.MAP_NAME))), d, ctMap.monotonicSeconds());
    case 'metrics':
      return metricRows(metricsMap.read(open(metricsMap.MAP_NAME)));
  }
}

// ---- text ------------------------------------------------------------------

const idText = (d: Directory, id: number): string => describeIdentity(d, id);

export function formatRows(kind: MapKind, rows: unknown, d: Directory): string {
  switch (kind) {
    case 'ipcache': {
      const r = rows as IpcacheRow[];
      return table(
        ['PREFIX', 'IDENTITY', 'CLUSTER', 'POD', 'TUNNEL ENDPOINT'],
        r.map((x) => [x.prefix, idText(d, x.identity), x.cluster ?? '-', x.pod ?? '-', x.tunnelEndpoint ? `${x.tunnelEndpoint}${x.tunnelNode ? ` (${x.tunnelNode})` : ''}` : '-']),
      );
    }
    case 'endpoints': {
      const r = rows as EndpointRow[];
      return table(['IP', 'ENDPOINT', 'POD', 'IDENTITY', 'IFINDEX', 'MAC'], r.map((x) => [x.ip, String(x.endpointId), x.pod ?? '-', idText(d, x.identity), String(x.ifindex), x.mac]));
    }
    case 'services': {
      const r = rows as ServiceRow[];
      if (r.length === 0) return '(no services)';
      return r
        .map((s) => {
          const head = `${s.frontend}  service ${s.serviceId}  ${s.mode}  ${s.backendCount} selectable${s.sessionAffinity ? `  affinity ${s.affinityTimeout}s` : ''}  revnat ${s.revnatId} -> ${s.revnat ?? 'MISSING'}${s.vipHinted ? '' : '  NO HINT BIT (cm_lb_hint: not translated)'}`;
          const per = Object.entries(s.byCluster).map(([c, n]) => `${c} ${n.active}/${n.total} active`).join(', ');
          const lines = s.backends.map((b) => `    ${b.active ? 'active  ' : 'inactive'} ${b.address.padEnd(21)} ${(b.cluster ?? '-').padEnd(12)} ${b.pod ?? '-'}${b.flags.length ? `  [${b.flags.join(',')}]` : ''}`);
          return [head, `  backends: ${per || 'none'}`, ...lines].join('\n');
        })
        .join('\n');
    }
    case 'policy': {
      const r = rows as { rules: PolicyRow[]; enforced: PolicyEnforceRow[] };
      const enforced = r.enforced.length
        ? `enforced: ${r.enforced.map((e) => `${e.pod ?? `endpoint ${e.endpointId}`} (${[e.ingress ? 'ingress' : '', e.egress ? 'egress' : ''].filter(Boolean).join('+') || 'none'})`).join(', ')}`
        : 'enforced: no endpoint has policy (all traffic allowed)';
      return [
        enforced,
        table(
          ['ENDPOINT', 'DIRECTION', 'IDENTITY', 'CLUSTER', 'PROTO', 'PORTS', 'VERDICT'],
          r.rules.map((x) => [x.pod ?? String(x.endpointId), x.direction, x.identity === 0 ? 'any' : idText(d, x.identity), x.identity === 0 ? 'any' : (clusterOfIdentity(d, x.identity) ?? '-'), x.protocol, x.ports, x.verdict]),
        ),
      ].join('\n');
    }
    case 'ct': {
      const r = rows as CtRow[];
      return table(
        ['DIR', 'PROTO', 'SOURCE', 'DESTINATION', 'BACKEND', 'REVNAT', 'EXPIRES', 'FLAGS'],
        r.map((x) => [x.dir, x.protocol, `${x.src}${x.srcPod ? ` (${x.srcPod})` : ''}`, x.dst, x.backend ? `${x.backend}${x.backendCluster ? ` (${x.backendCluster})` : ''}` : '-', x.revnat ?? '-', `${x.expiresIn}s`, [x.closing ? 'closing' : '', x.hairpin ? 'hairpin' : ''].filter(Boolean).join(',') || '-']),
      );
    }
    case 'metrics': {
      const r = rows as MetricRow[];
      return table(['DIRECTION', 'REASON', 'DESCRIPTION', 'PACKETS', 'BYTES'], r.map((x) => [x.direction, x.reasonName, x.description, String(x.packets), String(x.bytes)]));
    }
  }
}

// ---- the command -----------------------------------------------------------

interface InspectFlags extends TargetFlags {
  output: OutputFormat;
}

const DESCRIPTIONS: Record<MapKind, string> = {
  ipcache: 'prefix -> identity (with labels and cluster), pod, tunnel endpoint (cm_ipcache)',
  endpoints: 'local pods: IP, endpoint id, identity with labels, veth (cm_endpoints)',
  services: "frontends with their backends per cluster and which are active (cm_services, cm_backends, cm_backend_slots, cm_maglev, cm_revnat; a VIP or backend missing its cm_lb_hint bit is flagged); also each cluster's ServiceExports (conditions) and ServiceImports",
  policy: 'per endpoint: direction, remote identity (labels), protocol, ports, verdict (cm_policy, cm_policy_enforce)',
  ct: 'service connections: client, frontend, backend, expiry (cm_ct)',
  metrics: 'packet counters by reason and direction, summed over CPUs (cm_metrics)',
};

export function inspectCommand(): Command {
  const cmd = new Command('inspect').description("a node's eBPF maps, decoded: identities as labels, clusters by name");
  for (const kind of Object.keys(DESCRIPTIONS) as MapKind[]) {
    const sub = new Command(kind).description(DESCRIPTIONS[kind]);
    addTargetFlags(sub);
    sub.addOption(outputOption()).action(
      action(`inspect ${kind}`, async (closer, o: InspectFlags) => {
        const t = await resolveTargets(o, closer);
        if (t.nodes.length === 0) throw new CliError(`no nodes to inspect${t.lab ? ` in lab ${t.lab.name}` : ''}; name one with --node, --pin-dir or --socket`, EXIT_ERROR);
        const d = await loadDirectory(t, closer, { kv: kind !== 'metrics', agents: kind !== 'metrics' });
        const nodes = t.nodes.map((n) => ({ node: n.key, cluster: n.cluster ?? null, rows: readNodeRows(kind, n, d, closer) }));
        // services, in a lab with a Kubernetes API: each cluster's ServiceExports (conditions) and ServiceImports too.
        const mcs = new Map<string, Awaited<ReturnType<typeof probeMcs>>>();
        const kubeconfig = t.lab?.source === 'kubernetes' ? t.lab.kubeconfig : undefined;
        if (kind === 'services' && kubeconfig) for (const c of new Set(nodes.flatMap((n) => (n.cluster ? [n.cluster] : [])))) mcs.set(c, await probeMcs(kubeconfig, c));
        if (o.output === 'json') {
          printJson({ map: kind, nodes: nodes.map((n) => ({ node: n.node, cluster: n.cluster, entries: n.rows })), ...(mcs.size ? { mcs: Object.fromEntries(mcs) } : {}), warnings: d.warnings });
        } else {
          for (const w of d.warnings) process.stderr.write(`warning: ${w}\n`);
          console.log(nodes.map((n) => `== ${n.node}\n${formatRows(kind, n.rows, d)}`).join('\n\n'));
          for (const [c, v] of mcs) {
            const lines = v === null ? ['  the MCS API CRDs are not installed'] : 'error' in v ? [`  could not read ServiceExports/ServiceImports (${v.error})`] : formatMcsView(v);
            console.log(`\n== ${c}: Multi-Cluster Services\n${lines.join('\n')}`);
          }
        }
        return EXIT_OK;
      }),
    );
    const examples: Record<MapKind, string[]> = {
      ipcache: ['clustermesh inspect ipcache --cluster cluster1 --node node1', 'clustermesh inspect ipcache --pin-dir /run/clustermesh/bpffs/node1 --etcd-config etcd.yaml -o json'],
      endpoints: ['clustermesh inspect endpoints --node cluster2/node1'],
      services: ['clustermesh inspect services --cluster cluster1 -o json'],
      policy: ['clustermesh inspect policy --node cluster2/node1'],
      ct: ['clustermesh inspect ct --socket /var/lib/clustermesh/state/agent.sock'],
      metrics: ['clustermesh inspect metrics --pin-dir /run/clustermesh/bpffs/node1'],
    };
    example(sub, ...examples[kind]);
    cmd.addCommand(sub);
  }
  return example(cmd, 'clustermesh inspect ipcache --node cluster1/node1', 'clustermesh inspect services -o json');
}

