// Run inside a pod by chaos.ts: a steady stream of new connections. Every
// INTERVAL_MS, to each target in turn, a fresh TCP connection sends
// `GET / HTTP/1.0` and waits for the status line; each attempt is reported on
// stdout as a JSON line:
//   {"t":<ms since start>,"target":"ip:port","ok":true,"ms":<duration>}
//   {"t":…,"target":…,"ok":false,"ms":…,"error":"ECONNREFUSED|timeout|…"}
// Usage: node --import tsx src/lab/conn-stream.ts INTERVAL_MS TIMEOUT_MS IP:PORT [IP:PORT...]
import { connect } from 'node:net';

const [intervalArg, timeoutArg, ...targets] = process.argv.slice(2);
const intervalMs = Number(intervalArg);
const timeoutMs = Number(timeoutArg);
if (!(intervalMs > 0) || !(timeoutMs > 0) || targets.length === 0 || targets.some((t) => !/^\d+\.\d+\.\d+\.\d+:\d+$/.test(t))) {
  console.error('usage: conn-stream.ts INTERVAL_MS TIMEOUT_MS IP:PORT [IP:PORT...]');
  process.exit(2);
}
const t0 = performance.now();
const now = (): number => Math.round(performance.now() - t0);

function attempt(target: string): void {
  const [host, port] = target.split(':') as [string, string];
  const start = now();
  let done = false;
  let got = '';
  const finish = (ok: boolean, error?: string): void => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    sock.destroy();
    process.stdout.write(`${JSON.stringify({ t: start, target, ok, ms: now() - start, ...(error ? { error } : {}) })}\n`);
  };
  const sock = connect({ host, port: Number(port) });
  const timer = setTimeout(() => finish(false, 'timeout'), timeoutMs);
  sock.on('connect', () => sock.write('GET / HTTP/1.0\r\nConnection: close\r\n\r\n'));
  sock.on('data', (c: Buffer) => {
    got += c.toString('latin1');
    if (got.includes('\r\n')) finish(/^HTTP\/1\.[01] 200 /.test(got), /^HTTP\/1\.[01] 200 /.test(got) ? undefined : `status ${got.split('\r\n')[0]}`);
  });
  sock.on('error', (e: NodeJS.ErrnoException) => finish(false, e.code ?? e.message));
  sock.on('close', () => finish(false, 'closed before a status line'));
}

let i = 0;
setInterval(() => attempt(targets[i++ % targets.length]!), intervalMs / targets.length);
process.on('SIGTERM', () => process.exit(0));
