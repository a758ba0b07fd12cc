import { strict as assert } from 'node:assert';
import { mkdtemp, mkdir, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ConfigDirWatcher, ConfigError, loadRemoteClusterConfig, scanConfigDir, type ConfigDirEvent } from './config.ts';

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'cm-config-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function writeCerts(dir: string, tag = 'a'): Promise<void> {
  await mkdir(join(dir, 'pki'), { recursive: true });
  for (const f of ['ca.crt', 'client.crt', 'client.key']) await writeFile(join(dir, 'pki', f), `${f}-${tag}`);
}

const good = (port = 2379) => `endpoints:
  - https://127.0.0.1:${port}
trusted-ca-file: pki/ca.crt
cert-file: pki/client.crt
key-file: pki/client.key
`;

describe('remote cluster config files', () => {
  it('loads a file; relative paths resolve against its directory', async () => {
    await withDir(async (dir) => {
      await writeCerts(dir);
      await writeFile(join(dir, 'c2'), good());
      const cfg = await loadRemoteClusterConfig(join(dir, 'c2'));
      assert.equal(cfg.name, 'c2');
      assert.deepEqual(cfg.endpoints, ['https://127.0.0.1:2379']);
      assert.equal(cfg.caFile, join(dir, 'pki', 'ca.crt'));
      assert.equal(cfg.keyFile, join(dir, 'pki', 'client.key'));
    });
  });

  it('names the file and the field in errors', async () => {
    await withDir(async (dir) => {
      await writeCerts(dir);
      const cases: Array<[string, string, string | null, RegExp]> = [
        ['c2', 'endpoints: []\ntrusted-ca-file: pki/ca.crt\ncert-file: pki/client.crt\nkey-file: pki/client.key\n', 'endpoints', /at least one/],
        ['c3', good().replace('https://', 'http://'), 'endpoints.0', /https/],
        ['c4', good().replace('key-file: pki/client.key', 'key-file: pki/missing.key'), 'key-file', /ENOENT/],
        ['c5', good() + 'extra: 1\n', 'extra', /unknown field/],
        ['c6', good().replace(/cert-file.*\n/, ''), 'cert-file', /./],
        ['c7', 'endpoints: [', null, /YAML/],
        ['Bad_Name', good(), null, /cluster name/],
      ];
      for (const [name, text, field, re] of cases) {
        await writeFile(join(dir, name), text);
        await assert.rejects(loadRemoteClusterConfig(join(dir, name)), (e: unknown) => {
          assert.ok(e instanceof ConfigError, String(e));
          assert.equal(e.file, join(dir, name));
          assert.equal(e.field, field, `${name}: ${e.message}`);
          assert.match(e.message, re);
          assert.ok(e.message.startsWith(join(dir, name)));
          return true;
        });
      }
      const scan = await scanConfigDir(dir);
      assert.equal(scan.configs.size, 0);
      assert.equal(scan.errors.size, cases.length); // 'pki' is a directory, skipped
    });
  });

  it("scan of a missing directory is empty; names with a dot are ignored (Secret mounts, Cilium's certificate keys)", async () => {
    await withDir(async (dir) => {
      const s = await scanConfigDir(join(dir, 'nope'));
      assert.equal(s.configs.size + s.errors.size, 0);
      await writeFile(join(dir, '..data'), 'junk');
      for (const f of ['c2.etcd-client-ca.crt', 'c2.etcd-client.crt', 'c2.etcd-client.key']) await writeFile(join(dir, f), '-----BEGIN junk-----');
      const s2 = await scanConfigDir(dir);
      assert.equal(s2.configs.size + s2.errors.size, 0);
      await writeFile(join(dir, 'c2'), `endpoints: [https://192.0.2.2:32002]\ntrusted-ca-file: ${join(dir, 'c2.etcd-client-ca.crt')}\ncert-file: ${join(dir, 'c2.etcd-client.crt')}\nkey-file: ${join(dir, 'c2.etcd-client.key')}\n`);
      const s3 = await scanConfigDir(dir);
      assert.deepEqual([[...s3.configs.keys()], s3.errors.size], [['c2'], 0], 'the config beside its certificates, and nothing else');
    });
  });
});

describe('ConfigDirWatcher', () => {
  const waitFor = async (cond: () => boolean, ms = 5000) => {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) throw new Error('timeout');
      await new Promise((r) => setTimeout(r, 10));
    }
  };

  it('emits add, change (file or certificate), invalid (keeping the last good config) and remove', async () => {
    await withDir(async (dir) => {
      await writeCerts(dir);
      await writeFile(join(dir, 'c2'), good());
      const events: ConfigDirEvent[] = [];
      const w = new ConfigDirWatcher(dir, (e) => void events.push(e), { debounceMs: 10, rescanIntervalMs: 60_000 });
      try {
        await w.start();
        assert.deepEqual(events.map((e) => e.kind), ['add']);

        await writeFile(join(dir, 'c3'), good(2380));
        await waitFor(() => events.length === 2);
        assert.deepEqual([events[1]?.kind, events[1]?.kind !== 'invalid' && events[1]?.cluster], ['add', 'c3']);

        await writeFile(join(dir, 'c2'), good(2381));
        await waitFor(() => events.length === 3);
        const ch = events[2];
        assert.ok(ch?.kind === 'change' && ch.config.endpoints[0] === 'https://127.0.0.1:2381');

        // certificate rotated: picked up by a rescan
        await writeCerts(dir, 'b');
        await w.rescan();
        assert.deepEqual(events.slice(3).map((e) => e.kind).sort(), ['change', 'change']);

        // a broken file is reported once and keeps the last good config
        const before = events.length;
        await writeFile(join(dir, 'c2'), 'endpoints: [');
        await waitFor(() => events.length === before + 1);
        assert.equal(events[before]?.kind, 'invalid');
        await w.rescan();
        assert.equal(events.length, before + 1);
        assert.equal(w.current().get('c2')?.endpoints[0], 'https://127.0.0.1:2381');

        await unlink(join(dir, 'c2'));
        await waitFor(() => events.length === before + 2);
        assert.deepEqual([events[before + 1]?.kind, w.current().has('c2')], ['remove', false]);
      } finally {
        w.stop();
      }
    });
  });

  it('without fs events, the periodic rescan finds changes', async () => {
    await withDir(async (dir) => {
      await writeCerts(dir);
      const events: ConfigDirEvent[] = [];
      const w = new ConfigDirWatcher(dir, (e) => void events.push(e), { useFsWatch: false, rescanIntervalMs: 20 });
      try {
        await w.start();
        assert.equal(events.length, 0);
        await writeFile(join(dir, 'c9'), good());
        await waitFor(() => events.length === 1);
        assert.equal(events[0]?.kind, 'add');
      } finally {
        w.stop();
      }
    });
  });
});
