// List and watch over HTTP(S), authenticated by a client-node KubeConfig or
// kube-access.ts's KubeAccess (client certificates, bearer tokens, exec and
// token-file providers: whatever their applyToHTTPSOptions applies). Our own requests rather than
// client-node's Watch: we need the Status body of a failed request (404 of a
// missing CRD, 410 Expired) and an idle timeout for a connection that died
// without closing.
//
// Connections are reused (keep-alive): client-node makes a new https.Agent for
// every request, so every request was a new TCP connection with a full TLS
// handshake (and a new secure context: the CA, certificate and key parsed
// again) on both ends -- most of a lab Kubernetes API server's request cost.
// KeepAliveAgents keeps one keep-alive agent per server and TLS material
// (KubeHttp's own requests; reuseConnections() for client-node's API clients).
import { Agent as HttpsAgent, request as httpsRequest, type AgentOptions, type RequestOptions } from 'node:https';
import { request as httpRequest, type Agent as HttpAgent, type IncomingMessage } from 'node:http';
import type { KubeConfig } from '@kubernetes/client-node';

/** A request the server answered with an error (a `Status` body when it sent one). */
export class KubeApiError extends Error {
  constructor(
    readonly code: number,
    /** Status.reason: NotFound, Expired, Gone, Forbidden, … ('' when the body was not a Status). */
    readonly reason: string,
    message: string,
  ) {
    super(message);
    this.name = 'KubeApiError';
  }
}

/** A watch event as the API sends it, one JSON object per line. */
export interface RawWatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: Record<string, unknown>;
}

export interface RawList {
  items: unknown[];
  resourceVersion: string;
  continue: string | undefined;
}

/** What a TLS connection is made with: an agent is reused only while all of these are the same (a rotated certificate file gets a new one). */
const TLS_AGENT_FIELDS = [
  'ca', 'cert', 'key', 'pfx', 'passphrase', 'rejectUnauthorized', 'servername', 'ciphers', 'honorCipherOrder', 'ecdhCurve',
  'clientCertEngine', 'crl', 'dhparam', 'secureOptions', 'secureProtocol', 'sessionIdContext', 'timeout',
] as const;

function sameOption(a: unknown, b: unknown): boolean {
  if (Buffer.isBuffer(a) || Buffer.isBuffer(b)) return Buffer.isBuffer(a) && Buffer.isBuffer(b) && a.equals(b);
  if (Array.isArray(a) || Array.isArray(b)) return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => sameOption(x, b[i]));
  return a === b;
}

/**
 * Keep-alive HTTPS agents, one per server origin and TLS settings: what
 * replaces the fresh agent client-node makes per request. When the settings
 * of an origin change (a new certificate), the old agent's idle connections
 * are closed and a new agent serves from then on.
 */
export class KeepAliveAgents {
  private readonly agents = new Map<string, { options: AgentOptions; agent: HttpsAgent }>();

  /** The agent to use instead of `fresh` (a plain https.Agent made for one request); anything else (a proxy's agent, http) is returned as is. */
  agentFor(origin: string, fresh: HttpAgent | HttpsAgent | undefined): HttpAgent | HttpsAgent | undefined {
    if (fresh === undefined || fresh.constructor !== HttpsAgent) return fresh;
    const options = (fresh as HttpsAgent & { options: AgentOptions }).options;
    const known = this.agents.get(origin);
    if (known && TLS_AGENT_FIELDS.every((f) => sameOption(known.options[f], options[f]))) return known.agent;
    if (known) for (const sockets of Object.values(known.agent.freeSockets)) for (const s of sockets ?? []) s.destroy();
    const picked: AgentOptions = {};
    for (const f of TLS_AGENT_FIELDS) if (options[f] !== undefined) (picked as Record<string, unknown>)[f] = options[f];
    const agent = new HttpsAgent({ ...picked, keepAlive: true });
    this.agents.set(origin, { options: picked, agent });
    return agent;
  }

