// Integration: a real agent process (`clustermesh agent --config`) in a node
// namespace with two pods, against real etcds (its cluster's, and a remote
// cluster's with wire-format data and canaries), real BPF and real traffic.
// The etcds listen on the root namespace's loopback; a small TCP↔unix-socket
// bridge makes them reachable on the node namespace's loopback. The cluster's
// Kubernetes API (the lab's server, in this process) is the local source: its
// Nodes, reached at 127.0.0.1:6443 in the node namespace (the lab's
// node-local endpoint); Endpoint objects (mesh state) stay in etcd.
//
// Shows: endpoints added through the API program the maps (local delivery
// works) and are published to etcd; the ipcache holds local pods, pods
// and nodes of this cluster's other nodes, and the remote cluster's pods,
// nodes and pod CIDRs; an entry deleted behind the agent's back comes back;
// a TCP transfer survives SIGKILL + restart of the agent with its checksum
// intact; SIGTERM leaves the programs attached; a restart drops an endpoint
// whose device is gone; DELETE removes everything and is idempotent.
// As the install's DaemonSet runs it: no podCIDR in its config (its Node's
// spec.podCIDRs, read from the API) and a cniConfDir, where the CNI conflist
// appears only once the agent is ready, stays through SIGKILL and is removed by
// SIGTERM.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { TestCluster } from '../clustermesh/testing.ts';
import { DEFAULT_BPFFS_ROOT, ensureBpffs, removePinDir } from '../datapath/bpffs.ts';
import { endpoints as endpointsMap, ipcache as ipcacheMap } from '../datapath/maps/index.ts';
import { REPO_ROOT, buildBpfObject, datapathSkipReason, uniqueSuffix, withPinnedMap } from '../datapath/testing.ts';
import { KvClient } from '../kvstore/client.ts';
import type { EtcdServer } from '../kvstore/etcd-process.ts';
import { startMeshEtcd as startEtcd } from '../clustermesh/etcd.ts';
import { startKubeApi, writeKubeconfig, type KubeApiServer } from '../lab/kube-api/index.ts';
import { KubeObjects } from '../lab/kube-objects.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import { endpointKey, EndpointWriter } from '../sources/index.ts';
import { AgentClient } from './client.ts';
import { bridgeOuter } from './netns-bridge.test-helper.ts';
import { ApiError } from './types.ts';
import { tcShow } from '../../test/helpers/tc-show.ts';

const skip = datapathSkipReason();
const CLI = join(REPO_ROOT, 'bin', 'clustermesh.js');
const BRIDGE = join(REPO_ROOT, 'src', 'agent', 'netns-bridge.test-helper.ts');

const ip = (...args: string[]): void => {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
};
const inNs = (ns: string, argv: string[], timeout = 10_000) => spawnSync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8', timeout });
const ping = (ns: string, dst: string): boolean => inNs(ns, ['ping', '-c1', '-W1', '-q', dst]).status === 0;

