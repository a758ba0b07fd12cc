// What `clustermesh install` puts on a Kubernetes cluster, as plain objects in
// the order they are applied. Pure: settings and certificates in, objects out.
//
// - Namespace (default clustermesh-system) holding everything namespaced.
// - The Cilium policy CRDs and the MCS API CRDs (deploy/crds/), created only where absent: a
//   cluster that runs Cilium keeps its own.
// - ServiceAccounts and ClusterRoles with exactly the verbs the Kubernetes
//   source uses (get, list, watch) on exactly the kinds it reads; no wildcard.
// - ConfigMap `clustermesh-config`: the cluster's settings as plain keys (what
//   `connect` reads to compare two clusters) and the agent's and apiserver's
//   configuration files.
// - Secrets: the cluster's CA, the etcd server certificate, one client
//   certificate per etcd user (root, apiserver, agent, remote: the mesh roles
//   of src/clustermesh/etcd.ts) and `clustermesh-remotes`, the remote-cluster
//   files `connect` writes and the agent watches (created empty, never
//   overwritten by a re-install).
// - The clustermesh apiserver: a Deployment of one pod with an etcd container
//   and the apiserver next to it, strategy Recreate. A Deployment with an
//   emptyDir, not a StatefulSet: everything in that etcd is derived (the
//   apiserver re-exports it from the Kubernetes API, agents re-register
//   their identities and endpoints), so a rescheduled pod starts empty and is
//   refilled, while a StatefulSet would bring back stale state. Recreate so
//   two apiservers of one cluster never run at once by design.
//   On the host network (dnsPolicy ClusterFirstWithHostNet): the mesh's etcd
//   must not depend on the pod network its agents provide. The identity of a
//   pod is allocated in that etcd during the pod's CNI ADD (kvstore mode), so
//   an etcd pod on the pod network could never start on a fresh cluster: its
//   own ADD would wait for itself (Cilium's kvstore mode has the same rule).
//   etcd listens on the node at ETCD_NODE_PORT (2391; peer 127.0.0.1:2392), not
//   2379/2380: a control-plane node's own etcd (kubeadm, kind, k3s) holds those.
// - Service `clustermesh-apiserver` for the etcd, port 2379 to the named port
//   `etcd`: its endpoint is the node's address. NodePort or LoadBalancer for
//   remote clusters. The NodePort defaults to 32000 + cluster ID: two
//   clusters never share one unless told to, which avoids Cilium's trap where
//   an agent dialling a remote node's NodePort has the connection translated
//   to its own cluster's apiserver (a NodePort that is also served locally).
// - The agent DaemonSet: host network, only the capabilities it needs (see
//   agentContainer), the bpffs, state directory, /opt/cni/bin and
//   /etc/cni/net.d from the host, node name and IP from the downward API,
//   readiness from the agent's /healthz. Its config sets no podCIDR (the
//   agent reads its Node's spec.podCIDRs), a cniConfDir (the host's
//   /etc/cni/net.d: the agent writes 05-clustermesh.conflist there once
//   ready and removes it when stopped; the init container copies the plugin
//   executable to /opt/cni/bin under the name the conflist's `type` gives,
//   DEFAULT_CNI_BINARY_NAME), and the etcd by its Service name, which the
//   agent resolves through the Kubernetes API (cluster DNS runs on the pod
//   network, which needs the agent).
// - The agents' read-only API over mutual TLS (remoteApiPort, default 4247; Hubble's
//   design without its relay): each agent serves GET /v1/flows (and follow),
//   /v1/status, /v1/endpoints, /v1/services, /v1/policy on its node IP and that
//   port (the container's port `remote-api`), with one server certificate all
//   agents of the cluster share (Secret clustermesh-agent-api, SAN
//   agents.<cluster>.clustermesh.internal, never resolved: the client dials the
//   pod's hostIP and checks that name, as Hubble's peers do). Clients need the
//   certificate of Secret clustermesh-observer (CN `observer`, the one CN the
//   agents admit: the etcd users' certificates of the same CA are refused, so
//   the `remote` one handed to other clusters reads no flows). Who may read that
//   Secret (Kubernetes RBAC) may read the flows: `observe --context` and
//   `ui --context` read it, list the agent pods and dial each. No relay pod: the
//   CLI merges, and the apiserver pod stays an etcd plus its writer, reaching
//   nothing of the nodes.
// - Settings plain `lab up` offers too, off by default: native routing
//   (routingMode native with the ranges the network routes, in agent.yaml);
//   socket-level load balancing (the host's cgroup v2 mount, a hostPath of
//   type Directory so a missing mount fails the pod naming it, mounted at
//   PATHS.cgroup where the agent attaches: the hierarchy's root covers every
//   pod, as Cilium attaches at the cgroup v2 root it mounts on the host); the
//   agent's and apiserver's /metrics on every address of their node (host
//   network, off the pod network), a container port `metrics` and the
//   prometheus.io/scrape and /port pod annotations.
// - Both reach the Kubernetes API in-cluster (their ServiceAccount's token,
//   KUBERNETES_SERVICE_HOST/PORT from the kubelet). Where the kubelet's
//   value is the `kubernetes` Service's ClusterIP and nothing translates it
//   before the CNI runs (a cluster without kube-proxy), --k8s-service-host and
//   --k8s-service-port put the API server's own address into their env.
//
// What the agent still lacks to run from these manifests: nothing known; the
// image (Containerfile) cannot be built here, so a real cluster has not run
// them yet (the lab runs them).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, stringify } from 'yaml';
import { DEFAULT_CNI_BINARY_NAME, DEFAULT_CNI_CONF_NAME, OBSERVER_CLIENT_NAME } from '../agent/config.ts';
import type { InstallSettings } from './settings.ts';

