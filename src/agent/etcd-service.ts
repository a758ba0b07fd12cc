// The cluster's etcd by its Kubernetes Service name, without cluster DNS.
// The installed agent's etcd endpoint is https://clustermesh-apiserver.<ns>.svc:2379;
// a host-network agent cannot ask cluster DNS for it (the DNS pods need the
// pod network, which needs the agent). As Cilium's agent does, such a name is
// resolved through the Kubernetes API instead: the Service's port, then the
// ready addresses of its EndpointSlices on the matching port (the endpoint
// addresses, not the ClusterIP: a ClusterIP needs a service datapath for
// host-network traffic, and ours translates pod traffic).
//
// The etcd client dials a loopback proxy per such endpoint, which connects
// each new connection to a resolved address, resolving again when none of the
// known ones answers (the apiserver pod moved to another node). TLS runs end
// to end through it and verifies the Service name (the client's serverName;
// the install's etcd server certificate has the Service names as SANs).
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { KvConnectionConfig } from '../kvstore/types.ts';
import type { KubeHttp } from '../sources/kubernetes/http.ts';

export interface ServiceRef {
  namespace: string;
  name: string;
}

/** `<svc>.<ns>.svc` or `<svc>.<ns>.svc.cluster.local` → the Service; any other host → undefined. */
export function serviceOfHost(host: string): ServiceRef | undefined {
  const m = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?\.?$/.exec(host.toLowerCase());
  return m ? { name: m[1]!, namespace: m[3]! } : undefined;
}

type RawService = { spec?: { ports?: Array<{ name?: string; port?: number }> } };
type RawSlice = { addressType?: string; ports?: Array<{ name?: string; port?: number }>; endpoints?: Array<{ addresses?: string[]; conditions?: { ready?: boolean } }> };

/**
 * The `ip:port` addresses behind a Service's `port`: the ready IPv4 endpoints
 * of its EndpointSlices, on the slice port named as the Service port (the
 * target port, maybe a named container port). Throws naming the Service when
 * it has no such port.
 */
export function serviceAddresses(svc: ServiceRef, service: RawService, slices: RawSlice[], port: number): string[] {
  const sp = (service.spec?.ports ?? []).find((p) => p.port === port);
  if (!sp) throw new Error(`Service ${svc.namespace}/${svc.name} has no port ${port} (it has ${(service.spec?.ports ?? []).map((p) => p.port).join(', ') || 'none'})`);
  const out = new Set<string>();
  for (const s of slices) {
    if (s.addressType !== undefined && s.addressType !== 'IPv4') continue;
    const target = (s.ports ?? []).find((p) => (p.name ?? '') === (sp.name ?? ''))?.port;
    if (target === undefined) continue;
    for (const e of s.endpoints ?? []) if (e.conditions?.ready !== false) for (const a of e.addresses ?? []) out.add(`${a}:${target}`);
  }
  return [...out].sort();
}

/** Reads the Service and its EndpointSlices through the API. */
export async function resolveService(http: Pick<KubeHttp, 'request'>, svc: ServiceRef, port: number): Promise<string[]> {
  const ns = encodeURIComponent(svc.namespace);
  const service = (await http.request('GET', `/api/v1/namespaces/${ns}/services/${encodeURIComponent(svc.name)}`, undefined, { timeoutMs: 10_000 })) as RawService;
  const list = (await http.request('GET', `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`, undefined, {
    query: { labelSelector: `kubernetes.io/service-name=${svc.name}` },
    timeoutMs: 10_000,
  })) as { items?: RawSlice[] };
  return serviceAddresses(svc, service, list.items ?? [], port);
}

