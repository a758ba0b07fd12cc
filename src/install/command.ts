// `clustermesh install` and `clustermesh uninstall`: put the mesh on a
// Kubernetes cluster by kube context, or take it off again.
import { Command, Option } from 'commander';
import { action, CliError, collect, EXIT_ERROR, printJson } from '../cli/common.ts';
import { applyObjects, deleteObjects, describe, loadKubeConfig, readExisting } from './apply.ts';
import { makeInstallCerts } from './certs.ts';
import { DEFAULT_TUNNEL_ENCAP, TUNNEL_ENCAPS } from '../datapath/maps/config.ts';
import { renderManifests, toYaml, type KubeObject } from './manifests.ts';
import { AGENT_METRICS_PORT, APISERVER_METRICS_PORT, compileInstallSettings, DEFAULT_IMAGE, DEFAULT_SOCKET_LB_CGROUP, DEFAULT_REMOTE_API_PORT, DEFAULT_NAMESPACE, InstallSettingsError, NODE_PORT_BASE, type RawInstallOptions } from './settings.ts';

interface InstallFlags extends RawInstallOptions {
  context?: string;
  kubeconfig?: string;
  dryRun?: boolean;
  output?: 'yaml' | 'json';
}

function settingsOrExit(raw: RawInstallOptions) {
  try {
    return compileInstallSettings(raw);
  } catch (err) {
    if (err instanceof InstallSettingsError) throw new CliError(err.message, EXIT_ERROR);
    throw err;
  }
}

function kubeFlags(cmd: Command): Command {
  return cmd
    .option('--context <name>', 'the kube context of the cluster (default: the current context)')
    .option('--kubeconfig <file>', 'kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)');
}

