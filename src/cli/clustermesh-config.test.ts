import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadRemoteClusterConfig, scanConfigDir } from '../clustermesh/config.ts';
import { connectionPairs, connectProblem, configuredRemotes, formatAccess, installRemoteConfig, readAccess, removeRemoteConfig } from './clustermesh-config.ts';

test('connection pairs: unicast one way, bidirectional both, mesh every ordered pair; never a cluster to itself', () => {
  assert.deepEqual(connectionPairs('c1', ['c2'], 'unicast'), [['c1', 'c2']]);
  assert.deepEqual(connectionPairs('c1', ['c2', 'c3'], 'bidirectional'), [['c1', 'c2'], ['c2', 'c1'], ['c1', 'c3'], ['c3', 'c1']]);
  assert.deepEqual(connectionPairs('c1', ['c2', 'c3'], 'mesh').length, 6);
  assert.deepEqual(connectionPairs('c1', ['c1'], 'bidirectional'), []);
});

test('connect refuses same names, same IDs, an ID another remote holds, and invalid names', () => {
  assert.equal(connectProblem({ name: 'c1', id: 1 }, { name: 'c2', id: 2 }, new Map()), null);
  assert.match(connectProblem({ name: 'c1', id: 1 }, { name: 'c1', id: 1 }, new Map()) ?? '', /cannot connect cluster c1 to itself/);
  assert.match(connectProblem({ name: 'c1', id: 3 }, { name: 'c2', id: 3 }, new Map()) ?? '', /both have cluster ID 3/);
  assert.match(connectProblem({ name: 'c1', id: 1 }, { name: 'c2', id: 2 }, new Map([['c9', 2]])) ?? '', /already imports cluster c9 with ID 2/);
  assert.equal(connectProblem({ name: 'c1', id: 1 }, { name: 'c2', id: 2 }, new Map([['c2', 2]])), null, 'reconnecting the same cluster is fine');
  assert.match(connectProblem({ name: 'c1', id: 1 }, { name: 'Bad_Name', id: 2 }, new Map()) ?? '', /cluster name 'Bad_Name' is invalid/);
});

test('install writes certificates under .certs and the config file the agents read; remove takes both away', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cmtc-cfg-'));
  try {
    const src = join(dir, 'bundle');
    const cfgDir = join(dir, 'remote-clusters');
    await mkdir(src, { recursive: true });
    for (const f of ['ca.crt', 'remote.crt', 'remote.key']) await writeFile(join(src, f), `-- ${f} --\n`);
    const access = { cluster: 'cluster2', id: 2, endpoints: ['https://10.2.0.250:2379'], caFile: join(src, 'ca.crt'), certFile: join(src, 'remote.crt'), keyFile: join(src, 'remote.key') };
    await writeFile(join(src, 'access.yaml'), formatAccess(access, src));
    const back = await readAccess(src);
    assert.deepEqual(back, access, 'access.yaml round trip, relative paths resolved against its dir');

    const r = await installRemoteConfig(cfgDir, back);
    assert.equal(r.file, join(cfgDir, 'cluster2'));
    const cfg = await loadRemoteClusterConfig(r.file);
    assert.deepEqual(cfg.endpoints, ['https://10.2.0.250:2379']);
    assert.equal(cfg.caFile, join(cfgDir, '.certs', 'cluster2', 'ca.crt'));
    assert.equal(await readFile(cfg.keyFile, 'utf8'), '-- remote.key --\n');
    assert.equal((await stat(cfg.keyFile)).mode & 0o777, 0o600);
    // The agents' scan sees exactly one cluster: .certs and temp files are hidden.
    const scan = await scanConfigDir(cfgDir);
    assert.deepEqual([...scan.configs.keys()], ['cluster2']);
    assert.equal(scan.errors.size, 0);
    assert.deepEqual(await configuredRemotes(cfgDir), new Map([['cluster2', 2]]));

    assert.equal(await removeRemoteConfig(cfgDir, 'cluster2'), true);
    assert.equal(existsSync(join(cfgDir, 'cluster2')), false);
    assert.equal(existsSync(join(cfgDir, '.certs', 'cluster2')), false);
    assert.equal(await removeRemoteConfig(cfgDir, 'cluster2'), false);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('an access file with a bad field is refused naming the file and the field', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cmtc-acc-'));
  try {
    await writeFile(join(dir, 'access.yaml'), 'cluster: c2\nid: 0\nendpoints: [https://x:2379]\ntrusted-ca-file: a\ncert-file: b\nkey-file: c\n');
    await assert.rejects(readAccess(dir), new RegExp(`${join(dir, 'access.yaml')}: field id: `));
    await writeFile(join(dir, 'access.yaml'), 'cluster: c2\nid: 2\nendpoints: [http://x:2379]\ntrusted-ca-file: a\ncert-file: b\nkey-file: c\n');
    await assert.rejects(readAccess(dir), /field endpoints\.0: must be https:\/\/host:port/);
    await assert.rejects(readAccess(join(dir, 'nope.yaml')), /no such file \(create it with: clustermesh enable\)/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
