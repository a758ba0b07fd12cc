// A Cilium cluster as a remote (issue 12): a real etcd with mutual TLS and
// Cilium's own `remote` role, written only with values in Cilium's format (as a
// Cilium clustermesh-apiserver writes them: cluster-config, node, identity, ip
// entry, canaries named by the full prefix, heartbeat), for a cluster named
// "cilium" whose pod lives in a namespace of this test. A node of our own
// datapath, programmed directly with a `clustermesh datapath apply` plan,
// stands in for the Cilium node (it decapsulates VXLAN and delivers to the
// pod). A lab cluster's agent connects to that etcd, imports the values, and
// real traffic goes from our pod to the Cilium pod through the tunnel.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { ciliumClusterConfig, ciliumIdentity, ciliumIpEntry, ciliumNode } from '../src/clustermesh/cilium-format.ts';
import { ensureBpffs, removePinDir } from '../src/datapath/bpffs.ts';
import { TraceReason } from '../src/datapath/maps/reasons.ts';
import { KvClient } from '../src/kvstore/client.ts';
import { startEtcd, type EtcdServer } from '../src/kvstore/etcd-process.ts';
import type { RemoteSummary } from '../src/agent/status.ts';
import { readNodeMetrics } from '../src/lab/datapath.ts';
import { startEcho } from '../src/lab/echo.ts';
import { ipBatch, run, runIn } from '../src/lab/exec.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import type { ManagedProcess } from '../src/lab/process.ts';
import { createTopology, destroyTopology, routerUnderlayIP, type NodeInfo, type PodInfo, type Topology } from '../src/lab/topology.ts';

