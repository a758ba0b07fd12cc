// Cluster DNS of the lab: an authoritative server for the cluster domain
// (cluster.local) fed by the cluster's Kubernetes API, run as a pod of the
// cluster (Deployment kube-system/cluster-dns) behind the Service
// kube-system/kube-dns at 10.96.0.10, so pods reach it through the datapath's
// service translation like any other Service.
//
// What it answers (the records Kubernetes' DNS specification defines, the ones
// a workload of the lab uses):
//   <svc>.<ns>.svc.<domain>   A  the Service's ClusterIP; for a headless
//                                Service (clusterIP None) the IPs of its ready pods
//   <a-b-c-d>.<ns>.pod.<domain> A  a.b.c.d, when a pod of <ns> has that IP
//   <svc>.<ns>.svc.clusterset.local A  the ServiceImport's VIP; for a headless
//                                import every ready endpoint of every exporting
//                                cluster (issue 18; see resolveClustersetName)
//   <host>.<cluster>.<svc>.<ns>.svc.clusterset.local A  that endpoint of a
//                                headless import
// Short names (`<svc>`, `<svc>.<ns>`) resolve through the search list of the
// pods' resolv.conf (see resolvConf()), as with kube-dns.
// Other names in the domain: NXDOMAIN (or NODATA for a name that exists with no
// record of the type asked), with the zone's SOA for negative caching.
// Names outside the domain: REFUSED. There is no forwarding: the lab's pods
// have no business resolving the internet.
//
// Where it reads: the cluster's Kubernetes API (KubernetesSource). Pods cannot
// reach the kube-apiserver over the network (it listens on 127.0.0.1 of the
// machine), but it also serves on a TLS unix socket, and a unix socket is
// reached through the file system, not the network namespace: the DNS process
// opens the node-local endpoint (kube-api-endpoint.ts) on 127.0.0.1:6443 of its
// own pod namespace, forwarding to that socket, so the cluster components'
// kubeconfig (server https://127.0.0.1:6443) works in the pod (like a hostPath
// mount of the socket in Kubernetes).
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { createServer as createTcpServer, type Server as TcpServer, type Socket as TcpSocket } from 'node:net';
import dnsPacket, { type Answer, type DecodedPacket, type Packet, type Question } from 'dns-packet';
import { stringify as toYaml } from 'yaml';
import { isPodReady, type EndpointSlice, type Namespace, type Pod, type Service } from '../model/index.ts';
import { KubernetesSource } from '../sources/kubernetes/source.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import { startKubeApiEndpoint } from './kube-api-endpoint.ts';
import type { ClusterSource } from '../sources/types.ts';
import { derivedServiceName, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, SOURCE_CLUSTER_LABEL } from '../mcs/plan.ts';

export const CLUSTER_DOMAIN = 'cluster.local';
/** The Multi-Cluster Services domain (KEP-1645): `<svc>.<ns>.svc.clusterset.local`. */
export const CLUSTERSET_DOMAIN = 'clusterset.local';
/** The ClusterIP of kube-system/kube-dns in every cluster of the lab. */
export const DNS_SERVICE_IP = '10.96.0.10';
export const DNS_NAMESPACE = 'kube-system';
export const DNS_SERVICE_NAME = 'kube-dns';
export const DNS_DEPLOYMENT_NAME = 'cluster-dns';
/** The label the Service selects the DNS pods by (as kube-dns does). */
export const DNS_APP_LABEL = { 'k8s-app': 'kube-dns' } as const;
/** TTL of answers and of negative answers (seconds); CoreDNS' kubernetes plugin uses 5 too. */
export const DEFAULT_DNS_TTL = 5;

// ---- the data the answers come from ------------------------------------------

/** What the server reads: the cluster's Services, Pods and Namespaces. */
export interface DnsData {
  service(namespace: string, name: string): Service | undefined;
  services(): readonly Service[];
  pods(): readonly Pod[];
  namespaces(): readonly Namespace[];
  /** The cluster's EndpointSlices (a Kubernetes API source; none otherwise): those of headless imports answer clusterset names. */
  endpointSlices?(): readonly EndpointSlice[];
  /** False until the first complete list: the server then answers SERVFAIL rather than a wrong NXDOMAIN. */
  ready(): boolean;
}

