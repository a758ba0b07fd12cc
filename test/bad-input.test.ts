// The agent's local API and the CNI plugin under bad input (issue 17 §2): a
// real agent in its node's namespace (1 cluster x 1 node, real etcd,
// apiserver, BPF), its API spoken to raw over the unix socket and the real
// plugin executable (cni/build/clustermesh-cni) run as a kubelet runs it.
// Every bad request gets a clear error (the field or what is wrong), leaves
// nothing half-done (no endpoint, no address, no veth), and the agent keeps
// serving: a good request after each bad one succeeds.
// (The bad network configs and the agent being down are in test/cni.test.ts.)
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cidrRange, intToIp, ipToInt } from '../src/cni/config.ts';
import { hostIfNameFor } from '../src/cni/plugin.ts';
import { BpfMap } from '../src/datapath/libbpf/index.ts';
import * as endpointsMap from '../src/datapath/maps/endpoints.ts';
import { identityRefsPrefix } from '../src/identity/keys.ts';
import { run } from '../src/lab/exec.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import { createTopology, destroyTopology, type NodeInfo, type Topology } from '../src/lab/topology.ts';
import { runPlugin, type PluginRun } from './helpers/cni.ts';
import { tcShow } from './helpers/tc-show.ts';

const MiB = 1 << 20;

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: any;
}

