// A TLS server's certificate files (CA, certificate, key: PEM), read and
// checked, and watched for changes: a Secret mounted as files is rotated by
// the kubelet swapping them in place (an atomic symlink switch), so the
// server polls their content and applies a changed set as a whole, after
// checking it; a set that does not check keeps the previous one in use.
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSecureContext, type SecureContext } from 'node:tls';

export interface TlsFiles {
  /** The CA that peers' certificates must chain to. */
  caFile: string;
  certFile: string;
  keyFile: string;
}

export interface TlsPems {
  ca: string;
  cert: string;
  key: string;
}

/** A set of TLS files that cannot be used; `file` is the one at fault (the certificate's for a key that does not match it). */
export class TlsFilesError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(message);
    this.name = 'TlsFilesError';
  }
}

/** Reads the three files (rejects naming the file that cannot be read). */
export async function readTlsFiles(f: TlsFiles): Promise<TlsPems> {
  const read = (file: string): Promise<string> =>
    readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => Promise.reject(new TlsFilesError(file, `${file}: cannot read (${err.code ?? err.message})`)));
  const [ca, cert, key] = await Promise.all([read(f.caFile), read(f.certFile), read(f.keyFile)]);
  return { ca, cert, key };
}

/** Checks PEMs read from f: the CA and the certificate parse, the key parses and belongs to the certificate. Throws TlsFilesError naming the file. */
export function checkTlsPems(f: TlsFiles, p: TlsPems): X509Certificate {
  const cert = (file: string, pem: string, what: string): X509Certificate => {
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new TlsFilesError(file, `${file}: not a PEM certificate (${what}): no BEGIN CERTIFICATE line`);
    try {
      return new X509Certificate(pem);
    } catch (err) {
      throw new TlsFilesError(file, `${file}: not a PEM certificate (${what}): ${(err as Error).message}`);
    }
  };
  cert(f.caFile, p.ca, 'the CA');
  const c = cert(f.certFile, p.cert, 'the certificate');
  let key;
  try {
    key = createPrivateKey(p.key);
  } catch (err) {
    throw new TlsFilesError(f.keyFile, `${f.keyFile}: not a PEM private key: ${(err as Error).message}`);
  }
  if (!c.checkPrivateKey(key)) throw new TlsFilesError(f.keyFile, `${f.keyFile}: the key does not belong to the certificate ${f.certFile} (${c.subject.replace(/\n/g, ', ')})`);
  return c;
}

/** A server's secure context from checked PEMs (the options of tls.createServer that carry credentials). */
export function serverSecureContext(p: TlsPems): SecureContext {
  return createSecureContext({ ca: p.ca, cert: p.cert, key: p.key });
}

export interface TlsReloadLog {
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
}

/**
 * Polls a set of TLS files every intervalMs and calls apply() with a set that
 * changed and checks; a set that does not check is logged once (naming the
 * file) and not applied, so the previous credentials stay in use, and it is
 * read again at the next poll (a rotation half-written).
 */
export class TlsFileWatcher {
  #applied: string;
  #rejected: string | undefined;
  #timer: NodeJS.Timeout | undefined;
  #checking: Promise<'unchanged' | 'reloaded' | 'rejected'> | undefined;
  /** The last set that was not applied, and why (null: the files in use are the ones on disk). */
  lastError: TlsFilesError | null = null;
  reloads = 0;

  constructor(
    readonly files: TlsFiles,
    /** The PEMs in use now (read from the files at start). */
    current: TlsPems,
    private readonly apply: (p: TlsPems) => void,
    private readonly log: TlsReloadLog,
  ) {
    this.#applied = key(current);
  }

  start(intervalMs: number): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => void this.check(), intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Reads the files now; applies them when they changed and check. */
  check(): Promise<'unchanged' | 'reloaded' | 'rejected'> {
    return (this.#checking ??= this.#check().finally(() => (this.#checking = undefined)));
  }

  async #check(): Promise<'unchanged' | 'reloaded' | 'rejected'> {
    let p: TlsPems;
    let cert: X509Certificate;
    try {
      p = await readTlsFiles(this.files);
      if (key(p) === this.#applied) {
        this.lastError = null;
        return 'unchanged';
      }
      cert = checkTlsPems(this.files, p);
      this.apply(p);
    } catch (err) {
      const e = err instanceof TlsFilesError ? err : new TlsFilesError(this.files.certFile, (err as Error).message);
      this.lastError = e;
      if (this.#rejected !== e.message) this.log.warn({ file: e.file, err: e.message }, 'new TLS files not used; still serving the previous certificate');
      this.#rejected = e.message;
      return 'rejected';
    }
    this.#applied = key(p);
    this.#rejected = undefined;
    this.lastError = null;
    this.reloads++;
    this.log.info({ certFile: this.files.certFile, subject: cert.subject.replace(/\n/g, ', '), validTo: cert.validTo }, 'TLS certificate reloaded');
    return 'reloaded';
  }
}

const key = (p: TlsPems): string => `${p.ca}\0${p.cert}\0${p.key}`;
