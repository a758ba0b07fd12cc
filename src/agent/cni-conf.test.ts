import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CniConfFile, cniConflist } from './cni-conf.ts';
import { DEFAULT_CNI_BINARY_NAME, DEFAULT_CNI_CONF_NAME } from './config.ts';

const cfg = { socketPath: '/var/run/clustermesh/agent/agent.sock', podCIDR: '10.244.7.0/24', cniBinaryName: DEFAULT_CNI_BINARY_NAME };

test('the conflist: one plugin naming the installed executable, the agent socket, the pod CIDR and its gateway', () => {
  assert.deepEqual(cniConflist(cfg, 9000), {
    cniVersion: '1.0.0',
    name: 'clustermesh',
    plugins: [{ type: 'clustermesh-cni', agentSocket: '/var/run/clustermesh/agent/agent.sock', underlayMtu: 9000, ipam: { podCIDR: '10.244.7.0/24', gateway: '10.244.7.1' } }],
  });
  assert.equal(DEFAULT_CNI_CONF_NAME, '05-clustermesh.conflist');
});

test('write is atomic and only when the content changes; remove is idempotent', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cmt-cniconf-'));
  try {
    const f = new CniConfFile(join(dir, 'net.d'), DEFAULT_CNI_CONF_NAME);
    assert.equal(await f.write(cniConflist(cfg, 1500)), true, 'first write (creates the directory)');
    const first = await stat(f.path);
    assert.equal(JSON.parse(await readFile(f.path, 'utf8')).plugins[0].ipam.podCIDR, '10.244.7.0/24');
    assert.equal(await f.write(cniConflist(cfg, 1500)), false, 'same content: not rewritten');
    assert.equal((await stat(f.path)).ino, first.ino, 'same file');
    assert.equal(await f.write(cniConflist({ ...cfg, podCIDR: '10.244.8.0/24' }, 1500)), true, 'changed content: rewritten');
    assert.notEqual((await stat(f.path)).ino, first.ino, 'replaced by rename, not written in place');
    assert.equal(JSON.parse(await readFile(f.path, 'utf8')).plugins[0].ipam.podCIDR, '10.244.8.0/24');
    await writeFile(f.path, '{"edited": true}');
    assert.equal(await f.write(cniConflist(cfg, 1500)), true, 'changed behind its back: rewritten');
    assert.deepEqual(await readdir(join(dir, 'net.d')), [DEFAULT_CNI_CONF_NAME], 'no temporary file left');
    await f.remove();
    await f.remove();
    assert.deepEqual(await readdir(join(dir, 'net.d')), []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
