// The agent's remote API (api.ts startRemoteApiServer) with real certificates
// (openssl, as install makes them) on loopback, and AgentClient dialling it:
// the observer's certificate reads flows (kept and followed) and status; no
// certificate, another CA's, or another CN of the same CA (the etcd users',
// e.g. `remote`, handed to other clusters) is refused; nothing that writes is
// served; the wrong server name is refused by the client. A rotated Secret
// (the files rewritten) is served to new connections; rotated files that do
// not check (not a certificate, a key of another certificate) are logged
// naming the file and the previous certificate is kept.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCA, issueCert } from '../kvstore/pki.ts';
import { startRemoteApiServer, type ApiHandlers, type RemoteApiServer } from './api.ts';
import { AgentClient, ApiError, AgentUnavailableError, type RemoteAgentAddress } from './client.ts';
import { FlowStore, toFlow, type FlowFollower } from './flows.ts';
import { event, namer } from './flows.test-helper.ts';
import type { AgentStatus } from './status.ts';

const SERVER_NAME = 'agents.c1.clustermesh.internal';
let dir = '';
let server: RemoteApiServer;
let port = 0;
const pems: Record<string, { cert: string; key: string }> = {};
let ca = '';
let authority: Awaited<ReturnType<typeof createCA>>;
const calls: string[] = [];
const store = new FlowStore(16);
store.add(toFlow(event(), namer, new Date('2026-01-01T00:00:00Z')));
const followers = new Set<FlowFollower>();

const handlers: ApiHandlers = {
  addEndpoint: async () => {
    calls.push('addEndpoint');
    throw new Error('not here');
  },
  deleteEndpoint: async () => {
    calls.push('deleteEndpoint');
    throw new Error('not here');
  },
  listEndpoints: () => [],
  status: () => ({ node: { name: 'node1', cluster: 'c1', clusterID: 1, nodeIP: '127.0.0.1', podCIDR: '10.101.1.0/24' } }) as unknown as AgentStatus,
  listServices: () => [],
  policy: () => ({ endpoints: [] }) as never,
  health: () => ({ ready: true, phase: 'ready' }),
  flows: (q) => store.query(q),
  followFlows: (w, q) => {
    const stop = store.follow(w, q);
    followers.add(w);
    return () => {
      followers.delete(w);
      stop();
    };
  },
  cni: async () => {
    calls.push('cni');
    return { stdout: '{}', exitCode: 0 };
  },
};

const silent = { info() {}, warn() {}, error() {}, debug() {}, child() {
  return silent;
} } as never;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cm-remote-api-'));
  authority = await createCA(join(dir, 'ca'), 'clustermesh-c1-ca');
  const other = await createCA(join(dir, 'other'), 'someone-else-ca');
  const pem = async (f: { certFile: string; keyFile: string }) => ({ cert: await readFile(f.certFile, 'utf8'), key: await readFile(f.keyFile, 'utf8') });
  ca = await readFile(authority.certFile, 'utf8');
  pems.server = await pem(await issueCert(authority, { commonName: 'clustermesh-agent-api', dnsNames: [SERVER_NAME], usage: 'server', outDir: dir, name: 'server' }));
  pems.observer = await pem(await issueCert(authority, { commonName: 'observer', usage: 'client', outDir: dir, name: 'observer' }));
  pems.remote = await pem(await issueCert(authority, { commonName: 'remote', usage: 'client', outDir: dir, name: 'remote' }));
  pems.foreign = await pem(await issueCert(other, { commonName: 'observer', usage: 'client', outDir: dir, name: 'foreign' }));
  server = await startRemoteApiServer({ host: '127.0.0.1', port: 0, ca, cert: pems.server!.cert, key: pems.server!.key, clients: ['observer'] }, handlers, silent);
  port = Number(server.address.split(':').pop());
  assert.ok(port > 0, server.address);
});

