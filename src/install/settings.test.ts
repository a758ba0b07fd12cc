// The install settings lab up (plain) offers too: native routing, socket-level
// load balancing and the metrics ports. How each flag lands in the manifests
// (ConfigMap keys, the agent config the agent itself accepts, the DaemonSet's
// host mount, ports and annotations), and that the objects still validate.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parse as parseYaml } from 'yaml';
import { DaemonSet, Deployment } from 'kubernetes-models/apps/v1';
import { ConfigMap } from 'kubernetes-models/v1';
import { compileAgentConfig } from '../agent/config.ts';
import { CONFIG_HASH_ANNOTATION, renderManifests, type InstallCerts, type KubeObject } from './manifests.ts';
import { compileInstallSettings, type RawInstallOptions } from './settings.ts';

const PEM = { cert: 'CERT', key: 'KEY' };
const CERTS: InstallCerts = { ca: PEM, server: PEM, clients: { root: PEM, apiserver: PEM, agent: PEM, remote: PEM }, agentApi: PEM, observer: PEM };
const base: RawInstallOptions = { clusterName: 'c1', clusterId: '1' };

type Container = { name: string; command: string[]; ports?: Array<{ name: string; containerPort: number; protocol: string }>; volumeMounts: Array<{ name: string; mountPath: string; readOnly?: boolean }> };
type PodTemplate = { metadata: { annotations?: Record<string, string> }; spec: { containers: Container[]; volumes: Array<{ name: string; hostPath?: { path: string; type: string } }> } };

/** A pod template's annotations without the config hash. */
function withoutHash(a: Record<string, string> | undefined): Record<string, string> {
  const { [CONFIG_HASH_ANNOTATION]: _hash, ...rest } = a ?? {};
  return rest;
}

function render(raw: RawInstallOptions) {
  const objects = renderManifests(compileInstallSettings(raw), CERTS);
  const find = (kind: string): KubeObject => objects.find((o) => o.kind === kind)!;
  const cm = find('ConfigMap') as unknown as { data: Record<string, string> };
  const agentPod = (find('DaemonSet') as unknown as { spec: { template: PodTemplate } }).spec.template;
  const apiserverPod = (find('Deployment') as unknown as { spec: { template: PodTemplate } }).spec.template;
  // What the agent itself makes of the rendered file (node name and IP come from the downward API).
  const agent = compileAgentConfig(parseYaml(cm.data['agent.yaml']!), { source: 'agent.yaml', baseDir: '/etc/clustermesh/config', flags: { nodeName: 'worker-1', nodeIp: '10.0.0.7' } });
  for (const [o, Model] of [[find('ConfigMap'), ConfigMap], [find('DaemonSet'), DaemonSet], [find('Deployment'), Deployment]] as const) {
    assert.doesNotThrow(() => new (Model as unknown as { new (o: never): { validate(): void } })(structuredClone(o) as never).validate(), `${o.kind} validates`);
  }
  return { cm, agentPod, apiserverPod, agent };
}

test('defaults: tunnel, no socket LB, metrics only on loopback (nothing of the three in the pods)', () => {
  const r = render(base);
  assert.deepEqual([r.cm.data['routing-mode'], r.cm.data['native-routing-cidrs'], r.cm.data['socket-lb-cgroup'], r.cm.data['agent-metrics-port'], r.cm.data['apiserver-metrics-port']], ['tunnel', '', '', '0', '0']);
  assert.deepEqual([r.agent.routingMode, r.agent.nativeRoutingCIDRs, r.agent.socketLBCgroup, r.agent.metricsAddress], ['tunnel', [], undefined, '127.0.0.1:9962']);
  assert.deepEqual(Object.keys(r.agentPod.metadata.annotations ?? {}), [CONFIG_HASH_ANNOTATION]);
  assert.deepEqual(Object.keys(r.apiserverPod.metadata.annotations ?? {}), [CONFIG_HASH_ANNOTATION]);
  assert.ok(!r.agentPod.spec.volumes.some((v) => v.name === 'cgroup'));
  assert.ok(!r.apiserverPod.spec.containers.find((c) => c.name === 'apiserver')!.command.includes('--metrics-address'));
});

test('--routing-mode native: the ranges in the ConfigMap and the agent config, as the agent reads them', () => {
  const r = render({ ...base, routingMode: 'native', nativeRoutingCidr: ['10.244.0.0/16', '10.245.0.0/16'] });
  assert.equal(r.cm.data['routing-mode'], 'native');
  assert.equal(r.cm.data['native-routing-cidrs'], '10.244.0.0/16,10.245.0.0/16');
  assert.equal(r.agent.routingMode, 'native');
  assert.deepEqual(r.agent.nativeRoutingCIDRs, ['10.244.0.0/16', '10.245.0.0/16']);
});

