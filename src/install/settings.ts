// What `clustermesh install` is told about a cluster, checked once with the
// same rules the agent and apiserver apply, so a bad value is refused before
// anything reaches the cluster. Every error names the flag.
import { isIP } from 'node:net';
import { AgentConfigError, compileAgentConfig } from '../agent/config.ts';
import { DEFAULT_TUNNEL_ENCAP, ROUTING_MODES, TUNNEL_ENCAPS, type RoutingMode, type TunnelEncap } from '../datapath/maps/config.ts';
import { agentConfigDoc, AGENT_METRICS_PORT, APISERVER_METRICS_PORT, ETCD_NODE_PORT, ETCD_PEER_PORT, PATHS } from './manifests.ts';
import { MAX_CONNECTED_CLUSTERS_VALUES, validateClusterId, validateClusterName, type MaxConnectedClusters } from '../model/index.ts';

/** How remote clusters reach the etcd; ClusterIP: they do not (`clustermesh disable`, never an install's flag). */
export type ServiceType = 'NodePort' | 'LoadBalancer' | 'ClusterIP';
export type { RoutingMode };

export interface InstallSettings {
  clusterName: string;
  clusterID: number;
  maxConnectedClusters: MaxConnectedClusters;
  /** Namespace of everything namespaced that install creates. */
  namespace: string;
  /** The image holding the CLI, the compiled BPF objects and etcd (Containerfile). */
  image: string;
  routingMode: RoutingMode;
  /** native only (required there): the pod address ranges the underlay routes to their nodes (the agent's nativeRoutingCIDRs). */
  nativeRoutingCIDRs: string[];
  /** Who writes the tunnel's VXLAN headers (the agent's tunnelEncap): the programs (bpf) or the kernel's VXLAN device. */
  tunnelEncap: TunnelEncap;
  /**
   * Socket-level load balancing: the host path of the cgroup v2 directory the
   * agent attaches its connect/sendmsg/recvmsg/getpeername programs to (the
   * root of the host's cgroup v2 hierarchy, so every pod below it is
   * covered); undefined: off.
   */
  socketLBCgroup: string | undefined;
  /** Port of the agent's GET /metrics on every address of its node (host network); undefined: only on the node's 127.0.0.1:9962. */
  agentMetricsPort: number | undefined;
  /** Port of the apiserver's GET /metrics on every address of its node (host network); undefined: only on its node's 127.0.0.1:9963. */
  apiserverMetricsPort: number | undefined;
  /** VXLAN UDP port between nodes. */
  tunnelPort: number;
  /** How remote clusters reach this cluster's etcd. */
  serviceType: ServiceType;
  /** NodePort of the etcd Service (NodePort type only). */
  nodePort: number | undefined;
  /** Extra addresses (IPs or DNS names) remote clusters use for this cluster's etcd: SANs of its server certificate. */
  apiserverAddresses: string[];
  /**
   * Where the agent and apiserver containers reach the Kubernetes API
   * (KUBERNETES_SERVICE_HOST/PORT in their env, Cilium's k8sServiceHost/Port),
   * for clusters whose `kubernetes` ClusterIP host-network pods cannot reach
   * before the CNI runs; undefined: what the kubelet sets.
   */
  k8sService: { host: string; port: number } | undefined;
  /**
   * The apiserver's cache tier (Cilium's KVStoreMesh): it imports every remote
   * cluster once into this cluster's etcd and the agents read the remotes
   * there, one connection each, instead of one per remote.
   */
  kvstoremesh: boolean;
  /**
   * TCP port on each node where its agent serves its read-only API (flows,
   * status, endpoints, services) with mutual TLS, for `observe --context` and
   * `ui --context`; undefined: off (the API only on the node's unix socket).
   */
  remoteApiPort: number | undefined;
}

/** A flag's value is wrong; the message names the flag. */
export class InstallSettingsError extends Error {
  constructor(
    readonly flag: string,
    message: string,
  ) {
    super(`${flag}: ${message}`);
    this.name = 'InstallSettingsError';
  }
}