export type KubeObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
};

/** PEM text of the cluster's certificates. */
export interface InstallCerts {
  ca: { cert: string; key: string };
  /** etcd server certificate (SANs: the Service's names and the apiserver addresses). */
  server: { cert: string; key: string };
  /** Client certificates, one per etcd user. */
  clients: Record<EtcdUser, { cert: string; key: string }>;
  /** The agents' remote API server certificate (SAN agentApiServerName). */
  agentApi: { cert: string; key: string };
  /** The client certificate of observe/ui --context (CN OBSERVER_CLIENT_NAME). */
  observer: { cert: string; key: string };
}

export const ETCD_USERS = ['root', 'apiserver', 'agent', 'remote'] as const;
export type EtcdUser = (typeof ETCD_USERS)[number];

export const PART_OF = 'clustermesh';
/** Every object install creates carries these labels; uninstall deletes by them. */
export const COMMON_LABELS = { 'app.kubernetes.io/part-of': PART_OF, 'app.kubernetes.io/managed-by': 'clustermesh-cli' } as const;
/** On CRDs install created (uninstall leaves CRDs it did not create). */
export const CREATED_BY_ANNOTATION = 'clustermesh.io/created-by';
/**
 * On the agent's and the apiserver's pod templates: a hash of the ConfigMap's
 * data. A re-install that changes a setting changes the template, so the
 * DaemonSet and the Deployment roll their pods onto it (a process reads its
 * configuration at start); one that changes nothing changes no template.
 */
export const CONFIG_HASH_ANNOTATION = 'clustermesh.io/config-hash';

export const NAMES = {
  config: 'clustermesh-config',
  ca: 'clustermesh-ca',
  etcdServer: 'clustermesh-etcd-server',
  client: (user: EtcdUser) => `clustermesh-etcd-${user}`,
  remotes: 'clustermesh-remotes',
  agentApi: 'clustermesh-agent-api',
  observer: 'clustermesh-observer',
  apiserver: 'clustermesh-apiserver',
  agent: 'clustermesh-agent',
} as const;

/** The Service's etcd port: what agents and remote clusters dial. */
export const ETCD_PORT = 2379;
/** Where the host-network etcd listens on its node (the Service's targetPort `etcd`), and its peer port on loopback. */
export const ETCD_NODE_PORT = 2391;
/** The apiserver's metrics port when only on loopback (its default; settings.ts re-exports it beside the agent's). */
export const APISERVER_METRICS_PORT = 9963;
/** The agent's metrics port when only on loopback (its config's default metricsAddress, 127.0.0.1:9962; Cilium's agent also uses 9962). */
export const AGENT_METRICS_PORT = 9962;
export const ETCD_PEER_PORT = 2392;
/** Paths inside the containers. */
export const PATHS = {
  config: '/etc/clustermesh/config',
  etcdClient: '/etc/clustermesh/etcd',
  etcdServer: '/etc/clustermesh/etcd-server',
  etcdRoot: '/etc/clustermesh/etcd-root',
  remotes: '/etc/clustermesh/remotes',
  state: '/var/run/clustermesh',
  bpffs: '/run/clustermesh/bpffs',
  etcdData: '/var/run/etcd',
  /** The host's /etc/cni/net.d, mounted in the agent's container. */
  cniConf: '/host/etc/cni/net.d',
  /** The host's /opt/cni/bin, mounted in the install-cni-plugin init container. */
  cniBin: '/host/opt/cni/bin',
  /** The host's cgroup v2 hierarchy (--socket-lb-cgroup), mounted in the agent's container. */
  cgroup: '/host/cgroup',
  /** The agents' remote API certificate and the CA clients must chain to. */
  agentApi: '/etc/clustermesh/agent-api',
} as const;

