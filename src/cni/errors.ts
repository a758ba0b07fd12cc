// CNI errors as the spec (1.0.0) defines them: `{cniVersion, code, msg, details}`
// printed on stdout, with a non-zero exit status.
export const CniCode = {
  /** Incompatible CNI version. */
  IncompatibleVersion: 1,
  /** Unsupported field in the network configuration. */
  UnsupportedField: 2,
  /** Container unknown or does not exist. */
  UnknownContainer: 3,
  /** Invalid necessary environment variables (CNI_COMMAND, CNI_CONTAINERID, ...). */
  InvalidEnv: 4,
  /** I/O failure (e.g. reading stdin). */
  IoFailure: 5,
  /** Failed to decode content (stdin is not JSON). */
  DecodeFailure: 6,
  /** Invalid network config. */
  InvalidConfig: 7,
  /** Try again later (the agent is unreachable or not ready, a lock is held). */
  TryAgainLater: 11,
  /** Anything else. */
  Generic: 999,
} as const;
export type CniCodeValue = (typeof CniCode)[keyof typeof CniCode];

export class CniError extends Error {
  constructor(
    readonly code: number,
    msg: string,
    readonly details = '',
  ) {
    super(msg);
    this.name = 'CniError';
  }

  toJSON(cniVersion: string): CniErrorJson {
    return { cniVersion, code: this.code, msg: this.message, ...(this.details ? { details: this.details } : {}) };
  }
}

export interface CniErrorJson {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

/** Any thrown value as a CniError (unknown errors become code 999 with their message). */
export function toCniError(err: unknown): CniError {
  if (err instanceof CniError) return err;
  const e = err as Error;
  return new CniError(CniCode.Generic, e?.message?.split('\n')[0] ?? String(err), e?.message ?? String(err));
}