function dial(addr: string, timeoutMs: number): Promise<Socket> {
  const i = addr.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const s = connect({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)) });
    s.setTimeout(timeoutMs, () => s.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    s.once('connect', () => {
      s.setTimeout(0);
      s.removeListener('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** A loopback TCP proxy to whichever address `resolve` currently gives. */
export class ServiceProxy {
  private server: Server | undefined;
  private addresses: string[] = [];
  private resolving: Promise<string[]> | undefined;
  private readonly sockets = new Set<Socket>();

  constructor(
    /** For logs and errors: `<svc>.<ns>.svc:2379`. */
    readonly target: string,
    private readonly resolve: () => Promise<string[]>,
    private readonly log: Logger,
    private readonly dialTimeoutMs = 5000,
  ) {}

  /** Listens on 127.0.0.1 (an ephemeral port); resolves to `127.0.0.1:port`. */
  async start(): Promise<string> {
    const server = createServer((client) => void this.accept(client));
    this.server = server;
    await new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen(0, '127.0.0.1', () => res());
    });
    const a = server.address() as { port: number };
    return `127.0.0.1:${a.port}`;
  }

  private async refresh(): Promise<string[]> {
    this.resolving ??= this.resolve()
      .then((addrs) => {
        if (addrs.join(',') !== this.addresses.join(',')) this.log.info({ service: this.target, addresses: addrs }, addrs.length ? 'etcd Service resolved through the Kubernetes API' : 'etcd Service has no ready endpoint');
        this.addresses = addrs;
        return addrs;
      })
      .catch((err: unknown) => {
        this.log.warn({ service: this.target, err: (err as Error).message }, 'cannot resolve the etcd Service through the Kubernetes API; keeping the addresses known');
        return this.addresses;
      })
      .finally(() => (this.resolving = undefined));
    return await this.resolving;
  }

  /** A connection to a known address; when none answers, resolved again and tried once more. */
  private async upstream(): Promise<Socket> {
    const tried = new Set<string>();
    for (let round = 0; round < 2; round++) {
      const addrs = round === 0 && this.addresses.length ? this.addresses : await this.refresh();
      for (const a of addrs) {
        try {
          return await dial(a, this.dialTimeoutMs);
        } catch {
          tried.add(a);
        }
      }
    }
    throw new Error(`${this.target}: no endpoint answers (tried ${[...tried].join(', ') || 'none: no ready endpoint'})`);
  }

  private async accept(client: Socket): Promise<void> {
    this.sockets.add(client);
    client.once('close', () => this.sockets.delete(client));
    client.on('error', () => undefined);
    client.pause();
    let up: Socket;
    try {
      up = await this.upstream();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'etcd connection through the Service failed');
      client.destroy();
      return;
    }
    if (client.destroyed || !this.server) {
      up.destroy();
      return;
    }
    this.sockets.add(up);
    up.once('close', () => this.sockets.delete(up));
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
    up.once('close', () => client.destroy());
    client.once('close', () => up.destroy());
    client.pipe(up);
    up.pipe(client);
    client.resume();
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((res) => server.close(() => res()));
  }
}

/**
 * The etcd connection with each Service-name endpoint replaced by a loopback
 * proxy to its endpoints, verifying the Service name. Endpoints of other hosts
 * are kept; the config unchanged (no proxies) when there is no Service name.
 */
export async function etcdThroughServices(
  etcd: KvConnectionConfig,
  http: () => Pick<KubeHttp, 'request'>,
  log: Logger,
): Promise<{ etcd: KvConnectionConfig; proxies: ServiceProxy[] }> {
  const proxies: ServiceProxy[] = [];
  const names = new Set<string>();
  const endpoints: string[] = [];
  try {
    for (const e of etcd.endpoints) {
      const u = new URL(e);
      const svc = serviceOfHost(u.hostname);
      if (!svc) {
        endpoints.push(e);
        continue;
      }
      const port = u.port ? Number(u.port) : 2379;
      const client = http();
      const p = new ServiceProxy(`${u.hostname}:${port}`, () => resolveService(client, svc, port), log);
      proxies.push(p);
      endpoints.push(`https://${await p.start()}`);
      names.add(u.hostname);
    }
  } catch (err) {
    await Promise.all(proxies.map((p) => p.close()));
    throw err;
  }
  if (proxies.length === 0) return { etcd, proxies };
  if ((names.size > 1 || proxies.length < endpoints.length) && etcd.serverName === undefined) {
    await Promise.all(proxies.map((p) => p.close()));
    throw new Error(`etcd.endpoints mix ${names.size > 1 ? `${names.size} Service names (${[...names].join(', ')})` : `a Service name (${[...names][0]}) with other hosts`}: every server certificate is verified against one name; list one Service, or set etcd.serverName`);
  }
  return { etcd: { ...etcd, endpoints, serverName: etcd.serverName ?? [...names][0]! }, proxies };
}
