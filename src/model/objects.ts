// The object kinds a cluster source carries, and one parser per kind.
import { z } from 'zod';
import { parseWith } from './meta.ts';
import { namespaceSchema, type Namespace } from './namespace.ts';
import { podSchema, type Pod } from './pod.ts';
import { serviceSchema, type Service } from './service.ts';
import { nodeSchema, type Node } from './node.ts';
import { endpointSchema, type Endpoint } from './endpoint.ts';
import {
  ciliumClusterwideNetworkPolicySchema,
  ciliumNetworkPolicySchema,
  networkPolicySchema,
  type CiliumClusterwideNetworkPolicy,
  type CiliumNetworkPolicy,
  type NetworkPolicy,
} from './policy.ts';
import { endpointSliceSchema, type EndpointSlice } from './endpointslice.ts';

/** Kind name → object type. */
export interface ObjectKinds {
  Namespace: Namespace;
  Pod: Pod;
  Service: Service;
  Node: Node;
  Endpoint: Endpoint;
  EndpointSlice: EndpointSlice;
  NetworkPolicy: NetworkPolicy;
  CiliumNetworkPolicy: CiliumNetworkPolicy;
  CiliumClusterwideNetworkPolicy: CiliumClusterwideNetworkPolicy;
}
export type ObjectKind = keyof ObjectKinds;
export type ClusterObject = ObjectKinds[ObjectKind];

export const OBJECT_KINDS: readonly ObjectKind[] = [
  'Namespace',
  'Pod',
  'Service',
  'Node',
  'Endpoint',
  'EndpointSlice',
  'NetworkPolicy',
  'CiliumNetworkPolicy',
  'CiliumClusterwideNetworkPolicy',
];

export const objectSchemas: { [K in ObjectKind]: z.ZodType<ObjectKinds[K], any> } = {
  Namespace: namespaceSchema,
  Pod: podSchema,
  Service: serviceSchema,
  Node: nodeSchema,
  Endpoint: endpointSchema,
  EndpointSlice: endpointSliceSchema,
  NetworkPolicy: networkPolicySchema,
  CiliumNetworkPolicy: ciliumNetworkPolicySchema,
  CiliumClusterwideNetworkPolicy: ciliumClusterwideNetworkPolicySchema,
};

/** Kinds whose objects live in a namespace. */
export const NAMESPACED_KINDS: ReadonlySet<ObjectKind> = new Set<ObjectKind>([
  'Pod',
  'Service',
  'Endpoint',
  'EndpointSlice',
  'NetworkPolicy',
  'CiliumNetworkPolicy',
]);

export function isObjectKind(kind: unknown): kind is ObjectKind {
  return typeof kind === 'string' && (OBJECT_KINDS as readonly string[]).includes(kind);
}

/** Parse one object of a known kind; throws ModelError naming the object and field. */
export function parseObject<K extends ObjectKind>(kind: K, input: unknown, context?: string): ObjectKinds[K] {
  return parseWith(objectSchemas[kind], kind, input, context) as ObjectKinds[K];
}

/** Parse an object whose kind is read from its `kind` field. */
export function parseAnyObject(input: unknown, context?: string): ClusterObject {
  const kind = (input as { kind?: unknown } | null)?.kind;
  if (!isObjectKind(kind)) {
    return parseWith(
      z.object({ kind: z.enum(OBJECT_KINDS as [ObjectKind, ...ObjectKind[]]) }),
      typeof kind === 'string' ? kind : 'object',
      input,
      context,
    ) as never;
  }
  return parseObject(kind, input, context);
}

/** `namespace/name` for namespaced objects, `name` otherwise. */
export function objectRef(obj: ClusterObject): string {
  const ns = (obj.metadata as { namespace?: string }).namespace;
  return ns ? `${ns}/${obj.metadata.name}` : obj.metadata.name;
}
