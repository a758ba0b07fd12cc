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
    [{ ...base, type: '/opt/cni/bin/clustermesh-cni' }, /^invalid network config: type: must be the plugin executable's file name/],
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

// The plugin validates by hand (no zod on its path); these pin what each field accepts and how a refusal reads.
test('hand-written validators: each bad field is named with what is wrong and what it got', () => {
  const cases: Array<[unknown, string]> = [
    [{ ...base, name: 5 }, 'name: must be a string, got a number (5)'],
    [{ ...base, name: '-x' }, 'name: letters, digits, "_", "." and "-", starting with a letter or digit'],
    [{ ...base, type: undefined }, 'type: required (a string)'],
    [{ ...base, agentSocket: undefined }, 'agentSocket: required (a string)'],
    [{ ...base, agentSocket: null }, 'agentSocket: must be a string, got null'],
    [{ ...base, agentTimeoutSeconds: 0 }, 'agentTimeoutSeconds: must be an integer in 1..300, got a number (0)'],
    [{ ...base, agentTimeoutSeconds: 1.5 }, 'agentTimeoutSeconds: must be an integer in 1..300, got a number (1.5)'],
    [{ ...base, mtu: '1450' }, 'mtu: must be an integer in 576..9000, got a string ("1450")'],
    [{ ...base, underlayMtu: 9001 }, 'underlayMtu: must be an integer in 1280..9000, got a number (9001)'],
    [{ ...base, ipam: undefined }, 'ipam: required (an object)'],
    [{ ...base, ipam: [] }, 'ipam: must be an object, got an array'],
    [{ ...base, ipam: {} }, 'ipam.podCIDR: required (a string)'],
    [{ ...base, ipam: { type: 'dhcp', podCIDR: '10.101.1.0/24' } }, 'ipam.type: must be "host-local" (or absent)'],
    [{ ...base, ipam: { podCIDR: '10.101.1.0' } }, 'ipam.podCIDR: must be an IPv4 CIDR a.b.c.d/n'],
    [{ ...base, ipam: { podCIDR: '10.101.1.0/24/1' } }, 'ipam.podCIDR: must be an IPv4 CIDR a.b.c.d/n'],
    [{ ...base, ipam: { podCIDR: '256.1.1.0/24' } }, 'ipam.podCIDR: must be an IPv4 CIDR a.b.c.d/n'],
    [{ ...base, ipam: { podCIDR: '10.101.1.0/31' } }, 'ipam.podCIDR: must be /30 or larger to hold pods'],
    [{ ...base, ipam: { podCIDR: '10.101.1.0/24', gateway: '10.101.1' } }, 'ipam.gateway: must be an IPv4 address'],
    [{ ...base, ipam: { podCIDR: '10.101.1.0/24', rangeEnd: '10.101.2.1' } }, 'ipam.rangeEnd: must lie in podCIDR 10.101.1.0/24'],
    [{ ...base, ipam: { podCIDR: '10.101.1.0/24', dataDir: 'var/lib' } }, 'ipam.dataDir: must be an absolute path'],
    [{ ...base, dns: 'x' }, 'dns: must be an object, got a string ("x")'],
    [{ ...base, dns: { nameservers: '10.96.0.10' } }, 'dns.nameservers: must be an array of strings, got a string ("10.96.0.10")'],
    [{ ...base, dns: { nameservers: ['10.96.0.10', 'kube-dns'] } }, 'dns.nameservers.1: must be an IPv4 address'],
    [{ ...base, dns: { search: [1] } }, 'dns.search.0: must be a string, got a number (1)'],
    [{ ...base, dns: { domain: false } }, 'dns.domain: must be a string, got a boolean (false)'],
    [{ ...base, labels: [] }, 'labels: must be an object of label keys to values, got an array'],
    [{ ...base, labels: { 'bad key!': 'x' } }, 'labels.bad key!: not a qualified name ([prefix/]name)'],
    [{ ...base, labels: { app: 'a b' } }, 'labels.app: alphanumerics, "-", "_" and ".", starting and ending alphanumeric'],
    [{ ...base, labels: { app: 'a'.repeat(64) } }, 'labels.app: at most 63 characters'],
    [{ ...base, labels: { app: 1 } }, 'labels.app: must be a string, got a number (1)'],
    [{ ...base, runtimeConfig: [] }, 'runtimeConfig: must be an object, got an array'],
    [{ ...base, runtimeConfig: { labels: { 'example.com/': 'x' } } }, 'runtimeConfig.labels.example.com/: not a qualified name ([prefix/]name)'],
    [{ ...base, runtimeConfig: { ips: ['10.101.1.5', '10.101.1.6'] } }, 'runtimeConfig.ips: at most one address'],
    [{ ...base, runtimeConfig: { ips: ['10.101.1.5/24'] } }, 'runtimeConfig.ips.0: must be an IPv4 address (optionally /32)'],
    [{ ...base, runtimeConfig: { serviceAccount: 'SA' } }, 'runtimeConfig.serviceAccount: lowercase alphanumerics, "-" and ".", starting and ending alphanumeric'],
  ];
  for (const [conf, line] of cases) {
    assert.throws(
      () => parseNetConf(JSON.stringify(conf)),
      (err: unknown) => err instanceof CniError && err.code === 7 && err.message === `invalid network config: ${line}` && err.details === line,
      `${JSON.stringify(conf)} → ${line}`,
    );
  }
});

test('every bad field is listed in the details, the first one in the message', () => {
  const conf = { ...base, name: '', mtu: 1, ipam: { podCIDR: '10.101.1.0/24', gateway: '1.1.1.1' }, labels: { a: '-' } };
  assert.throws(
    () => parseNetConf(JSON.stringify(conf)),
    (err: unknown) => {
      assert.ok(err instanceof CniError && err.code === 7);
      assert.equal(err.message, 'invalid network config: name: must not be empty');
      assert.deepEqual(err.details.split('\n'), [
        'name: must not be empty',
        'mtu: must be an integer in 576..9000, got a number (1)',
        'ipam.gateway: must lie in podCIDR 10.101.1.0/24',
        'labels.a: alphanumerics, "-", "_" and ".", starting and ending alphanumeric',
      ]);
      return true;
    },
  );
});

test('valid optional fields pass through; unknown fields and prevResult are kept out of the way', () => {
  const c = parseNetConf(
    JSON.stringify({
      ...base,
      agentTimeoutSeconds: 5,
      something: { else: true },
      prevResult: { ips: [] },
      dns: { nameservers: ['10.96.0.10'], domain: 'cluster.local', search: ['default.svc.cluster.local'] },
      ipam: { type: 'host-local', podCIDR: '10.101.0.0/22', gateway: '10.101.3.254', rangeStart: '10.101.0.10', rangeEnd: '10.101.3.200', dataDir: '/var/lib/cm' },
      labels: { 'example.com/team': 'net', empty: '' },
    }),
  );
  assert.equal(c.agentTimeoutMs, 5000);
  assert.deepEqual(c.prevResult, { ips: [] });
  assert.deepEqual(c.dns, { nameservers: ['10.96.0.10'], domain: 'cluster.local', search: ['default.svc.cluster.local'], options: [] });
  assert.deepEqual([c.podCIDR, c.gateway, c.rangeStart, c.rangeEnd, c.dataDir], ['10.101.0.0/22', '10.101.3.254', '10.101.0.10', '10.101.3.200', '/var/lib/cm']);
  assert.deepEqual(c.labels, { 'example.com/team': 'net', empty: '' });
  assert.equal(parseNetConf(JSON.stringify({ ...base, dns: {} })).dns?.nameservers.length, 0);
});

test('CNI_ARGS names: the same rules as the model, without zod', () => {
  const args = (ns: string, pod: string, extra = '') => env({ CNI_ARGS: `K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=${pod}${extra}` });
  throwsCni(() => parseEnv(args('a'.repeat(64), 'p')), 4, /^CNI_ARGS: K8S_POD_NAMESPACE 'a{64}': at most 63 characters$/);
  throwsCni(() => parseEnv(args('a.b', 'p')), 4, /^CNI_ARGS: K8S_POD_NAMESPACE 'a\.b': lowercase alphanumerics and "-"/);
  throwsCni(() => parseEnv(args('a', 'p_1')), 4, /^CNI_ARGS: K8S_POD_NAME 'p_1': lowercase alphanumerics, "-" and "\."/);
  throwsCni(() => parseEnv(args('a', 'p', ';K8S_POD_SERVICE_ACCOUNT=-sa')), 4, /^CNI_ARGS: K8S_POD_SERVICE_ACCOUNT '-sa'/);
  assert.equal(parseEnv(args('a', 'web-1.x', ';K8S_POD_SERVICE_ACCOUNT=sa')).serviceAccount, 'sa');
});

test("a conflist's plugin entry as the runtime passes it: the list's cniVersion and name added, no prevResult", async () => {
  const { cniConflist } = await import('../agent/cni-conf.ts');
  const list = cniConflist({ socketPath: '/var/run/clustermesh/agent/agent.sock', podCIDR: '10.101.3.0/24', cniBinaryName: 'clustermesh-cni' }, 1500) as { cniVersion: string; name: string; plugins: Array<Record<string, unknown>> };
  assert.equal(list.plugins.length, 1);
  // What libcni hands the plugin on stdin for the list's first plugin on ADD.
  const entry = { ...list.plugins[0], cniVersion: list.cniVersion, name: list.name };
  const c = parseNetConf(JSON.stringify(entry));
  assert.equal(c.agentSocket, '/var/run/clustermesh/agent/agent.sock');
  assert.equal(c.podCIDR, '10.101.3.0/24');
  assert.equal(c.gateway, '10.101.3.1');
  assert.equal(c.mtu, 1450);
  assert.equal(c.prevResult, undefined);
  assert.equal(c.name, 'clustermesh');
  // The lab's executable name is accepted as well.
  assert.equal(parseNetConf(JSON.stringify({ ...entry, type: 'clustermesh' })).podCIDR, '10.101.3.0/24');
});
