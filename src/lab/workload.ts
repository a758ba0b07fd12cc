// Built-in workloads, so a demo needs no container images: an HTTP echo
// server that says who answered, and a client that tallies who answered.
import { createHash } from 'node:crypto';
import { createServer, request, type Server } from 'node:http';

export interface EchoIdentity {
  cluster: string;
  node: string;
  pod: string;
}

/**
 * Deterministic bytes for /bytes?n=N, so a client can verify a transfer
 * end to end: the server sends the SHA-256 of what it sent in a header.
 */
function patternChunk(offset: number, len: number): Buffer {
  const buf = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) buf[i] = ((offset + i) * 2654435761) >>> 24;
  return buf;
}

export function startEchoServer(me: EchoIdentity, port: number, host = '0.0.0.0'): Promise<Server> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/bytes') {
      const n = Number(url.searchParams.get('n') ?? '0');
      if (!Number.isInteger(n) || n < 0 || n > 1 << 30) {
        res.writeHead(400).end('n must be an integer in 0..2^30\n');
        return;
      }
      const hash = createHash('sha256');
      const chunks: Buffer[] = [];
      for (let off = 0; off < n; off += 65536) {
        const c = patternChunk(off, Math.min(65536, n - off));
        hash.update(c);
        chunks.push(c);
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n, 'x-sha256': hash.digest('hex') });
      for (const c of chunks) res.write(c);
      res.end();
      return;
    }
    const body = JSON.stringify({ ...me, from: req.socket.remoteAddress, path: url.pathname }) + '\n';
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

export interface FetchResult {
  status: number;
  body: Buffer;
  sha256: string;
  /** What the server said the body's SHA-256 is (for /bytes). */
  announcedSha256?: string;
  ms: number;
}

export function httpGet(url: string, timeoutMs = 5000): Promise<FetchResult> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    // agent: false = a new connection per request: a service spreads connections,
    // so a tally of who answered must not ride one kept-alive connection.
    const req = request(url, { timeout: timeoutMs, agent: false }, (res) => {
      const hash = createHash('sha256');
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => {
        hash.update(c);
        chunks.push(c);
      });
      res.on('end', () => {
        const announced = res.headers['x-sha256'];
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(chunks),
          sha256: hash.digest('hex'),
          ...(typeof announced === 'string' ? { announcedSha256: announced } : {}),
          ms: performance.now() - t0,
        });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}