/** The container port (name) of the agent's and apiserver's GET /metrics (--agent-metrics-port, --apiserver-metrics-port). */
export const METRICS_PORT_NAME = 'metrics';

/**
 * The pod annotations of Prometheus' common `kubernetes-pods` scrape job
 * (prometheus.io/scrape, prometheus.io/port), as Cilium's pods carry: a
 * Prometheus with Kubernetes service discovery finds every agent and the
 * apiserver at the pod's (the node's) IP and that port.
 */
export function metricsAnnotations(port: number | undefined): Record<string, string> {
  return port === undefined ? {} : { 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(port) };
}

/** The container port (name) of the agents' remote API: what observe/ui --context read from the agent pods. */
export const REMOTE_API_PORT_NAME = 'remote-api';

/** The name every agent's remote API certificate carries and clients verify (never resolved; see the header). */
export function agentApiServerName(clusterName: string): string {
  return `agents.${clusterName}.clustermesh.internal`;
}

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const CRDS_FILE = join(REPO_ROOT, 'deploy/crds/cilium-policies.yaml');
/** The Multi-Cluster Services API kinds (ServiceExport, ServiceImport). */
export const MCS_CRDS_FILE = join(REPO_ROOT, 'deploy/crds/mcs-api.yaml');

/** The CRDs of deploy/crds/ an install creates where absent: Cilium's policy kinds and the MCS API's. */
export function meshCrds(): KubeObject[] {
  return [CRDS_FILE, MCS_CRDS_FILE].flatMap((f) => parseAllDocuments(readFileSync(f, 'utf8')).map((d) => d.toJS() as KubeObject));
}

/** The Service name remote clusters and agents use for this cluster's etcd (also a SAN of its certificate). */
export function etcdServiceNames(s: Pick<InstallSettings, 'namespace'>): string[] {
  const svc = NAMES.apiserver;
  return [svc, `${svc}.${s.namespace}`, `${svc}.${s.namespace}.svc`, `${svc}.${s.namespace}.svc.cluster.local`];
}

const b64 = (s: string): string => Buffer.from(s).toString('base64');

function meta(name: string, s: Pick<InstallSettings, 'namespace' | 'clusterName'>, namespaced: boolean, extra: Record<string, string> = {}): KubeObject['metadata'] {
  return {
    name,
    ...(namespaced ? { namespace: s.namespace } : {}),
    labels: { ...COMMON_LABELS, 'clustermesh.io/cluster-name': s.clusterName, ...extra },
  };
}

function tlsSecret(name: string, s: InstallSettings, pair: { cert: string; key: string }, caCert: string): KubeObject {
  return { apiVersion: 'v1', kind: 'Secret', metadata: meta(name, s, true), type: 'kubernetes.io/tls', data: { 'tls.crt': b64(pair.cert), 'tls.key': b64(pair.key), 'ca.crt': b64(caCert) } };
}

/** The kinds and verbs each component reads through the Kubernetes API. */
const READ_VERBS = ['get', 'list', 'watch'];
const AGENT_RULES = [
  { apiGroups: [''], resources: ['namespaces', 'pods', 'services', 'nodes'], verbs: READ_VERBS },
  { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: READ_VERBS },
  { apiGroups: ['networking.k8s.io'], resources: ['networkpolicies'], verbs: READ_VERBS },
  { apiGroups: ['cilium.io'], resources: ['ciliumnetworkpolicies', 'ciliumclusterwidenetworkpolicies'], verbs: READ_VERBS },
];
/**
 * What the apiserver's MCS controller (src/apiserver/mcs.ts) writes: the
 * conditions of ServiceExports, the ServiceImports, the derived Services
 * (`derived-<hash>`, the imports' VIPs) and the EndpointSlices of headless
 * imports. RBAC cannot narrow create to names or labels; the controller only
 * changes objects it made (its name prefix and managed-by labels).
 */
