// The certificates of one cluster's install, made with openssl (src/kvstore/pki.ts)
// in a private temporary directory that is removed afterwards: a CA (or the
// cluster's existing one, so a re-install issues certificates the running
// parts already trust), the etcd server certificate with the Service's names
// and the given addresses as SANs, and one client certificate per etcd user
// (the certificate's CN is the etcd user); the agents' remote API server
// certificate and the `observer` client certificate of observe/ui --context.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { createCA, issueCert, type CertificateAuthority, type CertFiles } from '../kvstore/pki.ts';
import { OBSERVER_CLIENT_NAME } from '../agent/config.ts';
import { agentApiServerName, ETCD_USERS, etcdServiceNames, type InstallCerts } from './manifests.ts';
import type { InstallSettings } from './settings.ts';

async function pem(files: Pick<CertFiles, 'certFile' | 'keyFile'>): Promise<{ cert: string; key: string }> {
  const [cert, key] = await Promise.all([readFile(files.certFile, 'utf8'), readFile(files.keyFile, 'utf8')]);
  return { cert, key };
}

/** Makes the install's certificates; `existingCa` (PEM) is reused when given. */
export async function makeInstallCerts(s: InstallSettings, existingCa?: { cert: string; key: string }): Promise<InstallCerts> {
  const dir = await mkdtemp(join(tmpdir(), 'clustermesh-install-'));
  try {
    let ca: CertificateAuthority;
    if (existingCa) {
      ca = { commonName: `clustermesh-${s.clusterName}-ca`, certFile: join(dir, 'ca.crt'), keyFile: join(dir, 'ca.key') };
      await writeFile(ca.certFile, existingCa.cert);
      await writeFile(ca.keyFile, existingCa.key, { mode: 0o600 });
    } else {
      ca = await createCA(dir, `clustermesh-${s.clusterName}-ca`);
    }
    const names = s.apiserverAddresses.filter((a) => isIP(a) === 0);
    const ips = s.apiserverAddresses.filter((a) => isIP(a) !== 0);
    // The certificates are independent of each other: issued at once (one openssl run each).
    const [server, agentApi, observer, ...users] = await Promise.all([
      issueCert(ca, {
        commonName: 'clustermesh-etcd',
        dnsNames: ['localhost', ...etcdServiceNames(s), ...names],
        ipAddresses: ['127.0.0.1', ...ips],
        usage: 'server',
        outDir: dir,
        name: 'server',
      }).then(pem),
      issueCert(ca, { commonName: 'clustermesh-agent-api', dnsNames: [agentApiServerName(s.clusterName)], usage: 'server', outDir: dir, name: 'agent-api' }).then(pem),
      issueCert(ca, { commonName: OBSERVER_CLIENT_NAME, usage: 'client', outDir: dir, name: 'observer' }).then(pem),
      ...ETCD_USERS.map((user) => issueCert(ca, { commonName: user, usage: 'client', outDir: dir, name: `client-${user}` }).then(pem)),
    ]);
    const clients = Object.fromEntries(ETCD_USERS.map((user, i) => [user, users[i]!])) as InstallCerts['clients'];
    return { ca: await pem(ca), server: server!, clients, agentApi: agentApi!, observer: observer! };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