  /** Closes every connection (idle and in use). */
  destroy(): void {
    for (const { agent } of this.agents.values()) agent.destroy();
    this.agents.clear();
  }
}

/**
 * Makes client-node's API clients (makeApiClient, KubernetesObjectApi,
 * informers, Watch) of `kc` reuse their connections (KeepAliveAgents) instead
 * of opening one per request. Credentials are still applied per request (a
 * token file or exec provider is read as before). Returns `kc`.
 */
export function reuseConnections(kc: KubeConfig): KubeConfig {
  const agents = new KeepAliveAgents();
  const origin = (): string => {
    const server = kc.getCurrentCluster()?.server;
    return server === undefined ? '' : new URL(server).origin;
  };
  const applySecurityAuthentication = kc.applySecurityAuthentication.bind(kc);
  kc.applySecurityAuthentication = async (context) => {
    await applySecurityAuthentication(context);
    const agent = agents.agentFor(origin(), context.getAgent());
    if (agent !== undefined) context.setAgent(agent);
  };
  const applyToHTTPSOptions = kc.applyToHTTPSOptions.bind(kc);
  kc.applyToHTTPSOptions = async (opts) => {
    await applyToHTTPSOptions(opts);
    const o = opts as RequestOptions;
    const agent = agents.agentFor(origin(), typeof o.agent === 'boolean' ? undefined : o.agent);
    if (agent !== undefined) o.agent = agent;
  };
  return kc;
}

/**
 * What KubeHttp needs of a connection: the server, and the TLS options and
 * credentials of a request. client-node's KubeConfig has both, and so has
 * kube-access.ts's KubeAccess (the agent's and apiserver's reader, without
 * client-node on their start path).
 */
export type KubeHttpConfig = Pick<KubeConfig, 'getCurrentCluster' | 'applyToHTTPSOptions'>;

export class KubeHttp {
  private readonly agents = new KeepAliveAgents();

  constructor(readonly kubeConfig: KubeHttpConfig) {}

  /** Closes its connections (idle ones close by themselves after the server's keep-alive timeout). */
  close(): void {
    this.agents.destroy();
  }

