// The cluster DNS: answers over real UDP and TCP sockets on loopback from fixed
// data (pure logic), then the whole workload reading a Kubernetes API (the
// lab's, over a real etcd), queried by
// the system resolver (glibc getent) inside a pod-like network namespace whose
// resolv.conf carries the Kubernetes search list.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import dnsPacket, { type DecodedPacket, type Packet } from 'dns-packet';
import { parseAllDocuments } from 'yaml';
import { KvClient } from '../kvstore/client.ts';
import type { EtcdServer } from '../kvstore/etcd-process.ts';
import { startMeshEtcd as startEtcd } from '../clustermesh/etcd.ts';
import { parseObject, type Namespace, type Pod, type Service } from '../model/index.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import { startKubeApi, writeKubeconfig, type KubeApiServer } from './kube-api/index.ts';
import { KubeObjects } from './kube-objects.ts';
import {
  DNS_SERVICE_IP,
  answerQuery,
  clusterDnsManifest,
  clusterDnsObjects,
  resolvConf,
  startDnsServer,
  staticDnsData,
  type DnsData,
  type DnsServer,
} from './dns.ts';
import { run, runIn, spawnIn, stopChild } from './exec.ts';

const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');

const ns = (name: string): Namespace => parseObject('Namespace', { kind: 'Namespace', metadata: { name } });
const svc = (namespace: string, name: string, clusterIP: string | undefined, selector?: Record<string, string>): Service =>
  parseObject('Service', { kind: 'Service', metadata: { name, namespace }, spec: { ...(clusterIP ? { clusterIP } : {}), ports: [{ port: 80 }], ...(selector ? { selector } : {}) } });
const pod = (namespace: string, name: string, labels: Record<string, string>, ip: string | undefined, ready = true): Pod =>
  parseObject('Pod', {
    kind: 'Pod',
    metadata: { name, namespace, labels },
    spec: {},
    status: { phase: 'Running', ...(ip ? { podIP: ip } : {}), conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }] },
  });

function fixture(): DnsData {
  const many = Array.from({ length: 120 }, (_, i) => pod('big', `m${i}`, { app: 'many' }, `10.101.${1 + (i >> 6)}.${10 + (i & 63)}`));
  return staticDnsData({
    namespaces: [ns('default'), ns('kube-system'), ns('empty'), ns('big')],
    services: [
      svc('default', 'rebel-base', '10.96.12.34'),
      svc('kube-system', 'kube-dns', DNS_SERVICE_IP),
      svc('default', 'db', 'None', { app: 'db' }),
      svc('default', 'pending', undefined),
      svc('big', 'many', 'None', { app: 'many' }),
    ],
    pods: [
      pod('default', 'db-2', { app: 'db' }, '10.102.1.12'),
      pod('default', 'db-1', { app: 'db' }, '10.101.1.11'),
      pod('default', 'db-3', { app: 'db' }, '10.101.2.13', false),
      pod('default', 'db-4', { app: 'db' }, undefined),
      pod('other', 'db-5', { app: 'db' }, '10.101.2.14'),
      pod('default', 'x-wing', { app: 'frontend' }, '10.101.1.20'),
      ...many,
    ],
  });
}

let nextId = 1000;
function query(name: string, type: string, extra: Partial<Packet> = {}): Packet {
  return { type: 'query', id: nextId++, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: type as 'A', name, class: 'IN' }], ...extra };
}

async function udpAsk(port: number, msg: Buffer): Promise<Buffer> {
  const sock = createSocket('udp4');
  try {
    return await new Promise<Buffer>((res, rej) => {
      const t = setTimeout(() => rej(new Error('no UDP answer within 2 s')), 2000);
      sock.once('message', (m) => {
        clearTimeout(t);
        res(m);
      });
      sock.send(msg, port, '127.0.0.1');
    });
  } finally {
    sock.close();
  }
}

async function udp(port: number, q: Packet): Promise<DecodedPacket> {
  return dnsPacket.decode(await udpAsk(port, dnsPacket.encode(q)));
}

