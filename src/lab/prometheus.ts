// `clustermesh lab up --prometheus`: Debian's prometheus scraping every agent
// and apiserver of the lab.
//
// Where it runs: in the lab's router namespace. Agents serve /metrics on their
// node's underlay IP (:9962) and apiservers on their control-plane IP (:9963),
// each in its own namespace; the router has an address on every cluster's
// underlay bridge, so it reaches all of them directly, with no forwarder per
// target and nothing added to the host's network. Its web UI listens on
// 127.0.0.1:9090 inside the router namespace; a small forwarder process
// (`clustermesh lab forward`, started in the router namespace) accepts
// connections on a TCP socket that this process opened on 127.0.0.1 of the
// *host* namespace and handed over as fd 3 (a socket stays in the namespace it
// was created in), and relays them to the UI: a browser on the host opens
// http://127.0.0.1:<port>/.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { waitReadyFiles } from './kube-api-procs.ts';
import { SD_PATHS } from './prometheus-sd.ts';
import { ManagedProcess, childEnv, type ManagedProcessSpec } from './process.ts';

/** Where the lab's agents and apiservers serve /metrics: the ports `install --agent-metrics-port/--apiserver-metrics-port` default to on loopback. */
export { AGENT_METRICS_PORT, APISERVER_METRICS_PORT } from '../install/settings.ts';
/** Where prometheus listens inside the router namespace. */
const PROMETHEUS_INNER = '127.0.0.1:9090';

/** A lab of lab processes (--direct): where each agent and apiserver serves. */
export interface PrometheusTargets {
  agents: { cluster: string; node: string; address: string }[];
  apiservers: { cluster: string; address: string }[];
}

/** An installed lab: the clusters (contexts of the lab's kubeconfig) and the install's namespace, whose agent and
 * apiserver pods `lab prometheus-sd` lists for Prometheus at every refresh (prometheus-sd.ts). */
export interface PrometheusPodDiscovery {
  kubeconfig: string;
  contexts: string[];
  namespace: string;
}

/** Where `lab prometheus-sd` listens, in the router namespace beside prometheus. */
const SD_INNER = '127.0.0.1:9091';

/** The installed prometheus binary, or an error saying how to install it. */
export function prometheusBinary(): string {
  try {
    return execFileSync('sh', ['-c', 'command -v prometheus'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error("--prometheus: Debian's prometheus is not installed; install it with ./scripts/setup.sh --prometheus (or: apt-get install --no-install-recommends prometheus)");
  }
}

/**
 * prometheus.yml: one job for the agents, one for the apiservers, labelled with cluster (and node for agents): fixed
 * targets, or (an installed lab) HTTP service discovery from `sd` (base URL of `lab prometheus-sd`) every 5 s.
 */
export function prometheusConfig(t: PrometheusTargets | { sd: string }, scrapeIntervalSeconds = 5): string {
  const discovered = (path: string) => ({ http_sd_configs: [{ url: `${'sd' in t ? t.sd : ''}${path}`, refresh_interval: `${scrapeIntervalSeconds}s` }] });
  return toYaml({
    global: { scrape_interval: `${scrapeIntervalSeconds}s`, evaluation_interval: `${scrapeIntervalSeconds}s` },
    scrape_configs: [
      {
        job_name: 'clustermesh-agent',
        ...('sd' in t ? discovered(SD_PATHS.agents) : { static_configs: t.agents.map((a) => ({ targets: [a.address], labels: { cluster: a.cluster, node: a.node } })) }),
      },
      {
        job_name: 'clustermesh-apiserver',
        ...('sd' in t ? discovered(SD_PATHS.apiservers) : { static_configs: t.apiservers.map((a) => ({ targets: [a.address], labels: { cluster: a.cluster } })) }),
      },
    ],
  });
}

export interface LabPrometheus {
  url: string;
  prometheus: ManagedProcess;
  forwarder: ManagedProcess;
  /** An installed lab's `lab prometheus-sd`. */
  sd?: ManagedProcess;
  configFile: string;
}

/** The UI's listening socket on 127.0.0.1:`port` of this (host) namespace (0: any free port); opened before the lab is built, so a port in use fails at once. */
export async function openUiSocket(port: number): Promise<Server> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new Error(err.code === 'EADDRINUSE' ? `--prometheus-port ${port}: 127.0.0.1:${port} is in use; pick another port (0: any free one)` : `--prometheus-port ${port}: ${err.message}`)),
    );
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return server;
}