after(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

const address = (who: string, serverName = SERVER_NAME): RemoteAgentAddress => ({ host: '127.0.0.1', port, ca, cert: pems[who]!.cert, key: pems[who]!.key, serverName });

/** A raw HTTPS request with optional client material: status and body, or the error's code. */
function raw(method: string, path: string, tls: { cert?: string; key?: string }): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, method, path, ca, servername: SERVER_NAME, ...tls }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    req.end();
  });
}

test('the port: requested 0, a real one reported', () => {
  assert.match(server.address, /^127\.0\.0\.1:\d+$/);
});

test('the observer certificate reads kept flows, a follow stream and status through AgentClient', async () => {
  const c = new AgentClient(address('observer'), { timeoutMs: 5000 });
  try {
    const flows = await c.flows({ verdict: 'DROPPED' });
    assert.equal(flows.length, 1);
    assert.equal(flows[0]!.reason, 'DROP_UNKNOWN_ENDPOINT');
    assert.deepEqual(await c.flows({ verdict: 'FORWARDED' }), [], 'the query reaches the server');
    assert.equal((await c.status()).node.cluster, 'c1');
    assert.equal(c.socketPath, `127.0.0.1:${port}`);

    const seen: string[] = [];
    let backlogEnd = false;
    const s = c.followFlows({}, (f) => seen.push(f.time), { onBacklogEnd: () => (backlogEnd = true) });
    const until = async (what: string, ok: () => boolean): Promise<void> => {
      for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 25));
      assert.ok(ok(), what);
    };
    await until('the backlog', () => backlogEnd && followers.size === 1);
    store.add(toFlow(event(), namer, new Date('2026-01-01T00:00:01Z')));
    await until('the new flow', () => seen.length === 2);
    assert.deepEqual(seen, ['2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z']);
    s.stop();
    await s.ended;
  } finally {
    c.close();
  }
});

test('refused: no client certificate, another CA, another CN of the same CA (403), and any write or CNI call (403)', async () => {
  const none = await raw('GET', '/v1/flows', {});
  assert.ok('error' in none, `no certificate: ${JSON.stringify(none)}`);
  const foreign = await raw('GET', '/v1/flows', pems.foreign!);
  assert.ok('error' in foreign, `another CA: ${JSON.stringify(foreign)}`);

  // The `remote` etcd user's certificate (the same CA) is not an observer.
  const remote = new AgentClient(address('remote'), { timeoutMs: 5000 });
  try {
    await assert.rejects(remote.flows(), (e: unknown) => e instanceof ApiError && e.status === 403 && e.code === 'forbidden' && /CN remote is not admitted/.test(e.message));
  } finally {
    remote.close();
  }

  for (const [method, path] of [['POST', '/v1/cni'], ['PUT', '/v1/endpoints/abc'], ['DELETE', '/v1/endpoints/abc'], ['GET', '/v1/cni']] as const) {
    const r = await raw(method, path, pems.observer!);
    assert.ok('status' in r && r.status === 403, `${method} ${path}: ${JSON.stringify(r)}`);
    assert.match((r as { body: string }).body, /read-only/);
  }
  assert.deepEqual(calls, [], 'no handler that writes was called');
  const ok = await raw('GET', '/v1/flows/', pems.observer!);
  assert.ok('status' in ok && ok.status === 200, JSON.stringify(ok));
});

test('the client refuses a server whose certificate does not carry the expected name', async () => {
  const c = new AgentClient(address('observer', 'agents.c2.clustermesh.internal'), { timeoutMs: 5000 });
  try {
    await assert.rejects(c.flows(), (e: unknown) => e instanceof AgentUnavailableError && /ERR_TLS_CERT_ALTNAME_INVALID/.test(e.code));
  } finally {
    c.close();
  }
});

/** The fingerprint of the certificate a new TLS connection to port `to` is served (as the observer). */
function servedFingerprint(to: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port: to, ca, servername: SERVER_NAME, ...pems.observer! }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