/** Sends every query on one TCP connection, returns the decoded answers in order. */
async function tcp(port: number, qs: Packet[]): Promise<DecodedPacket[]> {
  const sock = connect(port, '127.0.0.1');
  try {
    return await new Promise<DecodedPacket[]>((res, rej) => {
      const t = setTimeout(() => rej(new Error('no complete TCP answers within 2 s')), 2000);
      let buf = Buffer.alloc(0);
      const out: DecodedPacket[] = [];
      sock.on('error', rej);
      sock.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          out.push(dnsPacket.decode(buf.subarray(2, 2 + buf.readUInt16BE(0))));
          buf = buf.subarray(2 + buf.readUInt16BE(0));
        }
        if (out.length === qs.length) {
          clearTimeout(t);
          res(out);
        }
      });
      // Both queries in one write: the server must split the stream by the length prefixes.
      sock.write(Buffer.concat(qs.map((q) => dnsPacket.streamEncode(q))));
    });
  } finally {
    sock.destroy();
  }
}

const rcode = (p: DecodedPacket): string => (p as DecodedPacket & { rcode: string }).rcode;
const aData = (p: DecodedPacket): string[] => (p.answers ?? []).flatMap((a) => (a.type === 'A' ? [a.data] : []));

describe('cluster DNS answers (UDP and TCP on loopback, fixed data)', () => {
  let server: DnsServer;
  before(async () => {
    server = await startDnsServer(fixture(), { host: '127.0.0.1', port: 0 });
  });
  after(async () => {
    await server?.close();
  });

  it('a Service name gets its ClusterIP: same ID and question, QR and AA set, RD echoed, no RA, TTL 5', async () => {
    const q = query('rebel-base.default.svc.cluster.local', 'A');
    const r = await udp(server.udpPort, q);
    assert.equal(r.id, q.id);
    assert.equal(r.type, 'response');
    assert.equal(rcode(r), 'NOERROR');
    assert.equal(r.flag_aa, true);
    assert.equal(r.flag_rd, true);
    assert.equal(r.flag_ra, false);
    assert.equal(r.flag_tc, false);
    assert.deepEqual(r.questions, [{ name: 'rebel-base.default.svc.cluster.local', type: 'A', class: 'IN' }]);
    assert.equal(r.answers?.length, 1);
    const a = r.answers![0]!;
    assert.equal(a.type, 'A');
    assert.equal(a.name, 'rebel-base.default.svc.cluster.local');
    assert.equal(a.data, '10.96.12.34');
    assert.equal((a as { ttl?: number }).ttl, 5);
    // RD clear in the query: clear in the answer.
    const r2 = await udp(server.udpPort, query('kube-dns.kube-system.svc.cluster.local', 'A', { flags: 0 }));
    assert.equal(r2.flag_rd, false);
    assert.deepEqual(aData(r2), [DNS_SERVICE_IP]);
  });

  it('names are case-insensitive and may end with a dot; the question comes back as asked', async () => {
    const r = await udp(server.udpPort, query('Rebel-Base.DEFAULT.svc.Cluster.Local.', 'A'));
    assert.equal(rcode(r), 'NOERROR');
    assert.deepEqual(aData(r), ['10.96.12.34']);
    assert.equal(r.answers![0]!.name.toLowerCase(), 'rebel-base.default.svc.cluster.local');
  });

  it('unknown names in the cluster domain are NXDOMAIN with the zone SOA (negative TTL 5); what the search list tries first is among them', async () => {
    for (const name of [
      'nosuch.default.svc.cluster.local',
      'rebel-base.nosuchns.svc.cluster.local',
      // `rebel-base.default` with search default.svc.cluster.local: the first try
      'rebel-base.default.default.svc.cluster.local',
      'nosuchns.svc.cluster.local',
      'foo.cluster.local',
      '1-2-3-4.default.pod.cluster.local',
    ]) {
      const r = await udp(server.udpPort, query(name, 'A'));
      assert.equal(rcode(r), 'NXDOMAIN', name);
      assert.equal(r.flag_aa, true, name);
      assert.equal(r.answers?.length, 0, name);
      const soa = r.authorities?.find((x) => x.type === 'SOA') as { name: string; data: { minimum: number } } | undefined;
      assert.ok(soa, `${name}: SOA in the authority section`);
      assert.equal(soa.name, 'cluster.local');
      assert.equal(soa.data.minimum, 5);
    }
  });

  it('an existing name asked for another type (AAAA, TXT) is NODATA: NOERROR, no answer, SOA', async () => {
    for (const type of ['AAAA', 'TXT']) {
      const r = await udp(server.udpPort, query('rebel-base.default.svc.cluster.local', type));
      assert.equal(rcode(r), 'NOERROR', type);
      assert.equal(r.answers?.length, 0, type);
      assert.ok(r.authorities?.some((x) => x.type === 'SOA'), type);
    }
    // Empty non-terminals exist too: the namespace and svc labels.
    for (const name of ['default.svc.cluster.local', 'empty.svc.cluster.local', 'svc.cluster.local']) {
      const r = await udp(server.udpPort, query(name, 'A'));
      assert.equal(rcode(r), 'NOERROR', name);
      assert.equal(r.answers?.length, 0, name);
    }
    const soa = await udp(server.udpPort, query('cluster.local', 'SOA'));
    assert.equal(soa.answers?.[0]?.type, 'SOA');
  });

  it('names outside the cluster domain are REFUSED (no forwarding, not authoritative)', async () => {
    for (const name of ['example.com', 'rebel-base', 'rebel-base.default', 'cluster.local.evil.com', 'localcluster.local']) {
      const r = await udp(server.udpPort, query(name, 'A'));
      assert.equal(rcode(r), 'REFUSED', name);
      assert.equal(r.flag_aa, false, name);
      assert.equal(r.answers?.length, 0, name);
    }
  });

  it('a headless Service answers the IPs of its ready pods of its namespace, sorted; a Service without an IP yet is NODATA', async () => {
    const r = await udp(server.udpPort, query('db.default.svc.cluster.local', 'A'));
    assert.equal(rcode(r), 'NOERROR');
    assert.deepEqual(aData(r), ['10.101.1.11', '10.102.1.12']);
    const p = await udp(server.udpPort, query('pending.default.svc.cluster.local', 'A'));
    assert.equal(rcode(p), 'NOERROR');
    assert.equal(p.answers?.length, 0);
  });

  it('pod records: <a-b-c-d>.<ns>.pod.cluster.local answers when a pod of that namespace has the IP', async () => {
    const r = await udp(server.udpPort, query('10-101-1-20.default.pod.cluster.local', 'A'));
    assert.deepEqual(aData(r), ['10.101.1.20']);
    const other = await udp(server.udpPort, query('10-101-1-20.kube-system.pod.cluster.local', 'A'));
    assert.equal(rcode(other), 'NXDOMAIN');
  });

  it('TCP: several length-prefixed queries on one connection get their answers in order', async () => {
    const q1 = query('rebel-base.default.svc.cluster.local', 'A');
    const q2 = query('nosuch.default.svc.cluster.local', 'A');
    const [r1, r2] = await tcp(server.tcpPort!, [q1, q2]);
    assert.equal(r1!.id, q1.id);
    assert.deepEqual(aData(r1!), ['10.96.12.34']);
    assert.equal(r2!.id, q2.id);
    assert.equal(rcode(r2!), 'NXDOMAIN');
  });

  it('an answer too big for UDP is truncated (TC, no records); over TCP it comes whole', async () => {
    const q = query('many.big.svc.cluster.local', 'A');
    const r = await udp(server.udpPort, q);
    assert.equal(r.flag_tc, true);
    assert.equal(r.answers?.length, 0);
    const [t] = await tcp(server.tcpPort!, [q]);
    assert.equal(t!.flag_tc, false);
    assert.equal(aData(t!).length, 120);
    // With EDNS(0) the client may take more over UDP, and gets an OPT back; 120 A records still exceed 1232 bytes.
    const e = await udp(server.udpPort, { ...q, additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4096 } as never] });
    assert.ok(e.additionals?.some((x) => x.type === 'OPT'));
    assert.equal(e.flag_tc, true);
  });

  it('a malformed message gets FORMERR with its ID; another opcode gets NOTIMP; a response is not answered as a query', async () => {
    const junk = Buffer.from([0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x61]);
    const raw = await udpAsk(server.udpPort, junk);
    assert.equal(raw.readUInt16BE(0), 0x1234);
    assert.equal(raw.readUInt16BE(2) & 0x8000, 0x8000, 'QR set');
    assert.equal(raw.readUInt16BE(2) & 0xf, 1, 'FORMERR');
    const notify = await udp(server.udpPort, query('rebel-base.default.svc.cluster.local', 'A', { flags: 4 << 11 }));
    assert.equal(rcode(notify), 'NOTIMP');
    const resp = answerQuery(dnsPacket.decode(dnsPacket.encode({ ...query('rebel-base.default.svc.cluster.local', 'A'), type: 'response' })), fixture());
    assert.equal((resp.flags ?? 0) & 0xf, 1);
    assert.equal(resp.answers?.length, 0);
  });

  it('before the store has synced, names in the domain get SERVFAIL (not a wrong NXDOMAIN); outside stays REFUSED', () => {
    const notReady: DnsData = { ...fixture(), ready: () => false };
    const r = answerQuery(dnsPacket.decode(dnsPacket.encode(query('rebel-base.default.svc.cluster.local', 'A'))), notReady);
    assert.equal((r.flags ?? 0) & 0xf, 2);
    const o = answerQuery(dnsPacket.decode(dnsPacket.encode(query('example.com', 'A'))), notReady);
    assert.equal((o.flags ?? 0) & 0xf, 5);
  });

  it('counts answers by rcode', () => {
    assert.ok((server.counts.NOERROR ?? 0) > 0);
    assert.ok((server.counts.NXDOMAIN ?? 0) > 0);
    assert.ok((server.counts.REFUSED ?? 0) > 0);
  });
});

