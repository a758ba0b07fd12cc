// Kubernetes `Status` error bodies: what a real apiserver answers on failure,
// so kubectl and client libraries print and classify them as they would
// against a real cluster (`Error from server (NotFound): pods "x" not found`).

export type StatusReason =
  | 'NotFound'
  | 'AlreadyExists'
  | 'Conflict'
  | 'Invalid'
  | 'BadRequest'
  | 'MethodNotAllowed'
  | 'Forbidden'
  | 'Unauthorized'
  | 'Expired'
  | 'Gone'
  | 'NotAcceptable'
  | 'UnsupportedMediaType'
  | 'RequestEntityTooLarge'
  | 'InternalError'
  | 'ServiceUnavailable'
  | 'Timeout';

const CODES: Record<StatusReason, number> = {
  NotFound: 404,
  AlreadyExists: 409,
  Conflict: 409,
  Invalid: 422,
  BadRequest: 400,
  MethodNotAllowed: 405,
  Forbidden: 403,
  Unauthorized: 401,
  Expired: 410,
  Gone: 410,
  NotAcceptable: 406,
  UnsupportedMediaType: 415,
  RequestEntityTooLarge: 413,
  InternalError: 500,
  ServiceUnavailable: 503,
  Timeout: 504,
};

export interface StatusCause {
  reason?: string;
  message?: string;
  field?: string;
}

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  uid?: string;
  causes?: StatusCause[];
}

export interface StatusBody {
  kind: 'Status';
  apiVersion: 'v1';
  metadata: Record<string, never>;
  status: 'Failure' | 'Success';
  message?: string;
  reason?: string;
  details?: StatusDetails;
  code: number;
}

/** An error that leaves the server as a `Status` body with its HTTP code. */
export class ApiError extends Error {
  readonly code: number;
  constructor(
    readonly reason: StatusReason,
    message: string,
    readonly details?: StatusDetails,
    code?: number,
  ) {
    super(message);
    this.name = 'ApiError';
    this.code = code ?? CODES[reason];
  }

  toStatus(): StatusBody {
    return {
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: this.message,
      reason: this.reason,
      ...(this.details !== undefined ? { details: this.details } : {}),
      code: this.code,
    };
  }
}

/** What a resource is called in messages: `pods`, `deployments.apps`. */
export function qualifiedResource(group: string, plural: string): string {
  return group === '' ? plural : `${plural}.${group}`;
}

export const notFound = (group: string, plural: string, name: string): ApiError =>
  new ApiError('NotFound', `${qualifiedResource(group, plural)} "${name}" not found`, { name, group, kind: plural });

export const alreadyExists = (group: string, plural: string, name: string): ApiError =>
  new ApiError('AlreadyExists', `${qualifiedResource(group, plural)} "${name}" already exists`, { name, group, kind: plural });

export const conflict = (group: string, plural: string, name: string, why: string): ApiError =>
  new ApiError('Conflict', `Operation cannot be fulfilled on ${qualifiedResource(group, plural)} "${name}": ${why}`, { name, group, kind: plural });

/** 422 with one cause per bad field, as the apiserver's validation reports it. */
export function invalid(group: string, kind: string, name: string, causes: { field: string; type: string; message: string }[]): ApiError {
  const list = causes.map((c) => `${c.field}: ${c.type}${c.message ? `: ${c.message}` : ''}`);
  const summary = list.length === 1 ? list[0] : `[${list.join(', ')}]`;
  return new ApiError('Invalid', `${kind}${group ? `.${group}` : ''} "${name}" is invalid: ${summary}`, {
    name,
    group,
    kind,
    causes: causes.map((c) => ({ reason: `Field${c.type.replace(/ /g, '')}`, message: `${c.type}${c.message ? `: ${c.message}` : ''}`, field: c.field })),
  });
}

export const badRequest = (message: string): ApiError => new ApiError('BadRequest', message);

export const methodNotAllowed = (verb: string, what: string): ApiError =>
  new ApiError('MethodNotAllowed', `the server does not allow this method on the requested resource (${verb} ${what})`);