/** DnsData over a cluster source (the Kubernetes API in the lab). */
export function sourceDnsData(source: ClusterSource): DnsData {
  return {
    service: (namespace, name) => source.services.get({ namespace, name }),
    services: () => source.services.list(),
    pods: () => source.pods.list(),
    namespaces: () => source.namespaces.list(),
    endpointSlices: () => (source.serviceBackends === 'endpointslices' ? source.endpointSlices.list() : []),
    ready: () => source.services.synced && source.pods.synced && source.namespaces.synced && (source.serviceBackends !== 'endpointslices' || source.endpointSlices.synced),
  };
}

/** DnsData over fixed lists (tests, a snapshot). */
export function staticDnsData(objects: { services?: Service[]; pods?: Pod[]; namespaces?: Namespace[]; endpointSlices?: EndpointSlice[] }): DnsData {
  const services = objects.services ?? [];
  return {
    service: (namespace, name) => services.find((s) => s.metadata.namespace === namespace && s.metadata.name === name),
    services: () => services,
    pods: () => objects.pods ?? [],
    namespaces: () => objects.namespaces ?? [],
    endpointSlices: () => objects.endpointSlices ?? [],
    ready: () => true,
  };
}

function selectsPod(selector: Record<string, string> | undefined, pod: Pod): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => pod.metadata.labels[k] === v);
}

/** IPs of the ready pods a headless Service selects, sorted (stable answers). */
export function headlessAddresses(data: DnsData, svc: Service): string[] {
  const ips = new Set<string>();
  for (const pod of data.pods()) {
    if (pod.metadata.namespace !== svc.metadata.namespace || !pod.status.podIP || !isPodReady(pod)) continue;
    if (selectsPod(svc.spec.selector, pod)) ips.add(pod.status.podIP);
  }
  return [...ips].sort(compareIPv4);
}

function compareIPv4(a: string, b: string): number {
  const n = (ip: string) => ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  return n(a) - n(b);
}

// ---- answering ---------------------------------------------------------------

export interface DnsAnswerOptions {
  domain?: string;
  ttl?: number;
}

export type Rcode = 'NOERROR' | 'FORMERR' | 'SERVFAIL' | 'NXDOMAIN' | 'NOTIMP' | 'REFUSED';
const RCODES: Record<Rcode, number> = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };
const RCODE_NAMES: Record<number, Rcode> = Object.fromEntries(Object.entries(RCODES).map(([k, v]) => [v, k as Rcode]));
const QR = 0x8000;
const OPCODE_MASK = 0x7800;
const OPCODE_QUERY = 0;

/** What a name in the cluster domain is, before the record type is looked at. */
type Resolution =
  | { kind: 'outside' }
  | { kind: 'nxdomain' }
  /** The name exists; `a` holds its addresses (possibly none). */
  | { kind: 'exists'; a: string[]; apex?: boolean };

function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.+$/, '');
}

const IPV4_DASHED = /^(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})$/;