export const MCS_WRITE_RULES = [
  { apiGroups: ['multicluster.x-k8s.io'], resources: ['serviceexports/status', 'serviceimports/status'], verbs: ['patch'] },
  { apiGroups: ['multicluster.x-k8s.io'], resources: ['serviceimports'], verbs: ['create', 'patch', 'delete'] },
  { apiGroups: [''], resources: ['services'], verbs: ['create', 'patch', 'delete'] },
  { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['create', 'patch', 'delete'] },
];
const APISERVER_RULES = [
  { apiGroups: [''], resources: ['namespaces', 'pods', 'services', 'nodes'], verbs: READ_VERBS },
  { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: READ_VERBS },
  { apiGroups: ['multicluster.x-k8s.io'], resources: ['serviceexports', 'serviceimports'], verbs: READ_VERBS },
  ...MCS_WRITE_RULES,
];

/**
 * What the agent writes, in the install's namespace only (a Role): the status
 * annotation of its own Pod (src/agent/pod-status.ts). RBAC cannot narrow
 * patch to one pod by name; the namespace holds only the install's pods.
 */
export const AGENT_NAMESPACE_RULES = [{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'patch'] }];

function rbac(name: string, s: InstallSettings, rules: unknown[], namespaceRules: unknown[] = []): KubeObject[] {
  const subjects = [{ kind: 'ServiceAccount', name, namespace: s.namespace }];
  return [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: meta(name, s, true) },
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: meta(name, s, false), rules },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: meta(name, s, false),
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name },
      subjects,
    },
    ...(namespaceRules.length
      ? [
          { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'Role', metadata: meta(name, s, true), rules: namespaceRules },
          { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'RoleBinding', metadata: meta(name, s, true), roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name }, subjects },
        ]
      : []),
  ];
}

/** An etcd client configuration file (Cilium's format, read by `apiserver --etcd-config`). */
function etcdClientFile(endpoint: string, dir: string): string {
  return stringify({ endpoints: [endpoint], 'trusted-ca-file': `${dir}/ca.crt`, 'cert-file': `${dir}/tls.crt`, 'key-file': `${dir}/tls.key` });
}

/** The agent's configuration (src/agent/config.ts, the ConfigMap's agent.yaml); node name and IP come from flags set from the downward API. */
export function agentConfigDoc(s: InstallSettings): Record<string, unknown> {
  return {
    clusterName: s.clusterName,
    clusterID: s.clusterID,
    maxConnectedClusters: s.maxConnectedClusters,
    tunnelPort: s.tunnelPort,
    ...(s.routingMode === 'native' ? { routingMode: s.routingMode, nativeRoutingCIDRs: s.nativeRoutingCIDRs } : {}),
    tunnelEncap: s.tunnelEncap,
    // The host's cgroup v2 hierarchy, mounted in the container (the DaemonSet's volume `cgroup`).
    ...(s.socketLBCgroup !== undefined ? { socketLBCgroup: PATHS.cgroup } : {}),
    // On every address of the node (host network), as Cilium's agent serves :9962; else the agent's default, its node's loopback.
    ...(s.agentMetricsPort !== undefined ? { metricsAddress: `0.0.0.0:${s.agentMetricsPort}` } : {}),
    etcd: {
      endpoints: [`https://${etcdServiceNames(s)[2]}:${ETCD_PORT}`],
      caFile: `${PATHS.etcdClient}/ca.crt`,
      certFile: `${PATHS.etcdClient}/tls.crt`,
      keyFile: `${PATHS.etcdClient}/tls.key`,
    },
    clustermeshConfigDir: PATHS.remotes,
    // With the cache tier, the remotes are read from this cluster's etcd (the files still name them).
    ...(s.kvstoremesh ? { clustermeshCache: true } : {}),
    stateDir: `${PATHS.state}/agent`,
    // podCIDR: the Node's spec.podCIDRs (read through the API)
    cniConfDir: PATHS.cniConf,
    cniConfName: DEFAULT_CNI_CONF_NAME,
    cniBinaryName: DEFAULT_CNI_BINARY_NAME,
    // On the node IP (--node-ip from the downward API).
    ...(s.remoteApiPort !== undefined
      ? { remoteApi: { port: s.remoteApiPort, caFile: `${PATHS.agentApi}/ca.crt`, certFile: `${PATHS.agentApi}/tls.crt`, keyFile: `${PATHS.agentApi}/tls.key`, clients: [OBSERVER_CLIENT_NAME] } }
      : {}),
  };
}

