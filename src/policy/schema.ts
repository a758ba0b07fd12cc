// zod schemas of the full spec of networking.k8s.io/v1 NetworkPolicy and
// cilium.io/v2 CiliumNetworkPolicy. Field objects are strict: a field this
// implementation does not enforce is an error naming it, never silently
// dropped (dropping one could admit or refuse traffic the author did not mean).
import { z } from 'zod';
import { clusterObjectMetaSchema, isQualifiedName, labelValue, objectMetaSchema, qualifiedName } from '../model/index.ts';
import { parsePrefix, prefixContains } from './cidr.ts';
import { ENTITIES } from './types.ts';

const OPERATORS = ['In', 'NotIn', 'Exists', 'DoesNotExist'] as const;

/** A field that exists in the API but is not implemented: present → error. */
const unsupported = (what: string) =>
  z
    .unknown()
    .superRefine((_v, ctx) => ctx.addIssue({ code: 'custom', message: `${what} is not supported by clustermesh` }))
    .optional();

/** null (YAML `field:` with nothing after it) reads as absent. */
const opt = <T extends z.ZodType>(s: T) => s.nullish().transform((v) => v ?? undefined);

function labelSelectorSchema(keySchema: z.ZodType<string>) {
  const req = z
    .strictObject({
      key: keySchema,
      operator: z.enum(OPERATORS),
      values: opt(z.array(labelValue)),
    })
    .superRefine((r, ctx) => {
      const n = r.values?.length ?? 0;
      if ((r.operator === 'In' || r.operator === 'NotIn') && n === 0)
        ctx.addIssue({ code: 'custom', path: ['values'], message: `must be non-empty when operator is ${r.operator}` });
      if ((r.operator === 'Exists' || r.operator === 'DoesNotExist') && n > 0)
        ctx.addIssue({ code: 'custom', path: ['values'], message: `must be empty when operator is ${r.operator}` });
    });
  return z
    .strictObject({
      matchLabels: opt(z.record(z.string(), labelValue)),
      matchExpressions: opt(z.array(req)),
    })
    .superRefine((sel, ctx) => {
      // Keys checked here rather than by the record, so the message says what is wrong with them.
      for (const k of Object.keys(sel.matchLabels ?? {})) {
        const r = keySchema.safeParse(k);
        if (!r.success) for (const i of r.error.issues) ctx.addIssue({ code: 'custom', path: ['matchLabels', k], message: i.message });
      }
    });
}
export type RawSelector = { matchLabels?: Record<string, string> | undefined; matchExpressions?: { key: string; operator: (typeof OPERATORS)[number]; values?: string[] | undefined }[] | undefined };

/** Label sources a Cilium selector key may name: `k8s:app`, `any:app`, `reserved:host`. */
export const CILIUM_SELECTOR_SOURCES = ['k8s', 'any', 'reserved', 'container', 'unspec'] as const;

/** `[source:]key` → source (`any` when absent) and key. */
export function splitCiliumKey(k: string): { source: string; key: string } {
  const colon = k.indexOf(':');
  return colon < 0 ? { source: 'any', key: k } : { source: k.slice(0, colon), key: k.slice(colon + 1) };
}

const ciliumKey = z.string().superRefine((k, ctx) => {
  const { source, key } = splitCiliumKey(k);
  if (!(CILIUM_SELECTOR_SOURCES as readonly string[]).includes(source))
    ctx.addIssue({ code: 'custom', message: `unknown label source "${source}" (one of ${CILIUM_SELECTOR_SOURCES.join(', ')})` });
  else if (!isQualifiedName(key)) ctx.addIssue({ code: 'custom', message: `"${key}" is not a qualified label name` });
});

export const k8sSelectorSchema = labelSelectorSchema(qualifiedName);
export const ciliumSelectorSchema = labelSelectorSchema(ciliumKey);

const portNumber = z.number().int().min(1).max(65535);

/** IANA_SVC_NAME as Kubernetes validates a named port. */
const ianaSvcName = z
  .string()
  .max(15, 'a port name is at most 15 characters')
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a port name consists of lowercase alphanumerics and "-", starting and ending alphanumeric')
  .refine((s) => /[a-z]/.test(s), 'a port name contains at least one letter')
  .refine((s) => !s.includes('--'), 'a port name has no "--"');

function isCidr(s: string): boolean {
  return parsePrefix(s) !== undefined || z.cidrv6().safeParse(s).success || z.ipv6().safeParse(s).success;
}
const cidrString = z.string().refine(isCidr, 'not a CIDR (a.b.c.d/len)');

/** `except` entries must lie inside `cidr` (strictly inside when `strict`, as Kubernetes validates). */
function checkExcept(cidr: string, except: readonly string[] | undefined, strict: boolean, ctx: z.RefinementCtx): void {
  const outer = parsePrefix(cidr);
  for (const [i, e] of (except ?? []).entries()) {
    const inner = parsePrefix(e);
    if (!outer || !inner) {
      if (!outer !== !inner) ctx.addIssue({ code: 'custom', path: ['except', i], message: `${e} is not of the address family of ${cidr}` });
      continue; // IPv6 pairs are not enforced (IPv4-only datapath)
    }
    if (!prefixContains(outer, inner) || (strict && inner.len === outer.len))
      ctx.addIssue({ code: 'custom', path: ['except', i], message: `${e} is not ${strict ? 'a strict subset' : 'inside'} of cidr ${cidr}` });
  }
}