/** Resolves one name against the cluster's objects (no record type yet). */
export function resolveName(data: DnsData, name: string, domain = CLUSTER_DOMAIN): Resolution {
  const n = normalizeName(name);
  const d = normalizeName(domain);
  if (n === d) return { kind: 'exists', a: [], apex: true };
  if (!n.endsWith(`.${d}`)) return { kind: 'outside' };
  const labels = n.slice(0, -(d.length + 1)).split('.');
  const nsExists = (ns: string): boolean =>
    data.namespaces().some((x) => x.metadata.name === ns) || data.services().some((s) => s.metadata.namespace === ns) || data.pods().some((p) => p.metadata.namespace === ns);
  const [first, second, third] = labels;
  switch (labels.length) {
    case 1:
      // svc.<domain>, pod.<domain>: empty non-terminals.
      return first === 'svc' || first === 'pod' ? { kind: 'exists', a: [] } : { kind: 'nxdomain' };
    case 2:
      // <ns>.svc.<domain>, <ns>.pod.<domain>
      if ((second === 'svc' || second === 'pod') && nsExists(first!)) return { kind: 'exists', a: [] };
      return { kind: 'nxdomain' };
    case 3: {
      if (third === 'svc') {
        const svc = data.service(second!, first!);
        if (!svc) return { kind: 'nxdomain' };
        const ip = svc.spec.clusterIP;
        if (ip === 'None') return { kind: 'exists', a: headlessAddresses(data, svc) };
        return { kind: 'exists', a: ip ? [ip] : [] };
      }
      if (third === 'pod') {
        const m = IPV4_DASHED.exec(first!);
        if (!m || m.slice(1).some((o) => Number(o) > 255)) return { kind: 'nxdomain' };
        const ip = m.slice(1).map(Number).join('.');
        const known = data.pods().some((p) => p.metadata.namespace === second && p.status.podIP === ip);
        return known ? { kind: 'exists', a: [ip] } : { kind: 'nxdomain' };
      }
      return { kind: 'nxdomain' };
    }
    default:
      return { kind: 'nxdomain' };
  }
}

/**
 * A name of clusterset.local (issue 18): `<svc>.<ns>.svc.clusterset.local` is
 * the ServiceImport's VIP, which is the ClusterIP of the import's derived
 * Service (src/mcs/plan.ts: same name in every cluster, labelled with the
 * import's name, made by the apiserver's MCS controller). A headless import
 * answers from the EndpointSlices the controller writes for it, one per
 * exporting cluster (labels multicluster.kubernetes.io/service-name and
 * .../source-cluster, as CoreDNS's multicluster plugin reads them): the name
 * with every ready address of every cluster, and
 * `<hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local` with the ready
 * addresses of the endpoints of that hostname in that cluster's slices.
 */
export function resolveClustersetName(data: DnsData, name: string): Resolution {
  const n = normalizeName(name);
  if (n === CLUSTERSET_DOMAIN) return { kind: 'exists', a: [], apex: true };
  if (!n.endsWith(`.${CLUSTERSET_DOMAIN}`)) return { kind: 'outside' };
  const labels = n.slice(0, -(CLUSTERSET_DOMAIN.length + 1)).split('.');
  const derived = (ns: string, svc: string): Service | undefined => {
    const d = data.service(ns, derivedServiceName(svc));
    return d && d.metadata.labels[SERVICE_NAME_LABEL] === svc && d.metadata.labels[MANAGED_BY_LABEL] === MANAGED_BY ? d : undefined;
  };
  if (labels.length === 1) return labels[0] === 'svc' ? { kind: 'exists', a: [] } : { kind: 'nxdomain' };
  if (labels.length === 2) return labels[1] === 'svc' && data.services().some((s) => s.metadata.namespace === labels[0] && s.metadata.labels[MANAGED_BY_LABEL] === MANAGED_BY) ? { kind: 'exists', a: [] } : { kind: 'nxdomain' };
  if (labels.length < 3 || labels.length > 5 || labels[labels.length - 1] !== 'svc') return { kind: 'nxdomain' };
  const [ns, svc] = [labels[labels.length - 2]!, labels[labels.length - 3]!];
  const d = derived(ns, svc);
  if (!d) return { kind: 'nxdomain' };
  if (d.spec.clusterIP !== 'None') return labels.length === 3 ? { kind: 'exists', a: d.spec.clusterIP ? [d.spec.clusterIP] : [] } : { kind: 'nxdomain' };
  const endpoints = importEndpoints(data, ns, svc);
  const ready = (eps: typeof endpoints): string[] => [...new Set(eps.filter((e) => e.ready).map((e) => e.ip))].sort(compareIPv4);
  if (labels.length === 3) return { kind: 'exists', a: ready(endpoints) };
  const inCluster = endpoints.filter((e) => e.cluster === labels[labels.length - 4]);
  // <cluster>.<svc>.<ns>.svc: an empty non-terminal when that cluster has named endpoints.
  if (labels.length === 4) return inCluster.some((e) => e.hostname) ? { kind: 'exists', a: [] } : { kind: 'nxdomain' };
  const named = inCluster.filter((e) => e.hostname === labels[0]);
  return named.length > 0 ? { kind: 'exists', a: ready(named) } : { kind: 'nxdomain' };
}

