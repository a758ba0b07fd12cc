// Built-in workloads, so a demo needs no container images: the HTTP client
// that tallies who answered. The echo server that says who answered is a C
// program (src/lab/echo-c/clustermesh-echo.c: JSON {cluster,node,pod,from,path};
// GET /bytes?n=N sends N bytes with their SHA-256 in x-sha256).
import { createHash } from 'node:crypto';
import { request } from 'node:http';

export interface EchoIdentity {
  cluster: string;
  node: string;
  pod: string;
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
