// Runs inside a pod namespace: GET a URL and print status, sizes and hashes as JSON.
import { httpGet } from '../../src/lab/workload.ts';

const [url, timeout] = process.argv.slice(2);
if (!url) throw new Error('usage: fetch.ts URL [timeoutMs]');
const r = await httpGet(url, Number(timeout ?? 10000));
console.log(JSON.stringify({ status: r.status, bytes: r.body.length, sha256: r.sha256, announcedSha256: r.announcedSha256, text: r.body.length < 4096 ? r.body.toString() : undefined, ms: r.ms }));
