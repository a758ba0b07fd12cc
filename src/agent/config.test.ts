// Agent config: defaults, path resolution, flag overrides, and errors that
// name the file and the setting.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentConfigError, compileAgentConfig, loadAgentConfig, resolveNodeConfig, resolveNodeIP } from './config.ts';

const base = {
  clusterName: 'cluster1',
  clusterID: 1,
  nodeName: 'node1',
  nodeIP: '10.1.0.1',
  podCIDR: '10.101.1.0/24',
  etcd: { endpoints: ['https://10.1.0.250:2379'], caFile: 'pki/ca.crt', certFile: 'pki/agent.crt', keyFile: 'pki/agent.key' },
  clustermeshConfigDir: 'remote-clusters',
  stateDir: '/run/cm/node1',
};

const compile = (doc: unknown, flags = {}) => compileAgentConfig(doc, { source: '/x/y.yaml', baseDir: '/x', file: '/x/y.yaml', flags });

function rejects(doc: unknown, message: string | RegExp, flags = {}): void {
  assert.throws(
    () => compile(doc, flags),
    (e: unknown) => {
      assert.ok(e instanceof AgentConfigError, String(e));
      if (typeof message === 'string') assert.equal(e.message, message);
      else assert.match(e.message, message);
      return true;
    },
  );
}