// ---------------------------------------------------------------------------
// networking.k8s.io/v1 NetworkPolicy

const k8sPortSchema = z
  .strictObject({
    protocol: opt(z.enum(['TCP', 'UDP', 'SCTP'])),
    port: opt(z.union([portNumber, ianaSvcName])),
    endPort: opt(portNumber),
  })
  .superRefine((p, ctx) => {
    if (p.endPort === undefined) return;
    if (typeof p.port !== 'number') ctx.addIssue({ code: 'custom', path: ['endPort'], message: 'may only be set when port is a number' });
    else if (p.endPort < p.port) ctx.addIssue({ code: 'custom', path: ['endPort'], message: `must be >= port (${p.port})` });
  });

const ipBlockSchema = z
  .strictObject({ cidr: cidrString, except: opt(z.array(cidrString)) })
  .superRefine((b, ctx) => checkExcept(b.cidr, b.except, true, ctx));

const k8sPeerSchema = z
  .strictObject({
    podSelector: opt(k8sSelectorSchema),
    namespaceSelector: opt(k8sSelectorSchema),
    ipBlock: opt(ipBlockSchema),
  })
  .superRefine((p, ctx) => {
    const selectors = p.podSelector !== undefined || p.namespaceSelector !== undefined;
    if (p.ipBlock !== undefined && selectors)
      ctx.addIssue({ code: 'custom', path: ['ipBlock'], message: 'may not be combined with podSelector or namespaceSelector' });
    if (p.ipBlock === undefined && !selectors)
      ctx.addIssue({ code: 'custom', message: 'must specify a peer: podSelector, namespaceSelector or ipBlock' });
  });

const k8sIngressRuleSchema = z.strictObject({ from: opt(z.array(k8sPeerSchema)), ports: opt(z.array(k8sPortSchema)) });
const k8sEgressRuleSchema = z.strictObject({ to: opt(z.array(k8sPeerSchema)), ports: opt(z.array(k8sPortSchema)) });

const networkPolicySpecSchema = z
  .strictObject({
    podSelector: opt(k8sSelectorSchema),
    policyTypes: opt(z.array(z.enum(['Ingress', 'Egress'])).max(2)),
    ingress: opt(z.array(k8sIngressRuleSchema)),
    egress: opt(z.array(k8sEgressRuleSchema)),
  })
  .superRefine((s, ctx) => {
    if (s.policyTypes && new Set(s.policyTypes).size !== s.policyTypes.length)
      ctx.addIssue({ code: 'custom', path: ['policyTypes'], message: 'duplicate policy type' });
  });

export const networkPolicyObjectSchema = z.object({
  kind: z.literal('NetworkPolicy'),
  apiVersion: opt(z.literal('networking.k8s.io/v1')),
  metadata: objectMetaSchema,
  spec: opt(networkPolicySpecSchema),
});
export type NetworkPolicyObject = z.output<typeof networkPolicyObjectSchema>;
export type K8sPeer = z.output<typeof k8sPeerSchema>;
export type K8sPort = z.output<typeof k8sPortSchema>;

// ---------------------------------------------------------------------------
// cilium.io/v2 CiliumNetworkPolicy

const ciliumPortString = z
  .union([z.number().int(), z.string()])
  .transform((v) => String(v))
  .superRefine((s, ctx) => {
    if (/^\d+$/.test(s)) {
      if (Number(s) > 65535) ctx.addIssue({ code: 'custom', message: `port ${s} is out of range 0..65535` });
    } else if (!ianaSvcName.safeParse(s).success) {
      ctx.addIssue({ code: 'custom', message: `"${s}" is neither a port number nor a port name` });
    }
  });

const ciliumPortSchema = z
  .strictObject({
    port: opt(ciliumPortString),
    endPort: opt(z.number().int().min(0).max(65535)),
    protocol: opt(z.enum(['TCP', 'UDP', 'SCTP', 'ANY'], { error: 'protocol must be TCP, UDP, SCTP or ANY (ICMP and others are not supported)' })),
  })
  .superRefine((p, ctx) => {
    if (p.endPort === undefined || p.endPort === 0 || p.port === undefined || !/^\d+$/.test(p.port)) return; // named: endPort ignored
    const port = Number(p.port);
    if (port === 0) ctx.addIssue({ code: 'custom', path: ['endPort'], message: 'may not be set when port is 0 (all ports)' });
    else if (p.endPort < port) ctx.addIssue({ code: 'custom', path: ['endPort'], message: `must be >= port (${port})` });
  });

