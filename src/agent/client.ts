// Typed calls to a node agent's local API over its unix socket: what the CNI
// plugin, the CLI and tests use.
//
//   const agent = new AgentClient('/var/run/clustermesh/node1/agent.sock');
//   await agent.waitReady({ timeoutMs: 30_000 });
//   const ep = await agent.putEndpoint('c0ffee', { namespace: 'default', podName: 'web', ip, hostIfName, podMac, labels });
//   await agent.deleteEndpoint('c0ffee');
//
// Or the agent's remote API (read-only, HTTPS with a client certificate; api.ts):
//   new AgentClient({ host: '10.1.0.1', port: 4247, ca, cert, key, serverName: 'agents.cluster1.clustermesh.internal' })
import { Agent, request, type ClientRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import type { AgentStatus } from './status.ts';
import { flowQueryString, type Flow, type FlowQuery } from './flows.ts';
import { ApiError, type ApiErrorCode, type EndpointDeleteResult, type EndpointInfo, type EndpointRequest, type HealthBody, type PolicyInspect, type ServiceInfo } from './types.ts';

export { ApiError };

/** Nothing answers on the socket (no agent, or it is restarting). `code`: ENOENT, ECONNREFUSED, ETIMEDOUT... */
export class AgentUnavailableError extends Error {
  constructor(
    /** The socket path, or host:port of a remote API. */
    readonly socketPath: string,
    readonly code: string,
    message: string,
  ) {
    super(`agent at ${socketPath} is not reachable (${code}): ${message}`);
    this.name = 'AgentUnavailableError';
  }
}

/** An agent's remote API (the agent setting remoteApi): its address and the TLS material of a client it admits (PEM). */
export interface RemoteAgentAddress {
  host: string;
  port: number;
  /** The CA that signed the agents' server certificate (the install's). */
  ca: string;
  /** A client certificate and key the agents admit (the install's Secret clustermesh-observer). */
  cert: string;
  key: string;
  /** The name the server's certificate must carry (the agents share one). */
  serverName: string;
}

export interface AgentClientOptions {
  /** Per-request deadline (default 30 s: an add waits for the datapath and the identity). */
  timeoutMs?: number;
}

interface RawResponse {
  status: number;
  body: unknown;
}

export class AgentClient {
  private readonly agent: Agent;
  private readonly timeoutMs: number;
  /** The socket path, or host:port of a remote API (for messages). */
  readonly socketPath: string;
  private readonly remote: RemoteAgentAddress | undefined;
  private readonly send: (o: RequestOptions, cb: (res: IncomingMessage) => void) => ClientRequest;

  constructor(where: string | RemoteAgentAddress, opts: AgentClientOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    if (typeof where === 'string') {
      this.socketPath = where;
      this.remote = undefined;
      this.agent = new Agent({ keepAlive: true, maxSockets: 16 });
      this.send = request;
    } else {
      this.socketPath = `${where.host.includes(':') ? `[${where.host}]` : where.host}:${where.port}`;
      this.remote = where;
      // Loaded only here: the CNI plugin uses this client over the socket and must start fast.
      const https = process.getBuiltinModule('node:https');
      this.agent = new https.Agent({ keepAlive: true, maxSockets: 16, ca: where.ca, cert: where.cert, key: where.key, servername: where.serverName });
      this.send = https.request;
    }
  }

  /** Where a request goes: the socket, or the remote API's address with its TLS material. */
  private target(): RequestOptions {
    if (!this.remote) return { socketPath: this.socketPath };
    const r = this.remote;
    return { host: r.host, port: r.port, ca: r.ca, cert: r.cert, key: r.key, servername: r.serverName } as RequestOptions;
  }

  /** Adds (or updates, with the same body: a no-op) the endpoint of a container. */
  async putEndpoint(containerID: string, req: EndpointRequest): Promise<EndpointInfo> {
    return (await this.call('PUT', `/v1/endpoints/${encodeURIComponent(containerID)}`, req)) as EndpointInfo;
  }

  /** Deletes the endpoint of a container; `deleted: false` when the agent did not have it. */
  async deleteEndpoint(containerID: string): Promise<EndpointDeleteResult> {
    return (await this.call('DELETE', `/v1/endpoints/${encodeURIComponent(containerID)}`)) as EndpointDeleteResult;
  }

  async listEndpoints(): Promise<EndpointInfo[]> {
    return (await this.call('GET', '/v1/endpoints')) as EndpointInfo[];
  }

  /** Every service this node translates: frontends, backends per cluster, affinity, which backends are active. */
  async services(): Promise<ServiceInfo[]> {
    return (await this.call('GET', '/v1/services')) as ServiceInfo[];
  }

  /** Network policy of this node: per local endpoint the enforced directions and the resolved entries. */
  async policy(): Promise<PolicyInspect> {
    return (await this.call('GET', '/v1/policy')) as PolicyInspect;
  }

  /** Kept flows of this node matching q, oldest first (GET /v1/flows). */
  async flows(q: FlowQuery = {}): Promise<Flow[]> {
    return (await this.call('GET', `/v1/flows${flowQueryString(q)}`)) as Flow[];
  }

  /**
   * Follows the node's flows (GET /v1/flows?follow=1): the kept ones matching
   * q, then each new one, until stop() or the agent goes (`ended` resolves
   * then; rejects when the request fails). onLost: the agent dropped that many
   * flows because this reader was too slow. onBacklogEnd: the kept flows
   * have all been delivered; what follows is new.
   */
  followFlows(q: FlowQuery, onFlow: (f: Flow) => void, o: { onLost?: (n: number) => void; onBacklogEnd?: () => void } = {}): { stop(): void; ended: Promise<void> } {
    let req: ReturnType<typeof request> | undefined;
    let stopped = false;
    const ended = new Promise<void>((resolve, reject) => {
      req = this.send({ ...this.target(), path: `/v1/flows${flowQueryString({ ...q, follow: true })}`, method: 'GET', headers: { accept: 'application/x-ndjson' } }, (res) => {
        if ((res.statusCode ?? 0) >= 300) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            let b: { error?: string; code?: ApiErrorCode } = {};
            try {
              b = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof b;
            } catch {
              // not JSON
            }
            reject(new ApiError(b.code ?? 'internal', b.error ?? `GET /v1/flows: HTTP ${res.statusCode}`, res.statusCode));
          });
          return;
        }
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          buf += c;
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (line.trim() === '') continue;
            let v: Flow | { lost: number } | { backlogEnd: true };
            try {
              v = JSON.parse(line) as typeof v;
            } catch {
              stopped = true;
              req?.destroy();
              reject(new ApiError('internal', `GET /v1/flows: a line of the stream is not JSON: ${line.slice(0, 200)}`));
              return;
            }
            if ('lost' in v) o.onLost?.(v.lost);
            else if ('backlogEnd' in v) o.onBacklogEnd?.();
            else onFlow(v);
          }
        });
        res.on('end', () => resolve());
        res.on('close', () => resolve());
        res.on('error', (err) => (stopped ? resolve() : reject(err)));
      });
      req.on('error', (err: NodeJS.ErrnoException) => (stopped ? resolve() : reject(new AgentUnavailableError(this.socketPath, err.code ?? 'EIO', err.message))));
      req.end();
    });
    return {
      stop: () => {
        stopped = true;
        req?.destroy();
      },
      ended,
    };
  }

  async status(): Promise<AgentStatus> {
    return (await this.call('GET', '/v1/status')) as AgentStatus;
  }

  /** The health body, whatever the HTTP status (503 while not ready). */
  async health(): Promise<HealthBody> {
    const r = await this.raw('GET', '/healthz');
    return r.body as HealthBody;
  }

  /** Polls /healthz until ready; rejects after timeoutMs with the last answer or error. */
  async waitReady(opts: { timeoutMs?: number; intervalMs?: number } = {}): Promise<void> {
    const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
    let last = 'no answer yet';
    for (;;) {
      try {
        const h = await this.health();
        if (h.ready) return;
        last = `phase ${h.phase}`;
      } catch (err) {
        last = (err as Error).message;
      }
      if (Date.now() > deadline) throw new Error(`agent at ${this.socketPath} not ready after ${opts.timeoutMs ?? 60_000} ms: ${last}`);
      await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
    }
  }

  /** Closes kept-alive connections. */
  close(): void {
    this.agent.destroy();
  }

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const r = await this.raw(method, path, body);
    if (r.status >= 200 && r.status < 300) return r.body;
    const b = (r.body ?? {}) as { error?: unknown; code?: unknown };
    const code = (typeof b.code === 'string' ? b.code : 'internal') as ApiErrorCode;
    throw new ApiError(code, typeof b.error === 'string' ? b.error : `${method} ${path}: HTTP ${r.status}`, r.status);
  }

  private raw(method: string, path: string, body?: unknown): Promise<RawResponse> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = this.send(
        {
          ...this.target(),
          path,
          method,
          agent: this.agent,
          headers: {
            accept: 'application/json',
            ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
          },
          timeout: this.timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = undefined;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              parsed = { error: text.slice(0, 500), code: 'internal' };
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer within ${this.timeoutMs} ms`), { code: 'ETIMEDOUT' })));
      req.on('error', (err: NodeJS.ErrnoException) => {
        reject(new AgentUnavailableError(this.socketPath, err.code ?? 'EIO', err.message));
      });
      if (payload !== undefined) req.end(payload);
      else req.end();
    });
  }
}