export function installCommand(): Command {
  const cmd = new Command('install')
    .description(
      'Install clustermesh on a Kubernetes cluster: its namespace, the Cilium policy CRDs where absent, service accounts with read-only roles, ' +
        "the cluster's settings, certificates (a CA per cluster, the etcd server and one client certificate per etcd user), the clustermesh " +
        "apiserver with the cluster's etcd and the Service remote clusters reach it by, and the agent DaemonSet. The server validates every " +
        'object before the first write; a re-install keeps the certificates and the remote clusters that connect wrote.',
    )
    .option('--cluster-name <name>', 'name of this cluster in the mesh (at most 32 lowercase alphanumerics and "-", not "default")')
    .option('--cluster-id <id>', 'ID of this cluster in the mesh (1..max-connected-clusters, unique in the mesh)')
    .option('--max-connected-clusters <n>', '255 or 511 (the same on every cluster of a mesh)', '255')
    .option('--namespace <ns>', 'namespace of the installed objects', DEFAULT_NAMESPACE)
    .option('--image <ref>', 'the clustermesh image (see Containerfile)', DEFAULT_IMAGE)
    .option(
      '--routing-mode <mode>',
      'how pods of different nodes reach each other: tunnel (VXLAN) or native (your network routes every node\'s pod CIDR: packets to --native-routing-cidr ' +
        'ranges leave unencapsulated; other clusters in tunnel mode are still reached through the tunnel)',
      'tunnel',
    )
    .addOption(
      new Option(
        '--tunnel-encap <how>',
        "who writes and strips the tunnel's VXLAN headers: bpf (the agent's programs, on each node's underlay device: 2-3 us less per round trip) or device " +
          "(the kernel's VXLAN device); the packets on the wire are the same, so clusters and nodes of either setting mesh",
      )
        .choices([...TUNNEL_ENCAPS])
        .default(DEFAULT_TUNNEL_ENCAP),
    )
    .option('--native-routing-cidr <cidr>', 'with --routing-mode native (required there): a pod address range your network routes to its nodes, e.g. 10.244.0.0/16 (repeatable, at most 8)', collect)
    .option(
      '--socket-lb',
      "socket-level load balancing: a pod's connect()/sendmsg() to a Service is translated once, at the socket, by programs the agent attaches to the host's cgroup v2 " +
        'hierarchy at --socket-lb-cgroup (its root: every pod below it; as Cilium attaches at the cgroup v2 root it mounts on the host); off: every packet is translated',
    )
    .option('--socket-lb-cgroup <path>', `with --socket-lb: the host's cgroup v2 mount, mounted into the agent pods; must exist on every node (default ${DEFAULT_SOCKET_LB_CGROUP}; a hybrid-cgroup host has it at /sys/fs/cgroup/unified)`)
    .option(
      '--agent-metrics-port <port>',
      `serve each agent's Prometheus /metrics on every address of its node at this port (container port "metrics", pod annotations prometheus.io/scrape and /port); ` +
        `0: only on the node's 127.0.0.1:${AGENT_METRICS_PORT}`,
      '0',
    )
    .option('--apiserver-metrics-port <port>', `the same for the apiserver (pod on the host network); 0: only on its node's 127.0.0.1:${APISERVER_METRICS_PORT}`, '0')
    .option('--tunnel-port <port>', 'VXLAN UDP port', '8472')
    .addOption(new Option('--service-type <type>', "how remote clusters reach this cluster's etcd").choices(['NodePort', 'LoadBalancer']).default('NodePort'))
    .option('--node-port <port>', `NodePort of that Service (default ${NODE_PORT_BASE} + cluster ID, so two clusters never share one)`)
    .option('--apiserver-address <addr>', "an address remote clusters use for this cluster's etcd (node IP, load balancer IP or name); a SAN of its certificate (repeatable)", collect)
    .option(
      '--k8s-service-host <host>',
      'the Kubernetes API server address (IP or DNS name) the agent and apiserver use, as KUBERNETES_SERVICE_HOST in their containers: ' +
        "for clusters where host-network pods cannot reach the `kubernetes` Service's ClusterIP before a CNI runs (kube-proxy-less clusters; " +
        "clustermesh is that CNI). Default: what the kubelet sets. With --k8s-service-port",
    )
    .option('--k8s-service-port <port>', 'the Kubernetes API server port for --k8s-service-host (KUBERNETES_SERVICE_PORT), e.g. 6443')
    .option(
      '--kvstoremesh',
      "the cache tier (Cilium's KVStoreMesh): the apiserver imports every remote cluster once into this cluster's etcd and the agents read " +
        'the remotes there, so each remote etcd serves one client per cluster instead of one per node, and agent restarts cost it nothing. ' +
        'Clusters of one mesh may differ in this',
    )
    .option(
      '--remote-api-port <port>',
      "TCP port on each node's IP where its agent serves its read-only API (flows, status) with mutual TLS, for clustermesh observe/ui --context; " +
        `clients need the certificate of Secret clustermesh-observer. 0: off (the API only on the node's unix socket)`,
      String(DEFAULT_REMOTE_API_PORT),
    )
    .option('--dry-run', 'print the objects instead of applying them (contacts no cluster)')
    .addOption(new Option('-o, --output <format>', 'with --dry-run: output format').choices(['yaml', 'json']).default('yaml'))
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  clustermesh install --context kind-c1 --cluster-name c1 --cluster-id 1\n' +
        '  clustermesh install --context c1 --cluster-name c1 --cluster-id 1 --k8s-service-host 192.0.2.10 --k8s-service-port 6443\n' +
        '  clustermesh install --context c1 --cluster-name c1 --cluster-id 1 --routing-mode native --native-routing-cidr 10.244.0.0/16 --socket-lb --agent-metrics-port 9962 --apiserver-metrics-port 9963\n' +
        '  clustermesh install --cluster-name c2 --cluster-id 2 --dry-run -o yaml | kubectl --context kind-c2 apply --dry-run=server -f -\n',
    );
  return kubeFlags(cmd).action(
    action('install', async (_closer, flags: InstallFlags) => {
      const s = settingsOrExit(flags);
      if (flags.dryRun) {
        const objects = renderManifests(s, await makeInstallCerts(s));
        if (flags.output === 'json') printJson({ apiVersion: 'v1', kind: 'List', items: objects });
        else process.stdout.write(toYaml(objects));
        return;
      }
      const kc = loadKubeConfig(flags);
      const existing = await readExisting(kc, s.namespace);
      if (existing && ((existing.clusterName !== undefined && existing.clusterName !== s.clusterName) || (existing.clusterID !== undefined && existing.clusterID !== String(s.clusterID)))) {
        throw new CliError(
          `context ${kc.getCurrentContext()}: namespace ${s.namespace} already holds an install of cluster ${existing.clusterName ?? '?'} (ID ${existing.clusterID ?? '?'}); ` +
            `renaming or renumbering a meshed cluster breaks its peers: run clustermesh uninstall first`,
        );
      }
      const objects = renderManifests(s, await makeInstallCerts(s, existing?.ca));
      console.log(`installing cluster ${s.clusterName} (ID ${s.clusterID}) in context ${kc.getCurrentContext()}, namespace ${s.namespace}`);
      await applyObjects(kc, objects, (o, r) => console.log(`${describe(o)} ${r === 'kept' ? 'unchanged (kept)' : r}`));
    }),
  );
}

export function uninstallCommand(): Command {
  const cmd = new Command('uninstall')
    .description(
      'Remove what clustermesh install put on a cluster: the agent, the apiserver and its etcd, the Service, certificates, settings, roles, ' +
        'and the namespace and CRDs if install created them (objects it did not create stay).',
    )
    .option('--namespace <ns>', 'namespace of the install', DEFAULT_NAMESPACE)
    .addHelpText('after', '\nExample:\n  clustermesh uninstall --context kind-c1\n');
  return kubeFlags(cmd).action(
    action('uninstall', async (_closer, flags: { namespace: string; context?: string; kubeconfig?: string }) => {
      // The names do not depend on the settings; render with placeholders to know what to look for.
      const s = settingsOrExit({ clusterName: 'uninstall', clusterId: '1', namespace: flags.namespace });
      const kc = loadKubeConfig(flags);
      const objects: KubeObject[] = renderManifests(s, PLACEHOLDER_CERTS);
      let n = 0;
      await deleteObjects(kc, objects, (o) => {
        n++;
        console.log(`${describe(o)} deleted`);
      });
      console.log(n === 0 ? `nothing of clustermesh found in context ${kc.getCurrentContext()}` : `removed ${n} objects from context ${kc.getCurrentContext()}`);
    }),
  );
}

const PEM = { cert: '', key: '' };
const PLACEHOLDER_CERTS = { ca: PEM, server: PEM, clients: { root: PEM, apiserver: PEM, agent: PEM, remote: PEM }, agentApi: PEM, observer: PEM };