export const DEFAULT_NAMESPACE = 'clustermesh-system';
export const DEFAULT_IMAGE = 'ghcr.io/clustermesh/clustermesh:0.1.0';
/** NodePorts of the etcd Service: NODE_PORT_BASE + cluster ID, so two clusters never share one by default (see manifests.ts). */
export const NODE_PORT_BASE = 32000;
const NODE_PORT_RANGE = { min: 30000, max: 32767 };
/** The agents' read-only API over mutual TLS (Hubble's server listens on 4244, its relay on 4245; clustermesh takes 4247). */
export const DEFAULT_REMOTE_API_PORT = 4247;
/** The host's cgroup v2 hierarchy where systemd mounts it (a unified-hierarchy host); socket LB attaches at its root. */
export const DEFAULT_SOCKET_LB_CGROUP = '/sys/fs/cgroup';
/** The agent's and apiserver's metrics ports when only on loopback (their defaults; Cilium's agent also uses 9962). */
export { AGENT_METRICS_PORT, APISERVER_METRICS_PORT } from './manifests.ts';
/** Host ports the install's own pods listen on. */
const HOST_PORTS_TAKEN = [ETCD_NODE_PORT, ETCD_PEER_PORT];

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export interface RawInstallOptions {
  clusterName?: string | undefined;
  clusterId?: string | undefined;
  maxConnectedClusters?: string | undefined;
  namespace?: string | undefined;
  image?: string | undefined;
  routingMode?: string | undefined;
  nativeRoutingCidr?: string[] | undefined;
  tunnelEncap?: string | undefined;
  socketLb?: boolean | undefined;
  socketLbCgroup?: string | undefined;
  agentMetricsPort?: string | undefined;
  apiserverMetricsPort?: string | undefined;
  tunnelPort?: string | undefined;
  serviceType?: string | undefined;
  nodePort?: string | undefined;
  apiserverAddress?: string[] | undefined;
  k8sServiceHost?: string | undefined;
  k8sServicePort?: string | undefined;
  kvstoremesh?: boolean | undefined;
  remoteApiPort?: string | undefined;
}

function integer(flag: string, v: string, min: number, max: number): number {
  if (!/^\d+$/.test(v.trim())) throw new InstallSettingsError(flag, `"${v}" is not an integer`);
  const n = Number(v);
  if (n < min || n > max) throw new InstallSettingsError(flag, `${n} is out of range ${min}..${max}`);
  return n;
}

