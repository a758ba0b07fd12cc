// The syntax of names, labels and addresses, without zod: the zod schemas of
// meta.ts are built from these rules and messages, and the CNI plugin (which
// must start in tens of milliseconds and so loads no zod) checks with the
// functions here. Each `...Problem` returns why a value is wrong, or undefined.

/** DNS-1123 label: lowercase alphanumerics and '-', starts and ends alphanumeric, at most 63 chars. */
export const DNS1123_LABEL_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
export const DNS1123_LABEL_MSG = 'lowercase alphanumerics and "-", starting and ending alphanumeric';
/** DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 chars. */
export const DNS1123_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
export const DNS1123_SUBDOMAIN_MSG = 'lowercase alphanumerics, "-" and ".", starting and ending alphanumeric';
/** Name part of a qualified name (label keys, annotation keys). */
const QUALIFIED_NAME_RE = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
export const QUALIFIED_NAME_MSG = 'not a qualified name ([prefix/]name)';
/** Label value: empty, or alphanumerics with '-', '_', '.' inside; at most 63 chars. */
export const LABEL_VALUE_RE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
export const LABEL_VALUE_MSG = 'alphanumerics, "-", "_" and ".", starting and ending alphanumeric';
/** Dotted-quad IPv4 address, no leading zeros beyond what the octet needs. */
export const IPV4_RE = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

export const atMost = (n: number): string => `at most ${n} characters`;

export function dns1123LabelProblem(s: string): string | undefined {
  if (s.length > 63) return atMost(63);
  return DNS1123_LABEL_RE.test(s) ? undefined : DNS1123_LABEL_MSG;
}

export function dns1123SubdomainProblem(s: string): string | undefined {
  if (s.length > 253) return atMost(253);
  return DNS1123_SUBDOMAIN_RE.test(s) ? undefined : DNS1123_SUBDOMAIN_MSG;
}

/** `[prefix/]name` as Kubernetes requires for label and annotation keys. */
export function isQualifiedName(key: string): boolean {
  const slash = key.indexOf('/');
  const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  if (prefix !== undefined && (prefix.length === 0 || prefix.length > 253 || !DNS1123_SUBDOMAIN_RE.test(prefix))) return false;
  return name.length > 0 && name.length <= 63 && QUALIFIED_NAME_RE.test(name);
}

export function labelValueProblem(s: string): string | undefined {
  if (s.length > 63) return atMost(63);
  return LABEL_VALUE_RE.test(s) ? undefined : LABEL_VALUE_MSG;
}

/**
 * A label map's problems as [key, message] pairs (empty when it is valid):
 * `v` must be an object of qualified-name keys and label-value strings.
 */
export function labelsProblems(v: unknown): Array<[key: string | undefined, message: string]> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return [[undefined, `must be an object of label keys to values, got ${jsonKind(v)}`]];
  const out: Array<[string | undefined, string]> = [];
  for (const [k, val] of Object.entries(v)) {
    if (!isQualifiedName(k)) out.push([k, QUALIFIED_NAME_MSG]);
    else if (typeof val !== 'string') out.push([k, `must be a string, got ${jsonKind(val)}`]);
    else {
      const p = labelValueProblem(val);
      if (p) out.push([k, p]);
    }
  }
  return out;
}

/** What a JSON value is, for messages: `a number (42)`, `an array`, `null`. */
export function jsonKind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  switch (typeof v) {
    case 'object':
      return 'an object';
    case 'string':
      return `a string (${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)})`;
    case 'number':
    case 'boolean':
      return `a ${typeof v} (${String(v)})`;
    default:
      return typeof v;
  }
}
