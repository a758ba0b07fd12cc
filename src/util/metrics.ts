// Prometheus serving shared by the agent and the apiserver: a registry whose
// families are filled from the component's own state at each scrape
// (ScrapeMetrics), cumulative histograms recorded where the work happens
// (Buckets), and the HTTP endpoint GET /metrics (startMetricsServer).
import { createServer, type Server } from 'node:http';
import promClient, { Registry } from 'prom-client';

/** A cumulative histogram kept by the code it measures (no registry needed there); base unit seconds. */
export class Buckets {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly bounds: readonly number[] = DURATION_BUCKETS) {
    this.counts = bounds.map(() => 0);
  }
  observe(v: number): void {
    this.sum += v;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]!) this.counts[i]!++;
  }
}

/** Seconds: 100 µs to 10 s. */
export const DURATION_BUCKETS: readonly number[] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

type Labels<L extends string> = Record<L, string>;

/**
 * A registry whose values are read from `refresh`'s sources when scraped.
 * Counters and gauges are reset and refilled per scrape, so a value is always
 * the source's own (monotonic for counters: the sources only count up).
 */
export class ScrapeMetrics {
  readonly registry = new Registry();
  readonly #reg = [this.registry];
  #readAt = -Infinity;

  /** refresh: reads the sources once per scrape (collectors of one scrape run within milliseconds of each other). */
  constructor(private readonly refresh: () => void = () => undefined) {}

  #collect(): void {
    if (Date.now() - this.#readAt < 250) return;
    this.#readAt = Date.now();
    this.refresh();
  }

  counter<L extends string>(name: string, help: string, labelNames: readonly L[], fill: (c: promClient.Counter<L>) => void): void {
    this.#family(promClient.Counter<L>, name, help, labelNames, fill);
  }

  gauge<L extends string>(name: string, help: string, labelNames: readonly L[], fill: (g: promClient.Gauge<L>) => void): void {
    this.#family(promClient.Gauge<L>, name, help, labelNames, fill);
  }

  /** A counter or gauge family reset and refilled by `fill` at each scrape. */
  #family<M extends promClient.Counter<L> | promClient.Gauge<L>, L extends string>(
    Kind: new (c: promClient.CounterConfiguration<L> & promClient.GaugeConfiguration<L>) => M,
    name: string,
    help: string,
    labelNames: readonly L[],
    fill: (m: M) => void,
  ): void {
    const refresh = (): void => this.#collect();
    new Kind({
      name,
      help,
      labelNames,
      registers: this.#reg,
      collect() {
        const m = this as unknown as M;
        refresh();
        m.reset();
        fill(m);
      },
    });
  }

  /** A histogram family whose series are Buckets kept elsewhere. */
  histogram<L extends string>(name: string, help: string, fill: (add: (labels: Labels<L>, b: Buckets) => void) => void): void {
    const get = async () => {
      this.#collect();
      const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
      fill((labels, b) => {
        b.bounds.forEach((le, i) => values.push({ labels: { ...labels, le }, value: b.counts[i]!, metricName: `${name}_bucket` }));
        values.push({ labels: { ...labels, le: '+Inf' }, value: b.count, metricName: `${name}_bucket` });
        values.push({ labels: { ...labels }, value: b.sum, metricName: `${name}_sum` });
        values.push({ labels: { ...labels }, value: b.count, metricName: `${name}_count` });
      });
      return { name, help, type: 'histogram' as const, aggregator: 'sum' as const, values };
    };
    this.registry.registerMetric({ name, help, type: 'histogram', aggregator: 'sum', get } as unknown as promClient.Metric);
  }
}

/** Names of the families a registry serves. */
export function familyNames(r: Registry): string[] {
  return r.getMetricsAsArray().map((m) => (m as { name: string }).name);
}

export interface MetricsServer {
  readonly address: string;
  close(): Promise<void>;
}

/** Parses 'host:port' (IPv4 or a name; port 0..65535). */
export function parseListenAddress(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  const host = s.slice(0, i);
  const port = Number(s.slice(i + 1));
  if (i <= 0 || !/^\d+$/.test(s.slice(i + 1)) || port > 65535) throw new Error(`'${s}' must be host:port, e.g. 127.0.0.1:9962`);
  return { host, port };
}

/**
 * Serves GET /metrics of `registries` on address (each read at every scrape: metrics registered later are served
 * too) and, with `ready`, GET /readyz: 200 while it returns true, else 503 with the reason it returns (what a
 * readinessProbe's httpGet asks: the kubelet checks it in its own process, where an exec probe starts a shell,
 * curl and grep each time).
 */
export async function startMetricsServer(address: string, registries: Registry[], opts: { ready?: () => true | string } = {}): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(address);
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://metrics').pathname;
    if (req.method === 'GET' && path === '/readyz' && opts.ready) {
      let r: true | string;
      try {
        r = opts.ready();
      } catch (err) {
        r = (err as Error).message;
      }
      res.writeHead(r === true ? 200 : 503, { 'content-type': 'text/plain' });
      res.end(r === true ? 'ok\n' : `not ready: ${r}\n`);
      return;
    }
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end(opts.ready ? 'try GET /metrics or /readyz\n' : 'try GET /metrics\n');
      return;
    }
    Promise.all(registries.map((r) => r.metrics())).then(
      (texts) => {
        res.writeHead(200, { 'content-type': registries[0]!.contentType });
        res.end(texts.filter((t) => t.trim() !== '').join('\n'));
      },
      (err: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`metrics: ${(err as Error).message}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address();
  const bound = a && typeof a === 'object' ? `${a.address}:${a.port}` : address;
  return {
    address: bound,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