/** The endpoints of headless import ns/svc: its slices' (those naming a source cluster) addresses, with cluster, hostname and ready. */
function importEndpoints(data: DnsData, ns: string, svc: string): Array<{ ip: string; cluster: string; hostname: string | undefined; ready: boolean }> {
  const out: Array<{ ip: string; cluster: string; hostname: string | undefined; ready: boolean }> = [];
  for (const s of data.endpointSlices?.() ?? []) {
    const l = s.metadata.labels;
    const cluster = l[SOURCE_CLUSTER_LABEL] ?? s.metadata.annotations?.[SOURCE_CLUSTER_LABEL];
    if (s.metadata.namespace !== ns || l[SERVICE_NAME_LABEL] !== svc || !cluster) continue;
    for (const e of s.endpoints) for (const ip of e.addresses) out.push({ ip, cluster, hostname: e.hostname?.toLowerCase(), ready: e.conditions.ready ?? true });
  }
  return out;
}

function soaRecord(domain: string, ttl: number): Answer {
  return {
    type: 'SOA',
    name: domain,
    ttl,
    class: 'IN',
    data: {
      mname: `ns.dns.${domain}`,
      rname: `hostmaster.${domain}`,
      // Changes are visible within the TTL anyway; a serial that moves with time is what CoreDNS does too.
      serial: Math.floor(Date.now() / 1000) >>> 0,
      refresh: 7200,
      retry: 1800,
      expire: 86400,
      minimum: ttl,
    },
  };
}

/** The response header flags for `query`: QR, the query's opcode and RD, AA when authoritative, and the rcode. */
function responseFlags(queryFlags: number, rcode: Rcode, authoritative: boolean): number {
  let flags = (queryFlags & OPCODE_MASK) | (queryFlags & dnsPacket.RECURSION_DESIRED) | RCODES[rcode];
  if (authoritative) flags |= dnsPacket.AUTHORITATIVE_ANSWER;
  return flags;
}

/**
 * The response to one decoded query. Pure: everything comes from `data`.
 * Exported for tests and for anyone who wants the answers without a socket.
 */
export function answerQuery(query: DecodedPacket, data: DnsData, opts: DnsAnswerOptions = {}): Packet {
  const domain = normalizeName(opts.domain ?? CLUSTER_DOMAIN);
  const ttl = opts.ttl ?? DEFAULT_DNS_TTL;
  const qflags = query.flags ?? 0;
  const questions = query.questions ?? [];
  const edns = (query.additionals ?? []).find((a) => a.type === 'OPT');
  const reply = (rcode: Rcode, authoritative: boolean, answers: Answer[] = [], authorities: Answer[] = []): Packet => ({
    type: 'response',
    id: query.id ?? 0,
    flags: responseFlags(qflags, rcode, authoritative),
    questions,
    answers,
    authorities,
    // EDNS(0): a client that sent OPT gets OPT back, with the size we accept.
    additionals: edns ? [{ type: 'OPT', name: '.', udpPayloadSize: 1232, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] } as Answer] : [],
  });
  if (query.type === 'response') return reply('FORMERR', false);
  if ((qflags & OPCODE_MASK) >> 11 !== OPCODE_QUERY) return reply('NOTIMP', false);
  if (questions.length !== 1) return reply('FORMERR', false);
  const q = questions[0] as Question;
  if (q.class !== undefined && q.class !== 'IN' && q.class !== 'ANY') return reply('REFUSED', false);
  let res = resolveName(data, q.name, domain);
  let zone = domain;
  if (res.kind === 'outside') {
    res = resolveClustersetName(data, q.name);
    zone = CLUSTERSET_DOMAIN;
  }
  if (res.kind === 'outside') return reply('REFUSED', false);
  if (!data.ready()) return reply('SERVFAIL', false);
  const negative = [soaRecord(zone, ttl)];
  if (res.kind === 'nxdomain') return reply('NXDOMAIN', true, [], negative);
  const answers: Answer[] = [];
  // dns-packet decodes QTYPE 255 as 'ANY', which its types do not list.
  const qtype = q.type as string;
  if (qtype === 'A' || qtype === 'ANY') {
    for (const ip of res.a) answers.push({ type: 'A', name: q.name, ttl, class: 'IN', data: ip });
  }
  if ((qtype === 'SOA' || qtype === 'ANY') && res.apex) answers.push(soaRecord(zone, ttl));
  return reply('NOERROR', true, answers, answers.length ? [] : negative);
}