function configMap(s: InstallSettings): KubeObject {
  const local = `https://127.0.0.1:${ETCD_NODE_PORT}`;
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: meta(NAMES.config, s, true),
    data: {
      'cluster-name': s.clusterName,
      'cluster-id': String(s.clusterID),
      'max-connected-clusters': String(s.maxConnectedClusters),
      'routing-mode': s.routingMode,
      // Comma-separated; '' in tunnel mode.
      'native-routing-cidrs': s.nativeRoutingCIDRs.join(','),
      'tunnel-encap': s.tunnelEncap,
      // The host path socket LB attaches at; '' off.
      'socket-lb-cgroup': s.socketLBCgroup ?? '',
      // 0: only on the node's loopback.
      'agent-metrics-port': String(s.agentMetricsPort ?? 0),
      'apiserver-metrics-port': String(s.apiserverMetricsPort ?? 0),
      kvstoremesh: String(s.kvstoremesh),
      'tunnel-port': String(s.tunnelPort),
      // 0: off
      'remote-api-port': String(s.remoteApiPort ?? 0),
      'agent.yaml': stringify(agentConfigDoc(s)),
      'etcd-apiserver.yaml': etcdClientFile(local, PATHS.etcdClient),
      'etcd-root.yaml': etcdClientFile(local, PATHS.etcdRoot),
    },
  };
}

/** CONFIG_HASH_ANNOTATION's value: the first 16 hex digits of the SHA-256 of the ConfigMap's data. */
export function configHash(s: InstallSettings): string {
  return createHash('sha256').update(JSON.stringify(configMap(s).data)).digest('hex').slice(0, 16);
}

/**
 * The Service remote clusters reach this cluster's etcd by; install renders
 * it with its --service-type, `clustermesh enable` / `disable` re-render it
 * with another type (ClusterIP: not reachable from other clusters).
 */
export function apiserverService(s: Pick<InstallSettings, 'namespace' | 'clusterName' | 'serviceType' | 'nodePort'>): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(NAMES.apiserver, s, true),
    spec: {
      type: s.serviceType,
      selector: { 'app.kubernetes.io/name': NAMES.apiserver },
      ports: [{ name: 'etcd', port: ETCD_PORT, targetPort: 'etcd', protocol: 'TCP', ...(s.nodePort !== undefined ? { nodePort: s.nodePort } : {}) }],
    },
  };
}

