import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCniArgs, parseEnv, parseNetConf } from './config.ts';
import { CniError, toCniError } from './errors.ts';

const base = { cniVersion: '1.0.0', name: 'clustermesh', type: 'clustermesh', agentSocket: '/run/cm/node1/agent.sock', ipam: { podCIDR: '10.101.1.0/24' } };
const env = (over: Record<string, string | undefined> = {}): NodeJS.ProcessEnv => ({
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'c0ffee',
  CNI_NETNS: '/var/run/netns/pod1',
  CNI_IFNAME: 'eth0',
  CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1',
  CNI_PATH: '/opt/cni/bin:/usr/lib/cni',
  ...over,
});

function throwsCni(fn: () => unknown, code: number, msg: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CniError, `a CniError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.match(err.message, msg);
    return true;
  });
}

test('a minimal config gets its defaults: MTU underlay-50, gateway .1, range .2-.254, per-node IPAM dir', () => {
  const c = parseNetConf(JSON.stringify(base));
  assert.equal(c.mtu, 1450);
  assert.equal(c.gateway, '10.101.1.1');
  assert.equal(c.rangeStart, '10.101.1.2');
  assert.equal(c.rangeEnd, '10.101.1.254');
  assert.equal(c.dataDir, '/run/cm/node1/cni-ipam/clustermesh');
  assert.equal(c.agentTimeoutMs, 30_000);
  assert.deepEqual(c.labels, {});
  assert.equal(c.runtimeIP, undefined);
});

test('explicit fields win; runtimeConfig labels override config labels; a fixed ip from runtimeConfig', () => {
  const c = parseNetConf(
    JSON.stringify({ ...base, mtu: 1400, underlayMtu: 9000, labels: { app: 'a', team: 't' }, runtimeConfig: { labels: { app: 'b' }, ips: ['10.101.1.42/32'], serviceAccount: 'sa' }, ipam: { podCIDR: '10.101.1.7/24', rangeStart: '10.101.1.100' } }),
  );
  assert.equal(c.mtu, 1400);
  assert.equal(c.podCIDR, '10.101.1.0/24', 'the CIDR is normalised to its network');
  assert.equal(c.rangeStart, '10.101.1.100');
  assert.deepEqual(c.labels, { app: 'b', team: 't' });
  assert.equal(c.runtimeIP, '10.101.1.42');
  assert.equal(c.serviceAccount, 'sa');
  assert.equal(parseNetConf(JSON.stringify({ ...base, underlayMtu: 9000 })).mtu, 8950);
});

test('invalid configs are code 7 and name the field', () => {
  const bad: Array<[unknown, RegExp]> = [
    [{ ...base, type: 'bridge' }, /^invalid network config: type: must be "clustermesh"/],
    [{ ...base, name: '' }, /name: must not be empty/],
    [{ ...base, agentSocket: 'agent.sock' }, /agentSocket: must be an absolute path/],
    [{ ...base, agentSocket: undefined }, /agentSocket/],
    [{ ...base, mtu: 100 }, /mtu/],
    [{ ...base, ipam: {} }, /ipam\.podCIDR/],
    [{ ...base, ipam: { podCIDR: '10.101.1.0/33' } }, /ipam\.podCIDR: must be an IPv4 CIDR/],
    [{ ...base, ipam: { podCIDR: '10.101.1.0/24', rangeStart: '10.9.0.1' } }, /ipam\.rangeStart: must lie in podCIDR/],
    [{ ...base, labels: { 'bad key!': 'x' } }, /labels/],
    [{ ...base, runtimeConfig: { ips: ['nope'] } }, /runtimeConfig\.ips\.0/],
    [{ ...base, runtimeConfig: { ips: ['10.101.1.1'] } }, /runtimeConfig\.ips: 10\.101\.1\.1 is the gateway/],
    [{ ...base, runtimeConfig: { ips: ['10.101.1.255'] } }, /not a host address/],
    [{ ...base, cniVersion: undefined }, /cniVersion/],
    [[], /must be a JSON object/],
  ];
  for (const [conf, re] of bad) throwsCni(() => parseNetConf(JSON.stringify(conf)), 7, re);
});

test('an unsupported version is code 1; stdin that is not JSON is code 6', () => {
  throwsCni(() => parseNetConf(JSON.stringify({ ...base, cniVersion: '0.4.0' })), 1, /incompatible CNI version 0\.4\.0.*1\.0\.0/);
  throwsCni(() => parseNetConf('{not json'), 6, /not JSON/);
});

test('the environment: ADD needs container ID, netns, ifname and the pod name and namespace', () => {
  const e = parseEnv(env());
  assert.equal(e.command, 'ADD');
  assert.equal(e.podNamespace, 'default');
  assert.equal(e.podName, 'web-1');
  assert.deepEqual(e.path, ['/opt/cni/bin', '/usr/lib/cni']);
  assert.equal(parseEnv(env({ CNI_ARGS: 'K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;IP=10.101.1.9' })).argIP, '10.101.1.9');
  assert.equal(parseEnv({ CNI_COMMAND: 'VERSION' }).command, 'VERSION');
  // DEL tolerates a missing netns and pod identity.
  const d = parseEnv(env({ CNI_COMMAND: 'DEL', CNI_NETNS: undefined, CNI_ARGS: undefined }));
  assert.equal(d.netns, undefined);

  const bad: Array<[Record<string, string | undefined>, RegExp]> = [
    [{ CNI_COMMAND: undefined }, /^CNI_COMMAND: not set/],
    [{ CNI_COMMAND: 'UPDATE' }, /^CNI_COMMAND: 'UPDATE' is not one of/],
    [{ CNI_CONTAINERID: undefined }, /^CNI_CONTAINERID: not set/],
    [{ CNI_CONTAINERID: '../x' }, /^CNI_CONTAINERID:/],
    [{ CNI_IFNAME: undefined }, /^CNI_IFNAME: not set/],
    [{ CNI_IFNAME: 'a-very-long-interface' }, /^CNI_IFNAME:/],
    [{ CNI_IFNAME: 'a/b' }, /^CNI_IFNAME:/],
    [{ CNI_NETNS: undefined }, /^CNI_NETNS: not set/],
    [{ CNI_NETNS: 'pod1' }, /^CNI_NETNS: 'pod1' must be an absolute path/],
    [{ CNI_ARGS: 'K8S_POD_NAME=x' }, /^CNI_ARGS: K8S_POD_NAMESPACE is required/],
    [{ CNI_ARGS: 'K8S_POD_NAMESPACE=default' }, /^CNI_ARGS: K8S_POD_NAME is required/],
    [{ CNI_ARGS: 'K8S_POD_NAMESPACE=Default;K8S_POD_NAME=x' }, /^CNI_ARGS: K8S_POD_NAMESPACE 'Default'/],
    [{ CNI_ARGS: 'junk' }, /^CNI_ARGS: 'junk' is not KEY=VALUE/],
    [{ CNI_ARGS: 'K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;IP=300.1.1.1' }, /^CNI_ARGS: IP/],
  ];
  for (const [over, re] of bad) throwsCni(() => parseEnv(env(over)), 4, re);
});

test('CNI_ARGS parsing keeps "=" inside values and skips empty pairs', () => {
  assert.deepEqual(parseCniArgs('A=1;;B=x=y;'), { A: '1', B: 'x=y' });
  assert.deepEqual(parseCniArgs(undefined), {});
});

test('errors serialise as the spec error JSON', () => {
  assert.deepEqual(new CniError(7, 'invalid network config: mtu: too small', 'mtu: too small').toJSON('1.0.0'), {
    cniVersion: '1.0.0',
    code: 7,
    msg: 'invalid network config: mtu: too small',
    details: 'mtu: too small',
  });
  assert.deepEqual(new CniError(11, 'later').toJSON('1.0.0'), { cniVersion: '1.0.0', code: 11, msg: 'later' });
  const e = toCniError(new Error('first line\nsecond'));
  assert.equal(e.code, 999);
  assert.equal(e.message, 'first line');
  assert.equal(e.details, 'first line\nsecond');
});
