// The server of `clustermesh ui`: one page and its assets (from src/ui/page/
// and npm packages in node_modules, never a CDN), the mesh's topology and
// flow edges as JSON, and a server-sent event stream with the changes.
//
// Where the data comes from: every agent's flow stream (GET /v1/flows?follow=1,
// as `observe --follow` reads it), aggregated into edges by view.ts; and,
// every refreshMs, each agent's status (remote-cluster connections, through
// status.ts's summary), endpoints and services. With `resolve` (kube context
// mode), the agents themselves are found again every resolveMs and after a
// flow stream fails: a node added is followed, a restarted agent pod (another
// address) dialled where it is now, a node removed let go.
//
// Events on GET /api/events:
//   topology  the whole topology (on connect, and whenever it changed)
//   edges     edges that are new or changed (all of them on connect)
//   flows     the flows since the last message (the last ones kept on connect)
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { AgentClient } from '../agent/client.ts';
import type { Flow } from '../agent/flows.ts';
import { Closer } from '../cli/common.ts';
import { probeTargets, summarize } from '../cli/status.ts';
import { agentClientFor, mergeTargets, type NodeTarget, type Targets } from '../cli/targets.ts';
import { buildTopology, EdgeBook, type NodeAnswer, type Topology } from './view.ts';

/** The repository: src/ui/ and dist/js/ are both two levels below it. */
const ROOT = join(import.meta.dirname, '..', '..');
const PAGE_DIR = join(ROOT, 'src', 'ui', 'page');

/** URL path -> file, content type. Nothing else is served from disk. */
export const ASSETS: Record<string, { file: string; type: string }> = {
  '/': { file: join(PAGE_DIR, 'index.html'), type: 'text/html; charset=utf-8' },
  '/app.js': { file: join(PAGE_DIR, 'app.js'), type: 'text/javascript; charset=utf-8' },
  '/app.css': { file: join(PAGE_DIR, 'app.css'), type: 'text/css; charset=utf-8' },
  // The graph library and its compound-node layout (fcose, built on cose-base and layout-base): UMD builds, loaded in this order.
  '/vendor/cytoscape.js': { file: join(ROOT, 'node_modules', 'cytoscape', 'dist', 'cytoscape.min.js'), type: 'text/javascript; charset=utf-8' },
  '/vendor/layout-base.js': { file: join(ROOT, 'node_modules', 'layout-base', 'layout-base.js'), type: 'text/javascript; charset=utf-8' },
  '/vendor/cose-base.js': { file: join(ROOT, 'node_modules', 'cose-base', 'cose-base.js'), type: 'text/javascript; charset=utf-8' },
  '/vendor/cytoscape-fcose.js': { file: join(ROOT, 'node_modules', 'cytoscape-fcose', 'cytoscape-fcose.js'), type: 'text/javascript; charset=utf-8' },
};

/** Bytes of events a page may leave unread before its stream is closed. */
const MAX_UNSENT_BYTES = 8 << 20;

export interface UiServerOptions {
  targets: Targets;
  address: string;
  port: number;
  /** How often the topology (status, endpoints, services) is read. */
  refreshMs?: number;
  /** How often changed edges and new flows are sent. */
  flushMs?: number;
  /** How long a broken flow stream waits before it is opened again. */
  retryMs?: number;
  /**
   * Finds the agents again (kube context mode: the agent pods of each context),
   * every resolveMs and after a flow stream fails (at most once per retryMs
   * then). A rejection keeps the agents in use.
   */
  resolve?: () => Promise<Targets>;
  /** How often resolve runs (default 10 s). */
  resolveMs?: number;
  warn?: (s: string) => void;
}

export const isLoopback = (a: string): boolean => a === 'localhost' || a === '::1' || /^127\./.test(a);

export class UiServer {
  readonly #o: Required<Omit<UiServerOptions, 'warn' | 'resolve'>> & { warn: (s: string) => void; resolve?: UiServerOptions['resolve'] };
  #targets: Targets;
  readonly #clients = new Map<NodeTarget, AgentClient>();
  /** Past the last flow seen, by node key (a re-dialled agent is followed from there). */
  readonly #lastSeen = new Map<string, Date>();
  /** Warnings already given (problems of a resolution are said once). */
  readonly #warned = new Set<string>();
  #resolving = false;
  #resolvedAt = Date.now();
  readonly #book = new EdgeBook();
  readonly #streams = new Map<NodeTarget, { stop(): void }>();
  readonly #streamError = new Map<NodeTarget, string | null>();
  readonly #sse = new Set<ServerResponse>();
  readonly #timers: NodeJS.Timeout[] = [];
  #server: Server | undefined;
  #topology: Topology = { clusters: [], nodes: [], pods: [], services: [] };
  #topologyJson = '';
  #refreshing = false;
  #stopped = false;
  #url = '';