/**
 * Starts prometheus in `routerNetns` and its forwarder serving `ui` (from
 * openUiSocket; closed here once handed over). Detached: both outlive this
 * process; stop them by pid (lab down).
 */
export async function startLabPrometheus(o: {
  dir: string;
  routerNetns: string;
  targets: PrometheusTargets | PrometheusPodDiscovery;
  ui: Server;
  cli: string;
  /** Writes a process down (the lab's state) before its program runs (ManagedProcess beforeRun). */
  record?: (name: string, pid: number, logFile: string) => void;
}): Promise<LabPrometheus> {
  const record = o.record;
  const recorded = record ? { beforeRun: (pid: number, spec: ManagedProcessSpec) => record(spec.name, pid, spec.logFile) } : {};
  const bin = prometheusBinary();
  mkdirSync(join(o.dir, 'data'), { recursive: true });
  const configFile = join(o.dir, 'prometheus.yml');
  const t = o.targets;
  let sd: ManagedProcess | undefined;
  if ('contexts' in t) {
    // Before prometheus: its first discovery finds the server up (a refused one is only retried at the next refresh).
    const readyFile = join(o.dir, 'prometheus-sd.ready');
    sd = new ManagedProcess({
      name: 'prometheus-sd',
      netns: o.routerNetns,
      logFile: join(o.dir, 'prometheus-sd.log'),
      argv: [process.execPath, o.cli, 'lab', 'prometheus-sd', '--kubeconfig', t.kubeconfig, '--namespace', t.namespace, '--listen', SD_INNER, '--ready-file', readyFile, ...t.contexts.flatMap((c) => ['--context', c])],
      env: childEnv(),
      detached: true,
      ...recorded,
    });
    await sd.start();
    await waitReadyFiles([{ proc: sd, readyFile }], 60_000);
  }
  writeFileSync(configFile, prometheusConfig('contexts' in t ? { sd: `http://${SD_INNER}` } : t));
  const prometheus = new ManagedProcess({
    name: 'prometheus',
    netns: o.routerNetns,
    logFile: join(o.dir, 'prometheus.log'),
    argv: [bin, `--config.file=${configFile}`, `--storage.tsdb.path=${join(o.dir, 'data')}`, `--web.listen-address=${PROMETHEUS_INNER}`, '--storage.tsdb.retention.time=1d'],
    detached: true,
    ...recorded,
  });
  await prometheus.start();

  // The listening socket, made in the host namespace, handed to the forwarder as fd 3.
  const server = o.ui;
  const port = (server.address() as { port: number }).port;
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  const forwarder = new ManagedProcess({
    name: 'prometheus-forward',
    netns: o.routerNetns,
    logFile: join(o.dir, 'forward.log'),
    argv: [process.execPath, o.cli, 'lab', 'forward', '--to', PROMETHEUS_INNER],
    env: childEnv(),
    detached: true,
    extraFds: [fd],
    ...recorded,
  });
  try {
    await forwarder.start();
  } finally {
    server.close();
  }
  return { url: `http://127.0.0.1:${port}`, prometheus, forwarder, ...(sd ? { sd } : {}), configFile };
}

/** `clustermesh lab forward`: relays every connection on the listening socket fd 3 to `to` (host:port in this namespace). */
export function runForwarder(to: string): Server {
  const i = to.lastIndexOf(':');
  const host = to.slice(0, i);
  const port = Number(to.slice(i + 1));
  const server = createServer((c) => {
    const u = connect(port, host);
    c.pipe(u);
    u.pipe(c);
    c.on('error', () => u.destroy());
    u.on('error', () => c.destroy());
  });
  server.listen({ fd: 3 });
  return server;
}

/** Waits until prometheus answers its readiness endpoint through the forwarder. */
export async function waitPrometheusReady(url: string, p: ManagedProcess, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      const r = await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(2000) });
      if (r.ok) return;
    } catch {
      /* not yet */
    }
    if (!p.running) throw new Error(`prometheus exited: ${p.describe(10)}`);
    if (Date.now() > end) throw new Error(`prometheus not ready at ${url} after ${Math.round(timeoutMs / 1000)} s: ${p.describe(10)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
