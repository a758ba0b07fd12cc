// The lab's echo server (src/lab/echo-c/clustermesh-echo.c), what every lab
// pod running `clustermesh lab workload echo` executes: its HTTP behaviour on
// loopback, its signals, and its hand-off of what it does not take to the full
// CLI. Traffic only to 127.0.0.1.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Agent, get, request } from 'node:http';
import { connect } from 'node:net';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { httpGet } from '../src/lab/workload.ts';
import { ECHO_BIN } from '../src/lab/workload-main.ts';

const CLI = resolve(import.meta.dirname, '..', 'bin', 'clustermesh.js');

async function startServer(args: string[], env: Record<string, string> = {}): Promise<{ child: ChildProcess; port: number; out: () => string }> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child = spawn(ECHO_BIN, ['lab', 'workload', 'echo', '--port', String(port), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '', ...env } });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const end = Date.now() + 10_000;
  while (!out.includes('listening')) {
    assert.ok(Date.now() < end && child.exitCode === null, `echo did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { child, port, out: () => out };
}

function exited(child: ChildProcess): Promise<[number | null, NodeJS.Signals | null]> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve([child.exitCode, child.signalCode]) : new Promise((r) => child.once('exit', (c, s) => r([c, s])));
}

/** Sends raw bytes and reads until the server closes (or timeoutMs). */
function raw(port: number, data: string, timeoutMs = 3000, halfClose = false): Promise<{ text: string; closedByServer: boolean }> {
  return new Promise((done, fail) => {
    // halfClose: the request, then this side's FIN at once (as `printf … | nc` sends it).
    const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => (halfClose ? s.end(data) : s.write(data)));
    let text = '';
    const timer = setTimeout(() => {
      s.destroy();
      done({ text, closedByServer: false });
    }, timeoutMs);
    s.on('data', (d) => (text += d.toString('latin1')));
    s.on('end', () => {
      clearTimeout(timer);
      s.destroy();
      done({ text, closedByServer: true });
    });
    s.on('error', fail);
  });
}

test('answers who it is, to whom, and for which path; identity from flags or the pod environment', async () => {
  const a = await startServer(['--cluster', 'c1', '--node=n1'], { CLUSTERMESH_POD: 'p1', CLUSTERMESH_NODE: 'ignored' });
  try {
    assert.match(a.out(), new RegExp(`^echo: listening on :${a.port} as c1/n1/p1\n`));
    const r = await httpGet(`http://127.0.0.1:${a.port}/some/path?q=1`);
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body.toString()), { cluster: 'c1', node: 'n1', pod: 'p1', from: '127.0.0.1', path: '/some/path' });
    // A name that needs JSON escaping stays valid JSON.
    const b = await startServer(['--pod', 'we"ird\\name']);
    try {
      const w = await httpGet(`http://127.0.0.1:${b.port}/`);
      assert.deepEqual(JSON.parse(w.body.toString()), { cluster: 'unknown', node: 'unknown', pod: 'we"ird\\name', from: '127.0.0.1', path: '/' });
    } finally {
      b.child.kill('SIGTERM');
    }
  } finally {
    a.child.kill('SIGTERM');
  }
});

test('/bytes?n=N sends N deterministic bytes with their SHA-256; a bad n is a 400', async () => {
  const s = await startServer([]);
  try {
    for (const n of [0, 1, 65535, 65536, 3 << 20]) {
      const r = await httpGet(`http://127.0.0.1:${s.port}/bytes?n=${n}`);
      assert.equal(r.status, 200);
      assert.equal(r.body.length, n);
      assert.equal(r.announcedSha256, r.sha256, `n=${n}`);
      assert.equal(r.sha256, createHash('sha256').update(r.body).digest('hex'));
    }
    // Deterministic: the same bytes twice, and not all one value.
    const x = await httpGet(`http://127.0.0.1:${s.port}/bytes?n=4096`);
    const y = await httpGet(`http://127.0.0.1:${s.port}/bytes?x=1&n=4096`);
    assert.ok(x.body.equals(y.body));
    assert.ok(new Set(x.body).size > 200);
    for (const bad of ['abc', '-1', `${2 ** 30 + 1}`, '1.5']) {
      const r = await httpGet(`http://127.0.0.1:${s.port}/bytes?n=${bad}`);
      assert.equal(r.status, 400, bad);
      assert.equal(r.body.toString(), 'n must be an integer in 0..2^30\n');
    }
  } finally {
    s.child.kill('SIGTERM');
  }
});