function apiserverDeployment(s: InstallSettings): KubeObject {
  const labels = { 'app.kubernetes.io/name': NAMES.apiserver };
  const advertise = `https://${etcdServiceNames(s)[2]}:${ETCD_PORT}`;
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: meta(NAMES.apiserver, s, true, labels),
    spec: {
      replicas: 1,
      strategy: { type: 'Recreate' },
      selector: { matchLabels: labels },
      template: {
        metadata: { labels: { ...COMMON_LABELS, ...labels }, annotations: { [CONFIG_HASH_ANNOTATION]: configHash(s), ...(s.apiserverMetricsPort !== undefined ? metricsAnnotations(s.apiserverMetricsPort) : {}) } },
        spec: {
          serviceAccountName: NAMES.apiserver,
          // Off the pod network its agents provide (see the header).
          hostNetwork: true,
          dnsPolicy: 'ClusterFirstWithHostNet',
          // Neither etcd nor the apiserver needs root (the image's user 65532; see Containerfile).
          securityContext: { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532 },
          containers: [
            {
              name: 'etcd',
              image: s.image,
              command: [
                'etcd',
                '--name=clustermesh-apiserver',
                `--data-dir=${PATHS.etcdData}`,
                `--listen-client-urls=https://0.0.0.0:${ETCD_NODE_PORT}`,
                `--advertise-client-urls=${advertise}`,
                `--listen-peer-urls=http://127.0.0.1:${ETCD_PEER_PORT}`,
                `--initial-advertise-peer-urls=http://127.0.0.1:${ETCD_PEER_PORT}`,
                `--initial-cluster=clustermesh-apiserver=http://127.0.0.1:${ETCD_PEER_PORT}`,
                '--initial-cluster-state=new',
                `--cert-file=${PATHS.etcdServer}/tls.crt`,
                `--key-file=${PATHS.etcdServer}/tls.key`,
                '--client-cert-auth',
                `--trusted-ca-file=${PATHS.etcdServer}/ca.crt`,
                '--auto-compaction-mode=revision',
                '--auto-compaction-retention=10000',
              ],
              ports: [{ name: 'etcd', containerPort: ETCD_NODE_PORT, protocol: 'TCP' }],
              readinessProbe: { tcpSocket: { port: ETCD_NODE_PORT }, periodSeconds: 5 },
              volumeMounts: [
                { name: 'etcd-data', mountPath: PATHS.etcdData },
                { name: 'etcd-server', mountPath: PATHS.etcdServer, readOnly: true },
              ],
            },
            {
              name: 'apiserver',
              image: s.image,
              command: [
                'clustermesh', 'apiserver',
                '--cluster-name', s.clusterName,
                '--cluster-id', String(s.clusterID),
                '--max-connected-clusters', String(s.maxConnectedClusters),
                '--etcd-config', `${PATHS.config}/etcd-apiserver.yaml`,
                '--etcd-bootstrap-config', `${PATHS.config}/etcd-root.yaml`,
                // The remote clusters (the Secret connect writes, as the agents mount it): the MCS controller reads their
                // ServiceExports through them, so a ServiceImport lists every exporting cluster; the cache tier imports them.
                '--clustermesh-config-dir', PATHS.remotes,
                ...(s.kvstoremesh ? ['--kvstoremesh'] : []),
                ...(s.apiserverMetricsPort !== undefined ? ['--metrics-address', `0.0.0.0:${s.apiserverMetricsPort}`] : []),
              ],
              ...(s.apiserverMetricsPort !== undefined ? { ports: [{ name: METRICS_PORT_NAME, containerPort: s.apiserverMetricsPort, protocol: 'TCP' }] } : {}),
              ...(s.k8sService ? { env: k8sServiceEnv(s) } : {}),
              // Ready once its start is done (cluster-config and the synced canaries written: phase "ready", /readyz
              // 200 on its metrics endpoint, always served, on the node's loopback at least): the Deployment is
              // available, and its Service sends remote clusters to it, only when what they read is there (connect
              // checks it). httpGet to the host network's loopback (as Cilium probes its agent), not an exec of
              // curl: the kubelet asks in its own process instead of starting a shell, curl and grep each time.
              readinessProbe: {
                httpGet: { host: '127.0.0.1', path: '/readyz', port: s.apiserverMetricsPort ?? APISERVER_METRICS_PORT },
                periodSeconds: 5,
                // A local HTTP GET; the default 1 s made it flap on a loaded node (the lab's, under load 40).
                timeoutSeconds: 5,
                failureThreshold: 3,
              },
              volumeMounts: [
                { name: 'config', mountPath: PATHS.config, readOnly: true },
                { name: 'etcd-apiserver', mountPath: PATHS.etcdClient, readOnly: true },
                { name: 'etcd-root', mountPath: PATHS.etcdRoot, readOnly: true },
                { name: 'remotes', mountPath: PATHS.remotes, readOnly: true },
              ],
            },
          ],
          volumes: [
            { name: 'etcd-data', emptyDir: {} },
            { name: 'etcd-server', secret: { secretName: NAMES.etcdServer } },
            { name: 'config', configMap: { name: NAMES.config } },
            { name: 'etcd-apiserver', secret: { secretName: NAMES.client('apiserver') } },
            { name: 'etcd-root', secret: { secretName: NAMES.client('root') } },
            { name: 'remotes', secret: { secretName: NAMES.remotes, optional: true } },
          ],
        },
      },
    },
  };
}

const hostPath = (name: string, path: string, type: string) => ({ name, hostPath: { path, type } });

/** KUBERNETES_SERVICE_HOST/PORT of --k8s-service-host/--k8s-service-port (they win over the kubelet's). */
function k8sServiceEnv(s: InstallSettings): Array<{ name: string; value: string }> {
  if (!s.k8sService) return [];
  return [
    { name: 'KUBERNETES_SERVICE_HOST', value: s.k8sService.host },
    { name: 'KUBERNETES_SERVICE_PORT', value: String(s.k8sService.port) },
  ];
}