/** The bytes of the response to `msg`, or undefined when msg is too short to answer at all. */
export function respond(msg: Buffer, data: DnsData, opts: DnsAnswerOptions & { maxSize?: number } = {}): Buffer | undefined {
  let query: DecodedPacket;
  try {
    query = dnsPacket.decode(msg);
  } catch {
    if (msg.length < 4) return undefined;
    // Malformed: FORMERR with the query's ID and opcode, no sections.
    const out = Buffer.alloc(12);
    msg.copy(out, 0, 0, 2);
    out.writeUInt16BE(QR | (msg.readUInt16BE(2) & (OPCODE_MASK | dnsPacket.RECURSION_DESIRED)) | RCODES.FORMERR, 2);
    return out;
  }
  const response = answerQuery(query, data, opts);
  let out = dnsPacket.encode(response);
  const edns = (query.additionals ?? []).find((a) => a.type === 'OPT') as { udpPayloadSize?: number } | undefined;
  const max = opts.maxSize ?? Math.max(512, Math.min(edns?.udpPayloadSize ?? 512, 1232));
  if (out.length > max) {
    // Too big for this UDP client: say so (TC) and let it retry over TCP.
    out = dnsPacket.encode({ ...response, flags: (response.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE, answers: [], authorities: [] });
  }
  return out;
}

// ---- the server --------------------------------------------------------------

export interface DnsServerOptions extends DnsAnswerOptions {
  /** Address to listen on (default 0.0.0.0). */
  host?: string;
  /** UDP and TCP port (default 53; 0 picks free ports, which may differ between UDP and TCP). */
  port?: number;
  /** Also serve DNS over TCP (default true). */
  tcp?: boolean;
  /** One line per query (default: none). */
  log?: (line: string) => void;
}

export interface DnsServer {
  readonly host: string;
  readonly udpPort: number;
  /** undefined without TCP. */
  readonly tcpPort: number | undefined;
  /** Queries answered since start, by rcode. */
  readonly counts: Readonly<Record<string, number>>;
  close(): Promise<void>;
}

/** Starts the DNS server on UDP (and TCP) with answers from `data`. */
export async function startDnsServer(data: DnsData, opts: DnsServerOptions = {}): Promise<DnsServer> {
  const host = opts.host ?? '0.0.0.0';
  const port = opts.port ?? 53;
  const counts: Record<string, number> = {};
  const handle = (msg: Buffer, transport: 'udp' | 'tcp', peer: string): Buffer | undefined => {
    const out = respond(msg, data, { ...opts, ...(transport === 'tcp' ? { maxSize: 65535 } : {}) });
    if (out) {
      const rcode = RCODE_NAMES[out.readUInt16BE(2) & 0xf] ?? `RCODE_${out.readUInt16BE(2) & 0xf}`;
      counts[rcode] = (counts[rcode] ?? 0) + 1;
      if (opts.log) {
        let q = '?';
        try {
          const d = dnsPacket.decode(msg);
          q = `${d.questions?.[0]?.type ?? '?'} ${d.questions?.[0]?.name ?? '?'}`;
        } catch {
          /* logged as '?' */
        }
        opts.log(`${transport} ${peer} ${q} -> ${rcode}`);
      }
    }
    return out;
  };

  const udp: UdpSocket = createSocket({ type: 'udp4' });
  udp.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    const out = handle(msg, 'udp', `${rinfo.address}:${rinfo.port}`);
    if (out) udp.send(out, rinfo.port, rinfo.address);
  });
  await new Promise<void>((res, rej) => {
    udp.once('error', rej);
    udp.bind(port, host, () => {
      udp.off('error', rej);
      res();
    });
  });
  udp.on('error', (err) => opts.log?.(`udp error: ${err.message}`));
  const udpPort = udp.address().port;

  let tcp: TcpServer | undefined;
  const conns = new Set<TcpSocket>();
  if (opts.tcp !== false) {
    tcp = createTcpServer((sock) => {
      conns.add(sock);
      sock.setTimeout(10_000, () => sock.destroy());
      sock.on('close', () => conns.delete(sock));
      sock.on('error', () => sock.destroy());
      let buf = Buffer.alloc(0);
      sock.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        // RFC 1035 4.2.2 / RFC 7766: each message is preceded by its 2-byte length; several may follow.
        while (buf.length >= 2) {
          const len = buf.readUInt16BE(0);
          if (buf.length < 2 + len) break;
          const msg = buf.subarray(2, 2 + len);
          buf = buf.subarray(2 + len);
          const out = handle(msg, 'tcp', `${sock.remoteAddress}:${sock.remotePort}`);
          if (!out) return sock.destroy();
          const framed = Buffer.alloc(2 + out.length);
          framed.writeUInt16BE(out.length, 0);
          out.copy(framed, 2);
          sock.write(framed);
        }
      });
    });
    const server = tcp;
    await new Promise<void>((res, rej) => {
      server.once('error', rej);
      // The same port as UDP when one was given; with 0 UDP's port is tried first.
      server.listen({ port: port === 0 ? udpPort : port, host, exclusive: true }, () => {
        server.off('error', rej);
        res();
      });
    }).catch(async (err: NodeJS.ErrnoException) => {
      if (port !== 0 || err.code !== 'EADDRINUSE') {
        udp.close();
        throw new Error(`cluster DNS: cannot listen on tcp ${host}:${port}: ${err.message}`);
      }
      await new Promise<void>((res, rej) => {
        server.once('error', rej);
        server.listen({ port: 0, host }, () => res());
      });
    });
  }
  const tcpAddr = tcp?.address();
  return {
    host,
    udpPort,
    tcpPort: tcpAddr && typeof tcpAddr === 'object' ? tcpAddr.port : undefined,
    counts,
    close: async () => {
      for (const c of conns) c.destroy();
      await Promise.all([
        new Promise<void>((r) => udp.close(() => r())),
        tcp ? new Promise<void>((r) => tcp!.close(() => r())) : Promise.resolve(),
      ]);
    },
  };
}