test('--tunnel-encap: bpf by default, device on request, in the ConfigMap and the agent config; anything else named', () => {
  const d = render(base);
  assert.deepEqual([d.cm.data['tunnel-encap'], d.agent.tunnelEncap], ['bpf', 'bpf']);
  const r = render({ ...base, tunnelEncap: 'device' });
  assert.deepEqual([r.cm.data['tunnel-encap'], r.agent.tunnelEncap], ['device', 'device']);
  assert.throws(() => compileInstallSettings({ ...base, tunnelEncap: 'ebpf' }), /--tunnel-encap: "ebpf" is not bpf or device/);
});

test("--socket-lb: the host's cgroup v2 mount (default /sys/fs/cgroup, must exist) mounted in the agent, which attaches there", () => {
  for (const [raw, hostPath] of [
    [{ ...base, socketLb: true }, '/sys/fs/cgroup'],
    [{ ...base, socketLb: true, socketLbCgroup: '/run/cilium/cgroupv2' }, '/run/cilium/cgroupv2'],
  ] as const) {
    const r = render(raw);
    assert.equal(r.cm.data['socket-lb-cgroup'], hostPath);
    const vol = r.agentPod.spec.volumes.find((v) => v.name === 'cgroup');
    assert.deepEqual(vol?.hostPath, { path: hostPath, type: 'Directory' }, 'never created empty: a missing mount fails the pod, naming the path');
    const mount = r.agentPod.spec.containers[0]!.volumeMounts.find((m) => m.name === 'cgroup')!;
    assert.equal(r.agent.socketLBCgroup, mount.mountPath, 'the agent attaches at the mounted host cgroup root');
  }
});

test('--agent-metrics-port/--apiserver-metrics-port: on every node address, a named container port and the prometheus.io annotations', () => {
  const r = render({ ...base, agentMetricsPort: '9962', apiserverMetricsPort: '9963' });
  assert.deepEqual([r.cm.data['agent-metrics-port'], r.cm.data['apiserver-metrics-port']], ['9962', '9963']);
  assert.equal(r.agent.metricsAddress, '0.0.0.0:9962');
  assert.deepEqual(withoutHash(r.agentPod.metadata.annotations), { 'prometheus.io/scrape': 'true', 'prometheus.io/port': '9962' });
  assert.deepEqual(r.agentPod.spec.containers[0]!.ports, [
    { name: 'remote-api', containerPort: 4247, protocol: 'TCP' },
    { name: 'metrics', containerPort: 9962, protocol: 'TCP' },
  ]);
  const apiserver = r.apiserverPod.spec.containers.find((c) => c.name === 'apiserver')!;
  assert.deepEqual(apiserver.command.slice(apiserver.command.indexOf('--metrics-address'), apiserver.command.indexOf('--metrics-address') + 2), ['--metrics-address', '0.0.0.0:9963']);
  assert.deepEqual(apiserver.ports, [{ name: 'metrics', containerPort: 9963, protocol: 'TCP' }]);
  assert.deepEqual(withoutHash(r.apiserverPod.metadata.annotations), { 'prometheus.io/scrape': 'true', 'prometheus.io/port': '9963' });
  // Only the agent's: the remote API off leaves the metrics port alone.
  const only = render({ ...base, agentMetricsPort: '9100', remoteApiPort: '0' });
  assert.deepEqual(only.agentPod.spec.containers[0]!.ports, [{ name: 'metrics', containerPort: 9100, protocol: 'TCP' }]);
  assert.deepEqual(withoutHash(only.apiserverPod.metadata.annotations), {});
});

test('a changed setting changes both pod templates (the agents and the apiserver roll onto it); the same settings change neither', () => {
  const a = render(base);
  const again = render(base);
  assert.deepEqual(again.agentPod, a.agentPod);
  assert.deepEqual(again.apiserverPod, a.apiserverPod);
  for (const changed of [{ tunnelPort: '8473' }, { maxConnectedClusters: '511' }, { routingMode: 'native', nativeRoutingCidr: ['10.244.0.0/16'] }] as RawInstallOptions[]) {
    const b = render({ ...base, ...changed });
    assert.notEqual(b.agentPod.metadata.annotations?.[CONFIG_HASH_ANNOTATION], a.agentPod.metadata.annotations?.[CONFIG_HASH_ANNOTATION], JSON.stringify(changed));
    assert.notEqual(b.apiserverPod.metadata.annotations?.[CONFIG_HASH_ANNOTATION], a.apiserverPod.metadata.annotations?.[CONFIG_HASH_ANNOTATION], JSON.stringify(changed));
  }
});
