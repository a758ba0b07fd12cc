import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CniError } from './errors.ts';
import { HostLocalIpam } from './ipam.ts';

const range = { podCIDR: '10.101.1.0/29', gateway: '10.101.1.1', rangeStart: '10.101.1.2', rangeEnd: '10.101.1.6' };

function withDir(fn: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cmt-ipam-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

test(
  'allocates in order, skips the gateway, returns the same address to the same container, runs out with an error',
  withDir(async (dir) => {
    const ipam = new HostLocalIpam(dir, { ...range, rangeStart: '10.101.1.1' });
    assert.deepEqual(await ipam.allocate('a', 'eth0'), { ip: '10.101.1.2', fresh: true }, 'the gateway .1 is skipped');
    assert.deepEqual(await ipam.allocate('a', 'eth0'), { ip: '10.101.1.2', fresh: false }, 'idempotent');
    const got = [];
    for (const c of ['b', 'c', 'd', 'e']) got.push((await ipam.allocate(c, 'eth0')).ip);
    assert.deepEqual(got, ['10.101.1.3', '10.101.1.4', '10.101.1.5', '10.101.1.6']);
    await assert.rejects(ipam.allocate('f', 'eth0'), (e: unknown) => e instanceof CniError && /no free address/.test(e.message));
    assert.equal(await ipam.release('c', 'eth0'), '10.101.1.4');
    assert.equal(await ipam.release('c', 'eth0'), undefined, 'a second release is a no-op');
    assert.equal((await ipam.allocate('f', 'eth0')).ip, '10.101.1.4');
    assert.equal(ipam.lookup('f', 'eth0'), '10.101.1.4');
    assert.equal(Object.keys(ipam.list()).length, 5);
    assert.equal(existsSync(ipam.lockFile), false, 'the lock is released');
  }),
);

test(
  'a released address is not handed out again at once (round robin after the last one)',
  withDir(async (dir) => {
    const ipam = new HostLocalIpam(dir, range);
    assert.equal((await ipam.allocate('a', 'eth0')).ip, '10.101.1.2');
    await ipam.release('a', 'eth0');
    assert.equal((await ipam.allocate('b', 'eth0')).ip, '10.101.1.3');
  }),
);

test(
  'a requested address: taken when free, refused when another container holds it',
  withDir(async (dir) => {
    const ipam = new HostLocalIpam(dir, range);
    assert.deepEqual(await ipam.allocate('a', 'eth0', '10.101.1.5'), { ip: '10.101.1.5', fresh: true });
    await assert.rejects(ipam.allocate('b', 'eth0', '10.101.1.5'), /already allocated to container a/);
    await assert.rejects(ipam.allocate('a', 'eth0', '10.101.1.6'), /already holds 10\.101\.1\.5/);
  }),
);

test(
  'a lock held by a live process makes callers wait, then fail with code 11; a dead owner\'s lock is taken over',
  withDir(async (dir) => {
    const ipam = new HostLocalIpam(dir, range, 300);
    writeFileSync(join(dir, 'lock'), String(process.pid)); // held by a live process (us)
    await assert.rejects(ipam.allocate('a', 'eth0'), (e: unknown) => e instanceof CniError && e.code === 11 && /held by pid/.test(e.message));
    // A pid that has exited.
    const child = spawn(process.execPath, ['-e', '0']);
    const pid = child.pid!;
    await new Promise((r) => child.once('exit', r));
    writeFileSync(join(dir, 'lock'), String(pid));
    assert.equal((await ipam.allocate('a', 'eth0')).ip, '10.101.1.2');
    assert.equal(existsSync(join(dir, 'lock')), false);
  }),
);

test(
  'concurrent allocations from many processes never hand out one address twice',
  withDir(async (dir) => {
    const script = `
      import { HostLocalIpam } from ${JSON.stringify(join(import.meta.dirname, 'ipam.ts'))};
      const ipam = new HostLocalIpam(${JSON.stringify(dir)}, { podCIDR: '10.101.1.0/24', gateway: '10.101.1.1', rangeStart: '10.101.1.2', rangeEnd: '10.101.1.254' });
      const out = [];
      for (let i = 0; i < 10; i++) out.push((await ipam.allocate(process.argv[1] + '-' + i, 'eth0')).ip);
      console.log(JSON.stringify(out));`;
    const runs = Array.from({ length: 4 }, (_, k) =>
      new Promise<string[]>((resolve, reject) => {
        const c = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, `p${k}`], { stdio: ['ignore', 'pipe', 'inherit'] });
        let s = '';
        c.stdout.on('data', (d: Buffer) => (s += d.toString()));
        c.once('exit', (code) => (code === 0 ? resolve(JSON.parse(s) as string[]) : reject(new Error(`worker exit ${code}`))));
      }),
    );
    const all = (await Promise.all(runs)).flat();
    assert.equal(all.length, 40);
    assert.equal(new Set(all).size, 40, 'all distinct');
    const state = JSON.parse(readFileSync(join(dir, 'allocations.json'), 'utf8')) as { allocations: Record<string, unknown> };
    assert.equal(Object.keys(state.allocations).length, 40);
  }),
);