const portRuleSchema = z.strictObject({
  ports: opt(z.array(ciliumPortSchema)),
  rules: unsupported('L7 rules (toPorts[].rules)'),
  serverNames: unsupported('serverNames'),
  listener: unsupported('listener'),
  originatingTLS: unsupported('originatingTLS'),
  terminatingTLS: unsupported('terminatingTLS'),
});

const cidrRuleSchema = z
  .strictObject({
    cidr: cidrString,
    except: opt(z.array(cidrString)),
    cidrGroupRef: unsupported('cidrGroupRef'),
    cidrGroupSelector: unsupported('cidrGroupSelector'),
  })
  .superRefine((r, ctx) => checkExcept(r.cidr, r.except, false, ctx));

const entitySchema = z.enum(ENTITIES as [string, ...string[]], { error: `entity must be one of ${ENTITIES.join(', ')}` });

const ingressFields = {
  fromEndpoints: opt(z.array(ciliumSelectorSchema)),
  fromEntities: opt(z.array(entitySchema)),
  fromCIDR: opt(z.array(cidrString)),
  fromCIDRSet: opt(z.array(cidrRuleSchema)),
  toPorts: opt(z.array(portRuleSchema)),
  fromRequires: unsupported('fromRequires'),
  fromGroups: unsupported('fromGroups'),
  fromNodes: unsupported('fromNodes'),
  icmps: unsupported('icmps'),
  authentication: unsupported('authentication'),
};
const egressFields = {
  toEndpoints: opt(z.array(ciliumSelectorSchema)),
  toEntities: opt(z.array(entitySchema)),
  toCIDR: opt(z.array(cidrString)),
  toCIDRSet: opt(z.array(cidrRuleSchema)),
  toPorts: opt(z.array(portRuleSchema)),
  toRequires: unsupported('toRequires'),
  toServices: unsupported('toServices'),
  toFQDNs: unsupported('toFQDNs'),
  toGroups: unsupported('toGroups'),
  toNodes: unsupported('toNodes'),
  icmps: unsupported('icmps'),
  authentication: unsupported('authentication'),
};
const ciliumIngressRuleSchema = z.strictObject(ingressFields);
const ciliumEgressRuleSchema = z.strictObject(egressFields);

const ciliumRuleSchema = z
  .strictObject({
    endpointSelector: opt(ciliumSelectorSchema),
    nodeSelector: unsupported('nodeSelector (host policies)'),
    ingress: opt(z.array(ciliumIngressRuleSchema)),
    ingressDeny: opt(z.array(ciliumIngressRuleSchema)),
    egress: opt(z.array(ciliumEgressRuleSchema)),
    egressDeny: opt(z.array(ciliumEgressRuleSchema)),
    enableDefaultDeny: opt(z.strictObject({ ingress: opt(z.boolean()), egress: opt(z.boolean()) })),
    description: opt(z.string()),
    labels: opt(z.array(z.unknown())),
    log: unsupported('log'),
  })
  .superRefine((r, ctx) => {
    if (r.endpointSelector === undefined) {
      ctx.addIssue({ code: 'custom', path: ['endpointSelector'], message: 'is required' });
      return;
    }
    const keys = [...Object.keys(r.endpointSelector.matchLabels ?? {}), ...(r.endpointSelector.matchExpressions ?? []).map((e) => e.key)];
    if (keys.some((k) => splitCiliumKey(k).source === 'reserved'))
      ctx.addIssue({ code: 'custom', path: ['endpointSelector'], message: 'reserved: labels (host policies) are not supported' });
  });

/** A Cilium policy object: the namespaced kind, or the clusterwide one (no namespace: it selects in every namespace). */
function ciliumPolicyObjectSchema<K extends 'CiliumNetworkPolicy' | 'CiliumClusterwideNetworkPolicy', M extends z.ZodType>(kind: K, metadata: M) {
  return z
    .object({
      kind: z.literal(kind),
      apiVersion: opt(z.literal('cilium.io/v2')),
      metadata,
      spec: opt(ciliumRuleSchema),
      specs: opt(z.array(ciliumRuleSchema)),
      status: z.unknown().optional(),
    })
    .superRefine((o, ctx) => {
      if (o.spec === undefined && (o.specs === undefined || o.specs.length === 0))
        ctx.addIssue({ code: 'custom', path: ['spec'], message: 'spec or specs is required' });
    });
}

export const ciliumNetworkPolicyObjectSchema = ciliumPolicyObjectSchema('CiliumNetworkPolicy', objectMetaSchema);
export const ciliumClusterwideNetworkPolicyObjectSchema = ciliumPolicyObjectSchema('CiliumClusterwideNetworkPolicy', clusterObjectMetaSchema);
export type CiliumNetworkPolicyObject = z.output<typeof ciliumNetworkPolicyObjectSchema>;
export type CiliumRule = z.output<typeof ciliumRuleSchema>;
export type CiliumIngressRule = z.output<typeof ciliumIngressRuleSchema>;
export type CiliumEgressRule = z.output<typeof ciliumEgressRuleSchema>;
export type CiliumPort = z.output<typeof ciliumPortSchema>;
export type CiliumCidrRule = z.output<typeof cidrRuleSchema>;