test('a rotated certificate is served to new connections; rotated files that do not check keep the previous one', async () => {
  const rot = join(dir, 'rotation');
  const files = { caFile: join(rot, 'ca.crt'), certFile: join(rot, 'tls.crt'), keyFile: join(rot, 'tls.key') };
  const issue = async (name: string) => pem(await issueCert(authority, { commonName: 'clustermesh-agent-api', dnsNames: [SERVER_NAME], usage: 'server', outDir: join(dir, 'issued'), name }));
  const pem = async (f: { certFile: string; keyFile: string }) => ({ cert: await readFile(f.certFile, 'utf8'), key: await readFile(f.keyFile, 'utf8') });
  const fingerprint = (certPem: string): string => new X509Certificate(certPem).fingerprint256;
  // As the kubelet updates a mounted Secret: every file replaced at once (a rename here).
  const put = async (file: string, text: string): Promise<void> => {
    await writeFile(`${file}.tmp`, text);
    await rename(`${file}.tmp`, file);
  };
  await rm(rot, { recursive: true, force: true });
  await mkdir(rot, { recursive: true });
  await put(files.caFile, ca);
  await put(files.certFile, pems.server!.cert);
  await put(files.keyFile, pems.server!.key);
  const warnings: Array<Record<string, unknown>> = [];
  const log = { info() {}, debug() {}, error() {}, warn: (f: Record<string, unknown>) => void warnings.push(f), child: () => log } as never;
  const s = await startRemoteApiServer({ host: '127.0.0.1', port: 0, ca, ...pems.server!, clients: ['observer'], reload: { files, intervalMs: 3_600_000 } }, handlers, log);
  const p = Number(s.address.split(':').pop());
  const flowsThrough = async (): Promise<number> => {
    const c = new AgentClient({ ...address('observer'), port: p }, { timeoutMs: 5000 });
    try {
      return (await c.flows()).length;
    } finally {
      c.close();
    }
  };
  try {
    assert.equal(await servedFingerprint(p), fingerprint(pems.server!.cert));
    assert.equal(await s.certificates!.check(), 'unchanged');

    // The Secret rotated: the next connection is served the new certificate, and reads flows.
    const second = await issue('server-2');
    await put(files.certFile, second.cert);
    await put(files.keyFile, second.key);
    assert.equal(await s.certificates!.check(), 'reloaded');
    assert.equal(await servedFingerprint(p), fingerprint(second.cert));
    assert.notEqual(fingerprint(second.cert), fingerprint(pems.server!.cert));
    assert.ok((await flowsThrough()) >= 1);

    // A broken certificate file: named, not used; the second certificate is still served.
    await put(files.certFile, 'not a certificate\n');
    assert.equal(await s.certificates!.check(), 'rejected');
    assert.equal(s.certificates!.lastError?.file, files.certFile);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]!.file, files.certFile);
    assert.match(String(warnings[0]!.err), /tls\.crt: not a PEM certificate/);
    assert.equal(await s.certificates!.check(), 'rejected');
    assert.equal(warnings.length, 1, 'the same broken files are said once');
    assert.equal(await servedFingerprint(p), fingerprint(second.cert));
    assert.ok((await flowsThrough()) >= 1, 'still serving');

    // A valid certificate with the key of another one (a rotation half-done): the key file is named.
    const third = await issue('server-3');
    await put(files.certFile, third.cert);
    assert.equal(await s.certificates!.check(), 'rejected');
    assert.equal(s.certificates!.lastError?.file, files.keyFile);
    assert.match(s.certificates!.lastError!.message, /does not belong to the certificate/);
    assert.equal(await servedFingerprint(p), fingerprint(second.cert));

    // The key follows: applied by the periodic check alone.
    await put(files.keyFile, third.key);
    s.certificates!.stop();
    s.certificates!.start(50);
    for (let i = 0; i < 200 && s.certificates!.reloads < 2; i++) await new Promise((r) => setTimeout(r, 25));
    assert.equal(s.certificates!.reloads, 2);
    assert.equal(s.certificates!.lastError, null);
    assert.equal(await servedFingerprint(p), fingerprint(third.cert));
    assert.ok((await flowsThrough()) >= 1);
  } finally {
    await s.close();
  }
});