/** Checks and defaults the install flags; throws InstallSettingsError naming the first bad flag. */
export function compileInstallSettings(raw: RawInstallOptions): InstallSettings {
  if (raw.clusterName === undefined) throw new InstallSettingsError('--cluster-name', 'required');
  const nameProblem = validateClusterName(raw.clusterName);
  if (nameProblem) throw new InstallSettingsError('--cluster-name', nameProblem);
  if (raw.clusterName === 'default') throw new InstallSettingsError('--cluster-name', 'must not be "default" (the name of a cluster outside any mesh); give each cluster its own');

  const max = raw.maxConnectedClusters === undefined ? 255 : integer('--max-connected-clusters', raw.maxConnectedClusters, 1, 1 << 16);
  if (!(MAX_CONNECTED_CLUSTERS_VALUES as readonly number[]).includes(max)) throw new InstallSettingsError('--max-connected-clusters', `${max} is not one of ${MAX_CONNECTED_CLUSTERS_VALUES.join(', ')}`);
  const maxConnectedClusters = max as MaxConnectedClusters;

  if (raw.clusterId === undefined) throw new InstallSettingsError('--cluster-id', 'required');
  const clusterID = integer('--cluster-id', raw.clusterId, 0, 1 << 16);
  // validateClusterId also admits 0 (a cluster outside any mesh); an installed cluster is in one.
  if (clusterID === 0 || validateClusterId(clusterID, maxConnectedClusters)) throw new InstallSettingsError('--cluster-id', `${clusterID} is out of range 1..${maxConnectedClusters} (--max-connected-clusters ${maxConnectedClusters})`);

  const namespace = raw.namespace ?? DEFAULT_NAMESPACE;
  if (namespace.length > 63 || !DNS1123_LABEL.test(namespace)) throw new InstallSettingsError('--namespace', `"${namespace}" is not a valid namespace name (lowercase alphanumerics and "-", at most 63)`);

  const image = raw.image ?? DEFAULT_IMAGE;
  if (image.length === 0 || /\s/.test(image)) throw new InstallSettingsError('--image', `"${image}" is not an image reference`);

  const routingMode = (raw.routingMode ?? 'tunnel') as RoutingMode;
  if (!ROUTING_MODES.includes(routingMode)) throw new InstallSettingsError('--routing-mode', `"${routingMode}" is not ${ROUTING_MODES.join(' or ')}`);
  const nativeRoutingCIDRs = raw.nativeRoutingCidr ?? [];
  if (routingMode === 'native' && nativeRoutingCIDRs.length === 0) {
    throw new InstallSettingsError('--native-routing-cidr', 'required with --routing-mode native: the pod address ranges your network routes to their nodes (repeatable, e.g. 10.244.0.0/16)');
  }
  if (routingMode !== 'native' && nativeRoutingCIDRs.length > 0) throw new InstallSettingsError('--native-routing-cidr', 'only with --routing-mode native');
  const tunnelEncap = (raw.tunnelEncap ?? DEFAULT_TUNNEL_ENCAP) as TunnelEncap;
  if (!TUNNEL_ENCAPS.includes(tunnelEncap)) throw new InstallSettingsError('--tunnel-encap', `"${tunnelEncap}" is not ${TUNNEL_ENCAPS.join(' or ')}`);

  if (raw.socketLbCgroup !== undefined && raw.socketLb !== true) throw new InstallSettingsError('--socket-lb-cgroup', 'only with --socket-lb');
  const socketLBCgroup = raw.socketLb === true ? (raw.socketLbCgroup ?? DEFAULT_SOCKET_LB_CGROUP) : undefined;
  if (socketLBCgroup !== undefined && (!socketLBCgroup.startsWith('/') || socketLBCgroup.split('/').includes('..') || /\s/.test(socketLBCgroup))) {
    throw new InstallSettingsError('--socket-lb-cgroup', `"${socketLBCgroup}" is not an absolute host path without ".." (the host's cgroup v2 mount, e.g. ${DEFAULT_SOCKET_LB_CGROUP})`);
  }

  const tunnelPort = raw.tunnelPort === undefined ? 8472 : integer('--tunnel-port', raw.tunnelPort, 1, 65535);

  const serviceType = raw.serviceType ?? 'NodePort';
  if (serviceType !== 'NodePort' && serviceType !== 'LoadBalancer') throw new InstallSettingsError('--service-type', `"${serviceType}" is not NodePort or LoadBalancer`);
  let nodePort: number | undefined;
  if (serviceType === 'NodePort') {
    // 32000 + ID stays inside the NodePort range for every ID up to 511.
    nodePort = raw.nodePort === undefined ? NODE_PORT_BASE + clusterID : integer('--node-port', raw.nodePort, NODE_PORT_RANGE.min, NODE_PORT_RANGE.max);
  } else if (raw.nodePort !== undefined) {
    throw new InstallSettingsError('--node-port', 'only with --service-type NodePort');
  }

  const apiserverAddresses = raw.apiserverAddress ?? [];
  for (const a of apiserverAddresses) {
    if (isIP(a) === 0 && (a.length > 253 || !DNS_NAME.test(a))) throw new InstallSettingsError('--apiserver-address', `"${a}" is neither an IP address nor a DNS name`);
  }

  let k8sService: InstallSettings['k8sService'];
  if (raw.k8sServiceHost !== undefined || raw.k8sServicePort !== undefined) {
    if (raw.k8sServiceHost === undefined) throw new InstallSettingsError('--k8s-service-port', 'needs --k8s-service-host (the API server address the port belongs to)');
    if (raw.k8sServicePort === undefined) throw new InstallSettingsError('--k8s-service-host', 'needs --k8s-service-port (e.g. 6443)');
    const host = raw.k8sServiceHost;
    if (isIP(host) === 0 && (host.length > 253 || !DNS_NAME.test(host))) throw new InstallSettingsError('--k8s-service-host', `"${host}" is neither an IP address nor a DNS name`);
    k8sService = { host, port: integer('--k8s-service-port', raw.k8sServicePort, 1, 65535) };
  }

  const port = raw.remoteApiPort === undefined ? DEFAULT_REMOTE_API_PORT : integer('--remote-api-port', raw.remoteApiPort, 0, 65535);
  const remoteApiPort = port === 0 ? undefined : port;
  // The apiserver's etcd listens on its node (host network) at these: the agent on that node could not bind.
  if (remoteApiPort !== undefined && HOST_PORTS_TAKEN.includes(remoteApiPort)) throw new InstallSettingsError('--remote-api-port', `${remoteApiPort} is taken on the apiserver's node by its etcd (ports ${HOST_PORTS_TAKEN.join(', ')}); pick another`);

  const metricsPort = (flag: string, v: string | undefined): number | undefined => {
    const p = v === undefined ? 0 : integer(flag, v, 0, 65535);
    if (p === 0) return undefined;
    if (HOST_PORTS_TAKEN.includes(p)) throw new InstallSettingsError(flag, `${p} is taken on the apiserver's node by its etcd (ports ${HOST_PORTS_TAKEN.join(', ')}); pick another`);
    if (p === remoteApiPort) throw new InstallSettingsError(flag, `${p} is the agents' --remote-api-port; pick another`);
    return p;
  };
  const agentMetricsPort = metricsPort('--agent-metrics-port', raw.agentMetricsPort);
  const apiserverMetricsPort = metricsPort('--apiserver-metrics-port', raw.apiserverMetricsPort);
  // Both on the host network: the apiserver's node runs an agent too (each on its default loopback port when not exposed).
  const agentPort = agentMetricsPort ?? AGENT_METRICS_PORT;
  const apiserverPort = apiserverMetricsPort ?? APISERVER_METRICS_PORT;
  if (agentPort === apiserverPort) {
    const flag = apiserverMetricsPort !== undefined ? '--apiserver-metrics-port' : '--agent-metrics-port';
    const other = flag === '--apiserver-metrics-port' ? (agentMetricsPort === undefined ? "the agent's metrics port (its default, on the node's loopback)" : '--agent-metrics-port') : "the apiserver's metrics port (its default, on the node's loopback)";
    throw new InstallSettingsError(flag, `${agentPort} is ${other} too, and the apiserver's node runs an agent: pick another`);
  }

  const s: InstallSettings = {
    clusterName: raw.clusterName,
    clusterID,
    maxConnectedClusters,
    namespace,
    image,
    routingMode,
    nativeRoutingCIDRs,
    tunnelEncap,
    socketLBCgroup,
    agentMetricsPort,
    apiserverMetricsPort,
    tunnelPort,
    serviceType,
    nodePort,
    apiserverAddresses,
    k8sService,
    kvstoremesh: raw.kvstoremesh === true,
    remoteApiPort,
  };
  checkAgentConfig(s);
  return s;
}

