// Certificates for the mesh kvstore, generated with the system `openssl` (3.x)
// and never checked in. ECDSA P-256 keys: small and fast to generate; one
// openssl run per certificate.
//
// etcd with --client-cert-auth maps the client certificate's Common Name to the
// etcd user name, so a client certificate's CN is the user it acts as.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface CertificateAuthority {
  commonName: string;
  certFile: string;
  keyFile: string;
}

export type CertUsage = 'server' | 'client' | 'both';

export interface IssueCertOptions {
  commonName: string;
  /** Subject alternative DNS names (server certificates). */
  dnsNames?: string[];
  /** Subject alternative IP addresses (server certificates). */
  ipAddresses?: string[];
  usage: CertUsage;
  /** Directory the files are written to (created when missing). */
  outDir: string;
  /** Base name of the files: `<name>.crt`, `<name>.key`. */
  name: string;
  /** Validity in days; defaults to 825. */
  days?: number;
}

export interface CertFiles {
  certFile: string;
  keyFile: string;
  /** The issuing CA's certificate (what a peer must trust). */
  caFile: string;
}

async function openssl(args: string[]): Promise<void> {
  try {
    await run('openssl', args, { maxBuffer: 1 << 20 });
  } catch (err) {
    const e = err as { stderr?: string; message?: string };
    throw new Error(`openssl ${args[0] ?? ''} failed: ${(e.stderr ?? e.message ?? String(err)).trim()}`);
  }
}

/** Key options for `openssl req -newkey`: ECDSA P-256, unencrypted. */
const NEW_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

/** Subject CN safe for openssl's `-subj` syntax. */
function subject(commonName: string): string {
  if (!/^[A-Za-z0-9 ._@:-]+$/.test(commonName)) {
    throw new Error(`pki: common name ${JSON.stringify(commonName)} has characters outside [A-Za-z0-9 ._@:-]`);
  }
  return `/CN=${commonName}`;
}

/** Creates a self-signed CA (`ca.crt`, `ca.key`) in `dir`. */
export async function createCA(dir: string, commonName: string): Promise<CertificateAuthority> {
  await mkdir(dir, { recursive: true });
  const certFile = join(dir, 'ca.crt');
  const keyFile = join(dir, 'ca.key');
  await openssl([
    'req', '-x509', ...NEW_KEY, '-keyout', keyFile, '-subj', subject(commonName), '-days', '3650', '-sha256',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-addext', 'subjectKeyIdentifier=hash',
    '-out', certFile,
  ]);
  await chmod(keyFile, 0o600);
  return { commonName, certFile, keyFile };
}

/** Issues a certificate signed by `ca`; returns the file paths. */
export async function issueCert(ca: CertificateAuthority, opts: IssueCertOptions): Promise<CertFiles> {
  if (!/^[A-Za-z0-9._-]+$/.test(opts.name)) throw new Error(`pki: bad file name ${JSON.stringify(opts.name)}`);
  await mkdir(opts.outDir, { recursive: true });
  const certFile = join(opts.outDir, `${opts.name}.crt`);
  const keyFile = join(opts.outDir, `${opts.name}.key`);

  const san: string[] = [];
  for (const d of opts.dnsNames ?? []) {
    if (!/^[A-Za-z0-9*.-]+$/.test(d)) throw new Error(`pki: bad DNS name ${JSON.stringify(d)}`);
    san.push(`DNS:${d}`);
  }
  for (const ip of opts.ipAddresses ?? []) {
    if (isIP(ip) === 0) throw new Error(`pki: bad IP address ${JSON.stringify(ip)}`);
    san.push(`IP:${ip}`);
  }
  const eku = opts.usage === 'server' ? 'serverAuth' : opts.usage === 'client' ? 'clientAuth' : 'serverAuth,clientAuth';
  const ext = [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature,keyAgreement',
    `extendedKeyUsage=${eku}`,
    ...(san.length > 0 ? [`subjectAltName=${san.join(',')}`] : []),
  ];
  // One openssl run: new key, and a certificate signed by the CA (OpenSSL 3 `req -x509 -CA`).
  await openssl([
    'req', '-x509', ...NEW_KEY, '-keyout', keyFile, '-subj', subject(opts.commonName),
    '-CA', ca.certFile, '-CAkey', ca.keyFile,
    // A random positive serial: no shared serial file, so concurrent issuing is safe.
    '-set_serial', `0x${randomBytes(16).toString('hex').replace(/^[89a-f]/, '1')}`,
    '-days', String(opts.days ?? 825), '-sha256',
    ...ext.flatMap((e) => ['-addext', e]),
    '-out', certFile,
  ]);
  await chmod(keyFile, 0o600);
  return { certFile, keyFile, caFile: ca.certFile };
}