describe('agent config', () => {
  it('kubeconfig: absent means the store; a relative path resolves against the file; a missing file names the setting', async () => {
    assert.equal(compile(base).kubeconfig, undefined);
    const dir = await mkdtemp(join(tmpdir(), 'cm-agent-kc-'));
    try {
      await writeFile(join(dir, 'kube.yaml'), 'apiVersion: v1\nkind: Config\n');
      const c = compileAgentConfig({ ...base, kubeconfig: 'kube.yaml' }, { source: join(dir, 'a.yaml'), baseDir: dir, file: join(dir, 'a.yaml') });
      assert.equal(c.kubeconfig, join(dir, 'kube.yaml'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    rejects({ ...base, kubeconfig: 'nope.yaml' }, 'agent config /x/y.yaml: kubeconfig: /x/nope.yaml: no such file');
    rejects({ ...base, kubeconfig: '' }, /kubeconfig: must be the path of a kubeconfig file/);
  });

  it('fills defaults and resolves relative paths against the file', () => {
    const c = compile(base);
    assert.equal(c.maxConnectedClusters, 255);
    assert.equal(c.tunnelPort, 8472);
    assert.equal(c.vxlanDevice, 'cm_vxlan');
    assert.equal(c.syncTimeoutMs, 30_000);
    assert.equal(c.fullSyncIntervalMs, 30_000);
    assert.equal(c.logLevel, 'info');
    assert.equal(c.etcd.caFile, '/x/pki/ca.crt');
    assert.equal(c.clustermeshConfigDir, '/x/remote-clusters');
    assert.equal(c.stateDir, '/run/cm/node1');
    assert.equal(c.socketPath, '/run/cm/node1/agent.sock');
    assert.equal(c.pinDir, '/run/clustermesh/bpffs/cluster1-node1');
    assert.equal(compile({ ...base, nodeName: 'node1.example' }).pinDir, '/run/clustermesh/bpffs/cluster1-node1-example', 'bpffs names have no dots');
    assert.deepEqual(c.etcd.endpoints, ['https://10.1.0.250:2379']);
  });

  it('names the file and the setting in every error', () => {
    rejects({ ...base, clusterID: 0 }, 'agent config /x/y.yaml: clusterID: must be 1..255');
    rejects({ ...base, clusterID: 300 }, 'agent config /x/y.yaml: clusterID: must be 1..255');
    assert.equal(compile({ ...base, clusterID: 300, maxConnectedClusters: 511 }).clusterID, 300);
    rejects({ ...base, maxConnectedClusters: 100 }, 'agent config /x/y.yaml: maxConnectedClusters: must be 255 or 511');
    rejects({ ...base, clusterName: 'Cluster_1' }, /^agent config \/x\/y\.yaml: clusterName: cluster name "Cluster_1" must consist of lowercase/);
    rejects({ ...base, clusterID: 'one' }, 'agent config /x/y.yaml: clusterID: must be a number');
    rejects({ ...base, nodeIP: '10.1.0.300' }, 'agent config /x/y.yaml: nodeIP: must be an IPv4 address');
    rejects({ ...base, podCIDR: '10.101.1.7/24' }, 'agent config /x/y.yaml: podCIDR: host bits are set; did you mean 10.101.1.0/24?');
    rejects({ ...base, podCIDR: '10.101.1.0' }, 'agent config /x/y.yaml: podCIDR: must be an IPv4 prefix a.b.c.d/len');
    rejects({ ...base, tunnelPort: 70000 }, 'agent config /x/y.yaml: tunnelPort: must be 1..65535');
    rejects({ ...base, vxlanDevice: 'a-name-much-too-long' }, 'agent config /x/y.yaml: vxlanDevice: at most 15 characters (a Linux device name)');
    rejects({ ...base, etcd: { ...base.etcd, endpoints: ['http://10.1.0.250:2379'] } }, 'agent config /x/y.yaml: etcd.endpoints[0]: must be https://host:port (mutual TLS is required)');
    rejects({ ...base, etcd: { ...base.etcd, caFile: undefined } }, 'agent config /x/y.yaml: etcd.caFile: is required');
    rejects({ ...base, etcd: { ...base.etcd, ca: 'x' } }, 'agent config /x/y.yaml: etcd.ca: unknown setting');
    rejects({ ...base, clustrName: 'x' }, 'agent config /x/y.yaml: clustrName: unknown setting');
    rejects({ ...base, syncTimeoutSeconds: 0 }, 'agent config /x/y.yaml: syncTimeoutSeconds: must be greater than 0');
    rejects({ ...base, logLevel: 'loud' }, /^agent config \/x\/y\.yaml: logLevel: must be one of trace, debug/);
    rejects({ ...base, stateDir: undefined }, 'agent config /x/y.yaml: stateDir: is required');
    rejects({ ...base, stateDir: `/${'s'.repeat(120)}` }, /^agent config \/x\/y\.yaml: stateDir: .* is longer than a unix socket path may be/);
    rejects([1, 2], 'agent config /x/y.yaml: must be a YAML mapping of settings');
    rejects({ ...base, pinDir: '/run/clustermesh/bpffs/c1.n1' }, 'agent config /x/y.yaml: pinDir: /run/clustermesh/bpffs/c1.n1: a bpffs does not allow "." in names');
  });

  it('tcAttach: auto by default; tcx or cls_bpf to insist; anything else named', () => {
    assert.equal(compile(base).tcAttach, 'auto');
    assert.equal(compile({ ...base, tcAttach: 'cls_bpf' }).tcAttach, 'cls_bpf');
    assert.equal(compile({ ...base, tcAttach: 'tcx' }).tcAttach, 'tcx');
    rejects({ ...base, tcAttach: 'clsact' }, /tcAttach: must be auto, tcx or cls_bpf/);
  });

  it('tunnelEncap: bpf by default; device on request; anything else named', () => {
    assert.equal(compile(base).tunnelEncap, 'bpf');
    assert.equal(compile({ ...base, tunnelEncap: 'device' }).tunnelEncap, 'device');
    rejects({ ...base, tunnelEncap: 'kernel' }, /tunnelEncap: must be bpf or device/);
  });

  it('routingMode: tunnel by default; native needs nativeRoutingCIDRs covering the podCIDR', () => {
    assert.deepEqual([compile(base).routingMode, compile(base).nativeRoutingCIDRs], ['tunnel', []]);
    const native = compile({ ...base, routingMode: 'native', nativeRoutingCIDRs: ['10.101.0.0/16', '10.102.0.0/16'] });
    assert.deepEqual([native.routingMode, native.nativeRoutingCIDRs], ['native', ['10.101.0.0/16', '10.102.0.0/16']]);
    rejects({ ...base, routingMode: 'direct' }, /routingMode: must be tunnel or native/);
    rejects({ ...base, routingMode: 'native' }, /nativeRoutingCIDRs: is required with routingMode native/);
    rejects({ ...base, nativeRoutingCIDRs: ['10.101.0.0/16'] }, /nativeRoutingCIDRs: only applies to routingMode native/);
    rejects({ ...base, routingMode: 'native', nativeRoutingCIDRs: ['10.102.0.0/16'] }, /nativeRoutingCIDRs: none covers this node's podCIDR 10\.101\.1\.0\/24/);
    rejects({ ...base, routingMode: 'native', nativeRoutingCIDRs: ['10.101.1.1/16'] }, /host bits are set; did you mean 10\.101\.0\.0\/16/);
    rejects({ ...base, routingMode: 'native', nativeRoutingCIDRs: Array.from({ length: 9 }, (_, i) => `10.${101 + i}.0.0/16`) }, /nativeRoutingCIDRs: at most 8/);
  });

  it('socketLBCgroup: off when absent, an absolute cgroup path otherwise', () => {
    assert.equal(compile(base).socketLBCgroup, undefined);
    assert.equal(compile({ ...base, socketLBCgroup: '/sys/fs/cgroup/unified/clustermesh/n1' }).socketLBCgroup, '/sys/fs/cgroup/unified/clustermesh/n1');
    rejects({ ...base, socketLBCgroup: 'cg/n1' }, 'agent config /x/y.yaml: socketLBCgroup: must be an absolute path to a cgroup v2 directory, without ".."');
    rejects({ ...base, socketLBCgroup: '/sys/fs/cgroup/../x' }, /socketLBCgroup: must be an absolute path/);
  });

  it('mapSizes: absent = the objects\' sizes; each a named integer 16..16777216', () => {
    assert.deepEqual(compile(base).mapSizes, {});
    assert.deepEqual(compile({ ...base, mapSizes: { ipcache: 64, conntrack: 1 << 20 } }).mapSizes, { ipcache: 64, conntrack: 1 << 20 });
    rejects({ ...base, mapSizes: { ipcache: 8 } }, 'agent config /x/y.yaml: mapSizes.ipcache: must be 16..16777216');
    rejects({ ...base, mapSizes: { backends: 1.5 } }, /mapSizes\.backends: must be an integer/);
    rejects({ ...base, mapSizes: { services: '100' } }, /mapSizes\.services: must be a number/);
    rejects({ ...base, mapSizes: { policy: 100 } }, /mapSizes\.policy: unknown setting/);
    rejects({ ...base, mapSizes: 100 }, /mapSizes: must be a mapping of ipcache, endpoints, services, backends, conntrack to max entries/);
  });

  it('eventsRingBytes: the datapath default when absent, else a power of two of at least a page', () => {
    assert.equal(compile(base).eventsRingBytes, undefined);
    assert.equal(compile({ ...base, eventsRingBytes: 1 << 20 }).eventsRingBytes, 1 << 20);
    rejects({ ...base, eventsRingBytes: 3_000_000 }, 'agent config /x/y.yaml: eventsRingBytes: must be a power of two (e.g. 4194304 for 4 MiB)');
    rejects({ ...base, eventsRingBytes: 1024 }, /eventsRingBytes: must be 4096\.\./);
  });

  it('nodeIP or underlayDevice, not both; neither: the Node\'s InternalIP, which needs a Kubernetes API', async () => {
    const { nodeIP: _ip, ...noIP } = base;
    const none = compile(noIP);
    assert.equal(none.nodeIP, undefined);
    await assert.rejects(resolveNodeConfig(none), {
      message: 'agent config /x/y.yaml: nodeIP: is required (nodeIP comes from Node node1 only when the agent reads a Kubernetes API; or set underlayDevice, to take its address)',
    });
    assert.equal((await resolveNodeConfig(none, { node: async () => ({ podCIDR: '10.101.9.0/24', internalIP: '10.1.0.9' }) })).nodeIP, '10.1.0.9');
    rejects({ ...base, underlayDevice: 'eth0' }, 'agent config /x/y.yaml: underlayDevice: give either nodeIP or underlayDevice, not both');
    const c = compile({ ...noIP, underlayDevice: 'eth0' });
    assert.equal(c.nodeIP, undefined);
    assert.equal(c.underlayDevice, 'eth0');
  });

  it('takes the node IP from the underlay device, or says the device has none', async () => {
    const { nodeIP: _ip, ...noIP } = base;
    const c = compile({ ...noIP, underlayDevice: 'eth0' });
    assert.equal((await resolveNodeIP(c, async (d) => (d === 'eth0' ? '10.1.0.7' : undefined))).nodeIP, '10.1.0.7');
    await assert.rejects(resolveNodeIP(c, async () => undefined), {
      message: 'agent config /x/y.yaml: underlayDevice: device eth0 has no IPv4 address in this network namespace',
    });
  });

  it('podCIDR absent: read from the Node, then checked as a configured one is', async () => {
    const { podCIDR: _p, ...noCidr } = base;
    const c = compile({ ...noCidr, nodeWaitTimeoutSeconds: 5 });
    assert.equal(c.podCIDR, undefined);
    assert.equal(c.nodeWaitTimeoutMs, 5000);
    const asked: unknown[] = [];
    const r = await resolveNodeConfig(c, {
      node: async (need) => {
        asked.push(need);
        return { podCIDR: '10.101.4.0/24', internalIP: '10.1.0.4' };
      },
    });
    assert.deepEqual(asked, [{ podCIDR: true, internalIP: false }]);
    assert.equal(r.podCIDR, '10.101.4.0/24');
    assert.equal(r.nodeIP, '10.1.0.1', 'the configured nodeIP wins over the InternalIP');
    await assert.rejects(resolveNodeConfig(c), { message: /^agent config \/x\/y\.yaml: podCIDR: is required \(podCIDR comes from Node node1 only when the agent reads a Kubernetes API\)$/ });
    await assert.rejects(resolveNodeConfig(c, { node: async () => ({ podCIDR: '10.101.4.9/24', internalIP: undefined }) }), {
      message: 'agent config /x/y.yaml: podCIDR (Node node1 spec.podCIDRs): 10.101.4.9/24: host bits are set; did you mean 10.101.4.0/24?',
    });
    const native = compile({ ...noCidr, routingMode: 'native', nativeRoutingCIDRs: ['10.200.0.0/16'] });
    await assert.rejects(resolveNodeConfig(native, { node: async () => ({ podCIDR: '10.101.4.0/24', internalIP: undefined }) }), {
      message: /^agent config \/x\/y\.yaml: nativeRoutingCIDRs: none covers this node's podCIDR 10\.101\.4\.0\/24 \(from podCIDR \(Node node1 spec\.podCIDRs\)\)/,
    });
    // A configured podCIDR never asks the API.
    assert.equal((await resolveNodeConfig(compile(base))).podCIDR, '10.101.1.0/24');
  });

  it('the CNI configuration settings: defaults, and checked names', () => {
    const c = compile(base);
    assert.equal(c.cniConfDir, undefined);
    assert.equal(c.cniConfName, '05-clustermesh.conflist');
    assert.equal(c.cniBinaryName, 'clustermesh-cni');
    const set = compile({ ...base, cniConfDir: 'net.d', cniConfName: '10-cm.conflist', cniBinaryName: 'cm' });
    assert.equal(set.cniConfDir, '/x/net.d');
    assert.equal(set.cniConfName, '10-cm.conflist');
    assert.equal(set.cniBinaryName, 'cm');
    rejects({ ...base, cniConfName: '../05.conflist' }, /cniConfName: must be a file name ending in \.conflist/);
    rejects({ ...base, cniBinaryName: '/opt/cni/bin/x' }, /cniBinaryName: must be the file name of an executable/);
  });

  it('remoteApi: off by default; paths resolved, clients default to observer; bad values named', () => {
    assert.equal(compile(base).remoteApi, undefined);
    const tls = { caFile: 'api/ca.crt', certFile: 'api/tls.crt', keyFile: '/etc/api/tls.key' };
    assert.deepEqual(compile({ ...base, remoteApi: { port: 4247, ...tls } }).remoteApi, { address: undefined, port: 4247, caFile: '/x/api/ca.crt', certFile: '/x/api/tls.crt', keyFile: '/etc/api/tls.key', clients: ['observer'] });
    assert.equal(compile({ ...base, remoteApi: { port: 4247, address: '10.1.0.1', clients: ['ops'], ...tls } }).remoteApi?.address, '10.1.0.1');
    rejects({ ...base, remoteApi: { port: 70000, ...tls } }, /remoteApi\.port: must be 1\.\.65535/);
    rejects({ ...base, remoteApi: { port: 4247, caFile: 'ca.crt' } }, /remoteApi\.certFile: is required/);
    rejects({ ...base, remoteApi: { port: 4247, clients: [], ...tls } }, /remoteApi\.clients: at least one client name/);
    rejects({ ...base, remoteApi: { port: 4247, address: 'node-1', ...tls } }, /remoteApi\.address: must be an IPv4 address/);
    rejects({ ...base, remoteApi: { port: 4247, insecure: true, ...tls } }, /remoteApi\.insecure: unknown setting/);
  });

  it('flags override the file (numbers converted) and are checked the same way', () => {
    const c = compile(base, { nodeName: 'node7', clusterId: '2', tunnelPort: '4789', podCidr: '10.101.7.0/24', logLevel: 'debug', fullSyncIntervalSeconds: '0.5' });
    assert.equal(c.nodeName, 'node7');
    assert.equal(c.clusterID, 2);
    assert.equal(c.tunnelPort, 4789);
    assert.equal(c.podCIDR, '10.101.7.0/24');
    assert.equal(c.logLevel, 'debug');
    assert.equal(c.fullSyncIntervalMs, 500);
    rejects(base, 'agent config /x/y.yaml: clusterID: must be a number', { clusterId: 'x' });
  });

  it('reads YAML files and reports unreadable or invalid ones', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cm-agent-config-'));
    try {
      const file = join(dir, 'agent.yaml');
      await writeFile(
        file,
        [
          'clusterName: cluster1',
          'clusterID: 1',
          'nodeName: node1',
          'nodeIP: 10.1.0.1',
          'podCIDR: 10.101.1.0/24',
          'etcd: { endpoints: [https://10.1.0.250:2379], caFile: ca.crt, certFile: a.crt, keyFile: a.key }',
          'clustermeshConfigDir: remote',
          'stateDir: state',
          'syncTimeoutSeconds: 5',
        ].join('\n'),
      );
      const c = await loadAgentConfig(file);
      assert.equal(c.file, file);
      assert.equal(c.stateDir, join(dir, 'state'));
      assert.equal(c.etcd.keyFile, join(dir, 'a.key'));
      assert.equal(c.syncTimeoutMs, 5000);
      await writeFile(file, 'clusterName: [unclosed');
      await assert.rejects(loadAgentConfig(file), (e: unknown) => e instanceof AgentConfigError && e.message.startsWith(`agent config ${file}: not valid YAML`));
      await assert.rejects(loadAgentConfig(join(dir, 'missing.yaml')), { message: `agent config ${join(dir, 'missing.yaml')}: cannot read: ENOENT` });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