describe('cluster DNS manifest and config', () => {
  it('the manifest is a Namespace, a Deployment and a Service at 10.96.0.10 (UDP and TCP 53) selecting the Deployment\'s pods', () => {
    const kube = { kubeconfig: '/x/local.kubeconfig', socket: '/x/api.sock' };
    const docs = parseAllDocuments(clusterDnsManifest({ kube })).map((d) => d.toJS() as Record<string, any>);
    assert.deepEqual(docs.map((d) => d.kind), ['Namespace', 'Deployment', 'Service']);
    const service = parseObject('Service', docs[2]);
    assert.equal(service.spec.clusterIP, DNS_SERVICE_IP);
    assert.deepEqual(service.spec.ports.map((p) => `${p.port}/${p.protocol}`).sort(), ['53/TCP', '53/UDP']);
    const template = docs[1]!.spec.template;
    for (const [k, v] of Object.entries(service.spec.selector ?? {})) assert.equal(template.metadata.labels[k], v);
    assert.deepEqual(template.spec.containers[0].command, ['clustermesh', 'lab', 'workload', 'dns', '--kubeconfig', '/x/local.kubeconfig', '--kube-api-socket', '/x/api.sock']);
    const custom = clusterDnsObjects({ kube, cli: ['node', '/p/cli.js'] })[1] as { spec: { template: { spec: { containers: Array<{ command: string[] }> } } } };
    assert.deepEqual(custom.spec.template.spec.containers[0]!.command.slice(0, 3), ['node', '/p/cli.js', 'lab']);
  });

  it('resolv.conf: the DNS Service IP and the Kubernetes search list with ndots:5', () => {
    assert.equal(resolvConf('default'), 'nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n');
  });
});