const CLI = resolve(import.meta.dirname, '..', 'bin', 'clustermesh.js');
const CILIUM = 'cilium';
const CILIUM_ID = 2; // the topology's cluster 2 hosts the stand-in node
const CILIUM_ETCD_IP = '10.2.0.250';
const CART_ID = (CILIUM_ID << 16) + 1042;
const HEARTBEAT_STALE_SECONDS = 4;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 60_000, detail?: () => unknown): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (await cond()) return;
    if (Date.now() - t0 > timeoutMs) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}${detail ? `\n${JSON.stringify(await detail(), null, 1).slice(0, 3000)}` : ''}`);
    await sleep(50);
  }
}

/** Go's time.RFC3339 with a numeric offset, as Cilium writes the heartbeat. */
const goRfc3339 = (d: Date): string => d.toISOString().replace(/\.\d{3}Z$/, '+00:00');

const tunnelPackets = (pinDir: string, reason: number): bigint =>
  readNodeMetrics(pinDir)
    .filter((r) => r.reason === reason)
    .reduce((n, r) => n + r.packets, 0n);

describe('a Cilium cluster as a remote: its exports imported, traffic to its pod through the tunnel', { timeout: 300_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  let etcd: EtcdServer | undefined;
  let writer: KvClient | undefined;
  let echo: ManagedProcess | undefined;
  let standInPinDir: string | undefined;
  let heartbeat: NodeJS.Timeout | undefined;

  const ours = (): PodInfo => topo!.pods.find((p) => p.cluster === 1)!;
  const ciliumPod = (): PodInfo => topo!.pods.find((p) => p.cluster === CILIUM_ID)!;
  const ciliumNodeInfo = (): NodeInfo => topo!.nodes.find((n) => n.cluster === CILIUM_ID)!;
  const ourNode = (): NodeInfo => ours().node;
  const remote = async (): Promise<RemoteSummary | undefined> => (await mesh!.agent(ourNode()).api.status()).remoteClusters.find((r) => r.name === CILIUM);
  const beat = (): Promise<unknown> => writer!.put('cilium/.heartbeat', goRfc3339(new Date()));
  const startHeartbeat = (): void => {
    heartbeat = setInterval(() => void beat().catch(() => undefined), 1000);
  };
  const stopHeartbeat = (): void => {
    clearInterval(heartbeat);
    heartbeat = undefined;
  };

  before(async () => {
    topo = await createTopology({ clusters: 2, nodesPerCluster: 1, podsPerNode: 1, mode: 'clustermesh', prefix: 'cmt' });
    const dir = await mkdtemp(join(tmpdir(), 'cmt-cilium-'));
    // Our lab cluster: control plane and agent for cluster 1 only.
    mesh = await startMesh(topo, {
      dir,
      clusters: [1],
      agent: { syncTimeoutSeconds: 10, extra: { remoteHeartbeatStaleSeconds: HEARTBEAT_STALE_SECONDS } },
      progress: (l) => console.log(`# ${l}`),
    });

    // The Cilium cluster's etcd in its own namespace on cluster 2's segment, with
    // the `remote` role a Cilium clustermesh-apiserver's etcd gives its readers.
    const cpNetns = `${topo.base}-ciliumcp`;
    topo.namespaces.push(cpNetns);
    await run(['ip', 'netns', 'add', cpNetns]);
    await ipBatch(undefined, [`link add cilcp netns ${topo.routerNetns} type veth peer name eth0 netns ${cpNetns}`]);
    await ipBatch(topo.routerNetns, [`link set cilcp master br${CILIUM_ID}`, 'link set cilcp up']);
    await ipBatch(cpNetns, ['link set lo up', `addr add ${CILIUM_ETCD_IP}/24 dev eth0`, 'link set eth0 up', `route add default via ${routerUnderlayIP(CILIUM_ID)}`]);
    etcd = await startEtcd({
      dir: join(dir, 'cilium-etcd'),
      name: 'etcd-cilium',
      clusterName: CILIUM,
      netns: cpNetns,
      listenAddress: CILIUM_ETCD_IP,
      clientPort: 2379,
      roles: {
        remote: [
          { permission: 'Read', key: 'cilium/.heartbeat' },
          { permission: 'Read', key: 'cilium/state/' },
          { permission: 'Read', key: `cilium/cluster-config/${CILIUM}`, exact: true },
          { permission: 'Read', key: `cilium/synced/${CILIUM}/` },
        ],
      },
    });
    writer = new KvClient(etcd.connection('root', { timeoutMs: 5000 }));
  });

  after(async () => {
    stopHeartbeat();
    await echo?.stop().catch(() => undefined);
    await writer?.close().catch(() => undefined);
    await etcd?.stop().catch(() => undefined);
    if (standInPinDir) removePinDir(standInPinDir);
    await mesh?.stop().catch((e: unknown) => console.log(`# mesh stop: ${(e as Error).message}`));
    if (topo) await destroyTopology(topo);
  });

  test('imports Cilium-format values and reaches the Cilium pod through the tunnel', async () => {
    const node = ciliumNodeInfo();
    const pod = ciliumPod();
    const ourEp = await mesh!.addPod(ours());
    assert.ok(ourEp.identity !== null);

    // The stand-in Cilium node: our datapath, programmed directly.
    standInPinDir = join(ensureBpffs(), node.netns);
    const plan = {
      nodeName: node.netns,
      clusterID: CILIUM_ID,
      nodeIP: node.underlayIP,
      pinDir: standInPinDir,
      endpoints: [{ ip: pod.ip, identity: CART_ID, hostIfName: pod.hostIfName, podMac: pod.mac, endpointID: 1 }],
      routes: [
        { prefix: `${ours().ip}/32`, identity: ourEp.identity!, tunnelEndpoint: ourNode().underlayIP },
        { prefix: `${ourNode().underlayIP}/32`, identity: 6 },
        { prefix: ourNode().podCIDR, identity: 2, tunnelEndpoint: ourNode().underlayIP },
      ],
    };
    const planFile = join(mesh!.dir, 'cilium-node-plan.json');
    await writeFile(planFile, JSON.stringify(plan));
    await runIn(node.netns, [process.execPath, CLI, 'datapath', 'apply', '--plan', planFile], { timeoutMs: 60_000 });
    echo = await startEcho(pod, 8080, { as: { cluster: CILIUM, node: 'worker-1', pod: 'cart-0' } });

    // Only Cilium-format values, written as a Cilium clustermesh-apiserver does.
    const w = writer!;
    await w.put(`cilium/cluster-config/${CILIUM}`, ciliumClusterConfig(CILIUM_ID));
    await w.put(
      `cilium/state/nodes/v1/${CILIUM}/worker-1`,
      ciliumNode({ name: 'worker-1', cluster: CILIUM, clusterId: CILIUM_ID, internalIP: node.underlayIP, ciliumInternalIP: node.gatewayIP, podCIDR: node.podCIDR }),
    );
    await w.put(
      `cilium/state/identities/v1/id/${CART_ID}`,
      ciliumIdentity({ 'k8s:app': 'cart', 'k8s:io.cilium.k8s.policy.cluster': CILIUM, 'k8s:io.kubernetes.pod.namespace': 'shop' }),
    );
    await w.put(
      `cilium/state/ip/v1/default/${pod.ip}`,
      ciliumIpEntry({ ip: pod.ip, hostIP: node.underlayIP, id: CART_ID, namespace: 'shop', pod: 'cart-0', serviceAccount: 'cart', namedPorts: [{ name: 'http', port: 8080, protocol: 'TCP' }] }),
    );
    // One entry of the wrong type: refused alone, the rest is imported.
    await w.put('cilium/state/ip/v1/default/10.102.1.99', `{"IP":"10.102.1.99","HostIP":"${node.underlayIP}","ID":"${CART_ID}"}`);
    for (const p of ['nodes', 'identities', 'ip', 'services']) await w.put(`cilium/synced/${CILIUM}/cilium/state/${p}/v1`, goRfc3339(new Date()));
    await beat();
    startHeartbeat();

    // Connect our cluster's agent: one more file in its remote-cluster directory.
    const cert = await etcd!.clientCert('remote');
    await writeFile(
      join(mesh!.cluster(1).remoteConfigDir, CILIUM),
      toYaml({ endpoints: [etcd!.endpoint], 'trusted-ca-file': cert.caFile, 'cert-file': cert.certFile, 'key-file': cert.keyFile }),
    );
    await waitFor(`the agent to import ${CILIUM}`, async () => {
      const r = await remote();
      return r?.ready === true && r.counts.nodes === 1 && r.counts.identities === 1 && r.counts.endpoints === 1;
    }, 90_000, remote);
    const r = (await remote())!;
    assert.equal(r.rejected?.['invalid-schema'], 1, 'the wrong-type ip entry is refused');
    assert.deepEqual(r.config, { cached: false, serviceExportsEnabled: false, syncedCanaries: true });
    assert.equal(r.heartbeat?.stale, false);
    assert.ok(r.heartbeat?.lastSeenAt);

    // The agent put the Cilium pod into our node's ipcache behind the Cilium node.
    await waitFor('the Cilium pod in our ipcache', () => {
      const e = mesh!.readIpcache(ourNode()).get(`${pod.ip}/32`);
      return e?.identity === CART_ID && e.tunnelEndpoint === node.underlayIP;
    }, 30_000, () => [...mesh!.readIpcache(ourNode())]);

    // Real traffic: our pod asks the Cilium pod; the answer comes back through the tunnel.
    const ourPin = mesh!.agent(ourNode()).pinDir;
    const overlayBefore = tunnelPackets(ourPin, TraceReason.TRACE_TO_OVERLAY);
    const deliveredBefore = tunnelPackets(standInPinDir, TraceReason.TRACE_TO_ENDPOINT);
    let answer = '';
    await waitFor('an answer from the Cilium pod', async () => {
      const { stdout } = await runIn(ours().netns, ['curl', '-sS', '--max-time', '5', `http://${pod.ip}:8080/`], { timeoutMs: 10_000 }).catch(() => ({ stdout: '' }));
      answer = stdout;
      return stdout.includes('cart-0');
    }, 30_000, () => answer);
    const body = JSON.parse(answer) as { cluster: string; pod: string; from: string };
    assert.deepEqual([body.cluster, body.pod, body.from], [CILIUM, 'cart-0', ours().ip]);
    assert.ok(tunnelPackets(ourPin, TraceReason.TRACE_TO_OVERLAY) > overlayBefore, 'our node sent it into the overlay');
    assert.ok(tunnelPackets(standInPinDir, TraceReason.TRACE_TO_ENDPOINT) > deliveredBefore, 'the Cilium node delivered it from the tunnel');
  });

  test('a remote whose heartbeat stops is reported stale, and fresh again when it resumes', async () => {
    const fresh = (await remote())!;
    assert.equal(fresh.heartbeat?.stale, false, 'beating every second: fresh');
    assert.ok((fresh.heartbeat?.ageMs ?? Infinity) < HEARTBEAT_STALE_SECONDS * 1000);
    stopHeartbeat();
    await waitFor('the heartbeat to go stale', async () => (await remote())?.heartbeat?.stale === true, 60_000, remote);
    const r = (await remote())!;
    assert.ok((r.heartbeat?.ageMs ?? 0) > HEARTBEAT_STALE_SECONDS * 1000);
    assert.equal(r.ready, true, 'a stale heartbeat is reported, the imported state stays');
    await beat();
    startHeartbeat();
    await waitFor('the heartbeat to be fresh again', async () => (await remote())?.heartbeat?.stale === false, 30_000, remote);
  });
});