test('keep-alive, pipelining, request bodies, HEAD and HTTP/1.0 as an HTTP/1.1 server does', async () => {
  const s = await startServer(['--pod', 'ka']);
  try {
    // Many requests over one kept-alive connection.
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const sockets = new Set<unknown>();
    for (let i = 0; i < 20; i++) {
      await new Promise<void>((done, fail) => {
        get({ host: '127.0.0.1', port: s.port, path: `/${i}`, agent }, (res) => {
          sockets.add(res.socket);
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => {
            assert.equal(JSON.parse(body).path, `/${i}`);
            done();
          });
        }).on('error', fail);
      });
    }
    agent.destroy();
    assert.equal(sockets.size, 1, 'all 20 requests rode one connection');

    // A body is read and ignored; the request after it on the same connection is answered too.
    const two = await raw(s.port, 'POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello worldGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.ok(two.closedByServer, 'Connection: close is honoured');
    const bodies = two.text.split('\r\n\r\n').filter((p) => p.startsWith('{'));
    assert.deepEqual(bodies.map((b) => JSON.parse(b.split('\n')[0]!).path), ['/post', '/next']);

    // HEAD: the headers of a GET, no body.
    const head = await new Promise<{ status: number; length: string | undefined; body: number }>((done, fail) => {
      const q = request({ host: '127.0.0.1', port: s.port, path: '/bytes?n=1000', method: 'HEAD', agent: false }, (res) => {
        let body = 0;
        res.on('data', (d: Buffer) => (body += d.length));
        res.on('end', () => done({ status: res.statusCode!, length: res.headers['content-length'], body }));
      });
      q.on('error', fail);
      q.end();
    });
    assert.deepEqual(head, { status: 200, length: '1000', body: 0 });

    // HTTP/1.0 (what the chaos rig's connection stream sends): answered, then closed by the server.
    const old = await raw(s.port, 'GET / HTTP/1.0\r\n\r\n');
    assert.ok(old.closedByServer);
    assert.match(old.text, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(old.text, /Connection: close/);

    // A client that half-closes right after its request still gets the whole answer (64 MiB: more than the socket buffers hold).
    const half = await raw(s.port, 'GET /bytes?n=67108864 HTTP/1.1\r\nHost: x\r\n\r\n', 10_000, true);
    assert.ok(half.closedByServer);
    const [headers, ...rest] = half.text.split('\r\n\r\n');
    assert.match(headers!, /content-length: 67108864/);
    assert.equal(Buffer.byteLength(rest.join('\r\n\r\n'), 'latin1'), 67108864);

    // A request line that is not HTTP: the connection is closed without an answer.
    const junk = await raw(s.port, 'hello\r\n\r\n');
    assert.deepEqual(junk, { text: '', closedByServer: true });
  } finally {
    s.child.kill('SIGTERM');
  }
});

test('SIGTERM: stops accepting, finishes the answer in flight, exits 0', { timeout: 60_000 }, async () => {
  const s = await startServer([]);
  // A 64 MiB answer read slowly: still in flight when SIGTERM comes.
  const n = 64 << 20;
  let bytes = 0;
  const got = new Promise<{ bytes: number; sha: string; announced: string | undefined }>((done, fail) => {
    get({ host: '127.0.0.1', port: s.port, path: `/bytes?n=${n}`, agent: false }, (res) => {
      const h = createHash('sha256');
      res.on('data', (d: Buffer) => {
        h.update(d);
        bytes += d.length;
        res.pause();
        setTimeout(() => res.resume(), 3);
      });
      res.on('end', () => done({ bytes, sha: h.digest('hex'), announced: res.headers['x-sha256'] as string | undefined }));
      res.on('error', fail);
    }).on('error', fail);
  });
  while (bytes === 0) await new Promise((r) => setTimeout(r, 20));
  s.child.kill('SIGTERM');
  const atSignal = bytes;
  await new Promise((r) => setTimeout(r, 1500));
  // Not accepting any more, while the transfer goes on.
  await assert.rejects(httpGet(`http://127.0.0.1:${s.port}/`, 2000), /ECONNREFUSED/);
  const r = await got;
  assert.ok(atSignal < n / 2, `the answer was in flight at SIGTERM (${atSignal} of ${n} bytes read)`);
  assert.equal(r.bytes, n);
  assert.equal(r.sha, r.announced);
  assert.deepEqual(await exited(s.child), [0, null]);

  // Idle: exits at once.
  const idle = await startServer([]);
  const t0 = Date.now();
  idle.child.kill('SIGINT');
  assert.deepEqual(await exited(idle.child), [0, null]);
  assert.ok(Date.now() - t0 < 3000);
});

test('what it does not take goes to the full CLI (with --or), or is a usage error; a taken port is an error', async () => {
  const viaCli = spawnSync(ECHO_BIN, ['--or', process.execPath, CLI, '--', 'lab', 'workload', 'echo', '--port', '70000'], { encoding: 'utf8' });
  assert.notEqual(viaCli.status, 0);
  assert.match(viaCli.stderr, /option '--port <port>' argument '70000' is invalid\. must be a port number 1\.\.65535/);
  const help = spawnSync(ECHO_BIN, ['--or', process.execPath, CLI, '--', 'lab', 'workload', 'echo', '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /Usage: clustermesh lab workload echo/);
  const bare = spawnSync(ECHO_BIN, ['lab', 'workload', 'echo', '--bogus'], { encoding: 'utf8' });
  assert.equal(bare.status, 2);
  assert.match(bare.stderr, /clustermesh-echo: unknown argument\nusage: /);

  const s = await startServer([]);
  try {
    const taken = spawnSync(ECHO_BIN, ['lab', 'workload', 'echo', '--port', String(s.port)], { encoding: 'utf8', timeout: 5000 });
    assert.equal(taken.status, 1);
    assert.match(taken.stderr, new RegExp(`echo: cannot listen on 0\\.0\\.0\\.0:${s.port}: Address already in use`));
  } finally {
    s.child.kill('SIGTERM');
  }
});