describe('cluster DNS workload reading the Kubernetes API, asked by glibc from a pod namespace', { timeout: 120_000 }, () => {
  const tag = randomBytes(3).toString('hex');
  const etcdNs = `cmtdns${tag}e`;
  const podNs = `cmtdns${tag}p`;
  const resolvDir = `/etc/netns/${podNs}`;
  let dir: string;
  let etcd: EtcdServer | undefined;
  let kv: KvClient | undefined;
  let dns: ChildProcess | undefined;
  let api: KubeApiServer | undefined;
  let kube: KubeObjects;
  let logFile: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cmtdns-'));
    for (const n of [etcdNs, podNs]) {
      await run(['ip', 'netns', 'add', n]);
      await run(['ip', '-n', n, 'link', 'set', 'lo', 'up']);
    }
    // The pod's eth0 (a veth to the other namespace): getaddrinfo() with AI_ADDRCONFIG asks no DNS
    // for IPv4 names while the namespace has no IPv4 address besides loopback.
    await run(['ip', 'link', 'add', 'eth0', 'netns', podNs, 'type', 'veth', 'peer', 'name', 'p0', 'netns', etcdNs]);
    await run(['ip', '-n', podNs, 'addr', 'add', '10.101.1.99/24', 'dev', 'eth0']);
    await run(['ip', '-n', podNs, 'link', 'set', 'eth0', 'up']);
    etcd = await startEtcd({ dir: join(dir, 'etcd'), name: 'cmtdns', clusterName: 'cluster1', netns: etcdNs });
    kv = new KvClient(etcd.connection('root', { timeoutMs: 3000 }));
    // The cluster's Kubernetes API (in this process), also on a TLS unix socket: the DNS process
    // forwards 127.0.0.1:6443 of its own network namespace to it, as in a lab.
    const socket = join(dir, 'api.sock');
    const started = await startKubeApi({ kv, dir: join(dir, 'kube-api'), clusterName: 'cluster1', socketPath: socket });
    api = started.server;
    kube = new KubeObjects(loadKubeConnection({ kubeconfig: started.kubeconfig }).kubeConfig);
    await kube.apply({ kind: 'Service', metadata: { name: 'rebel-base', namespace: 'default' }, spec: { clusterIP: '10.96.77.7', ports: [{ port: 80 }] } });
    const cfg = join(dir, 'dns.kubeconfig');
    await writeKubeconfig(cfg, [{ name: 'cluster1', server: 'https://127.0.0.1:6443', caFile: started.pki.ca.certFile, certFile: started.pki.admin.certFile, keyFile: started.pki.admin.keyFile }]);
    await mkdir(resolvDir, { recursive: true });
    await writeFile(join(resolvDir, 'resolv.conf'), resolvConf('default', '127.0.0.1'));
    logFile = join(dir, 'dns.log');
    const { openSync, closeSync } = await import('node:fs');
    const fd = openSync(logFile, 'a');
    dns = spawnIn(podNs, [process.execPath, CLI, 'lab', 'workload', 'dns', '--kubeconfig', cfg, '--kube-api-socket', socket, '--listen', '127.0.0.1:53'], { logFd: fd });
    closeSync(fd);
    for (let i = 0; ; i++) {
      if ((await readFile(logFile, 'utf8')).includes('dns: serving')) break;
      if (dns.exitCode !== null || i > 300) assert.fail(`the DNS workload did not start:\n${await readFile(logFile, 'utf8')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  after(async () => {
    if (dns) await stopChild(dns);
    await api?.stop().catch(() => undefined);
    await kv?.close().catch(() => undefined);
    await etcd?.stop().catch(() => undefined);
    for (const n of [podNs, etcdNs]) await run(['ip', 'netns', 'del', n]).catch(() => undefined);
    await rm(resolvDir, { recursive: true, force: true });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const getent = async (name: string): Promise<string | undefined> => {
    try {
      const { stdout } = await runIn(podNs, ['getent', 'ahostsv4', name], { timeoutMs: 20_000 });
      return stdout.split('\n')[0]?.split(/\s+/)[0];
    } catch {
      return undefined;
    }
  };

  /** The DNS workload's log has a line matching `re` (it logs every answer: `udp PEER A NAME -> RCODE`). */
  const logged = async (re: RegExp): Promise<void> => {
    for (let i = 0; ; i++) {
      const log = await readFile(logFile, 'utf8');
      if (re.test(log)) return;
      if (i >= 100) assert.fail(`no line matching ${re} in the DNS log:\n${log.split('\n').slice(-15).join('\n')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  /** `name` does not resolve for the right reason: our server answered it with the
   * negative rcode in `answered`, and the same resolver still resolves a known name
   * right after (a broken resolver or a dead server fails both, not only the first). */
  const doesNotResolve = async (name: string, answered: RegExp): Promise<void> => {
    assert.equal(await getent(name), undefined, `${name} resolved`);
    await logged(answered);
    assert.equal(await getent('rebel-base'), '10.96.77.7', `positive control after ${name}: the resolver still answers a known name`);
  };

  it('the FQDN and the short forms (through the search list) resolve to the ClusterIP; unknown and outside names do not', async () => {
    assert.equal(await getent('rebel-base.default.svc.cluster.local'), '10.96.77.7');
    assert.equal(await getent('rebel-base.default'), '10.96.77.7');
    assert.equal(await getent('rebel-base'), '10.96.77.7');
    await doesNotResolve('nosuch', / A nosuch\.default\.svc\.cluster\.local -> NXDOMAIN$/m);
    await doesNotResolve('example.com', / A example\.com -> REFUSED$/m);
  });

  it('follows the API: a new Service resolves, a deleted one stops resolving', async () => {
    const writer = kube;
    await writer.apply({ kind: 'Service', metadata: { name: 'x-wing', namespace: 'default' }, spec: { clusterIP: '10.96.77.8', ports: [{ port: 80 }] } });
    let got: string | undefined;
    for (let i = 0; i < 100 && got !== '10.96.77.8'; i++) {
      got = await getent('x-wing');
      if (got !== '10.96.77.8') await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(got, '10.96.77.8');
    await writer.delete('Service', { namespace: 'default', name: 'x-wing' });
    for (let i = 0; i < 100 && got !== undefined; i++) {
      got = await getent('x-wing');
      if (got !== undefined) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(got, undefined);
    await doesNotResolve('x-wing', /udp 127\.0\.0\.1:\d+ A x-wing\.default\.svc\.cluster\.local -> NXDOMAIN/);
  });
});
