// The kinds the server knows: the built-in ones the mesh and the lab need, and
// those a CustomResourceDefinition adds while the server runs.

import type { JsonObject } from './json.ts';

export interface PrinterColumn {
  name: string;
  type: string;
  jsonPath: string;
  description?: string;
  format?: string;
  priority?: number;
}

export interface ResourceType {
  group: string;
  version: string;
  kind: string;
  listKind: string;
  /** The URL segment and etcd key segment: `pods`. */
  plural: string;
  singular: string;
  namespaced: boolean;
  shortNames: string[];
  categories: string[];
  /** PUT/PATCH of the main resource keeps status; `/status` changes only status. */
  statusSubresource: boolean;
  /** Only for kinds a CRD defines: its schema and printer columns. */
  crd?: {
    /** Name of the CRD object (`ciliumnetworkpolicies.cilium.io`). */
    name: string;
    schema: JsonObject | undefined;
    printerColumns: PrinterColumn[];
  };
}

export const apiVersionOf = (r: { group: string; version: string }): string => (r.group === '' ? r.version : `${r.group}/${r.version}`);

function builtin(
  group: string,
  version: string,
  kind: string,
  plural: string,
  namespaced: boolean,
  opts: { shortNames?: string[]; categories?: string[]; status?: boolean } = {},
): ResourceType {
  return {
    group,
    version,
    kind,
    listKind: `${kind}List`,
    plural,
    singular: kind.toLowerCase(),
    namespaced,
    shortNames: opts.shortNames ?? [],
    categories: opts.categories ?? [],
    statusSubresource: opts.status ?? false,
  };
}

/** Built-in kinds: what the mesh reads, what the lab runs, and what `clustermesh install` creates (RBAC: stored, not enforced). */
export const BUILTIN_RESOURCES: readonly ResourceType[] = [
  builtin('', 'v1', 'Namespace', 'namespaces', false, { shortNames: ['ns'], status: true }),
  builtin('', 'v1', 'Pod', 'pods', true, { shortNames: ['po'], categories: ['all'], status: true }),
  builtin('', 'v1', 'Service', 'services', true, { shortNames: ['svc'], categories: ['all'], status: true }),
  builtin('', 'v1', 'Node', 'nodes', false, { shortNames: ['no'], status: true }),
  builtin('', 'v1', 'ConfigMap', 'configmaps', true, { shortNames: ['cm'] }),
  builtin('', 'v1', 'Secret', 'secrets', true),
  builtin('', 'v1', 'ServiceAccount', 'serviceaccounts', true, { shortNames: ['sa'] }),
  builtin('', 'v1', 'Event', 'events', true, { shortNames: ['ev'] }),
  builtin('apps', 'v1', 'Deployment', 'deployments', true, { shortNames: ['deploy'], categories: ['all'], status: true }),
  builtin('apps', 'v1', 'DaemonSet', 'daemonsets', true, { shortNames: ['ds'], categories: ['all'], status: true }),
  builtin('discovery.k8s.io', 'v1', 'EndpointSlice', 'endpointslices', true),
  builtin('networking.k8s.io', 'v1', 'NetworkPolicy', 'networkpolicies', true, { shortNames: ['netpol'] }),
  builtin('rbac.authorization.k8s.io', 'v1', 'ClusterRole', 'clusterroles', false),
  builtin('rbac.authorization.k8s.io', 'v1', 'ClusterRoleBinding', 'clusterrolebindings', false),
  builtin('rbac.authorization.k8s.io', 'v1', 'Role', 'roles', true),
  builtin('rbac.authorization.k8s.io', 'v1', 'RoleBinding', 'rolebindings', true),
  builtin('apiextensions.k8s.io', 'v1', 'CustomResourceDefinition', 'customresourcedefinitions', false, { shortNames: ['crd', 'crds'], status: true }),
];

/** The kinds served by this server right now. */
export class ResourceRegistry {
  private readonly builtins: ResourceType[];
  private crds: ResourceType[] = [];

  constructor(builtins: readonly ResourceType[] = BUILTIN_RESOURCES) {
    this.builtins = [...builtins];
  }

  all(): ResourceType[] {
    return [...this.builtins, ...this.crds];
  }

  /** Replaces the kinds that CRDs define. */
  setCustom(types: ResourceType[]): void {
    this.crds = types;
  }

  find(group: string, version: string, plural: string): ResourceType | undefined {
    return this.all().find((r) => r.group === group && r.version === version && r.plural === plural);
  }

  /** Every group with its versions (preferred first). */
  groups(): { name: string; versions: string[] }[] {
    const out = new Map<string, string[]>();
    for (const r of this.all()) {
      const v = out.get(r.group) ?? [];
      if (!v.includes(r.version)) v.push(r.version);
      out.set(r.group, v);
    }
    return [...out].map(([name, versions]) => ({ name, versions }));
  }

  inGroupVersion(group: string, version: string): ResourceType[] {
    return this.all().filter((r) => r.group === group && r.version === version);
  }

  /** Built-in kinds (their names a CRD may not take). */
  isBuiltinGroup(group: string): boolean {
    return this.builtins.some((r) => r.group === group);
  }
}

/** The served versions of a CRD object as resource types; throws on a malformed spec. */
export function resourcesOfCrd(crd: JsonObject): ResourceType[] {
  const spec = (crd.spec ?? {}) as JsonObject;
  const names = (spec.names ?? {}) as JsonObject;
  const group = String(spec.group ?? '');
  const plural = String(names.plural ?? '');
  const kind = String(names.kind ?? '');
  const name = String((crd.metadata as JsonObject | undefined)?.name ?? '');
  const versions = Array.isArray(spec.versions) ? (spec.versions as JsonObject[]) : [];
  return versions
    .filter((v) => v.served !== false)
    .map((v) => {
      const schema = ((v.schema as JsonObject | undefined)?.openAPIV3Schema ?? undefined) as JsonObject | undefined;
      const sub = (v.subresources ?? {}) as JsonObject;
      const cols = Array.isArray(v.additionalPrinterColumns) ? (v.additionalPrinterColumns as unknown as PrinterColumn[]) : [];
      return {
        group,
        version: String(v.name ?? ''),
        kind,
        listKind: String(names.listKind ?? `${kind}List`),
        plural,
        singular: String(names.singular ?? kind.toLowerCase()),
        namespaced: spec.scope !== 'Cluster',
        shortNames: Array.isArray(names.shortNames) ? names.shortNames.map(String) : [],
        categories: Array.isArray(names.categories) ? names.categories.map(String) : [],
        statusSubresource: sub.status !== undefined,
        crd: { name, schema, printerColumns: cols },
      };
    });
}