async function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 15_000, detail?: () => string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${detail ? `\n${detail()}` : ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const ipcacheOf = (pinDir: string) =>
  withPinnedMap(pinDir, ipcacheMap.MAP_NAME, (m) => new Map([...ipcacheMap.entries(m)].map(([k, v]) => [ipcacheMap.formatPrefix(k), v])));
const endpointsOf = (pinDir: string) => withPinnedMap(pinDir, endpointsMap.MAP_NAME, (m) => new Map([...endpointsMap.entries(m)].map(([k, v]) => [k.ip, v])));

/** A TCP receiver in one pod and a sender in another. The sender writes 64 KiB
 * every 50 ms until `finish()`: the connection is open for as long as the test
 * needs it (e.g. across an agent restart), not for a fixed time. The receiver
 * reports the bytes it has so far. */
function transfer(serverNs: string, clientNs: string, serverIP: string) {
  const server = spawn('ip', ['netns', 'exec', serverNs, process.execPath, '-e', `
    const h = require('crypto').createHash('sha256'); let n = 0;
    setInterval(() => console.log(JSON.stringify({ progress: n })), 100).unref();
    const s = require('net').createServer((c) => { c.on('data', (d) => { h.update(d); n += d.length; }); c.on('end', () => { console.log(JSON.stringify({ bytes: n, sha: h.digest('hex') })); s.close(); }); });
    s.listen(5001, '${serverIP}', () => console.log('ready'));
  `], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { server: '', client: '' };
  server.stdout.on('data', (d: Buffer) => (out.server += d.toString()));
  /** Bytes the receiver has reported so far. */
  const received = (): number => {
    const m = [...out.server.matchAll(/"(?:progress|bytes)":(\d+)/g)].pop();
    return m ? Number(m[1]) : 0;
  };
  const start = async () => {
    await until('transfer server', () => out.server.includes('ready'), 10_000);
    const client = spawn('ip', ['netns', 'exec', clientNs, process.execPath, '-e', `
      const crypto = require('crypto'); const h = crypto.createHash('sha256'); let n = 0;
      const c = require('net').connect(5001, '${serverIP}', () => {
        const t = setInterval(() => { const b = crypto.randomBytes(65536); h.update(b); n += b.length; c.write(b); }, 50);
        process.stdin.once('data', () => { clearInterval(t); c.end(() => console.log(JSON.stringify({ bytes: n, sha: h.digest('hex') }))); });
      });
      c.on('error', (e) => { console.error(e.message); process.exit(1); });
    `], { stdio: ['pipe', 'pipe', 'pipe'] });
    client.stdout.on('data', (d: Buffer) => (out.client += d.toString()));
    let clientErr = '';
    client.stderr.on('data', (d: Buffer) => (clientErr += d.toString()));
    return {
      client,
      received,
      /** The transfer is still open (the sender has not been told to finish, nor failed). */
      open: () => !out.server.includes('sha') && client.exitCode === null,
      /** Tells the sender to finish; waits for both sides' checksums. */
      finish: async (timeoutMs: number) => {
        client.stdin.end('finish\n');
        await until('transfer to finish', () => out.server.includes('sha') && out.client.includes('sha'), timeoutMs, () => `client: ${out.client} ${clientErr}\nserver: ${out.server.slice(-500)}`);
        const last = (s: string) => JSON.parse(s.trim().split('\n').filter((l) => l.includes('sha')).pop()!) as { bytes: number; sha: string };
        return { sent: last(out.client), received: last(out.server) };
      },
    };
  };
  return { server, start };
}

describe('clustermesh agent (real etcd, BPF, traffic)', { skip }, () => {
  it('programs endpoints and the ipcache from the Kubernetes API, etcd and a remote cluster, repairs drift, survives SIGKILL and restarts', { timeout: 240_000 }, async () => {
    buildBpfObject('lxc.bpf.o');
    buildBpfObject('overlay.bpf.o');
    const sfx = uniqueSuffix(3);
    const nodeNs = `cmt-ag-${sfx}-n`;
    const pods = [
      { ns: `cmt-ag-${sfx}-p1`, host: `lxc${sfx}a`, ip: '10.101.1.11', mac: '02:00:0a:65:01:0b' },
      { ns: `cmt-ag-${sfx}-p2`, host: `lxc${sfx}b`, ip: '10.101.1.12', mac: '02:00:0a:65:01:0c' },
    ] as const;
    const pinDir = join(DEFAULT_BPFFS_ROOT, `cmt-ag-${sfx}`);
    const tmp = await mkdtemp('/tmp/cmt-ag-');
    const children: ChildProcess[] = [];
    const servers: Server[] = [];
    const clients: KvClient[] = [];
    let etcd1: EtcdServer | undefined;
    let kubeApi: KubeApiServer | undefined;
    let c2: TestCluster | undefined;
    let agent: ChildProcess | undefined;
    const logFile = join(tmp, 'agent.log');
    let client: AgentClient | undefined;
    const agentLog = () => {
      try {
        return readFileSync(logFile, 'utf8').split('\n').slice(-40).join('\n');
      } catch {
        return '(no log)';
      }
    };
    const startAgentProcess = async (): Promise<ChildProcess> => {
      const fd = openSync(logFile, 'a');
      const child = spawn('ip', ['netns', 'exec', nodeNs, process.execPath, CLI, 'agent', '--config', join(tmp, 'agent.yaml')], { stdio: ['ignore', fd, fd] });
      closeSync(fd);
      children.push(child);
      return child;
    };
    const exited = (child: ChildProcess) =>
      new Promise<{ code: number | null; signal: string | null }>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
        else child.once('exit', (code, signal) => resolve({ code, signal }));
      });

    try {
      ensureBpffs();
      // ---- etcds: this cluster's, and cluster2's with exported state (nodes, identities, endpoints, canaries)
      etcd1 = await startEtcd({ dir: join(tmp, 'etcd1'), name: 'cluster1', clusterName: 'cluster1' });
      // ---- cluster1's Kubernetes API (the lab's server, in this process, also on a TLS unix socket);
      // its Node node1 registered as a kubelet does
      const kubeKv = new KvClient(etcd1.connection('root', { timeoutMs: 5000 }));
      clients.push(kubeKv);
      const apiSocket = join(tmp, 'api.sock');
      const started = await startKubeApi({ kv: kubeKv, dir: join(tmp, 'kube-api'), clusterName: 'cluster1', socketPath: apiSocket });
      kubeApi = started.server;
      const kube = new KubeObjects(loadKubeConnection({ kubeconfig: started.kubeconfig }).kubeConfig);
      const nodeObject = (n: number) => ({
        kind: 'Node',
        metadata: { name: `node${n}` },
        spec: { podCIDR: `10.101.${n}.0/24`, podCIDRs: [`10.101.${n}.0/24`] },
        status: { addresses: [{ type: 'InternalIP', address: `10.1.0.${n}` }], conditions: [{ type: 'Ready', status: 'True' }] },
      });
      await kube.apply(nodeObject(1));
      const agentKubeconfig = join(tmp, 'agent.kubeconfig');
      await writeKubeconfig(agentKubeconfig, [{ name: 'cluster1', server: 'https://127.0.0.1:6443', caFile: started.pki.ca.certFile, certFile: started.pki.admin.certFile, keyFile: started.pki.admin.keyFile }]);
      const remote = await TestCluster.start(tmp, 'cluster2', 2);
      c2 = remote;
      await remote.seed();
      const remoteDir = join(tmp, 'remote');
      await mkdir(remoteDir);
      await remote.writeConfigFile(remoteDir);

      // ---- the node and its pods
      ip('netns', 'add', nodeNs);
      ip('-n', nodeNs, 'link', 'set', 'lo', 'up');
      ip('-n', nodeNs, 'link', 'add', 'ul0', 'type', 'veth', 'peer', 'name', 'ul1');
      ip('-n', nodeNs, 'addr', 'add', '10.1.0.1/24', 'dev', 'ul0');
      ip('-n', nodeNs, 'link', 'set', 'ul0', 'up');
      for (const p of pods) {
        ip('netns', 'add', p.ns);
        ip('-n', nodeNs, 'link', 'add', p.host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', p.ns);
        ip('-n', nodeNs, 'link', 'set', p.host, 'up');
        ip('-n', p.ns, 'link', 'set', 'lo', 'up');
        ip('-n', p.ns, 'link', 'set', 'eth0', 'address', p.mac, 'mtu', '1450', 'up');
        ip('-n', p.ns, 'addr', 'add', `${p.ip}/32`, 'dev', 'eth0');
        ip('-n', p.ns, 'route', 'add', '169.254.1.1', 'dev', 'eth0', 'scope', 'link');
        ip('-n', p.ns, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0');
      }

      // ---- the Kubernetes API at 127.0.0.1:6443 in the node's namespace (the lab's node-local endpoint)
      const endpointReady = join(tmp, 'kube-api-endpoint.ready');
      const endpoint = spawn('ip', ['netns', 'exec', nodeNs, process.execPath, CLI, 'lab', 'kube-api-endpoint', '--socket', apiSocket, '--ready-file', endpointReady], { stdio: ['ignore', 'ignore', 'inherit'] });
      children.push(endpoint);
      await until('the node-local Kubernetes API endpoint', () => existsSync(endpointReady), 60_000);

      // ---- the etcds on the node's loopback
      const ports = [etcd1.clientPort, remote.etcd.clientPort];
      for (const port of ports) servers.push(await bridgeOuter(join(tmp, `b${port}.sock`), port));
      const bridge = spawn('ip', ['netns', 'exec', nodeNs, process.execPath, '--import', 'tsx', BRIDGE, ...ports.map((p) => `${p}=${join(tmp, `b${p}.sock`)}`)], {
        cwd: REPO_ROOT,
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      children.push(bridge);
      let bridgeOut = '';
      bridge.stdout!.on('data', (d: Buffer) => (bridgeOut += d.toString()));
      await until('bridge', () => bridgeOut.includes('listening'), 20_000);

      // ---- config
      const conn = etcd1.connection('agent');
      const stateDir = join(tmp, 'state');
      await writeFile(
        join(tmp, 'agent.yaml'),
        toYaml({
          clusterName: 'cluster1',
          clusterID: 1,
          nodeName: 'node1',
          underlayDevice: 'ul0',
          // podCIDR: from Node node1 (spec.podCIDRs)
          cniConfDir: join(tmp, 'net.d'),
          etcd: { endpoints: conn.endpoints, caFile: conn.caFile, certFile: conn.certFile, keyFile: conn.keyFile },
          clustermeshConfigDir: remoteDir,
          kubeconfig: agentKubeconfig,
          stateDir,
          pinDir,
          syncTimeoutSeconds: 20,
          fullSyncIntervalSeconds: 1,
          logLevel: 'debug',
        }),
      );

      const conflist = join(tmp, 'net.d', '05-clustermesh.conflist');
      agent = await startAgentProcess();
      client = new AgentClient(join(stateDir, 'agent.sock'));
      // The conflist only once healthz says ready (file first, then health: a file seen means ready already).
      const watchConflist = (async () => {
        const c = new AgentClient(join(stateDir, 'agent.sock'));
        try {
          for (let i = 0; i < 6000; i++) {
            const present = existsSync(conflist);
            const h = await c.health().catch(() => undefined);
            if (present) return h?.ready === true ? null : `the conflist exists while healthz says ${JSON.stringify(h)}`;
            await new Promise((r) => setTimeout(r, 20));
          }
          return 'the conflist never appeared';
        } finally {
          c.close();
        }
      })();
      await client.waitReady({ timeoutMs: 60_000 }).catch((err: Error) => {
        throw new Error(`${err.message}\n${agentLog()}`);
      });
      assert.equal(await watchConflist, null);
      assert.deepEqual(JSON.parse(readFileSync(conflist, 'utf8')), {
        cniVersion: '1.0.0',
        name: 'clustermesh',
        plugins: [{ type: 'clustermesh-cni', agentSocket: join(stateDir, 'agent.sock'), underlayMtu: 1500, ipam: { podCIDR: '10.101.1.0/24', gateway: '10.101.1.1' } }],
      });
      assert.equal((await client.status()).node.podCIDR, '10.101.1.0/24', "the pod CIDR is the Node's");
      assert.match(readFileSync(logFile, 'utf8'), /reading this node's addressing from its Kubernetes Node/);

      // ---- endpoints through the API
      const put = (i: 0 | 1) =>
        client!.putEndpoint(`ctr-${sfx}-${i}`, { namespace: 'default', podName: `web-${i}`, ip: pods[i].ip, hostIfName: pods[i].host, podMac: pods[i].mac, labels: { app: 'web', idx: String(i) } });
      const ep0 = await put(0);
      const ep1 = await put(1);
      assert.ok(ep0.identity !== null && ep0.identity >> 16 === 1, `identity ${ep0.identity} in cluster1's range`);
      assert.notEqual(ep0.identity, ep1.identity, 'different labels, different identities');
      assert.equal(ep0.state, 'ready');
      assert.deepEqual(await put(0), ep0, 'PUT with the same body again: the same result');
      await assert.rejects(
        client.putEndpoint(`ctr-${sfx}-x`, { namespace: 'default', podName: 'x', ip: '10.101.1.99', hostIfName: 'nosuchdev', podMac: pods[0].mac }),
        (e: unknown) => e instanceof ApiError && e.status === 422,
      );
      assert.deepEqual((await client.listEndpoints()).map((e) => e.ip), [pods[0].ip, pods[1].ip]);

      let eps = endpointsOf(pinDir);
      assert.equal(eps.get(pods[0].ip)?.identity, ep0.identity);
      assert.equal(eps.get(pods[1].ip)?.endpointId, ep1.endpointID);
      assert.ok(ping(pods[0].ns, pods[1].ip), 'pod → pod on this node');

      // published to the cluster's store
      const root = new KvClient(etcd1.connection('root', { timeoutMs: 3000 }));
      clients.push(root);
      const stored = await until('Endpoint object in the store', async () => (await root.get(endpointKey({ namespace: 'default', name: 'web-0' })))?.value);
      const storedEp = JSON.parse(stored) as { status: { identity: { id: number }; networking: { podIP: string; nodeName: string; nodeIP: string } } };
      assert.deepEqual(storedEp.status.networking, { podIP: pods[0].ip, nodeName: 'node1', nodeIP: '10.1.0.1' });
      assert.equal(storedEp.status.identity.id, ep0.identity);
      assert.deepEqual((await root.list('clustermesh/store/v1/')).pairs.map((p) => p.key.split('/')[3]).filter((k) => k !== 'ciliumendpoints'), [], 'the Node is the API\'s (a kubelet registers it): the agent writes only Endpoint objects to etcd');

      // another node of this cluster appears in the API, an endpoint of it in etcd
      await kube.apply(nodeObject(2));
      await new EndpointWriter(root).apply({
        kind: 'Endpoint',
        metadata: { name: 'api-0', namespace: 'default' },
        status: { identity: { id: 65_600, labels: [] }, networking: { podIP: '10.101.2.10', nodeName: 'node2', nodeIP: '10.1.0.2' } },
      });

      const want: Record<string, [number, string | null]> = {
        [`${pods[0].ip}/32`]: [ep0.identity!, null],
        [`${pods[1].ip}/32`]: [ep1.identity!, null],
        '10.1.0.1/32': [1, null],
        '10.101.1.0/24': [2, '10.1.0.1'],
        '10.101.2.10/32': [65_600, '10.1.0.2'],
        '10.1.0.2/32': [6, null],
        '10.101.2.0/24': [2, '10.1.0.2'],
        [`${remote.podIp(1, 1)}/32`]: [remote.identity(1), remote.nodeIp(1)],
        [`${remote.podIp(1, 2)}/32`]: [remote.identity(2), remote.nodeIp(1)],
        [`${remote.podIp(2, 1)}/32`]: [remote.identity(1), remote.nodeIp(2)],
        [`${remote.nodeIp(1)}/32`]: [6, null],
        [`${remote.nodeIp(2)}/32`]: [6, null],
        '10.102.1.0/24': [2, remote.nodeIp(1)],
        '10.102.2.0/24': [2, remote.nodeIp(2)],
      };
      const ipcacheView = () => Object.fromEntries([...ipcacheOf(pinDir)].map(([k, v]) => [k, [v.identity, v.tunnelEndpoint]]));
      await until('the ipcache to hold every source', () => sameEntries(ipcacheView(), want), 15_000, () => JSON.stringify(ipcacheView()));

      // ---- status
      const st = await client.status();
      assert.equal(st.ready, true);
      assert.equal(st.local.synced, true);
      const r2 = st.remoteClusters.find((r) => r.name === 'cluster2');
      assert.ok(r2?.connected && r2.ready, JSON.stringify(st.remoteClusters));
      assert.ok(Object.values(r2.synced).every(Boolean));
      assert.equal(r2.counts.endpoints, 3);
      const names = st.reconcilers.map((r) => r.name);
      assert.deepEqual(names.slice(0, 3), ['ipcache', 'endpoints', 'store']);
      assert.deepEqual(names.filter((n) => n.startsWith('lb-')), ['lb-backends', 'lb-slots', 'lb-maglev', 'lb-revnat', 'lb-services'], 'the service maps, in write order');
      for (const r of st.reconcilers) {
        assert.equal(r.pruneBlocked, null, `${r.name} may prune`);
        assert.equal(r.errors, 0, `${r.name}: ${JSON.stringify(r.lastError)}`);
        assert.ok(r.lastFullSync !== null && r.fullSyncs >= 1);
      }
      // from_overlay, from_netdev on the underlay (tunnelEncap bpf, the default), from_container of each pod.
      assert.equal(st.datapath.tunnelEncap, 'bpf');
      assert.equal(st.datapath.programsAttached, 4, JSON.stringify(st.datapath.programs));
      assert.equal(st.datapath.programsExpected, 4);
      const fill = st.datapath.maps.find((m) => m.name === 'cm_ipcache');
      assert.ok(fill && fill.entries === Object.keys(want).length && fill.maxEntries > fill.entries, JSON.stringify(st.datapath.maps));
      assert.equal(st.endpoints.endpoints, 2);

      // ---- drift: an entry deleted behind the agent's back comes back with the next full pass
      withPinnedMap(pinDir, ipcacheMap.MAP_NAME, (m) => ipcacheMap.remove(m, ipcacheMap.parsePrefix(`${remote.podIp(1, 1)}/32`)));
      withPinnedMap(pinDir, endpointsMap.MAP_NAME, (m) => endpointsMap.remove(m, { ip: pods[1].ip }));
      await until('drift repaired', () => ipcacheOf(pinDir).has(`${remote.podIp(1, 1)}/32`) && endpointsOf(pinDir).has(pods[1].ip), 10_000);
      const repaired = (await client.status()).reconcilers;
      assert.ok(repaired.find((r) => r.name === 'ipcache')!.driftRepaired >= 1);
      assert.ok(repaired.find((r) => r.name === 'endpoints')!.driftRepaired >= 1);

      // ---- SIGKILL and restart during a TCP transfer between the pods
      const t = transfer(pods[1].ns, pods[0].ns, pods[1].ip);
      children.push(t.server);
      const run = await t.start();
      children.push(run.client);
      await until('the transfer under way', () => run.received() >= 256 * 1024, 30_000);
      agent.kill('SIGKILL');
      const killed = await exited(agent);
      assert.equal(killed.signal, 'SIGKILL');
      assert.ok(existsSync(conflist), 'a killed agent leaves the conflist: its pods keep working');
      agent = await startAgentProcess();
      await client.waitReady({ timeoutMs: 120_000 }).catch((err: Error) => {
        throw new Error(`${err.message}\n${agentLog()}`);
      });
      // The agent is back while the connection is still open, and data keeps
      // flowing on it after the restart (the sender ends only when told).
      assert.ok(run.open(), 'the transfer is still open when the restarted agent is ready');
      const atRestart = run.received();
      await until('data flowing after the restart', () => run.received() >= atRestart + 256 * 1024, 30_000);
      const result = await run.finish(60_000);
      assert.ok(result.received.bytes > atRestart, `bytes after the restart: ${atRestart} -> ${result.received.bytes}`);
      assert.equal(result.received.bytes, result.sent.bytes);
      assert.equal(result.received.sha, result.sent.sha, 'the transfer completed with its checksum intact');
      const afterKill = await client.listEndpoints();
      assert.deepEqual(afterKill.map((e) => [e.containerID, e.identity, e.endpointID]), [[ep0.containerID, ep0.identity, ep0.endpointID], [ep1.containerID, ep1.identity, ep1.endpointID]], 'endpoints re-adopted with their identities');
      await until('identities re-taken', async () => (await client!.listEndpoints()).every((e) => e.state === 'ready'));
      assert.ok(sameEntries(ipcacheView(), want), 'the ipcache is what it was');

      // ---- SIGTERM: programs stay attached; a pod whose device disappeared is dropped on restart
      agent.kill('SIGTERM');
      const termed = await exited(agent);
      assert.equal(termed.code, 0, agentLog());
      assert.equal(existsSync(conflist), false, 'a clean stop removes the conflist');
      const filters = await tcShow(nodeNs, pods[0].host, 'ingress');
      assert.match(filters, /from_container/, 'from_container still attached while the agent is down');
      assert.ok(ping(pods[0].ns, pods[1].ip), 'traffic flows while the agent is down');
      ip('netns', 'del', pods[1].ns); // its veth goes with it
      agent = await startAgentProcess();
      await client.waitReady({ timeoutMs: 60_000 }).catch((err: Error) => {
        throw new Error(`${err.message}\n${agentLog()}`);
      });
      assert.deepEqual((await client.listEndpoints()).map((e) => e.containerID), [ep0.containerID]);
      await until('the conflist written again once ready', () => existsSync(conflist), 10_000);
      await until('endpoint of the vanished pod pruned', () => !endpointsOf(pinDir).has(pods[1].ip) && !ipcacheOf(pinDir).has(`${pods[1].ip}/32`), 10_000);
      await until('its store object deleted', async () => (await root.get(endpointKey({ namespace: 'default', name: 'web-1' }))) === undefined);

      // ---- DELETE reverses the add, and is idempotent
      assert.deepEqual(await client.deleteEndpoint(ep0.containerID), { containerID: ep0.containerID, deleted: true });
      eps = endpointsOf(pinDir);
      assert.equal(eps.has(pods[0].ip), false);
      assert.equal(ipcacheOf(pinDir).has(`${pods[0].ip}/32`), false);
      await until('store object deleted', async () => (await root.get(endpointKey({ namespace: 'default', name: 'web-0' }))) === undefined);
      assert.doesNotMatch(await tcShow(nodeNs, pods[0].host, 'ingress'), /from_container/);
      assert.deepEqual(await client.deleteEndpoint(ep0.containerID), { containerID: ep0.containerID, deleted: false });
      assert.ok(ipcacheOf(pinDir).has(`${remote.podIp(1, 1)}/32`), 'remote entries stay');
    } finally {
      client?.close();
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      await Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once('exit', r)) : undefined)));
      for (const s of servers) s.close();
      await Promise.all(clients.map((c) => c.close()));
      for (const ns of [...pods.map((p) => p.ns), nodeNs]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      removePinDir(pinDir);
      await c2?.close();
      await kubeApi?.stop().catch(() => undefined);
      await etcd1?.stop();
      await rm(tmp, { recursive: true, force: true });
    }
    assert.ok(!spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.includes(`cmt-ag-${sfx}`), 'no namespace left');
  });
});

function sameEntries(got: Record<string, unknown>, want: Record<string, unknown>): boolean {
  const a = Object.keys(got).sort();
  const b = Object.keys(want).sort();
  return JSON.stringify(a) === JSON.stringify(b) && a.every((k) => JSON.stringify(got[k]) === JSON.stringify(want[k]));
}
