// List and watch over HTTP(S), authenticated by a client-node KubeConfig
// (client certificates, bearer tokens, exec and token-file providers: whatever
// KubeConfig.applyToHTTPSOptions applies). Our own requests rather than
// client-node's Watch: we need the Status body of a failed request (404 of a
// missing CRD, 410 Expired) and an idle timeout for a connection that died
// without closing.
import { request as httpsRequest, type RequestOptions } from 'node:https';
import { request as httpRequest, type IncomingMessage } from 'node:http';
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

export class KubeHttp {
  constructor(readonly kubeConfig: KubeConfig) {}

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