  private async open(path: string, query: Record<string, string>, signal: AbortSignal, timeoutMs?: number, send?: { method: string; body?: string; contentType?: string }): Promise<IncomingMessage> {
    const cluster = this.kubeConfig.getCurrentCluster();
    if (!cluster) throw new Error('kubeconfig has no current cluster');
    const url = new URL(cluster.server.replace(/\/+$/, '') + path);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const opts: RequestOptions = {
      method: send?.method ?? 'GET',
      headers: { Accept: 'application/json', ...(send?.body !== undefined ? { 'Content-Type': send.contentType ?? 'application/json', 'Content-Length': Buffer.byteLength(send.body) } : {}) },
    };
    await this.kubeConfig.applyToHTTPSOptions(opts);
    const https = url.protocol === 'https:';
    if (!https) delete opts.agent;
    else opts.agent = this.agents.agentFor(url.origin, typeof opts.agent === 'boolean' ? undefined : opts.agent);
    if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new Error('aborted');
    return await new Promise<IncomingMessage>((resolve, reject) => {
      const req = (https ? httpsRequest : httpRequest)(url, { ...opts, signal }, resolve);
      req.on('error', reject);
      if (timeoutMs !== undefined) req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer from ${url.host} in ${timeoutMs} ms`)));
      req.end(send?.body);
    });
  }

  private static async body(res: IncomingMessage): Promise<string> {
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }

  private static async fail(res: IncomingMessage, what: string): Promise<never> {
    const text = await KubeHttp.body(res).catch(() => '');
    let reason = '';
    let message = text.trim().slice(0, 300) || res.statusMessage || 'error';
    try {
      const s = JSON.parse(text) as { kind?: string; reason?: string; message?: string };
      if (s.kind === 'Status') {
        reason = s.reason ?? '';
        message = s.message ?? message;
      }
    } catch {
      // not JSON: the text is the message
    }
    throw new KubeApiError(res.statusCode ?? 0, reason, `${what}: ${res.statusCode} ${reason ? `${reason}: ` : ''}${message}`);
  }

  /**
   * One request with a JSON body (create, replace, patch — a JSON merge patch
   * unless `contentType` says otherwise — delete): the answer's JSON ({} for an
   * empty answer), or KubeApiError with the server's Status (reason, message).
   */
  async request(method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', path: string, body?: unknown, o: { contentType?: string; query?: Record<string, string>; timeoutMs?: number } = {}): Promise<Record<string, unknown>> {
    const send = { method, ...(body !== undefined ? { body: JSON.stringify(body) } : {}), contentType: o.contentType ?? (method === 'PATCH' ? 'application/merge-patch+json' : 'application/json') };
    const res = await this.open(path, o.query ?? {}, new AbortController().signal, o.timeoutMs ?? 30_000, send);
    const what = `${method} ${path}`;
    if ((res.statusCode ?? 0) < 200 || (res.statusCode ?? 0) > 299) return KubeHttp.fail(res, what);
    const text = await KubeHttp.body(res);
    try {
      return text.trim() === '' ? {} : (JSON.parse(text) as Record<string, unknown>);
    } catch (err) {
      throw new Error(`${what}: the answer is not JSON: ${(err as Error).message}`);
    }
  }

  /** One page of a list. */
  async list(path: string, query: Record<string, string>, signal: AbortSignal, timeoutMs = 60_000): Promise<RawList> {
    const res = await this.open(path, query, signal, timeoutMs);
    if (res.statusCode !== 200) return KubeHttp.fail(res, `list ${path}`);
    const text = await KubeHttp.body(res);
    let doc: { items?: unknown; metadata?: { resourceVersion?: unknown; continue?: unknown } };
    try {
      doc = JSON.parse(text) as typeof doc;
    } catch (err) {
      throw new Error(`list ${path}: the answer is not JSON: ${(err as Error).message}`);
    }
    if (!Array.isArray(doc.items) || typeof doc.metadata?.resourceVersion !== 'string') throw new Error(`list ${path}: the answer is not a list (no items or metadata.resourceVersion)`);
    const cont = typeof doc.metadata.continue === 'string' && doc.metadata.continue !== '' ? doc.metadata.continue : undefined;
    return { items: doc.items, resourceVersion: doc.metadata.resourceVersion, continue: cont };
  }

  /**
   * A watch: calls onEvent per line until the server ends the stream
   * (resolves) or the connection fails, a line is not JSON, or nothing (not
   * even a bookmark) arrives for idleMs (rejects). Abort `signal` to end it.
   */
  async watch(path: string, query: Record<string, string>, signal: AbortSignal, idleMs: number, onEvent: (ev: RawWatchEvent) => void): Promise<void> {
    const res = await this.open(path, { ...query, watch: 'true' }, signal, idleMs);
    if (res.statusCode !== 200) return KubeHttp.fail(res, `watch ${path}`);
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      let done = false;
      const finish = (err?: Error): void => {
        if (done) return;
        done = true;
        res.destroy();
        if (err) reject(err);
        else resolve();
      };
      res.socket?.setTimeout(idleMs, () => finish(new Error(`watch ${path}: nothing received for ${idleMs} ms`)));
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let i: number;
        while (!done && (i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (line === '') continue;
          let ev: RawWatchEvent;
          try {
            ev = JSON.parse(line) as RawWatchEvent;
          } catch (err) {
            return finish(new Error(`watch ${path}: a line is not JSON: ${(err as Error).message}`));
          }
          try {
            onEvent(ev);
          } catch (err) {
            return finish(err as Error);
          }
        }
      });
      res.on('end', () => finish());
      res.on('close', () => finish(signal.aborted ? undefined : done ? undefined : new Error(`watch ${path}: connection closed`)));
      res.on('error', (err) => finish(err));
    });
  }
}
