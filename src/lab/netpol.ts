// The pod program of the network-policy conformance model (test/netpol-*.test.ts):
// every pod serves TCP and UDP on the model's ports and answers each connection
// or datagram with who it is, and, on request over a unix socket, probes other
// pods from inside its own network namespace -- the role the upstream suite
// gives to an agnhost container and `kubectl exec … connect`. Probing from the
// pod's long-running process means a round of 81 probes starts no process.
//
//   clustermesh lab workload netpol --tcp 80,81 --udp 80,81 --control /tmp/m/x-a.sock
//
// Wire format of the control socket (HTTP/1.1 over the unix socket):
//   GET  /healthz  -> {"who":"cluster1/x/a","tcp":[80,81],"udp":[80,81]}
//   POST /probe    {"probes":[{"ip":"10.101.1.12","port":80,"protocol":"tcp","timeoutMs":1000}]}
//               -> {"results":[{"ok":true,"answeredBy":"cluster1/x/b","ms":3}]}
// A probe is ok only when the target answered with its name: a TCP connection
// established and a line read, or a UDP datagram answered (resent every 200 ms
// until the timeout).
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { rmSync } from 'node:fs';
import { createServer as createHttpServer, request, type Server as HttpServer } from 'node:http';
import { connect, createServer as createTcpServer, type Server as TcpServer } from 'node:net';

export type ProbeProtocol = 'tcp' | 'udp';

export interface Probe {
  ip: string;
  port: number;
  protocol: ProbeProtocol;
  /** How long a connection (TCP) or an answer (UDP) may take; default 1000 ms. */
  timeoutMs?: number;
}

export interface ProbeResult {
  ok: boolean;
  /** The name the target answered with (`cluster/namespace/pod`). */
  answeredBy?: string;
  /** 'timeout', or the socket error's code (ECONNREFUSED, EHOSTUNREACH...). */
  error?: string;
  ms: number;
}

export interface NetpolServerOptions {
  /** What the pod answers with: `cluster/namespace/pod`. */
  who: string;
  tcpPorts: readonly number[];
  udpPorts: readonly number[];
  /** Unix socket for /probe and /healthz (none: serve only). */
  controlSocket?: string;
  host?: string;
}

export interface NetpolServer {
  stop(): Promise<void>;
}

const MAX_PROBES = 4096;
const MAX_BODY = 1 << 20;

function listenTcp(port: number, host: string, who: string): Promise<TcpServer> {
  const server = createTcpServer((sock) => {
    sock.on('error', () => undefined);
    sock.end(`${who}\n`);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

function listenUdp(port: number, host: string, who: string): Promise<UdpSocket> {
  const sock = createSocket('udp4');
  sock.on('message', (_msg, rinfo) => sock.send(`${who}\n`, rinfo.port, rinfo.address));
  return new Promise((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(port, host, () => {
      sock.off('error', reject);
      sock.on('error', () => undefined);
      resolve(sock);
    });
  });
}

/** One TCP probe: connected and the target's first line read within the timeout. */
function probeTcp(p: Probe, timeoutMs: number): Promise<ProbeResult> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const s = connect({ host: p.ip, port: p.port });
    let buf = '';
    let settled = false;
    const done = (r: Omit<ProbeResult, 'ms'>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ ...r, ms: Math.round(performance.now() - t0) });
    };
    // The connect must finish within the timeout; the answer gets as long again (a loaded machine).
    const timer = setTimeout(() => done({ ok: false, error: 'timeout' }), timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      setTimeout(() => done({ ok: false, error: 'connected, no answer' }), timeoutMs).unref();
    });
    s.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) done({ ok: true, answeredBy: buf.slice(0, nl) });
    });
    s.once('error', (err: NodeJS.ErrnoException) => done({ ok: false, error: err.code ?? err.message }));
    s.once('end', () => done(buf ? { ok: true, answeredBy: buf.trim() } : { ok: false, error: 'closed without an answer' }));
  });
}

/** One UDP probe: a datagram (resent every 200 ms) answered within the timeout. */
function probeUdp(p: Probe, timeoutMs: number): Promise<ProbeResult> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    let settled = false;
    const done = (r: Omit<ProbeResult, 'ms'>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearInterval(resend);
      s.close();
      resolve({ ...r, ms: Math.round(performance.now() - t0) });
    };
    const send = (): void => s.send('probe\n', p.port, p.ip, () => undefined);
    const timer = setTimeout(() => done({ ok: false, error: 'timeout' }), timeoutMs);
    const resend = setInterval(send, 200);
    s.on('message', (msg) => done({ ok: true, answeredBy: msg.toString().trim() }));
    // ICMP port unreachable surfaces as ECONNREFUSED on a connected socket only; keep waiting otherwise.
    s.on('error', (err: NodeJS.ErrnoException) => done({ ok: false, error: err.code ?? err.message }));
    send();
  });
}

export function runProbe(p: Probe): Promise<ProbeResult> {
  const timeoutMs = p.timeoutMs ?? 1000;
  return p.protocol === 'udp' ? probeUdp(p, timeoutMs) : probeTcp(p, timeoutMs);
}

