// The CNI plugin as a runtime calls it: the real plugin executable
// (cni/build/clustermesh-cni, the C program that relays to the node's agent),
// run inside a node's namespace of a live mesh (etcd, apiserver, agents), with
// the CNI_* environment and the network config on stdin. Pod namespaces are
// made here with `ip netns add`, as a container runtime would.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostIfNameFor } from '../src/cni/plugin.ts';
import { run, runIn } from '../src/lab/exec.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import { createTopology, destroyTopology, type NodeInfo, type PodInfo, type Topology } from '../src/lab/topology.ts';
import { CNI_PLUGIN, runPlugin, type PluginRun } from './helpers/cni.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('cni: the plugin binary against a live mesh (1 cluster x 2 nodes)', { timeout: 240_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  const podNamespaces: string[] = [];

  const node = (n: number): NodeInfo => topo!.nodes.find((x) => x.index === n)!;
  const topoPod = (n: number): PodInfo => topo!.pods.find((p) => p.node.index === n && p.index === 1)!;
  const m = (): Mesh => mesh!;

  const netconf = (n: NodeInfo, over: Record<string, unknown> = {}): Record<string, unknown> => ({
    cniVersion: '1.0.0',
    name: 'clustermesh',
    type: 'clustermesh',
    agentSocket: m().agent(n).socket,
    underlayMtu: topo!.spec.underlayMtu,
    ipam: { podCIDR: n.podCIDR, gateway: n.gatewayIP, rangeStart: n.podCIDR.replace(/0\/24$/, '100') },
    dns: { nameservers: ['10.96.0.10'], search: ['default.svc.cluster.local'] },
    runtimeConfig: { labels: { app: 'cni-test' } },
    ...over,
  });
  const ipamState = (n: NodeInfo): Record<string, { containerID: string }> => {
    const f = join(m().agent(n).stateDir, 'cni-ipam', 'clustermesh', 'allocations.json');
    return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as { allocations: Record<string, { containerID: string }> }).allocations : {};
  };
  const allocatedTo = (n: NodeInfo, containerID: string): string[] =>
    Object.entries(ipamState(n))
      .filter(([, a]) => a.containerID === containerID)
      .map(([ip]) => ip);

  /** Runs the plugin executable in the node's namespace, as the kubelet would (`viaCli`: as `clustermesh cni`). */
  const plugin = (n: NodeInfo, env: Record<string, string>, conf: unknown, viaCli = false): Promise<PluginRun> => runPlugin(env, conf, { netns: n.netns, viaCli });
  const cniEnv = (command: string, containerID: string, netns: string, podName = containerID): Record<string, string> => ({
    CNI_COMMAND: command,
    CNI_CONTAINERID: containerID,
    CNI_NETNS: `/var/run/netns/${netns}`,
    CNI_IFNAME: 'eth0',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${podName}`,
  });

  async function newPodNetns(tag: string): Promise<string> {
    const name = `cmt-${topo!.id}-${tag}`;
    podNamespaces.push(name);
    await run(['ip', 'netns', 'add', name]);
    return name;
  }
  async function linkExists(netns: string, dev: string): Promise<boolean> {
    try {
      await run(['ip', '-n', netns, 'link', 'show', 'dev', dev]);
      return true;
    } catch {
      return false;
    }
  }
  async function pingUntil(fromNetns: string, ip: string, timeoutMs = 20_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        await runIn(fromNetns, ['ping', '-c', '1', '-W', '1', ip]);
        return;
      } catch (err) {
        if (Date.now() > end) throw new Error(`${fromNetns} cannot reach ${ip} after ${timeoutMs} ms: ${(err as Error).message}`);
        await sleep(200);
      }
    }
  }
  async function assertNothingLeft(n: NodeInfo, containerID: string, podNetns: string): Promise<void> {
    assert.equal(await linkExists(n.netns, hostIfNameFor(containerID)), false, `no ${hostIfNameFor(containerID)} left in ${n.netns}`);
    assert.equal(await linkExists(podNetns, 'eth0'), false, `no eth0 left in ${podNetns}`);
    assert.deepEqual(allocatedTo(n, containerID), [], `no address left allocated to ${containerID}`);
    const eps = await m().agent(n).api.listEndpoints();
    assert.equal(eps.find((e) => e.containerID === containerID), undefined, `no agent endpoint left for ${containerID}`);
  }

  before(async () => {
    topo = await createTopology({ clusters: 1, nodesPerCluster: 2, podsPerNode: 1, mode: 'clustermesh', prefix: 'cmt' });
    const dir = await mkdtemp(join(tmpdir(), 'cmt-cni-mesh-'));
    mesh = await startMesh(topo, { dir, progress: (l) => console.log(`# ${l}`) });
    for (const p of topo.pods) await mesh.addPod(p);
  });

  after(async () => {
    try {
      await mesh?.stop();
    } finally {
      for (const ns of podNamespaces) await run(['ip', 'netns', 'del', ns]).catch(() => undefined);
      if (topo) await destroyTopology(topo);
    }
  });

  test('VERSION through the executable and through `clustermesh cni`, which runs it', async () => {
    const r = await plugin(node(1), { CNI_COMMAND: 'VERSION' }, { cniVersion: '1.0.0' });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json, { cniVersion: '1.0.0', supportedVersions: ['1.0.0'] });
    const viaCli = await plugin(node(1), { CNI_COMMAND: 'VERSION' }, { cniVersion: '0.4.0' }, true);
    assert.equal(viaCli.code, 0, viaCli.stderr);
    assert.deepEqual(viaCli.json, { cniVersion: '0.4.0', supportedVersions: ['1.0.0'] });
  });

  test('the executable is not a node process: a static program that relays to the agent', () => {
    const head = readFileSync(CNI_PLUGIN).subarray(0, 4);
    assert.deepEqual([...head], [0x7f, 0x45, 0x4c, 0x46], 'an ELF executable, not a script');
    assert.doesNotMatch(readFileSync(CNI_PLUGIN, 'latin1'), /\0libnode|node_modules/, 'no Node.js in it');
  });

  test('ADD wires the pod (veth, MTU, /32, static gateway, default route), registers it, and it reaches pods on both nodes; repeated ADD and CHECK agree; DEL removes everything, twice', async () => {
    const n1 = node(1);
    const n2 = node(2);
    const nsA = await newPodNetns('a');
    const nsB = await newPodNetns('b');
    const envA = cniEnv('ADD', 'cmt-pod-a', nsA, 'pod-a');
    const envB = cniEnv('ADD', 'cmt-pod-b', nsB, 'pod-b');

    const t0 = Date.now();
    const a = await plugin(n1, envA, netconf(n1));
    assert.equal(a.code, 0, `ADD a: ${a.stdout}${a.stderr}`);
    console.log(`# ADD took ${Date.now() - t0} ms (process start included)`);
    const hostA = hostIfNameFor('cmt-pod-a');
    const ipA = '10.101.1.100';
    const agentEp = (await m().agent(n1).api.listEndpoints()).find((e) => e.containerID === 'cmt-pod-a');
    assert.ok(agentEp, 'the agent has the endpoint');
    assert.deepEqual(a.json, {
      cniVersion: '1.0.0',
      interfaces: [
        { name: hostA, mac: agentEp.nodeMac },
        { name: 'eth0', mac: agentEp.podMac, sandbox: `/var/run/netns/${nsA}` },
      ],
      ips: [{ address: `${ipA}/32`, gateway: n1.gatewayIP, interface: 1 }],
      routes: [{ dst: '0.0.0.0/0', gw: n1.gatewayIP }],
      dns: { nameservers: ['10.96.0.10'], search: ['default.svc.cluster.local'] },
    });
    assert.equal(agentEp.ip, ipA);
    assert.equal(agentEp.hostIfName, hostA);
    assert.equal(agentEp.podName, 'pod-a');
    assert.equal(agentEp.labels.app, 'cni-test');
    assert.ok(agentEp.identity !== null && agentEp.identity >= 1 << 16, `identity ${agentEp.identity} in cluster1's range`);

    // What the pod sees.
    const [eth0] = JSON.parse((await run(['ip', '-n', nsA, '-j', 'addr', 'show', 'dev', 'eth0'])).stdout) as Array<{ mtu: number; operstate: string; address: string; addr_info: Array<{ local: string; prefixlen: number }> }>;
    assert.equal(eth0!.mtu, topo!.spec.underlayMtu - 50);
    assert.deepEqual(eth0!.addr_info.map((x) => `${x.local}/${x.prefixlen}`), [`${ipA}/32`]);
    assert.match((await run(['ip', '-n', nsA, 'route', 'show', 'default'])).stdout, new RegExp(`default via ${n1.gatewayIP.replace(/\./g, '\\.')} dev eth0 onlink`));
    assert.match((await run(['ip', '-n', nsA, 'neigh', 'show', n1.gatewayIP])).stdout, new RegExp(`lladdr ${agentEp.nodeMac} PERMANENT`));
    const [host] = JSON.parse((await run(['ip', '-n', n1.netns, '-j', 'link', 'show', 'dev', hostA])).stdout) as Array<{ mtu: number; address: string }>;
    assert.equal(host!.mtu, topo!.spec.underlayMtu - 50);
    assert.deepEqual(allocatedTo(n1, 'cmt-pod-a'), [ipA]);

    // A second CNI pod on the other node; traffic both ways and to the topology's pods.
    const b = await plugin(n2, envB, netconf(n2));
    assert.equal(b.code, 0, `ADD b: ${b.stdout}${b.stderr}`);
    const ipB = '10.101.2.100';
    assert.equal(b.json.ips[0].address, `${ipB}/32`);
    await pingUntil(nsA, ipB);
    await pingUntil(nsB, ipA);
    await pingUntil(nsA, topoPod(2).ip);
    await pingUntil(topoPod(2).netns, ipA);
    await pingUntil(nsA, topoPod(1).ip); // same node

    // A repeated ADD returns the same result and creates nothing new.
    const linksBefore = (await run(['ip', '-n', n1.netns, '-o', 'link'])).stdout.split('\n').length;
    const again = await plugin(n1, envA, netconf(n1));
    assert.equal(again.code, 0, again.stdout);
    assert.deepEqual(again.json, a.json, 'the same result');
    assert.equal((await run(['ip', '-n', n1.netns, '-o', 'link'])).stdout.split('\n').length, linksBefore);
    assert.deepEqual(allocatedTo(n1, 'cmt-pod-a'), [ipA]);

    // CHECK passes with the previous result, and fails once the pod side is tampered with.
    const chk = await plugin(n1, { ...envA, CNI_COMMAND: 'CHECK' }, netconf(n1, { prevResult: a.json }));
    assert.equal(chk.code, 0, chk.stdout);
    assert.equal(chk.stdout, '');
    await run(['ip', '-n', nsA, 'route', 'del', 'default']);
    const bad = await plugin(n1, { ...envA, CNI_COMMAND: 'CHECK' }, netconf(n1, { prevResult: a.json }));
    assert.equal(bad.code, 1);
    assert.equal(bad.json.code, 999);
    assert.match(bad.json.msg, /default route is missing/);

    // DEL: the agent forgets it, the veth and the address are gone; DEL again succeeds.
    for (let i = 0; i < 2; i++) {
      const d = await plugin(n1, { ...envA, CNI_COMMAND: 'DEL' }, netconf(n1));
      assert.equal(d.code, 0, `DEL #${i + 1}: ${d.stdout}${d.stderr}`);
      assert.equal(d.stdout, '');
      await assertNothingLeft(n1, 'cmt-pod-a', nsA);
    }
    // DEL without CNI_NETNS (the runtime lost the namespace) is fine too.
    const noNetns: Record<string, string> = { ...envB, CNI_COMMAND: 'DEL' };
    delete noNetns.CNI_NETNS;
    const dB = await plugin(n2, noNetns, netconf(n2));
    assert.equal(dB.code, 0, dB.stdout);
    await assertNothingLeft(n2, 'cmt-pod-b', nsB);
    const gone = await plugin(n1, { ...envA, CNI_COMMAND: 'CHECK' }, netconf(n1));
    assert.equal(gone.json.code, 999, 'CHECK after DEL fails');
    await assert.rejects(runIn(topoPod(2).netns, ['ping', '-c', '1', '-W', '1', ipA]), 'the deleted pod is unreachable');
  });

  test('CNI_NETNS as /proc/PID/ns/net (an unnamed namespace, as container runtimes pass it)', async () => {
    const n1 = node(1);
    const holder = spawn('unshare', ['--net', 'sleep', '120'], { stdio: 'ignore' });
    try {
      await new Promise<void>((r, j) => {
        holder.once('spawn', () => r());
        holder.once('error', j);
      });
      const netnsPath = `/proc/${holder.pid}/ns/net`;
      // unshare has switched namespaces once its netns differs from ours.
      for (let i = 0; i < 100 && readlinkSync(netnsPath) === readlinkSync('/proc/self/ns/net'); i++) await sleep(20);
      const env = { ...cniEnv('ADD', 'cmt-pod-proc', 'unused'), CNI_NETNS: netnsPath };
      const r = await plugin(n1, env, netconf(n1));
      assert.equal(r.code, 0, r.stdout);
      assert.equal(r.json.interfaces[1].sandbox, netnsPath);
      const ip = (r.json.ips[0].address as string).replace(/\/32$/, '');
      const { stdout } = await run(['nsenter', `--net=${netnsPath}`, 'ip', '-o', '-4', 'addr', 'show', 'dev', 'eth0']);
      assert.match(stdout, new RegExp(`inet ${ip.replace(/\./g, '\\.')}/32`));
      for (let i = 0; ; i++) {
        try {
          await run(['nsenter', `--net=${netnsPath}`, 'ping', '-c', '1', '-W', '1', topoPod(2).ip]);
          break;
        } catch (err) {
          if (i >= 60) throw err;
          await sleep(200);
        }
      }
      const d = await plugin(n1, { ...env, CNI_COMMAND: 'DEL' }, netconf(n1));
      assert.equal(d.code, 0, d.stdout);
      assert.equal(await linkExists(n1.netns, hostIfNameFor('cmt-pod-proc')), false);
      assert.deepEqual(allocatedTo(n1, 'cmt-pod-proc'), []);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  test('concurrent ADDs on one node (separate plugin processes) get distinct addresses; concurrent DELs free them all', async () => {
    const n1 = node(1);
    const ids = [0, 1, 2, 3].map((i) => `cmt-pod-par${i}`);
    const namespaces = await Promise.all(ids.map((_, i) => newPodNetns(`par${i}`)));
    const adds = await Promise.all(ids.map((id, i) => plugin(n1, cniEnv('ADD', id, namespaces[i]!), netconf(n1))));
    for (const r of adds) assert.equal(r.code, 0, r.stdout);
    const ips = adds.map((r) => r.json.ips[0].address as string);
    assert.equal(new Set(ips).size, ids.length, `distinct: ${ips.join(' ')}`);
    for (const [i, id] of ids.entries()) assert.deepEqual(allocatedTo(n1, id), [ips[i]!.replace(/\/32$/, '')]);
    const dels = await Promise.all(ids.map((id, i) => plugin(n1, cniEnv('DEL', id, namespaces[i]!), netconf(n1))));
    for (const r of dels) assert.equal(r.code, 0, r.stdout);
    for (const [i, id] of ids.entries()) await assertNothingLeft(n1, id, namespaces[i]!);
  });

  test('ADD with a bad config: error JSON naming the field, nothing created', async () => {
    const n1 = node(1);
    const ns = await newPodNetns('bad');
    const cases: Array<[unknown, number, RegExp]> = [
      [netconf(n1, { mtu: 'big' }), 7, /^invalid network config: mtu:/],
      [netconf(n1, { ipam: { podCIDR: n1.podCIDR, rangeStart: '192.168.0.1' } }), 7, /ipam\.rangeStart: must lie in podCIDR/],
      [netconf(n1, { type: '/opt/cni/bin/bridge' }), 7, /type: must be the plugin executable's file name/],
      [netconf(n1, { cniVersion: '0.4.0' }), 1, /incompatible CNI version 0\.4\.0/],
      ['not json', 6, /not JSON/],
      ['{"cniVersion": "1.0.0", "agentSocket": ', 6, /not JSON: .* at byte \d+/],
      [{ ...netconf(n1), agentSocket: undefined }, 7, /^invalid network config: agentSocket: required/],
      [netconf(n1, { agentSocket: 'agent.sock' }), 7, /^invalid network config: agentSocket: must be an absolute path/],
      [netconf(n1, { ipam: {} }), 7, /^invalid network config: ipam\.podCIDR: required/],
    ];
    for (const [conf, code, re] of cases) {
      const r = await plugin(n1, cniEnv('ADD', 'cmt-pod-bad', ns), conf);
      assert.notEqual(r.code, 0);
      assert.equal(r.json?.code, code, r.stdout);
      assert.match(r.json.msg, re);
      assert.equal(typeof r.json.cniVersion, 'string');
      await assertNothingLeft(n1, 'cmt-pod-bad', ns);
    }
    const r = await plugin(n1, { ...cniEnv('ADD', 'cmt-pod-bad', ns), CNI_ARGS: 'K8S_POD_NAMESPACE=default' }, netconf(n1));
    assert.equal(r.json.code, 4);
    assert.match(r.json.msg, /^CNI_ARGS: K8S_POD_NAME is required/);
    await assertNothingLeft(n1, 'cmt-pod-bad', ns);
  });

  test('the agent refuses the endpoint after the veth exists (IP conflict): rolled back, nothing left', async () => {
    const n1 = node(1);
    const ns = await newPodNetns('clash');
    const victim = topoPod(1); // registered with node1's agent; its IP is not in the CNI's IPAM
    const r = await plugin(n1, cniEnv('ADD', 'cmt-pod-clash', ns), netconf(n1, { runtimeConfig: { ips: [`${victim.ip}/32`] } }));
    assert.equal(r.code, 1, r.stdout);
    assert.equal(r.json.code, 999);
    assert.match(r.json.msg, /agent refused \(conflict\)/);
    await assertNothingLeft(n1, 'cmt-pod-clash', ns);
    // The victim's own route on the node went with our veth's: put it back for anyone after us.
    await run(['ip', '-n', n1.netns, 'route', 'replace', `${victim.ip}/32`, 'dev', victim.hostIfName, 'scope', 'link']);
  });

  test('agent down: ADD, CHECK and DEL answer code 11 and change nothing; the retried DEL after the restart removes everything', async () => {
    const n2 = node(2);
    const ns = await newPodNetns('down');
    const env = cniEnv('ADD', 'cmt-pod-down', ns);
    // First a pod that exists, to see DEL's behaviour with the agent gone.
    const nsUp = await newPodNetns('up');
    const up = await plugin(n2, cniEnv('ADD', 'cmt-pod-up', nsUp), netconf(n2));
    assert.equal(up.code, 0, up.stdout);
    await m().stopAgent(n2);

    const r = await plugin(n2, env, netconf(n2));
    assert.equal(r.code, 1, r.stdout);
    assert.equal(r.json.code, 11);
    assert.match(r.json.msg, /^agent at .*agent\.sock is not reachable \((ENOENT|ECONNREFUSED)\)/);
    assert.equal(await linkExists(n2.netns, hostIfNameFor('cmt-pod-down')), false);
    assert.equal(await linkExists(ns, 'eth0'), false);
    assert.deepEqual(allocatedTo(n2, 'cmt-pod-down'), []);

    const c = await plugin(n2, { ...cniEnv('CHECK', 'cmt-pod-up', nsUp) }, netconf(n2, { prevResult: up.json }));
    assert.equal(c.json?.code, 11, c.stdout);
    const d = await plugin(n2, cniEnv('DEL', 'cmt-pod-up', nsUp), netconf(n2));
    assert.equal(d.json?.code, 11, d.stdout);
    // The work is the agent's: with it gone the pod's wiring and address stay until the runtime retries.
    assert.equal(await linkExists(n2.netns, hostIfNameFor('cmt-pod-up')), true, 'the veth is kept for the retry');
    assert.equal(allocatedTo(n2, 'cmt-pod-up').length, 1, 'the address is kept until the agent lets go');

    await m().restartAgent(n2);
    // The runtime's retry; code 11 again only means "not yet" (the restarted agent may still be restoring).
    let d2 = await plugin(n2, cniEnv('DEL', 'cmt-pod-up', nsUp), netconf(n2));
    for (let i = 0; i < 20 && d2.json?.code === 11; i++) {
      console.log(`# DEL retry after restart: ${d2.json.msg}`);
      await sleep(500);
      d2 = await plugin(n2, cniEnv('DEL', 'cmt-pod-up', nsUp), netconf(n2));
    }
    assert.equal(d2.code, 0, d2.stdout);
    await assertNothingLeft(n2, 'cmt-pod-up', nsUp);
  });
});

// The executable's own answers when what listens on agentSocket is not a working agent
// (no mesh: a unix socket in a temporary directory).
describe('cni: the plugin executable against sockets that do not answer as an agent', () => {
  async function withServer(handler: (sock: import('node:net').Socket) => void, fn: (socketPath: string) => Promise<void>): Promise<void> {
    const { createServer } = await import('node:net');
    const dir = await mkdtemp(join(tmpdir(), 'cmt-cni-sock-'));
    const socketPath = join(dir, 'agent.sock');
    const server = createServer(handler);
    await new Promise<void>((r) => server.listen(socketPath, r));
    try {
      await fn(socketPath);
    } finally {
      await new Promise((r) => server.close(r));
      await rm(dir, { recursive: true, force: true });
    }
  }
  const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'cmt-sock', CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=x' };
  const conf = (agentSocket: string) => ({ cniVersion: '1.0.0', name: 'cm', type: 'clustermesh', agentSocket, ipam: { podCIDR: '10.101.1.0/24' } });

  test('a socket that closes without an answer: code 11', async () => {
    await withServer((s) => s.once('data', () => s.destroy()), async (sock) => {
      const r = await runPlugin(env, conf(sock));
      assert.equal(r.code, 1, r.stdout);
      assert.equal(r.json.code, 11);
      assert.match(r.json.msg, /closed the connection without a complete answer|not reachable \(ECONNRESET\)/);
    });
  });

  test('an HTTP server without /v1/cni (an older agent): code 999 naming the status', async () => {
    const body = '{"error":"POST /v1/cni: no such route","code":"not-found"}';
    await withServer((s) => s.once('data', () => s.end(`HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`)), async (sock) => {
      const r = await runPlugin(env, conf(sock));
      assert.equal(r.json.code, 999, r.stdout);
      assert.match(r.json.msg, /does not serve CNI requests \(HTTP 404\): .*no such route/);
    });
  });

  test('the request carries the CNI_* variables (percent-encoded) and stdin as is; the answer is printed with its exit code', async () => {
    let request = '';
    const answer = '{"cniVersion":"1.0.0","code":7,"msg":"from the agent"}\n';
    await withServer(
      (s) => {
        s.on('data', (d: Buffer) => {
          request += d.toString();
          const [head, rest] = request.split('\r\n\r\n');
          const len = Number(/content-length: (\d+)/i.exec(head ?? '')?.[1]);
          if (rest !== undefined && Buffer.byteLength(rest) >= len) s.end(`HTTP/1.1 200 OK\r\nX-Cni-Exit-Code: 3\r\ncontent-length: ${answer.length}\r\n\r\n${answer}`);
        });
      },
      async (sock) => {
        const r = await runPlugin({ ...env, CNI_ARGS: 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=a b&c' }, conf(sock));
        assert.equal(r.code, 3);
        assert.equal(r.stdout, answer);
        const line = request.split('\r\n')[0]!;
        assert.match(line, /^POST \/v1\/cni\?CNI_COMMAND=ADD&CNI_CONTAINERID=cmt-sock&CNI_NETNS=%2Fproc%2Fself%2Fns%2Fnet&CNI_IFNAME=eth0&CNI_ARGS=K8S_POD_NAMESPACE%3Ddefault%3BK8S_POD_NAME%3Da%20b%26c HTTP\/1\.1$/);
        assert.deepEqual(JSON.parse(request.split('\r\n\r\n')[1]!), conf(sock));
      },
    );
  });
});
