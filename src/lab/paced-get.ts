// Run inside a pod by transfer.ts: GET a URL and read the body at a steady
// rate (pausing the socket, so TCP flow control holds the sender back), hash
// it, and report progress on stdout as JSON lines:
//   {"progress":<bytes>,"ms":<since start>}            every 50 ms
//   {"done":true,"status":200,"bytes":…,"sha256":…,"announcedSha256":…,"ms":…,"maxStallMs":…}
//   {"done":true,"error":"…",…}                          on failure (exit code 1)
// Usage: node --import tsx src/lab/paced-get.ts URL BYTES_PER_SECOND [IDLE_TIMEOUT_SECONDS]
import { createHash } from 'node:crypto';
import { Agent, request } from 'node:http';

const [url, rateArg, timeoutArg] = process.argv.slice(2);
const rate = Number(rateArg);
if (!url || !(rate > 0)) {
  console.error('usage: paced-get.ts URL BYTES_PER_SECOND [IDLE_TIMEOUT_SECONDS]');
  process.exit(2);
}
const idleTimeoutMs = Number(timeoutArg ?? 30) * 1000;

const t0 = performance.now();
const hash = createHash('sha256');
let bytes = 0;
let firstByteAt: number | undefined;
let lastDataAt: number | undefined;
let maxStallMs = 0;
let status = 0;
let announced: string | undefined;
const ms = (): number => Math.round(performance.now() - t0);
const emit = (o: object): void => {
  process.stdout.write(JSON.stringify(o) + '\n');
};
const ticker = setInterval(() => emit({ progress: bytes, ms: ms() }), 50);
let finished = false;
const finish = (error?: string): void => {
  if (finished) return;
  finished = true;
  clearInterval(ticker);
  emit({ done: true, status, bytes, sha256: hash.digest('hex'), announcedSha256: announced, ms: ms(), maxStallMs: Math.round(maxStallMs), ...(error ? { error } : {}) });
  process.exitCode = error ? 1 : 0;
};

// An agent without keep-alive: Node's default agent turns TCP keepalive on at a
// 1 s interval (10 probes), which declares a connection dead after ~11 s without
// an answer; an ordinary client rides out a network outage much longer (the
// kernel's retransmissions), which is what the fault suite measures.
const req = request(url, { timeout: idleTimeoutMs, agent: new Agent({ keepAlive: false }) }, (res) => {
  status = res.statusCode ?? 0;
  const h = res.headers['x-sha256'];
  announced = typeof h === 'string' ? h : undefined;
  res.on('data', (chunk: Buffer) => {
    const now = performance.now();
    if (lastDataAt !== undefined) maxStallMs = Math.max(maxStallMs, now - lastDataAt);
    lastDataAt = now;
    firstByteAt ??= now;
    hash.update(chunk);
    bytes += chunk.length;
    // Ahead of schedule: stop reading until the schedule catches up.
    const aheadMs = (bytes / rate) * 1000 - (now - firstByteAt);
    if (aheadMs > 1) {
      res.pause();
      setTimeout(() => {
        // The pause was ours: a stall is counted from here.
        lastDataAt = performance.now();
        res.resume();
      }, aheadMs);
    }
  });
  res.on('end', () => finish());
  res.on('error', (err) => finish(err.message));
  res.on('aborted', () => finish('connection aborted'));
});
req.on('timeout', () => req.destroy(new Error(`no data for ${idleTimeoutMs} ms`)));
req.on('error', (err) => finish(err.message));
req.end();