/**
 * The agent's container. Capabilities: NET_ADMIN (links, routes, tc), BPF
 * and PERFMON (maps, programs), SYS_ADMIN (setns into pod network
 * namespaces, bpffs pins; kernels before 5.8 also need it for BPF),
 * NET_RAW (ARP answers, raw sockets of the health checks), SYS_RESOURCE
 * (the memlock limit older kernels charge BPF maps to). Not privileged.
 * No /lib/modules: the agent loads no module itself (the kernel loads vxlan
 * on the link's creation where it is a module).
 */
function agentContainer(s: InstallSettings): Record<string, unknown> {
  return {
    name: 'agent',
    image: s.image,
    // --status-pod: the agent keeps its status summary in its own Pod's annotation (src/agent/pod-status.ts), what `clustermesh status --context` reads.
    command: ['clustermesh', 'agent', '--config', `${PATHS.config}/agent.yaml`, '--node-name', '$(NODE_NAME)', '--node-ip', '$(NODE_IP)', '--status-pod', '$(POD_NAMESPACE)/$(POD_NAME)'],
    env: [
      { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
      { name: 'NODE_IP', valueFrom: { fieldRef: { fieldPath: 'status.hostIP' } } },
      { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
      ...k8sServiceEnv(s),
    ],
    securityContext: {
      privileged: false,
      runAsUser: 0,
      capabilities: { add: ['NET_ADMIN', 'BPF', 'PERFMON', 'SYS_ADMIN', 'NET_RAW', 'SYS_RESOURCE'], drop: ['ALL'] },
    },
    ...(s.remoteApiPort !== undefined || s.agentMetricsPort !== undefined
      ? {
          ports: [
            ...(s.remoteApiPort !== undefined ? [{ name: REMOTE_API_PORT_NAME, containerPort: s.remoteApiPort, protocol: 'TCP' }] : []),
            ...(s.agentMetricsPort !== undefined ? [{ name: METRICS_PORT_NAME, containerPort: s.agentMetricsPort, protocol: 'TCP' }] : []),
          ],
        }
      : {}),
    // Ready when the agent's /healthz on its socket is: GET /readyz of its metrics endpoint, always served (on the
    // node's loopback at least), by httpGet as Cilium probes its agent, not an exec of curl (a process per probe).
    readinessProbe: {
      httpGet: { host: '127.0.0.1', path: '/readyz', port: s.agentMetricsPort ?? AGENT_METRICS_PORT },
      periodSeconds: 5,
      failureThreshold: 3,
    },
    volumeMounts: [
      { name: 'bpffs', mountPath: PATHS.bpffs, mountPropagation: 'HostToContainer' },
      { name: 'state', mountPath: PATHS.state },
      { name: 'cni-conf', mountPath: PATHS.cniConf },
      { name: 'config', mountPath: PATHS.config, readOnly: true },
      { name: 'etcd-agent', mountPath: PATHS.etcdClient, readOnly: true },
      { name: 'remotes', mountPath: PATHS.remotes, readOnly: true },
      ...(s.remoteApiPort !== undefined ? [{ name: 'agent-api', mountPath: PATHS.agentApi, readOnly: true }] : []),
      ...(s.socketLBCgroup !== undefined ? [{ name: 'cgroup', mountPath: PATHS.cgroup }] : []),
    ],
  };
}

function agentDaemonSet(s: InstallSettings): KubeObject {
  const labels = { 'app.kubernetes.io/name': NAMES.agent };
  return {
    apiVersion: 'apps/v1',
    kind: 'DaemonSet',
    metadata: meta(NAMES.agent, s, true, labels),
    spec: {
      selector: { matchLabels: labels },
      updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } },
      template: {
        metadata: { labels: { ...COMMON_LABELS, ...labels }, annotations: { [CONFIG_HASH_ANNOTATION]: configHash(s), ...(s.agentMetricsPort !== undefined ? metricsAnnotations(s.agentMetricsPort) : {}) } },
        spec: {
          serviceAccountName: NAMES.agent,
          hostNetwork: true,
          dnsPolicy: 'ClusterFirstWithHostNet',
          priorityClassName: 'system-node-critical',
          tolerations: [{ operator: 'Exists' }],
          initContainers: [
            {
              // The one privileged step: a bpffs the host sees (mount propagation to the host needs privileged).
              name: 'mount-bpf-fs',
              image: s.image,
              // The volume's own bind mount makes the path a mount point already: test the filesystem type, not `mountpoint`.
              command: ['sh', '-c', `[ "$(stat -f -c %T ${PATHS.bpffs})" = bpf_fs ] || mount -t bpf bpffs ${PATHS.bpffs}`],
              securityContext: { privileged: true },
              volumeMounts: [{ name: 'bpffs', mountPath: PATHS.bpffs, mountPropagation: 'Bidirectional' }],
            },
            {
              name: 'install-cni-plugin',
              image: s.image,
              // Under the name the agent's conflist gives as `type`; copied beside it and renamed over it, so a
              // runtime running the old executable at that moment neither fails (text file busy) nor runs half a file.
              command: ['sh', '-c', `cp /usr/local/lib/clustermesh/clustermesh-cni ${PATHS.cniBin}/.${DEFAULT_CNI_BINARY_NAME}.new && mv -f ${PATHS.cniBin}/.${DEFAULT_CNI_BINARY_NAME}.new ${PATHS.cniBin}/${DEFAULT_CNI_BINARY_NAME}`],
              volumeMounts: [{ name: 'cni-bin', mountPath: PATHS.cniBin }],
            },
          ],
          containers: [agentContainer(s)],
          volumes: [
            hostPath('bpffs', PATHS.bpffs, 'DirectoryOrCreate'),
            hostPath('state', PATHS.state, 'DirectoryOrCreate'),
            hostPath('cni-bin', '/opt/cni/bin', 'DirectoryOrCreate'),
            hostPath('cni-conf', '/etc/cni/net.d', 'DirectoryOrCreate'),
            { name: 'config', configMap: { name: NAMES.config } },
            { name: 'etcd-agent', secret: { secretName: NAMES.client('agent') } },
            { name: 'remotes', secret: { secretName: NAMES.remotes, optional: true } },
            ...(s.remoteApiPort !== undefined ? [{ name: 'agent-api', secret: { secretName: NAMES.agentApi } }] : []),
            // Socket LB: the host's cgroup v2 mount, which must exist (type Directory: never created empty).
            ...(s.socketLBCgroup !== undefined ? [hostPath('cgroup', s.socketLBCgroup, 'Directory')] : []),
          ],
        },
      },
    },
  };
}

