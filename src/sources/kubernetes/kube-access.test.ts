// KubeAccess reads the CA, certificate and key files of a kubeconfig once and
// again only when one changed: a rotation (a file rewritten in place, or a
// Secret volume's `..data` symlink swapped to new files) is used at the next
// request; an unchanged file is not read again.
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RequestOptions } from 'node:https';
import { readKubeAccess } from './kube-access.ts';

test('KubeAccess: CA, certificate and key files read again only when they changed; a rotation is picked up', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cmt-kubeaccess-files-'));
  // As the kubelet lays out a Secret volume: files through ..data, a symlink to a timestamped directory.
  const version = async (name: string, tag: string): Promise<void> => {
    await mkdir(join(dir, name));
    for (const f of ['ca.crt', 'tls.crt', 'tls.key']) await writeFile(join(dir, name, f), `${f}-${tag}`);
  };
  const reads = mock.method(fs, 'readFileSync');
  syncBuiltinESMExports(); // the module's named import sees the mock
  try {
    await version('..v1', 'v1');
    await symlink('..v1', join(dir, '..data'));
    for (const f of ['ca.crt', 'tls.crt', 'tls.key']) await symlink(join('..data', f), join(dir, f));
    const kubeconfig = join(dir, 'config');
    await writeFile(
      kubeconfig,
      `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: 'https://127.0.0.1:6443', certificate-authority: ca.crt}}]
users: [{name: u, user: {client-certificate: tls.crt, client-key: tls.key}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`,
    );
    const { access } = readKubeAccess({ kubeconfig, env: {} });
    const tlsFileReads = (): number => reads.mock.calls.filter((c) => /\/(ca|tls)\.(crt|key)$/.test(String(c.arguments[0]))).length;
    const apply = async (): Promise<{ ca: string; cert: string; key: string; raw: RequestOptions }> => {
      const raw: RequestOptions = {};
      await access.applyToHTTPSOptions(raw);
      return { ca: String(raw.ca), cert: String(raw.cert), key: String(raw.key), raw };
    };

    const first = await apply();
    assert.deepEqual([first.ca, first.cert, first.key], ['ca.crt-v1', 'tls.crt-v1', 'tls.key-v1']);
    assert.equal(tlsFileReads(), 3);

    // Unchanged: no read, the same buffers.
    const again = await apply();
    assert.equal(tlsFileReads(), 3, 'no file read again while none changed');
    assert.equal(again.raw.ca, first.raw.ca);
    assert.equal(again.raw.cert, first.raw.cert);

    // The certificate rewritten in place: only it is read again.
    await writeFile(join(dir, '..v1', 'tls.crt'), 'tls.crt-v1b (renewed)');
    const renewed = await apply();
    assert.deepEqual([renewed.ca, renewed.cert, renewed.key], ['ca.crt-v1', 'tls.crt-v1b (renewed)', 'tls.key-v1']);
    assert.equal(tlsFileReads(), 4);

    // The Secret updated: ..data swapped atomically to a new directory (the kubelet's way).
    await version('..v2', 'v2');
    await symlink('..v2', join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
    const rotated = await apply();
    assert.deepEqual([rotated.ca, rotated.cert, rotated.key], ['ca.crt-v2', 'tls.crt-v2', 'tls.key-v2']);
    assert.equal(tlsFileReads(), 7);
    await apply();
    assert.equal(tlsFileReads(), 7);

    // A file gone is an error naming it, as before.
    await rm(join(dir, '..v2', 'tls.key'));
    await assert.rejects(access.applyToHTTPSOptions({}), /ENOENT.*tls\.key/);
  } finally {
    mock.restoreAll();
    syncBuiltinESMExports();
    await rm(dir, { recursive: true, force: true });
  }
});