// ---- running it as a workload ------------------------------------------------

export interface ClusterDnsOptions extends DnsServerOptions {
  /** The cluster's Kubernetes API. */
  kubeconfig: string;
  /** The kube-apiserver's TLS unix socket: forwarded from 127.0.0.1:6443 in this process's network namespace first. */
  kubeApiSocket?: string;
  /** Wait this long for the first complete list before serving anyway (SERVFAIL until then); default 30 s. */
  syncTimeoutMs?: number;
}

export interface RunningClusterDns {
  server: DnsServer;
  source: ClusterSource;
  stop(): Promise<void>;
}

/** The source the DNS answers from: the cluster's Kubernetes API (through the node-local endpoint this process opens first, with kubeApiSocket). */
async function openDnsSource(opts: ClusterDnsOptions): Promise<{ source: ClusterSource; close: () => Promise<void> }> {
  const endpoint = opts.kubeApiSocket !== undefined ? await startKubeApiEndpoint({ socket: opts.kubeApiSocket }) : undefined;
  const source = new KubernetesSource({
    kubeConfig: loadKubeConnection({ kubeconfig: opts.kubeconfig }).kubeConfig,
    onProblem: (p) => opts.log?.(`kubernetes: ignoring ${p.kind} ${p.key}: ${p.message}`),
    onError: (kind, err) => opts.log?.(`kubernetes: watch of ${kind} failed (retrying): ${err.message}`),
  });
  return { source, close: async () => void endpoint?.close() };
}