/** Every object of an install, in apply order (uninstall deletes in reverse). */
export function renderManifests(s: InstallSettings, certs: InstallCerts): KubeObject[] {
  const crds = meshCrds().map((c) => ({ ...c, metadata: { ...c.metadata, labels: { ...(c.metadata.labels ?? {}), ...COMMON_LABELS }, annotations: { ...(c.metadata.annotations ?? {}), [CREATED_BY_ANNOTATION]: 'clustermesh install' } } }));
  return [
    { apiVersion: 'v1', kind: 'Namespace', metadata: meta(s.namespace, s, false) },
    ...crds,
    ...rbac(NAMES.agent, s, AGENT_RULES, AGENT_NAMESPACE_RULES),
    ...rbac(NAMES.apiserver, s, APISERVER_RULES),
    configMap(s),
    { apiVersion: 'v1', kind: 'Secret', metadata: meta(NAMES.ca, s, true), type: 'Opaque', data: { 'ca.crt': b64(certs.ca.cert), 'ca.key': b64(certs.ca.key) } },
    tlsSecret(NAMES.etcdServer, s, certs.server, certs.ca.cert),
    ...ETCD_USERS.map((u) => tlsSecret(NAMES.client(u), s, certs.clients[u], certs.ca.cert)),
    // Made whether the remote API is on or not: a re-install that switches it on finds them (Secrets are kept).
    tlsSecret(NAMES.agentApi, s, certs.agentApi, certs.ca.cert),
    tlsSecret(NAMES.observer, s, certs.observer, certs.ca.cert),
    { apiVersion: 'v1', kind: 'Secret', metadata: meta(NAMES.remotes, s, true), type: 'Opaque', data: {} },
    apiserverService(s),
    apiserverDeployment(s),
    agentDaemonSet(s),
  ];
}

/**
 * Objects install creates only when absent and never changes afterwards:
 * certificates, the remote-cluster files connect wrote, CRDs (maybe
 * Cilium's), and the namespace (one that existed before stays unlabelled, so
 * uninstall leaves it).
 */
export function createOnly(o: KubeObject): boolean {
  return o.kind === 'CustomResourceDefinition' || o.kind === 'Secret' || o.kind === 'Namespace';
}

/** A multi-document YAML stream. */
export function toYaml(objects: readonly KubeObject[]): string {
  return objects.map((o) => `---\n${stringify(o)}`).join('');
}