describe('bad input: the agent API and the CNI plugin (1 cluster x 1 node)', { timeout: 300_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  let dir: string | undefined;
  const podNamespaces: string[] = [];
  const node = (): NodeInfo => topo!.nodes[0]!;
  const socket = (): string => mesh!.agent(node()).socket;

  /** One raw HTTP request on the agent's socket; `body` may be a Buffer of any size. */
  function api(method: string, path: string, body?: string | Buffer, headers: Record<string, string> = {}): Promise<Answer> {
    return new Promise((done, fail) => {
      const chunked = headers['transfer-encoding'] === 'chunked';
      const sized = body !== undefined && !chunked ? { 'content-length': String(Buffer.byteLength(body)) } : {};
      const req = request({ socketPath: socket(), method, path, headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...sized, ...headers } }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          done({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
      });
      req.on('error', fail);
      if (chunked && body !== undefined) {
        // In 64 KiB chunks, as a streaming client sends it (no length known up front).
        const b = Buffer.from(body);
        for (let i = 0; i < b.length; i += 65536) req.write(b.subarray(i, i + 65536));
        req.end();
      } else req.end(body);
    });
  }

  /** The agent still serves: healthz is ready and a good endpoint PUT/DELETE round trip works. */
  async function stillServing(after: string): Promise<void> {
    const h = await api('GET', '/healthz');
    assert.equal(h.status, 200, `after ${after}: healthz ${h.text}`);
    assert.equal(h.json.ready, true);
    const eps = await api('GET', '/v1/endpoints');
    assert.equal(eps.status, 200, `after ${after}: ${eps.text}`);
  }

  const ipamState = (): Record<string, { containerID: string }> => {
    const f = join(mesh!.agent(node()).stateDir, 'cni-ipam', 'clustermesh', 'allocations.json');
    return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as { allocations: Record<string, { containerID: string }> }).allocations : {};
  };
  const allocatedTo = (containerID: string): string[] =>
    Object.entries(ipamState())
      .filter(([, a]) => a.containerID === containerID)
      .map(([ip]) => ip);
  async function linkExists(netns: string | undefined, dev: string): Promise<boolean> {
    try {
      await run(['ip', ...(netns ? ['-n', netns] : []), 'link', 'show', 'dev', dev]);
      return true;
    } catch {
      return false;
    }
  }
  async function endpointOf(containerID: string): Promise<any> {
    const eps = await api('GET', '/v1/endpoints');
    return (eps.json as Array<{ containerID: string }>).find((e) => e.containerID === containerID);
  }
  /** Nothing of `containerID` on the node: no endpoint, no address, no host veth, no eth0 in the pod's namespace; and the agent's state holds exactly its endpoints. */
  async function assertNothingOf(containerID: string, podNetns?: string): Promise<void> {
    assert.equal(await endpointOf(containerID), undefined, `no agent endpoint for ${containerID}`);
    assert.deepEqual(allocatedTo(containerID), [], `no address allocated to ${containerID}`);
    assert.equal(await linkExists(node().netns, hostIfNameFor(containerID)), false, `no ${hostIfNameFor(containerID)} on the node`);
    if (podNetns) assert.equal(await linkExists(podNetns, 'eth0'), false, `no eth0 in ${podNetns}`);
    await assertStateMatchesEndpoints(`after ${containerID}`);
  }

  /** Pod addresses of this node (its pod CIDR, the gateway left out) in a list of IPs. */
  const podAddresses = (ips: Iterable<string>): string[] => {
    const [net, bcast] = cidrRange(node().podCIDR);
    return [...ips].filter((ip) => ip !== node().gatewayIP && ipToInt(ip) >= net && ipToInt(ip) <= bcast).sort();
  };
  /** What the agent's state outside its endpoint list says: map entries, record files, identity references. */
  async function agentState(): Promise<{ ipcache: string[]; endpointsMap: string[]; records: string[]; refs: number[] }> {
    const agent = mesh!.agent(node());
    const ipc = podAddresses([...mesh!.readIpcache(node()).keys()].filter((p) => p.endsWith('/32')).map((p) => p.slice(0, -3)));
    const m = BpfMap.openPinned(join(agent.pinDir, endpointsMap.MAP_NAME));
    let eps: string[];
    try {
      eps = podAddresses([...endpointsMap.entries(m)].map(([k]) => k.ip));
    } finally {
      m.close();
    }
    const dir = join(agent.stateDir, 'endpoints');
    const records = existsSync(dir) ? readdirSync(dir).sort() : [];
    const refs = (await mesh!.kv(1).list(identityRefsPrefix)).pairs
      .filter((p) => p.key.endsWith(`/${node().name}`))
      .map((p) => Number(p.key.slice(identityRefsPrefix.length).split('/')[0]))
      .sort((a, b) => a - b);
    return { ipcache: ipc, endpointsMap: eps, records, refs };
  }
  /**
   * Nothing half-done anywhere: the ipcache and cm_endpoints have a pod entry for exactly the
   * registered endpoints, the state dir a record for exactly them (no .tmp), and this node holds
   * identity references for exactly their identities (releases are asynchronous: waited for).
   */
  async function assertStateMatchesEndpoints(when: string): Promise<void> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const list = (await api('GET', '/v1/endpoints')).json as Array<{ containerID: string; ip: string; identity: number | null }>;
      const want = {
        ipcache: podAddresses(list.filter((e) => e.identity !== null).map((e) => e.ip)),
        endpointsMap: podAddresses(list.filter((e) => e.identity !== null).map((e) => e.ip)),
        records: list.map((e) => `${e.containerID}.json`).sort(),
        refs: [...new Set(list.map((e) => e.identity).filter((x): x is number => x !== null))].sort((a, b) => a - b),
      };
      const got = await agentState();
      if (JSON.stringify(got) === JSON.stringify(want)) return;
      if (Date.now() > deadline) assert.deepEqual(got, want, `${when}: the agent's maps, records and identity references are those of its endpoints`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  const netconf = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
    cniVersion: '1.0.0',
    name: 'clustermesh',
    type: 'clustermesh',
    agentSocket: socket(),
    underlayMtu: topo!.spec.underlayMtu,
    ipam: { podCIDR: node().podCIDR, gateway: node().gatewayIP, rangeStart: node().podCIDR.replace(/0\/24$/, '100') },
    runtimeConfig: { labels: { app: 'bad-input' } },
    ...over,
  });
  const cniEnv = (command: string, containerID: string, netns: string): Record<string, string> => ({
    CNI_COMMAND: command,
    CNI_CONTAINERID: containerID,
    CNI_NETNS: netns.startsWith('/') ? netns : `/var/run/netns/${netns}`,
    CNI_IFNAME: 'eth0',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${containerID}`,
  });
  /** The plugin executable in the node's namespace, as a kubelet runs it. */
  const plugin = async (env: Record<string, string>, stdin: string | Buffer): Promise<PluginRun> => {
    const r = await runPlugin(env, stdin, { netns: node().netns });
    if (r.code !== 0) assertCniErrorShape(r);
    return r;
  };
  /**
   * The CNI spec's error (1.0.0, "Error"): on stdout, with a non-zero exit, an object of exactly
   * cniVersion (string), code (a well-known 1..99 or a plugin's own >= 100), msg (string), details
   * (string, optional); and a message that is not empty.
   */
  function assertCniErrorShape(r: PluginRun): void {
    const e = r.json as Record<string, unknown> | undefined;
    assert.ok(e && typeof e === 'object' && !Array.isArray(e), `a CNI error object on stdout: ${r.stdout.slice(0, 300)} (stderr ${r.stderr.slice(0, 200)})`);
    assert.deepEqual(Object.keys(e).filter((k) => !['cniVersion', 'code', 'msg', 'details'].includes(k)), [], `only the spec's fields: ${r.stdout.slice(0, 300)}`);
    assert.equal(typeof e.cniVersion, 'string', r.stdout);
    assert.ok(Number.isInteger(e.code) && (e.code as number) >= 1 && ((e.code as number) < 100 ? [1, 2, 3, 4, 5, 6, 7, 11].includes(e.code as number) : true), `a spec error code: ${String(e.code)}`);
    assert.ok(typeof e.msg === 'string' && e.msg.trim() !== '', `a message: ${r.stdout.slice(0, 300)}`);
    if ('details' in e) assert.equal(typeof e.details, 'string', r.stdout);
  }
  async function newPodNetns(tag: string): Promise<string> {
    const name = `cmt-${topo!.id}-${tag}`;
    podNamespaces.push(name);
    await run(['ip', 'netns', 'add', name]);
    return name;
  }
  /** A good ADD then DEL of a fresh container: the CNI path still works end to end. */
  async function goodAddDel(after: string): Promise<void> {
    const id = `cmt-good-${Math.random().toString(36).slice(2, 8)}`;
    const ns = await newPodNetns(id.slice(-6));
    const a = await plugin(cniEnv('ADD', id, ns), JSON.stringify(netconf()));
    assert.equal(a.code, 0, `after ${after}: a good ADD: ${a.stdout}`);
    assert.equal((await endpointOf(id))?.ip, (a.json.ips[0].address as string).replace(/\/32$/, ''));
    const d = await plugin(cniEnv('DEL', id, ns), JSON.stringify(netconf()));
    assert.equal(d.code, 0, `after ${after}: a good DEL: ${d.stdout}`);
    await assertNothingOf(id, ns);
  }

  before(async () => {
    topo = await createTopology({ clusters: 1, nodesPerCluster: 1, podsPerNode: 1, mode: 'clustermesh', prefix: 'cmt' });
    dir = await mkdtemp(join(tmpdir(), 'cmt-bad-input-'));
    mesh = await startMesh(topo, { dir, readyTimeoutMs: 180_000, progress: (l) => console.log(`# ${l}`) });
  });

  after(async () => {
    try {
      await mesh?.stop();
    } finally {
      for (const ns of podNamespaces) await run(['ip', 'netns', 'del', ns]).catch(() => undefined);
      if (topo) await destroyTopology(topo);
      if (dir) await rm(dir, { recursive: true, force: true });
    }
  });

  test('oversized bodies: 413 naming the limit, nothing registered, the agent keeps serving', async () => {
    const pod = topo!.pods[0]!;
    const good = { namespace: 'default', podName: 'big', ip: pod.ip, hostIfName: pod.hostIfName, podMac: pod.mac, labels: { app: 'big' } };
    // Valid JSON, 2 MiB of it (a label value that long), so only the size is wrong.
    const big = Buffer.from(JSON.stringify({ ...good, labels: { app: 'x'.repeat(2 * MiB) } }));
    const sends: Array<[string, string, Record<string, string>]> = [
      ['PUT', '/v1/endpoints/cmt-big', {}],
      ['POST', '/v1/cni?CNI_COMMAND=ADD&CNI_CONTAINERID=cmt-big', {}],
      ['PUT', '/v1/endpoints/cmt-big', { 'transfer-encoding': 'chunked' }],
      ['POST', '/v1/cni?CNI_COMMAND=ADD&CNI_CONTAINERID=cmt-big', { 'transfer-encoding': 'chunked' }],
    ];
    for (const [method, path, headers] of sends) {
      const r = await api(method, path, big, headers);
      assert.equal(r.status, 413, `${method} ${path} ${JSON.stringify(headers)}: ${r.text.slice(0, 300)}`);
      assert.equal(r.json.code, 'too-large');
      assert.match(r.json.error, new RegExp(`^${method} ${path.split('?')[0]!.replace(/\//g, '\\/')}: request body larger than 1048576 bytes`));
      await stillServing(`an oversized ${method}`);
    }
    assert.equal(await endpointOf('cmt-big'), undefined);
    // The plugin refuses an oversized config itself (the agent's limit), naming it.
    const ns = await newPodNetns('big');
    const p = await plugin(cniEnv('ADD', 'cmt-big', ns), JSON.stringify({ ...netconf(), pad: 'x'.repeat(2 * MiB) }));
    assert.equal(p.code, 1, p.stdout);
    assert.equal(p.json.code, 7);
    assert.match(p.json.msg, /^invalid network config: \(root\): larger than 1048576 bytes/);
    await assertNothingOf('cmt-big', ns);
    // A body just under the limit is read (and refused for what it says, not for its size).
    const under = await api('PUT', '/v1/endpoints/cmt-big', Buffer.from(JSON.stringify({ ...good, labels: { app: 'x'.repeat(MiB - 1000) } })));
    assert.equal(under.status, 400, under.text.slice(0, 300));
    assert.match(under.json.error, /labels/);
    assert.equal(await endpointOf('cmt-big'), undefined);
    await goodAddDel('oversized bodies');
  });

  test("an address that is not this node's pod address, a device of the node, another endpoint's device: refused, nothing attached", async () => {
    const pod = topo!.pods[0]!;
    const good = { namespace: 'default', podName: 'where', ip: pod.ip, hostIfName: pod.hostIfName, podMac: pod.mac, labels: { app: 'where' } };
    const [net, bcast] = cidrRange(node().podCIDR);
    const ips: Array<[string, RegExp]> = [
      ['192.0.2.7', /^endpoint cmt-where: ip: 192\.0\.2\.7 is not in this node's pod CIDR /],
      [node().underlayIP, /is not in this node's pod CIDR|is this node's own address/],
      [intToIp(net), /is the network address of this node's pod CIDR/],
      [intToIp(bcast), /is the broadcast address of this node's pod CIDR/],
    ];
    for (const [ip, re] of ips) {
      const r = await api('PUT', '/v1/endpoints/cmt-where', JSON.stringify({ ...good, ip }));
      assert.equal(r.status, 400, `${ip}: ${r.text}`);
      assert.equal(r.json.code, 'invalid-request');
      assert.match(r.json.error, re);
      await assertNothingOf('cmt-where');
    }
    // The node's uplink and lo: a pod's program there would take the node's own traffic for a pod's.
    const tc = (dev: string): Promise<string> => tcShow(node().netns, dev, 'ingress');
    const uplinkBefore = await tc('eth0');
    for (const dev of ['eth0', 'lo']) {
      const r = await api('PUT', '/v1/endpoints/cmt-where', JSON.stringify({ ...good, hostIfName: dev }));
      assert.equal(r.status, 400, `${dev}: ${r.text}`);
      assert.match(r.json.error, new RegExp(`^device ${dev} carries .*: a device of the node, not a pod's host-side veth`));
      await assertNothingOf('cmt-where');
    }
    assert.equal(await tc('eth0'), uplinkBefore, "the uplink's filters are as they were");
    // Two endpoints on one device: the second is refused and the first keeps it.
    const owner = await api('PUT', '/v1/endpoints/cmt-owner', JSON.stringify(good));
    assert.equal(owner.status, 200, owner.text);
    const other = intToIp(ipToInt(pod.ip) + 100);
    const thief = await api('PUT', '/v1/endpoints/cmt-thief', JSON.stringify({ ...good, podName: 'thief', ip: other }));
    assert.equal(thief.status, 409, thief.text);
    assert.equal(thief.json.code, 'conflict');
    assert.match(thief.json.error, new RegExp(`^endpoint cmt-thief: device ${pod.hostIfName} belongs to endpoint cmt-owner \\(default/where\\)`));
    await assertNothingOf('cmt-thief');
    assert.equal((await endpointOf('cmt-owner'))?.ip, pod.ip, 'the first endpoint is untouched');
    const del = await api('DELETE', '/v1/endpoints/cmt-owner');
    assert.equal(del.status, 200, del.text);
    await assertNothingOf('cmt-owner');
    await goodAddDel('foreign addresses and devices');
  });

  test('wrong methods: 405 saying which method to use; unknown routes: 404 listing the routes', async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['GET', '/v1/cni', /^GET \/v1\/cni: use POST$/],
      ['PUT', '/v1/cni', /use POST/],
      ['DELETE', '/healthz', /^DELETE \/healthz: use GET$/],
      ['POST', '/v1/status', /use GET/],
      ['POST', '/v1/endpoints', /use GET \(PUT and DELETE take \/v1\/endpoints\/<containerID>\)/],
      ['GET', '/v1/endpoints/cmt-x', /^GET \/v1\/endpoints\/cmt-x: use PUT or DELETE$/],
      ['PATCH', '/v1/endpoints/cmt-x', /use PUT or DELETE/],
      ['POST', '/v1/flows', /use GET/],
    ];
    for (const [method, path, re] of cases) {
      const r = await api(method, path, method === 'GET' ? undefined : '{}');
      assert.equal(r.status, 405, `${method} ${path}: ${r.text}`);
      assert.equal(r.json.code, 'method-not-allowed');
      assert.match(r.json.error, re);
    }
    const nf = await api('GET', '/v1/nothing');
    assert.equal(nf.status, 404);
    assert.match(nf.json.error, /^GET \/v1\/nothing: no such route \(try .*\/v1\/endpoints.*\/v1\/cni/);
    assert.equal(await endpointOf('cmt-x'), undefined);
    await stillServing('wrong methods');
  });

  test('malformed JSON and bodies of the wrong shape: 400 naming what is wrong, nothing registered', async () => {
    const pod = topo!.pods[0]!;
    const good = { namespace: 'default', podName: 'shape', ip: pod.ip, hostIfName: pod.hostIfName, podMac: pod.mac, labels: { app: 'shape' } };
    const cases: Array<[string, RegExp]> = [
      ['{"namespace": "default", ', /^request body is not JSON: /],
      ['not json at all', /^request body is not JSON: /],
      ['\u0000\u0001\u0002', /^request body is not JSON: /],
      ['[]', /^endpoint cmt-shape: \(body\): /],
      ['"a string"', /^endpoint cmt-shape: \(body\): /],
      ['null', /^endpoint cmt-shape: \(body\): /],
      ['42', /^endpoint cmt-shape: \(body\): /],
      [JSON.stringify({ ...good, ip: 'ten.one' }), /^endpoint cmt-shape: ip: must be an IPv4 address/],
      [JSON.stringify({ ...good, ip: 42 }), /^endpoint cmt-shape: ip: /],
      [JSON.stringify({ ...good, podMac: 'zz:zz' }), /^endpoint cmt-shape: podMac: /],
      [JSON.stringify({ ...good, labels: ['app'] }), /^endpoint cmt-shape: labels: /],
      [JSON.stringify({ ...good, namespace: undefined }), /^endpoint cmt-shape: namespace: /],
      [JSON.stringify({ ...good, hostIfName: 'x'.repeat(40) }), /^endpoint cmt-shape: hostIfName: /],
      // Deeply nested JSON: refused for its shape, and the parser does not fall over.
      ['['.repeat(100_000) + ']'.repeat(100_000), /^(request body is not JSON: |endpoint cmt-shape: \(body\): )/],
    ];
    for (const [body, re] of cases) {
      const r = await api('PUT', '/v1/endpoints/cmt-shape', body);
      assert.equal(r.status, 400, `${body.slice(0, 60)}: ${r.text.slice(0, 300)}`);
      assert.equal(r.json.code, 'invalid-request');
      assert.match(r.json.error, re, body.slice(0, 60));
      assert.equal(await endpointOf('cmt-shape'), undefined, `nothing registered for ${body.slice(0, 60)}`);
    }
    // A body that ends before its content-length: the agent answers no request from half a body and keeps serving.
    await new Promise<void>((done, fail) => {
      const req = request({ socketPath: socket(), method: 'PUT', path: '/v1/endpoints/cmt-shape', headers: { 'content-type': 'application/json', 'content-length': '500' } });
      req.on('error', () => done()); // the socket we destroy
      req.on('response', (res) => fail(new Error(`answered a half body: ${res.statusCode}`)));
      req.write(JSON.stringify(good).slice(0, 40), () => setTimeout(() => req.destroy(), 200));
    });
    assert.equal(await endpointOf('cmt-shape'), undefined);
    await stillServing('malformed JSON');
  });

  test('unknown and malformed container IDs: DELETE of an unknown one is a no-op, a malformed one is 400; CNI DEL is idempotent, CHECK names what is missing', async () => {
    const del = await api('DELETE', '/v1/endpoints/cmt-never-added');
    assert.equal(del.status, 200, del.text);
    assert.deepEqual(del.json, { containerID: 'cmt-never-added', deleted: false });
    for (const id of ['.hidden', 'a'.repeat(129), 'a%2Fb', '%E0%A4%A', 'sp%20ace']) {
      const r = await api('DELETE', `/v1/endpoints/${id}`);
      assert.equal(r.status, 400, `${id}: ${r.text}`);
      assert.match(r.json.error, /container ID|malformed container ID/, id);
    }
    const before = JSON.stringify((await api('GET', '/v1/endpoints')).json);
    const ns = await newPodNetns('unknown');
    const d = await plugin(cniEnv('DEL', 'cmt-never-added', ns), JSON.stringify(netconf()));
    assert.equal(d.code, 0, `DEL of an unknown container succeeds (CNI spec): ${d.stdout}`);
    const c = await plugin(cniEnv('CHECK', 'cmt-never-added', ns), JSON.stringify(netconf()));
    assert.equal(c.code, 1, c.stdout);
    assert.equal(c.json.code, 999);
    assert.match(c.json.msg, /^CHECK cmt-never-added: no address is allocated to eth0/);
    for (const id of ['../../etc/passwd', 'a b', '']) {
      const r = await plugin(cniEnv('ADD', id, ns), JSON.stringify(netconf()));
      assert.equal(r.code, 1, r.stdout);
      assert.equal(r.json.code, 4);
      assert.match(r.json.msg, /^CNI_CONTAINERID: /);
    }
    assert.equal(JSON.stringify((await api('GET', '/v1/endpoints')).json), before, 'the endpoints are as they were');
    await assertNothingOf('cmt-never-added', ns);
    await goodAddDel('unknown container IDs');
  });

  test('CNI ADD for a netns that does not exist, or a path that is no netns: code 4 naming CNI_NETNS, nothing created', async () => {
    const file = join(dir!, 'not-a-netns');
    writeFileSync(file, 'x');
    const cases: Array<[string, RegExp]> = [
      ['/var/run/netns/cmt-does-not-exist', /^CNI_NETNS: \/var\/run\/netns\/cmt-does-not-exist does not exist/],
      ['/proc/999999999/ns/net', /^CNI_NETNS: \/proc\/999999999\/ns\/net does not exist/],
      [file, /^CNI_NETNS: .*not-a-netns is not a network namespace/],
      [dir!, /^CNI_NETNS: .* is not a network namespace/],
    ];
    for (const [netns, re] of cases) {
      const r = await plugin(cniEnv('ADD', 'cmt-nonetns', netns), JSON.stringify(netconf()));
      assert.equal(r.code, 1, r.stdout);
      assert.equal(r.json.code, 4, r.stdout);
      assert.match(r.json.msg, re);
      await assertNothingOf('cmt-nonetns');
    }
    // The namespace goes away between ADD and DEL (the runtime lost it): DEL still removes everything.
    const ns = await newPodNetns('vanish');
    const a = await plugin(cniEnv('ADD', 'cmt-vanish', ns), JSON.stringify(netconf()));
    assert.equal(a.code, 0, a.stdout);
    await run(['ip', 'netns', 'del', ns]);
    const d = await plugin(cniEnv('DEL', 'cmt-vanish', ns), JSON.stringify(netconf()));
    assert.equal(d.code, 0, d.stdout);
    await assertNothingOf('cmt-vanish');
    await goodAddDel('a missing netns');
  });

  test('concurrent ADD and DEL of the same container: it ends either wired whole or gone whole, never half', async () => {
    const ns = await newPodNetns('race');
    const id = 'cmt-race';
    const outcomes = { wired: 0, gone: 0 };
    for (let round = 0; round < 8; round++) {
      const conf = JSON.stringify(netconf());
      // DEL a little after ADD in some rounds, at once in others: different interleavings.
      const add = plugin(cniEnv('ADD', id, ns), conf);
      if (round % 2) await new Promise((r) => setTimeout(r, 20 * round));
      const del = plugin(cniEnv('DEL', id, ns), conf);
      const [a, d] = await Promise.all([add, del]);
      assert.equal(d.code, 0, `round ${round}: DEL: ${d.stdout}`);
      // One at a time per container: the ADD ran whole, before the DEL or after it.
      assert.equal(a.code, 0, `round ${round}: ADD: ${a.stdout}`);
      const ep = await endpointOf(id);
      const ips = allocatedTo(id);
      const host = await linkExists(node().netns, hostIfNameFor(id));
      const pod = await linkExists(ns, 'eth0');
      const state = `endpoint ${ep ? ep.ip : '-'}, address ${ips.join(',') || '-'}, host veth ${host}, pod eth0 ${pod}; ADD ${a.code}: ${a.stdout.slice(0, 200)}`;
      if (ep) {
        // ADD ran after DEL: all of it, and what ADD answered.
        assert.deepEqual(a.json.interfaces[0], { name: hostIfNameFor(id), mac: ep.nodeMac }, `round ${round}: ${state}`);
        assert.deepEqual(ips, [ep.ip], `round ${round}: ${state}`);
        assert.ok(host && pod, `round ${round}: ${state}`);
        assert.equal(ep.hostIfName, hostIfNameFor(id));
        outcomes.wired++;
      } else {
        assert.deepEqual(ips, [], `round ${round}: half-done: ${state}`);
        assert.ok(!host && !pod, `round ${round}: half-done: ${state}`);
        outcomes.gone++;
      }
      // Clean for the next round.
      const clean = await plugin(cniEnv('DEL', id, ns), conf);
      assert.equal(clean.code, 0, clean.stdout);
      await assertNothingOf(id, ns);
    }
    console.log(`# concurrent ADD/DEL: ${outcomes.wired} rounds ended wired, ${outcomes.gone} gone`);
    // Two ADDs of one container at once: one wiring, the same answer twice.
    const [a1, a2] = await Promise.all([plugin(cniEnv('ADD', id, ns), JSON.stringify(netconf())), plugin(cniEnv('ADD', id, ns), JSON.stringify(netconf()))]);
    assert.equal(a1.code, 0, a1.stdout);
    assert.equal(a2.code, 0, a2.stdout);
    assert.deepEqual(a1.json, a2.json, 'the same answer (the second ADD found the first one\'s wiring)');
    assert.equal(allocatedTo(id).length, 1);
    const ep = await endpointOf(id);
    assert.equal(ep.podMac, a1.json.interfaces[1].mac, 'the endpoint has the MAC both ADDs answered');
    const d = await plugin(cniEnv('DEL', id, ns), JSON.stringify(netconf()));
    assert.equal(d.code, 0, d.stdout);
    await assertNothingOf(id, ns);
    await goodAddDel('concurrent ADD/DEL');
  });

  test('POST /v1/cni without the CNI_* variables or with a bad body: the CNI error JSON naming them, exit code header 1', async () => {
    const cases: Array<[string, string, number, RegExp]> = [
      ['/v1/cni', JSON.stringify(netconf()), 4, /^CNI_COMMAND: not set/],
      ['/v1/cni?CNI_COMMAND=ADD', JSON.stringify(netconf()), 4, /^CNI_CONTAINERID: not set/],
      ['/v1/cni?CNI_COMMAND=FROB&CNI_CONTAINERID=cmt-q', '{}', 4, /^CNI_COMMAND: 'FROB' is not one of/],
      ['/v1/cni?CNI_COMMAND=ADD&CNI_CONTAINERID=cmt-q&CNI_IFNAME=eth0&CNI_NETNS=/proc/self/ns/net&CNI_ARGS=K8S_POD_NAMESPACE%3Ddefault%3BK8S_POD_NAME%3Dq', '{"cniVersion":', 6, /not JSON/],
      ['/v1/cni?CNI_COMMAND=ADD&CNI_CONTAINERID=cmt-q&CNI_IFNAME=eth0&CNI_NETNS=/proc/self/ns/net&CNI_ARGS=K8S_POD_NAMESPACE%3Ddefault%3BK8S_POD_NAME%3Dq', '', 6, /not JSON|empty/],
    ];
    for (const [path, body, code, re] of cases) {
      const r = await api('POST', path, body);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers['x-cni-exit-code'], '1', r.text);
      assert.equal(r.json.code, code, r.text);
      assert.match(r.json.msg, re);
    }
    await assertNothingOf('cmt-q');
    await goodAddDel('bad /v1/cni requests');
  });
});