/** Checks a /probe body; throws naming the field. */
export function parseProbes(body: unknown): Probe[] {
  const list = (body as { probes?: unknown } | null)?.probes;
  if (!Array.isArray(list)) throw new Error('body: field probes must be an array');
  if (list.length > MAX_PROBES) throw new Error(`body: field probes has ${list.length} entries, at most ${MAX_PROBES}`);
  return list.map((raw, i) => {
    const p = raw as Partial<Probe> | null;
    const at = `probes[${i}]`;
    if (typeof p?.ip !== 'string' || !/^\d{1,3}(\.\d{1,3}){3}$/.test(p.ip)) throw new Error(`${at}.ip: must be an IPv4 address`);
    if (!Number.isInteger(p.port) || p.port! < 1 || p.port! > 65535) throw new Error(`${at}.port: must be 1..65535`);
    if (p.protocol !== 'tcp' && p.protocol !== 'udp') throw new Error(`${at}.protocol: must be tcp or udp`);
    if (p.timeoutMs !== undefined && (!Number.isInteger(p.timeoutMs) || p.timeoutMs < 1 || p.timeoutMs > 60_000)) throw new Error(`${at}.timeoutMs: must be 1..60000`);
    return { ip: p.ip, port: p.port!, protocol: p.protocol, ...(p.timeoutMs !== undefined ? { timeoutMs: p.timeoutMs } : {}) };
  });
}

function controlServer(path: string, o: NetpolServerOptions): Promise<HttpServer> {
  const server = createHttpServer((req, res) => {
    const reply = (code: number, body: unknown): void => {
      res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(body) + '\n');
    };
    if (req.method === 'GET' && req.url === '/healthz') return reply(200, { who: o.who, tcp: o.tcpPorts, udp: o.udpPorts });
    if (req.method !== 'POST' || req.url !== '/probe') return reply(404, { error: `no ${req.method} ${req.url}; try GET /healthz or POST /probe` });
    let body = '';
    req.on('data', (d: Buffer) => {
      body += d.toString();
      if (body.length > MAX_BODY) req.destroy();
    });
    req.on('end', () => {
      let probes: Probe[];
      try {
        probes = parseProbes(JSON.parse(body));
      } catch (err) {
        return reply(400, { error: (err as Error).message });
      }
      void Promise.all(probes.map(runProbe)).then((results) => reply(200, { results }));
    });
  });
  rmSync(path, { force: true });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve(server));
  });
}

export async function startNetpolServer(o: NetpolServerOptions): Promise<NetpolServer> {
  const host = o.host ?? '0.0.0.0';
  const closers: Array<() => Promise<void>> = [];
  const stop = async (): Promise<void> => {
    await Promise.all(closers.map((c) => c().catch(() => undefined)));
    if (o.controlSocket) rmSync(o.controlSocket, { force: true });
  };
  try {
    for (const port of o.tcpPorts) {
      const s = await listenTcp(port, host, o.who);
      closers.push(() => new Promise((r) => s.close(() => r())));
    }
    for (const port of o.udpPorts) {
      const s = await listenUdp(port, host, o.who);
      closers.push(() => new Promise((r) => s.close(() => r())));
    }
    if (o.controlSocket) {
      const s = await controlServer(o.controlSocket, o);
      closers.push(() => new Promise((r) => s.close(() => r())));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { stop };
}

// ---------------------------------------------------------------------------
// The other end of the control socket (the test).

function call(socketPath: string, method: 'GET' | 'POST', path: string, body: unknown, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request({ socketPath, method, path, timeout: timeoutMs, headers: data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {} }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          return reject(new Error(`${socketPath} ${method} ${path}: answer is not JSON: ${text.slice(0, 200)}`));
        }
        if (res.statusCode !== 200) return reject(new Error(`${socketPath} ${method} ${path}: ${res.statusCode} ${(parsed as { error?: string }).error ?? text}`));
        resolve(parsed);
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${socketPath} ${method} ${path}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(data);
  });
}

/** Runs probes from the pod behind `controlSocket` (all at once); one result per probe, in order. */
export async function probeFrom(controlSocket: string, probes: readonly Probe[]): Promise<ProbeResult[]> {
  const longest = Math.max(1000, ...probes.map((p) => p.timeoutMs ?? 1000));
  const r = (await call(controlSocket, 'POST', '/probe', { probes }, 2 * longest + 10_000)) as { results: ProbeResult[] };
  if (!Array.isArray(r.results) || r.results.length !== probes.length) throw new Error(`${controlSocket}: ${probes.length} probes asked, ${r.results?.length} results`);
  return r.results;
}

/** The pod's name and ports, once its servers listen (throws while it does not answer). */
export async function netpolHealth(controlSocket: string): Promise<{ who: string; tcp: number[]; udp: number[] }> {
  return (await call(controlSocket, 'GET', '/healthz', undefined, 5000)) as { who: string; tcp: number[]; udp: number[] };
}