/** The DNS workload: the Kubernetes API source, and the server answering from it. */
export async function startClusterDns(opts: ClusterDnsOptions): Promise<RunningClusterDns> {
  const { source, close } = await openDnsSource(opts);
  let server: DnsServer | undefined;
  try {
    await source.start();
    const data = sourceDnsData(source);
    server = await startDnsServer(data, opts);
    const signal = AbortSignal.timeout(opts.syncTimeoutMs ?? 30_000);
    await Promise.all([source.services.waitSynced(signal), source.pods.waitSynced(signal), source.namespaces.waitSynced(signal)]).catch((err: Error) =>
      opts.log?.(`source: not synced yet (${err.message}); answering SERVFAIL for the cluster domain until it is`),
    );
  } catch (err) {
    await server?.close().catch(() => undefined);
    await source.stop().catch(() => undefined);
    await close().catch(() => undefined);
    throw err;
  }
  const srv = server;
  return {
    server: srv,
    source,
    stop: async () => {
      await srv.close();
      await source.stop();
      await close();
    },
  };
}

// ---- what the lab applies and writes -----------------------------------------

export interface ClusterDnsManifestOptions {
  /** The cluster components' kubeconfig and the kube-apiserver's unix socket. */
  kube: { kubeconfig: string; socket: string };
  /** How a pod's command names this program (default 'clustermesh'). */
  cli?: string[];
  replicas?: number;
  ip?: string;
}

/** The Namespace, Deployment and Service that run the cluster's DNS (Kubernetes-shaped objects, in apply order). */
export function clusterDnsObjects(o: ClusterDnsManifestOptions): Record<string, unknown>[] {
  const labels = { ...DNS_APP_LABEL };
  return [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: DNS_NAMESPACE } },
    {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: DNS_DEPLOYMENT_NAME, namespace: DNS_NAMESPACE, labels },
      spec: {
        replicas: o.replicas ?? 1,
        selector: { matchLabels: labels },
        template: {
          metadata: { labels },
          spec: {
            containers: [
              {
                name: 'dns',
                command: [
                  ...(o.cli ?? ['clustermesh']), 'lab', 'workload', 'dns',
                  '--kubeconfig', o.kube.kubeconfig, '--kube-api-socket', o.kube.socket,
                ],
                ports: [
                  { name: 'dns', containerPort: 53, protocol: 'UDP' },
                  { name: 'dns-tcp', containerPort: 53, protocol: 'TCP' },
                ],
              },
            ],
          },
        },
      },
    },
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: DNS_SERVICE_NAME, namespace: DNS_NAMESPACE, labels },
      spec: {
        clusterIP: o.ip ?? DNS_SERVICE_IP,
        selector: labels,
        ports: [
          { name: 'dns', port: 53, targetPort: 53, protocol: 'UDP' },
          { name: 'dns-tcp', port: 53, targetPort: 53, protocol: 'TCP' },
        ],
      },
    },
  ];
}

/** clusterDnsObjects() as one multi-document YAML. */
export function clusterDnsManifest(o: ClusterDnsManifestOptions): string {
  return clusterDnsObjects(o)
    .map((d) => toYaml(d))
    .join('---\n');
}

/** The resolv.conf of a pod in namespace `ns`: the cluster DNS and the Kubernetes search list. */
export function resolvConf(ns: string, dnsIP = DNS_SERVICE_IP, domain = CLUSTER_DOMAIN): string {
  return `nameserver ${dnsIP}\nsearch ${ns}.svc.${domain} svc.${domain} ${domain}\noptions ndots:5\n`;
}