/** The agent's settings each install flag becomes (agent.yaml), for its errors. */
const AGENT_SETTING_FLAGS: Record<string, string> = {
  routingMode: '--routing-mode',
  nativeRoutingCIDRs: '--native-routing-cidr',
  tunnelEncap: '--tunnel-encap',
  socketLBCgroup: '--socket-lb-cgroup',
  metricsAddress: '--agent-metrics-port',
  tunnelPort: '--tunnel-port',
};

/**
 * The agent's configuration file as the install renders it, checked by the
 * agent's own rules (compileAgentConfig: e.g. a native routing range with host
 * bits set, or a /0), so what the agent would refuse at its start is refused
 * here, naming the install flag.
 */
function checkAgentConfig(s: InstallSettings): void {
  try {
    compileAgentConfig(agentConfigDoc(s), { source: 'install', baseDir: PATHS.config, flags: { nodeName: 'node', nodeIp: '192.0.2.1' } });
  } catch (err) {
    if (!(err instanceof AgentConfigError)) throw err;
    const key = err.setting?.split(/[.[]/)[0] ?? '';
    const flag = AGENT_SETTING_FLAGS[key];
    // Settings the install derives itself cannot be wrong by a flag: a bug, said as it is.
    if (flag === undefined) throw new Error(`install renders an agent config the agent refuses: ${err.message}`, { cause: err });
    throw new InstallSettingsError(flag, err.detail);
  }
}
