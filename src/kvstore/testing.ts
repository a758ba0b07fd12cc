// Test fixtures of the kvstore layer: roles and key names of its own, so that
// its tests need nothing from the layers above (the mesh's real roles and keys
// live in src/clustermesh/).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { CertFiles, CertificateAuthority } from './pki.ts';
import { KvClient } from './client.ts';
import { withEtcd, type EtcdOptions, type EtcdRoles, type EtcdServer } from './etcd-process.ts';
import { KvError, type KvErrorKind } from './types.ts';

export const storePrefix = 'clustermesh/store/v1/';
export const nodesPrefix = 'cilium/state/nodes/v1/';
export const nodeKey = (cluster: string, node: string): string => `${nodesPrefix}${cluster}/${node}`;
export const identityKey = (id: number): string => `cilium/state/identities/v1/id/${id}`;
export const heartbeatKey = 'cilium/.heartbeat';
export const syncedPrefix = 'cilium/synced/';
export const canaryKey = (cluster: string): string => `${syncedPrefix}${cluster}/${nodesPrefix.slice(0, -1)}`;

/** apiserver writes cilium/ and the store, agent writes the store and identities, remote reads nodes only. */
export const TEST_ROLES: EtcdRoles = {
  apiserver: [
    { permission: 'Readwrite', key: 'cilium/' },
    { permission: 'Readwrite', key: storePrefix },
  ],
  agent: [
    { permission: 'Readwrite', key: storePrefix },
    { permission: 'Readwrite', key: 'cilium/state/identities/' },
    { permission: 'Read', key: 'cilium/' },
  ],
  remote: [{ permission: 'Read', key: nodesPrefix }],
};

export function withTestEtcd<T>(opts: Omit<EtcdOptions, 'dir'> & { dir?: string }, fn: (server: EtcdServer) => Promise<T>): Promise<T> {
  return withEtcd({ roles: TEST_ROLES, ...opts }, fn);
}

/** Awaits `p` and asserts it rejects with a KvError of `kind`; returns that error. */
export async function rejectsKind(p: Promise<unknown>, kind: KvErrorKind): Promise<KvError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof KvError, `expected KvError, got ${String(err)}`);
    assert.equal(err.kind, kind, `expected kind ${kind}: ${err.message}`);
    return err;
  }
  assert.fail(`expected a KvError of kind ${kind}, but it resolved`);
}

/** One KvClient per user name, closed after `fn`. */
export async function withClients<T>(server: EtcdServer, users: string[], fn: (...clients: KvClient[]) => Promise<T>): Promise<T> {
  const clients = users.map((u) => new KvClient(server.connection(u, { timeoutMs: 3000 })));
  try {
    return await fn(...clients);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

/**
 * A client certificate of `ca` that expired in 2020 (`openssl ca` with fixed
 * dates: `req -x509` cannot back-date). Test-only: nothing in the product
 * should ever make one.
 */
export async function issueExpiredClientCert(ca: CertificateAuthority, commonName: string, outDir: string): Promise<CertFiles> {
  const dir = join(outDir, `expired-${commonName}`);
  await mkdir(dir, { recursive: true });
  const cnf = join(dir, 'ca.cnf');
  await writeFile(
    cnf,
    [
      '[ca]', 'default_ca = x', '[x]', `database = ${join(dir, 'index.txt')}`, `new_certs_dir = ${dir}`, `serial = ${join(dir, 'serial')}`,
      'default_md = sha256', 'policy = p', 'unique_subject = no', '[p]', 'commonName = supplied', '[ext]',
      'basicConstraints = critical,CA:FALSE', 'keyUsage = critical,digitalSignature,keyAgreement', 'extendedKeyUsage = clientAuth', '',
    ].join('\n'),
  );
  await writeFile(join(dir, 'index.txt'), '');
  await writeFile(join(dir, 'serial'), '01\n');
  const run = promisify(execFile);
  const keyFile = join(dir, 'client.key');
  const csr = join(dir, 'client.csr');
  const certFile = join(dir, 'client.crt');
  await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-subj', `/CN=${commonName}`, '-out', csr]);
  await run('openssl', ['ca', '-batch', '-config', cnf, '-cert', ca.certFile, '-keyfile', ca.keyFile, '-in', csr, '-out', certFile, '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-extensions', 'ext']);
  return { certFile, keyFile, caFile: ca.certFile };
}
