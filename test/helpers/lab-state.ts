// A lab state file for a mesh a test started itself (startMesh), so that the
// operator commands (`--lab NAME`) find its clusters, agents and etcds exactly
// as they find those of `clustermesh lab up`. Nothing in it is the lab's to
// remove: the test tears the mesh down itself.
import { join } from 'node:path';
import { DEFAULT_BPFFS_ROOT } from '../../src/datapath/bpffs.ts';
import { kubeApiReady } from '../../src/lab/kube-api-procs.ts';
import type { Mesh } from '../../src/lab/mesh.ts';
import { labStateSchema, type LabState } from '../../src/lab/state.ts';
import type { Topology } from '../../src/lab/topology.ts';

export function meshLabState(name: string, mesh: Mesh, topo: Topology): LabState {
  return labStateSchema.parse({
    version: 1,
    name,
    source: 'kubernetes',
    createdAt: new Date().toISOString(),
    pid: process.pid,
    phase: 'up',
    bpffsRoot: DEFAULT_BPFFS_ROOT,
    router: { netns: topo.routerNetns },
    namespaces: [],
    pinDirs: [],
    clusters: mesh.clusters.map((c) => {
      const rootConn = c.etcd.connection('root');
      return {
        name: c.name,
        id: c.id,
        netns: c.netns,
        ip: c.ip,
        dir: c.dir,
        etcd: { endpoints: [c.etcd.endpoint], localEndpoints: [c.etcd.localEndpoint], caFile: c.etcd.caFile, certFile: rootConn.certFile, keyFile: rootConn.keyFile, dir: c.etcd.dir, logFile: c.etcd.logFile, ...(c.etcd.pid ? { pid: c.etcd.pid } : {}) },
        apiserver: { logFile: join(c.dir, 'apiserver.log'), ...(c.apiserver.pid ? { pid: c.apiserver.pid } : {}) },
        remoteConfigDir: c.remoteConfigDir,
        ...kubeApiOf(mesh, c.name),
      };
    }),
    nodes: mesh.agents.map((a) => ({
      name: a.node.name,
      cluster: a.cluster.name,
      netns: a.node.netns,
      underlayIP: a.node.underlayIP,
      podCIDR: a.node.podCIDR,
      pinDir: a.pinDir,
      socket: a.socket,
      stateDir: a.stateDir,
      configFile: a.configFile,
      logFile: a.logFile,
      ...(a.process.pid ? { pid: a.process.pid } : {}),
    })),
  });
}

/** The cluster's Kubernetes API in the state, when the mesh runs one (kubeSource). */
function kubeApiOf(mesh: Mesh, cluster: string): { kubeApi?: { url: string; logFile: string; dir: string; pid?: number } } {
  const k = mesh.kubeApis.find((x) => x.cluster === cluster);
  if (!k) return {};
  return { kubeApi: { url: kubeApiReady(k).url, logFile: k.proc.spec.logFile, dir: k.dir, ...(k.proc.pid ? { pid: k.proc.pid } : {}) } };
}