  constructor(o: UiServerOptions) {
    this.#o = { refreshMs: 2000, flushMs: 100, retryMs: 2000, resolveMs: 10_000, warn: () => undefined, ...o };
    this.#targets = o.targets;
    for (const p of o.targets.problems ?? []) this.#warned.add(p);
    for (const n of o.targets.nodes) this.#clients.set(n, agentClientFor(n, { timeoutMs: 5000 }));
  }

  /** The nodes whose agents are read now. */
  get nodes(): readonly NodeTarget[] {
    return [...this.#clients.keys()];
  }

  get url(): string {
    return this.#url;
  }

  /** Reads the topology once, opens the flow streams and listens. Rejects when the address cannot be bound. */
  async start(): Promise<string> {
    await this.#refresh();
    for (const n of this.#clients.keys()) this.#follow(n);
    const server = createServer((req, res) => void this.#handle(req, res));
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#o.port, this.#o.address, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const a = server.address() as AddressInfo;
    this.#url = `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/`;
    this.#timers.push(setInterval(() => void this.#refresh(), this.#o.refreshMs));
    this.#timers.push(setInterval(() => this.#flush(), this.#o.flushMs));
    this.#timers.push(setInterval(() => this.#broadcast(': keep-alive\n\n'), 15_000));
    if (this.#o.resolve) this.#timers.push(setInterval(() => void this.#resolveAgain(true), this.#o.resolveMs));
    return this.#url;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    for (const t of this.#timers) clearInterval(t);
    for (const s of this.#streams.values()) s.stop();
    for (const r of this.#sse) r.end();
    for (const c of this.#clients.values()) c.close();
    if (this.#server) {
      this.#server.closeAllConnections();
      await new Promise((r) => this.#server!.close(r));
    }
  }

  // ---- data ------------------------------------------------------------------

  /** Follows one agent's flows; reopens the stream after it breaks, from the last flow seen. */
  #follow(n: NodeTarget): void {
    const client = this.#clients.get(n);
    if (this.#stopped || !client) return;
    const since = this.#lastSeen.get(n.key);
    const s = client.followFlows(since ? { since } : {}, (f: Flow) => {
      this.#book.add(f);
      const t = Date.parse(f.time);
      const last = this.#lastSeen.get(n.key);
      if (!last || t >= last.getTime()) this.#lastSeen.set(n.key, new Date(t + 1));
    }, {
      onBacklogEnd: () => this.#setStreamError(n, null),
      onLost: (k) => this.#o.warn(`${n.key}: the agent dropped ${k} flows for this viewer (it read too slowly)`),
    });
    this.#streams.set(n, s);
    const again = (why: string): void => {
      // stopped, or the node let go / dialled elsewhere (#resolveAgain)
      if (this.#stopped || this.#streams.get(n) !== s) return;
      this.#setStreamError(n, why);
      // a failed dial may be a restarted agent pod: where are the agents now?
      void this.#resolveAgain(false);
      setTimeout(() => {
        if (this.#streams.get(n) === s) this.#follow(n);
      }, this.#o.retryMs).unref();
    };
    s.ended.then(
      () => again('the agent closed the flow stream'),
      (err: unknown) => again((err as Error).message),
    );
  }

  /**
   * Resolves the agents again (see UiServerOptions.resolve) and follows what
   * changed. `periodic`: the resolveMs timer; otherwise a failed stream, at
   * most once per retryMs.
   */
  async #resolveAgain(periodic: boolean): Promise<void> {
    const resolve = this.#o.resolve;
    if (!resolve || this.#resolving || this.#stopped) return;
    if (!periodic && Date.now() - this.#resolvedAt < this.#o.retryMs) return;
    this.#resolving = true;
    try {
      const fresh = await resolve();
      if (this.#stopped) return;
      for (const p of fresh.problems ?? []) this.#warnOnce(p);
      const ch = mergeTargets(this.#targets, fresh);
      this.#targets = ch.targets;
      for (const n of [...ch.removed, ...ch.replaced.map((r) => r.old)]) this.#letGo(n);
      for (const n of [...ch.added, ...ch.replaced.map((r) => r.now)]) {
        this.#clients.set(n, agentClientFor(n, { timeoutMs: 5000 }));
        this.#follow(n);
      }
      if (ch.added.length + ch.removed.length + ch.replaced.length > 0) {
        this.#publishTopology(this.#topology);
        void this.#refresh();
      }
    } catch (err) {
      this.#warnOnce(`finding the agents again: ${(err as Error).message} (still reading the ones found before)`);
    } finally {
      this.#resolving = false;
      this.#resolvedAt = Date.now();
    }
  }

  #letGo(n: NodeTarget): void {
    const s = this.#streams.get(n);
    this.#streams.delete(n);
    s?.stop();
    this.#clients.get(n)?.close();
    this.#clients.delete(n);
    this.#streamError.delete(n);
  }

  #warnOnce(s: string): void {
    if (this.#warned.has(s)) return;
    this.#warned.add(s);
    this.#o.warn(s);
  }

  #setStreamError(n: NodeTarget, e: string | null): void {
    if (this.#streamError.get(n) === e) return;
    this.#streamError.set(n, e);
    this.#publishTopology(this.#topology);
  }

  async #refresh(): Promise<void> {
    if (this.#refreshing || this.#stopped) return;
    this.#refreshing = true;
    const closer = new Closer();
    try {
      const [probes, answers] = await Promise.all([
        probeTargets(this.#targets, closer, { etcd: false }),
        Promise.all(
          [...this.#clients].map(async ([n, c]): Promise<NodeAnswer> => {
            const base = { key: n.key, name: n.name, cluster: n.cluster ?? '?' };
            try {
              const [endpoints, services] = await Promise.all([c.listEndpoints(), c.services()]);
              return { ...base, endpoints, services, error: null };
            } catch (err) {
              return { ...base, endpoints: null, services: null, error: (err as Error).message };
            }
          }),
        ),
      ]);
      this.#publishTopology(buildTopology(summarize(probes), answers));
    } catch (err) {
      this.#o.warn(`reading the mesh: ${(err as Error).message}`);
    } finally {
      await closer.closeAll();
      this.#refreshing = false;
    }
  }

  #publishTopology(t: Topology): void {
    for (const v of t.nodes) {
      const n = [...this.#clients.keys()].find((x) => x.key === v.key);
      v.streamError = n ? (this.#streamError.get(n) ?? (this.#streamError.has(n) ? null : 'connecting')) : null;
    }
    this.#topology = t;
    const json = JSON.stringify(t);
    if (json === this.#topologyJson) return;
    this.#topologyJson = json;
    this.#broadcast(`event: topology\ndata: ${json}\n\n`);
  }

  #flush(): void {
    const edges = this.#book.takeDirty();
    const flows = this.#book.takeFresh();
    if (edges.length) this.#broadcast(`event: edges\ndata: ${JSON.stringify(edges)}\n\n`);
    if (flows.length) this.#broadcast(`event: flows\ndata: ${JSON.stringify(flows)}\n\n`);
  }

  #broadcast(msg: string): void {
    for (const r of this.#sse) {
      // A page that does not read (a background tab, a stalled link) is let go rather than
      // buffered without end; its browser reconnects and gets the whole state again.
      if (r.writableLength > MAX_UNSENT_BYTES) {
        this.#sse.delete(r);
        r.destroy();
        continue;
      }
      r.write(msg);
    }
  }

  // ---- HTTP ------------------------------------------------------------------

  /** Only requests addressed to this server by a loopback name when it listens on loopback (a page of another site cannot use a DNS name that points here). */
  #hostAllowed(req: IncomingMessage): boolean {
    if (!isLoopback(this.#o.address)) return true;
    const host = (req.headers.host ?? '').replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
    return isLoopback(host);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const send = (status: number, type: string, body: string | Buffer): void => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', 'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'" });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (!this.#hostAllowed(req)) return send(403, 'text/plain; charset=utf-8', `host ${req.headers.host ?? ''} is not this server's address\n`);
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'text/plain; charset=utf-8', 'only GET\n');
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path === '/api/events') return this.#subscribe(res);
    if (path === '/api/topology') return send(200, 'application/json', JSON.stringify(this.#topology));
    if (path === '/api/edges') return send(200, 'application/json', JSON.stringify(this.#book.all()));
    const asset = ASSETS[path === '/index.html' ? '/' : path];
    if (!asset) return send(404, 'text/plain; charset=utf-8', `no such page: ${path}\n`);
    try {
      send(200, asset.type, await readFile(asset.file));
    } catch (err) {
      send(500, 'text/plain; charset=utf-8', `cannot read ${asset.file}: ${(err as Error).message} (run ./scripts/setup.sh)\n`);
    }
  }

  #subscribe(res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.write('retry: 2000\n\n');
    res.write(`event: topology\ndata: ${JSON.stringify(this.#topology)}\n\n`);
    res.write(`event: edges\ndata: ${JSON.stringify(this.#book.all())}\n\n`);
    res.write(`event: flows\ndata: ${JSON.stringify(this.#book.recent(50))}\n\n`);
    this.#sse.add(res);
    res.on('close', () => this.#sse.delete(res));
  }
}

/** Checks that every asset is on disk (npm packages installed), naming what is missing. */
export async function missingAssets(): Promise<string[]> {
  const out: string[] = [];
  for (const a of Object.values(ASSETS)) await readFile(a.file).catch(() => out.push(a.file));
  return out;
}
