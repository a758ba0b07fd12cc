// The install's settings and manifests: every refusal names its flag; every
// object validates against the Kubernetes OpenAPI schemas (kubernetes-models);
// the properties the design promises hold (least privilege, labels, distinct
// NodePorts, what is kept across re-installs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { parse as parseYaml } from 'yaml';
import { CustomResourceDefinition } from 'kubernetes-models/apiextensions.k8s.io/v1';
import { DaemonSet, Deployment } from 'kubernetes-models/apps/v1';
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { ConfigMap, Namespace, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import { makeInstallCerts } from './certs.ts';
import { COMMON_LABELS, CREATED_BY_ANNOTATION, createOnly, etcdServiceNames, AGENT_NAMESPACE_RULES, MCS_WRITE_RULES, renderManifests, toYaml, type InstallCerts, type KubeObject } from './manifests.ts';
import { compileInstallSettings, InstallSettingsError, type RawInstallOptions } from './settings.ts';

const PEM = { cert: 'CERT', key: 'KEY' };
const CERTS: InstallCerts = { ca: PEM, server: PEM, clients: { root: PEM, apiserver: PEM, agent: PEM, remote: PEM }, agentApi: PEM, observer: PEM };
const base: RawInstallOptions = { clusterName: 'c1', clusterId: '1' };

const MODELS: Record<string, { new (o: never): { validate(): void } }> = {
  'v1/Namespace': Namespace,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'v1/ServiceAccount': ServiceAccount,
  'apps/v1/Deployment': Deployment,
  'apps/v1/DaemonSet': DaemonSet,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding,
  'rbac.authorization.k8s.io/v1/Role': Role,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding,
  'apiextensions.k8s.io/v1/CustomResourceDefinition': CustomResourceDefinition,
};

test('settings: each bad flag is refused with its name and the reason', () => {
  const cases: Array<[RawInstallOptions, string, RegExp]> = [
    [{ clusterId: '1' }, '--cluster-name', /required/],
    [{ ...base, clusterName: 'Cluster_1' }, '--cluster-name', /lowercase alphanumerics/],
    [{ ...base, clusterName: 'a'.repeat(33) }, '--cluster-name', /at most 32/],
    [{ ...base, clusterName: 'default' }, '--cluster-name', /must not be "default"/],
    [{ clusterName: 'c1' }, '--cluster-id', /required/],
    [{ ...base, clusterId: '0' }, '--cluster-id', /out of range 1\.\.255/],
    [{ ...base, clusterId: '256' }, '--cluster-id', /out of range 1\.\.255/],
    [{ ...base, clusterId: 'x' }, '--cluster-id', /not an integer/],
    [{ ...base, maxConnectedClusters: '300' }, '--max-connected-clusters', /not one of 255, 511/],
    [{ ...base, namespace: 'Kube_System' }, '--namespace', /not a valid namespace/],
    [{ ...base, image: 'a b' }, '--image', /not an image reference/],
    [{ ...base, routingMode: 'direct' }, '--routing-mode', /"direct" is not tunnel or native/],
    [{ ...base, routingMode: 'native' }, '--native-routing-cidr', /required with --routing-mode native/],
    [{ ...base, nativeRoutingCidr: ['10.244.0.0/16'] }, '--native-routing-cidr', /only with --routing-mode native/],
    [{ ...base, routingMode: 'native', nativeRoutingCidr: ['10.244.0.1/16'] }, '--native-routing-cidr', /10\.244\.0\.1\/16: host bits are set; did you mean 10\.244\.0\.0\/16\?/],
    [{ ...base, routingMode: 'native', nativeRoutingCidr: ['0.0.0.0/0'] }, '--native-routing-cidr', /a \/0 would route every address natively/],
    [{ ...base, routingMode: 'native', nativeRoutingCidr: ['10.244.0.0'] }, '--native-routing-cidr', /must be an IPv4 prefix/],
    [{ ...base, routingMode: 'native', nativeRoutingCidr: Array.from({ length: 9 }, (_, i) => `10.${i}.0.0/16`) }, '--native-routing-cidr', /at most 8/],
    [{ ...base, socketLbCgroup: '/sys/fs/cgroup' }, '--socket-lb-cgroup', /only with --socket-lb/],
    [{ ...base, socketLb: true, socketLbCgroup: 'sys/fs/cgroup' }, '--socket-lb-cgroup', /not an absolute host path/],
    [{ ...base, socketLb: true, socketLbCgroup: '/sys/fs/cgroup/../x' }, '--socket-lb-cgroup', /without "\.\."/],
    [{ ...base, agentMetricsPort: '70000' }, '--agent-metrics-port', /out of range 0\.\.65535/],
    [{ ...base, agentMetricsPort: 'on' }, '--agent-metrics-port', /"on" is not an integer/],
    [{ ...base, agentMetricsPort: '2392' }, '--agent-metrics-port', /taken on the apiserver's node by its etcd/],
    [{ ...base, agentMetricsPort: '4247' }, '--agent-metrics-port', /--remote-api-port/],
    [{ ...base, agentMetricsPort: '9963' }, '--agent-metrics-port', /the apiserver's metrics port \(its default, on the node's loopback\)/],
    [{ ...base, agentMetricsPort: '9100', apiserverMetricsPort: '9100' }, '--apiserver-metrics-port', /9100 is --agent-metrics-port too/],
    [{ ...base, apiserverMetricsPort: '9962' }, '--apiserver-metrics-port', /the agent's metrics port \(its default/],
    [{ ...base, tunnelPort: '70000' }, '--tunnel-port', /out of range/],
    [{ ...base, serviceType: 'ClusterIP' }, '--service-type', /not NodePort or LoadBalancer/],
    [{ ...base, nodePort: '80' }, '--node-port', /out of range 30000\.\.32767/],
    [{ ...base, serviceType: 'LoadBalancer', nodePort: '31000' }, '--node-port', /only with --service-type NodePort/],
    [{ ...base, apiserverAddress: ['not_a_name!'] }, '--apiserver-address', /neither an IP address nor a DNS name/],
    [{ ...base, k8sServiceHost: 'api_server!', k8sServicePort: '6443' }, '--k8s-service-host', /"api_server!" is neither an IP address nor a DNS name/],
    [{ ...base, k8sServiceHost: '10.0.0.1' }, '--k8s-service-host', /needs --k8s-service-port/],
    [{ ...base, k8sServicePort: '6443' }, '--k8s-service-port', /needs --k8s-service-host/],
    [{ ...base, k8sServiceHost: '10.0.0.1', k8sServicePort: '0' }, '--k8s-service-port', /0 is out of range 1\.\.65535/],
    [{ ...base, k8sServiceHost: '10.0.0.1', k8sServicePort: '65536' }, '--k8s-service-port', /out of range 1\.\.65535/],
    [{ ...base, k8sServiceHost: '10.0.0.1', k8sServicePort: 'https' }, '--k8s-service-port', /"https" is not an integer/],
    [{ ...base, remoteApiPort: '65536' }, '--remote-api-port', /out of range 0\.\.65535/],
    [{ ...base, remoteApiPort: 'on' }, '--remote-api-port', /"on" is not an integer/],
    [{ ...base, remoteApiPort: '2391' }, '--remote-api-port', /taken on the apiserver's node by its etcd/],
  ];
  for (const [raw, flag, why] of cases) {
    assert.throws(
      () => compileInstallSettings(raw),
      (e: unknown) => e instanceof InstallSettingsError && e.flag === flag && why.test(e.message),
      `${JSON.stringify(raw)} → ${flag} ${why}`,
    );
  }
  const ok = compileInstallSettings({ ...base, clusterId: '300', maxConnectedClusters: '511', nodePort: '30500', apiserverAddress: ['192.0.2.10', 'mesh.example.com'] });
  assert.deepEqual([ok.clusterID, ok.maxConnectedClusters, ok.nodePort, ok.apiserverAddresses], [300, 511, 30500, ['192.0.2.10', 'mesh.example.com']]);
});

test('--k8s-service-host/--k8s-service-port: KUBERNETES_SERVICE_HOST/PORT in the agent and apiserver containers only', () => {
  type C = { name: string; env?: Array<{ name: string; value?: string }> };
  const containers = (objects: KubeObject[]): C[] =>
    objects.filter((o) => o.kind === 'DaemonSet' || o.kind === 'Deployment').flatMap((o) => {
      const spec = (o.spec as { template: { spec: { containers: C[]; initContainers?: C[] } } }).template.spec;
      return [...spec.containers, ...(spec.initContainers ?? [])];
    });
  const kubeEnv = (c: C) => (c.env ?? []).filter((e) => e.name.startsWith('KUBERNETES_SERVICE_')).map((e) => `${e.name}=${e.value}`);
  for (const host of ['192.0.2.10', 'api.example.com', 'fd00::10']) {
    const objects = renderManifests(compileInstallSettings({ ...base, k8sServiceHost: host, k8sServicePort: '6443' }), CERTS);
    const byName = Object.fromEntries(containers(objects).map((c) => [c.name, kubeEnv(c)]));
    assert.deepEqual(byName.agent, [`KUBERNETES_SERVICE_HOST=${host}`, 'KUBERNETES_SERVICE_PORT=6443']);
    assert.deepEqual(byName.apiserver, [`KUBERNETES_SERVICE_HOST=${host}`, 'KUBERNETES_SERVICE_PORT=6443']);
    assert.deepEqual(byName.etcd, []);
    for (const o of objects) {
      const Model = MODELS[`${o.apiVersion}/${o.kind}`]!;
      assert.doesNotThrow(() => new Model(structuredClone(o) as never).validate(), `${o.kind}/${o.metadata.name}`);
    }
  }
  // Without the flags: nothing set (the kubelet's values apply).
  assert.ok(containers(renderManifests(compileInstallSettings(base), CERTS)).every((c) => kubeEnv(c).length === 0));
});

test('manifests: every object validates against the Kubernetes schemas and carries the install labels', () => {
  const objects = renderManifests(compileInstallSettings(base), CERTS);
  for (const o of objects) {
    const Model = MODELS[`${o.apiVersion}/${o.kind}`];
    assert.ok(Model, `a schema for ${o.apiVersion} ${o.kind}`);
    assert.doesNotThrow(() => new Model(structuredClone(o) as never).validate(), `${o.kind}/${o.metadata.name}`);
    for (const [k, v] of Object.entries(COMMON_LABELS)) assert.equal(o.metadata.labels?.[k], v, `${o.kind}/${o.metadata.name} label ${k}`);
    if (o.kind !== 'Namespace' && o.kind !== 'CustomResourceDefinition' && !o.kind.startsWith('ClusterRole')) assert.equal(o.metadata.namespace, 'clustermesh-system', `${o.kind}/${o.metadata.name} namespace`);
  }
  // A wrong type is caught by the same check (the check can fail).
  const broken = structuredClone(objects.find((o) => o.kind === 'Service')!) as unknown as { spec: { ports: Array<{ port: unknown }> } };
  broken.spec.ports[0]!.port = 'etcd';
  assert.throws(() => new Service(broken as never).validate(), /port/);
  // The YAML stream parses back to the same objects.
  const docs = toYaml(objects).split(/^---\n/m).filter(Boolean).map((d) => parseYaml(d) as KubeObject);
  assert.deepEqual(docs, JSON.parse(JSON.stringify(objects)));
});

test('manifests: least privilege, no wildcard; the agent is not privileged and has only the capabilities it needs', () => {
  const objects = renderManifests(compileInstallSettings(base), CERTS);
  type Rule = { verbs: string[]; resources: string[]; apiGroups: string[] };
  const writes = new Map<string, Rule[]>();
  for (const role of objects.filter((o) => o.kind === 'ClusterRole')) {
    for (const rule of role.rules as Rule[]) {
      assert.ok(![...rule.resources, ...rule.apiGroups, ...rule.verbs].includes('*'), `${role.metadata.name}: no wildcard`);
      assert.ok(!rule.resources.includes('secrets'), `${role.metadata.name}: no secrets`);
      if (rule.verbs.join() === 'get,list,watch') continue;
      writes.set(role.metadata.name!, [...(writes.get(role.metadata.name!) ?? []), rule]);
    }
  }
  // Only the apiserver writes, and only what its MCS controller makes: export/import status,
  // ServiceImports, the derived Services and import EndpointSlices (never pods, nodes, namespaces, exports).
  assert.deepEqual([...writes.keys()], ['clustermesh-apiserver'], 'the agent and the other roles are read-only');
  assert.deepEqual(writes.get('clustermesh-apiserver'), MCS_WRITE_RULES);
  // The agent's one write, namespaced: its own Pod's status annotation (a Role of the install's namespace, not a ClusterRole).
  const roles = objects.filter((o) => o.kind === 'Role');
  assert.deepEqual(roles.map((r) => `${r.metadata.namespace}/${r.metadata.name}`), ['clustermesh-system/clustermesh-agent']);
  assert.deepEqual(roles[0]!.rules, AGENT_NAMESPACE_RULES);
  assert.deepEqual(AGENT_NAMESPACE_RULES, [{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'patch'] }]);
  const rb = objects.find((o) => o.kind === 'RoleBinding') as unknown as { roleRef: { kind: string; name: string }; subjects: Array<{ name: string; namespace: string }> };
  assert.deepEqual([rb.roleRef.kind, rb.roleRef.name, rb.subjects[0]!.name, rb.subjects[0]!.namespace], ['Role', 'clustermesh-agent', 'clustermesh-agent', 'clustermesh-system']);
  for (const r of MCS_WRITE_RULES) {
    assert.ok(!r.verbs.includes('update') && !r.verbs.includes('deletecollection'), 'patch and delete of single objects only');
    assert.ok(!r.resources.some((x) => ['pods', 'nodes', 'namespaces', 'serviceexports'].includes(x)));
  }
  const ds = objects.find((o) => o.kind === 'DaemonSet') as unknown as { spec: { template: { spec: { hostNetwork: boolean; containers: Array<{ securityContext: { privileged: boolean; capabilities: { add: string[] } } }>; initContainers: Array<{ name: string; securityContext?: { privileged?: boolean } }> } } } };
  const pod = ds.spec.template.spec;
  assert.equal(pod.hostNetwork, true);
  assert.equal(pod.containers[0]!.securityContext.privileged, false);
  assert.deepEqual([...pod.containers[0]!.securityContext.capabilities.add].sort(), ['BPF', 'NET_ADMIN', 'NET_RAW', 'PERFMON', 'SYS_ADMIN', 'SYS_RESOURCE']);
  assert.deepEqual(pod.initContainers.filter((c) => c.securityContext?.privileged).map((c) => c.name), ['mount-bpf-fs'], 'only the bpffs mount is privileged');
});

test('manifests: NodePort 32000 + cluster ID by default; LoadBalancer has none; CRDs and state are create-only', () => {
  const port = (raw: RawInstallOptions) => {
    const svc = renderManifests(compileInstallSettings(raw), CERTS).find((o) => o.kind === 'Service') as unknown as { spec: { type: string; ports: Array<{ nodePort?: number }> } };
    return [svc.spec.type, svc.spec.ports[0]!.nodePort];
  };
  assert.deepEqual(port(base), ['NodePort', 32001]);
  assert.deepEqual(port({ ...base, clusterName: 'c2', clusterId: '2' }), ['NodePort', 32002]);
  assert.deepEqual(port({ ...base, serviceType: 'LoadBalancer' }), ['LoadBalancer', undefined]);
  const objects = renderManifests(compileInstallSettings(base), CERTS);
  assert.deepEqual(objects.filter(createOnly).map((o) => o.kind).sort(), ['CustomResourceDefinition', 'CustomResourceDefinition', 'CustomResourceDefinition', 'CustomResourceDefinition', 'Namespace', 'Secret', 'Secret', 'Secret', 'Secret', 'Secret', 'Secret', 'Secret', 'Secret', 'Secret']);
  for (const crd of objects.filter((o) => o.kind === 'CustomResourceDefinition')) assert.ok(crd.metadata.annotations?.[CREATED_BY_ANNOTATION]);
  const cm = objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: Record<string, string> };
  assert.deepEqual([cm.data['cluster-name'], cm.data['cluster-id'], cm.data['max-connected-clusters']], ['c1', '1', '255']);
  const agent = parseYaml(cm.data['agent.yaml']!) as { clusterName: string; clusterID: number; etcd: { endpoints: string[] } };
  assert.deepEqual([agent.clusterName, agent.clusterID, agent.etcd.endpoints], ['c1', 1, ['https://clustermesh-apiserver.clustermesh-system.svc:2379']]);
});

test('certificates: one CA; the etcd server certificate names the Service and the given addresses; one client certificate per etcd user', async () => {
  const s = compileInstallSettings({ ...base, apiserverAddress: ['192.0.2.10', 'mesh.example.com'] });
  const certs = await makeInstallCerts(s);
  const text = (pem: string) => execFileSync('openssl', ['x509', '-noout', '-text'], { input: pem, encoding: 'utf8' });
  const server = text(certs.server.cert);
  for (const name of [...etcdServiceNames(s), 'mesh.example.com']) assert.ok(server.includes(`DNS:${name}`), `SAN ${name}`);
  assert.ok(server.includes('IP Address:192.0.2.10') && server.includes('IP Address:127.0.0.1'));
  for (const [user, pair] of Object.entries(certs.clients)) {
    assert.match(text(pair.cert), new RegExp(`Subject: CN ?= ?${user}\\b`));
  }
  // A re-install with the existing CA issues certificates that CA verifies.
  const again = await makeInstallCerts(s, certs.ca);
  assert.equal(again.ca.cert, certs.ca.cert);
  const verify = (ca: string, cert: string): boolean => {
    try {
      execFileSync('bash', ['-c', 'openssl verify -CAfile <(printf "%s" "$CA") <(printf "%s" "$CERT")'], { env: { ...process.env, CA: ca, CERT: cert }, stdio: 'pipe' });
      return true;
    } catch {
      return false;
    }
  };
  assert.ok(verify(certs.ca.cert, again.clients.agent.cert), 're-issued under the same CA');
  assert.ok(verify(certs.ca.cert, certs.server.cert));
  // The agents' remote API: a server certificate naming agents.<cluster>.clustermesh.internal, and the observer client.
  assert.ok(verify(certs.ca.cert, certs.agentApi.cert) && verify(certs.ca.cert, certs.observer.cert));
  assert.match(text(certs.agentApi.cert), /DNS:agents\.c1\.clustermesh\.internal/);
  assert.match(text(certs.agentApi.cert), /TLS Web Server Authentication/);
  assert.match(text(certs.observer.cert), /Subject: CN ?= ?observer\b/);
  assert.match(text(certs.observer.cert), /TLS Web Client Authentication/);
  for (const pair of Object.values(certs.clients)) assert.ok(verify(certs.ca.cert, pair.cert));
  const other = await makeInstallCerts(s);
  assert.ok(!verify(certs.ca.cert, other.clients.agent.cert), 'a fresh CA is another CA (the check can fail)');
});

test('manifests: the agent runs as installed (podCIDR from its Node, the conflist in the host net.d naming the copied plugin); the apiserver is off the pod network', async () => {
  const { compileAgentConfig } = await import('../agent/config.ts');
  const objects = renderManifests(compileInstallSettings(base), CERTS);
  const cm = objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: Record<string, string> };
  type Container = { name: string; command: string[]; ports?: Array<{ name: string; containerPort: number }>; readinessProbe?: { tcpSocket?: { port: number } }; volumeMounts: Array<{ name: string; mountPath: string }> };
  type PodSpec = { hostNetwork?: boolean; dnsPolicy?: string; containers: Container[]; initContainers?: Container[]; volumes: Array<{ name: string; hostPath?: { path: string } }> };
  const podOf = (kind: string) => (objects.find((o) => o.kind === kind) as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;

  // The agent's file as the DaemonSet runs it (node name and IP from flags) compiles, with no podCIDR.
  const agentPod = podOf('DaemonSet');
  const agentC = agentPod.containers[0]!;
  assert.deepEqual(agentC.command.slice(agentC.command.indexOf('--node-name')), ['--node-name', '$(NODE_NAME)', '--node-ip', '$(NODE_IP)', '--status-pod', '$(POD_NAMESPACE)/$(POD_NAME)']);
  const cfg = compileAgentConfig(parseYaml(cm.data['agent.yaml']!), { source: 'agent.yaml', baseDir: '/etc/clustermesh/config', flags: { nodeName: 'worker-1', nodeIp: '10.0.0.7', statusPod: 'clustermesh-system/clustermesh-agent-x7k2p' } });
  assert.deepEqual(cfg.statusPod, { namespace: 'clustermesh-system', name: 'clustermesh-agent-x7k2p' });
  assert.equal(cfg.podCIDR, undefined, "read from the Node's spec.podCIDRs");
  assert.equal(cfg.cniConfDir, '/host/etc/cni/net.d');
  assert.equal(cfg.cniConfName, '05-clustermesh.conflist');
  assert.equal(cfg.cniBinaryName, 'clustermesh-cni');
  // cniConfDir is the host's /etc/cni/net.d; the conflist's type is the file the init container copies to the host's /opt/cni/bin.
  const mountOf = (c: Container, path: string) => c.volumeMounts.find((m) => m.mountPath === path)?.name;
  const hostPathOf = (name: string | undefined) => agentPod.volumes.find((v) => v.name === name)?.hostPath?.path;
  assert.equal(hostPathOf(mountOf(agentC, cfg.cniConfDir!)), '/etc/cni/net.d');
  const install = agentPod.initContainers!.find((c) => c.name === 'install-cni-plugin')!;
  assert.match(install.command.join(' '), new RegExp(`mv -f \\S+ /host/opt/cni/bin/${cfg.cniBinaryName}$`), 'installed under the conflist type, renamed into place');
  assert.equal(hostPathOf(mountOf(install, '/host/opt/cni/bin')), '/opt/cni/bin');
  assert.equal(cfg.etcd.endpoints[0], 'https://clustermesh-apiserver.clustermesh-system.svc:2379', 'the Service name, resolved by the agent through the API');

  // The apiserver and its etcd on the host network; the Service's port 2379 goes to the named port etcd listens on.
  const api = podOf('Deployment');
  assert.equal(api.hostNetwork, true);
  assert.equal(api.dnsPolicy, 'ClusterFirstWithHostNet');
  const etcd = api.containers.find((c) => c.name === 'etcd')!;
  const svc = objects.find((o) => o.kind === 'Service') as unknown as { spec: { ports: Array<{ name: string; port: number; targetPort: string }> } };
  assert.deepEqual(svc.spec.ports.map((p) => [p.name, p.port, p.targetPort]), [['etcd', 2379, 'etcd']]);
  const etcdPort = etcd.ports!.find((p) => p.name === 'etcd')!.containerPort;
  assert.notEqual(etcdPort, 2379, "not 2379: a control-plane node's own etcd holds it");
  assert.ok(etcd.command.includes(`--listen-client-urls=https://0.0.0.0:${etcdPort}`));
  assert.equal(etcd.readinessProbe?.tcpSocket?.port, etcdPort);
  assert.ok(!etcd.command.some((a) => a.includes(':2380')), 'no peer port a host etcd may hold');
  assert.deepEqual((parseYaml(cm.data['etcd-apiserver.yaml']!) as { endpoints: string[] }).endpoints, [`https://127.0.0.1:${etcdPort}`]);
});

test('the apiserver reads the remotes Secret (its MCS controller imports their ServiceExports); --kvstoremesh also runs the cache tier over it, the agents then read the remotes from their own etcd; off by default', async () => {
  const { compileAgentConfig } = await import('../agent/config.ts');
  const { compileApiserverOptions } = await import('../apiserver/options.ts');
  type Container = { name: string; command: string[]; volumeMounts: Array<{ name: string; mountPath: string }> };
  type PodSpec = { containers: Container[]; volumes: Array<{ name: string; secret?: { secretName: string; optional?: boolean } }> };
  const render = (kvstoremesh: boolean) => {
    const objects = renderManifests(compileInstallSettings({ ...base, kvstoremesh }), CERTS);
    const cm = objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: Record<string, string> };
    const api = (objects.find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;
    const agent = compileAgentConfig(parseYaml(cm.data['agent.yaml']!), { source: 'agent.yaml', baseDir: '/etc/clustermesh/config', flags: { nodeName: 'worker-1', nodeIp: '10.0.0.7' } });
    for (const o of objects) assert.doesNotThrow(() => new MODELS[`${o.apiVersion}/${o.kind}`]!(structuredClone(o) as never).validate(), `${o.kind}/${o.metadata.name}`);
    return { cm, api, apiserver: api.containers.find((c) => c.name === 'apiserver')!, agent };
  };
  const on = render(true);
  assert.equal(on.cm.data.kvstoremesh, 'true');
  assert.equal(on.agent.clustermeshCache, true);
  const args = on.apiserver.command;
  assert.ok(args.includes('--kvstoremesh'));
  // The remotes Secret (connect's one key set per remote) is mounted where the files it holds say, with or without the cache tier.
  const remotesRead = (r: ReturnType<typeof render>): void => {
    const a = r.apiserver.command;
    assert.equal(a[a.indexOf('--clustermesh-config-dir') + 1], r.agent.clustermeshConfigDir);
    const mount = r.apiserver.volumeMounts.find((m) => m.mountPath === r.agent.clustermeshConfigDir)!;
    assert.deepEqual(r.api.volumes.find((v) => v.name === mount.name)?.secret, { secretName: 'clustermesh-remotes', optional: true });
  };
  remotesRead(on);
  // The apiserver accepts those flags (its own option checks).
  const opts = compileApiserverOptions({ clusterName: 'c1', clusterId: '1', etcdConfig: '/x.yaml', kvstoremesh: true, clustermeshConfigDir: on.agent.clustermeshConfigDir } as never);
  assert.equal(opts.kvstoremesh, true);

  const off = render(false);
  assert.equal(off.cm.data.kvstoremesh, 'false');
  assert.equal(off.agent.clustermeshCache, false);
  assert.ok(!off.apiserver.command.includes('--kvstoremesh'));
  remotesRead(off);
  assert.equal(compileInstallSettings(base).kvstoremesh, false);
});

test("manifests: the agents' remote API (on by default at 4247, off with 0): agent config, the container's named port, the certificate Secrets", async () => {
  const { compileAgentConfig } = await import('../agent/config.ts');
  type Pod = { containers: Array<{ name: string; ports?: Array<{ name: string; containerPort: number; protocol: string }>; volumeMounts: Array<{ name: string; mountPath: string }> }>; volumes: Array<{ name: string; secret?: { secretName: string } }> };
  const view = (raw: RawInstallOptions) => {
    const objects = renderManifests(compileInstallSettings(raw), CERTS);
    const cm = objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: Record<string, string> };
    const pod = (objects.find((o) => o.kind === 'DaemonSet') as unknown as { spec: { template: { spec: Pod } } }).spec.template.spec;
    const cfg = compileAgentConfig(parseYaml(cm.data['agent.yaml']!), { source: 'agent.yaml', baseDir: '/etc/clustermesh/config', flags: { nodeName: 'worker-1', nodeIp: '10.0.0.7' } });
    const secrets = objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name);
    return { cm, pod, cfg, secrets };
  };
  const on = view(base);
  assert.equal(on.cm.data['remote-api-port'], '4247');
  assert.deepEqual(on.pod.containers[0]!.ports, [{ name: 'remote-api', containerPort: 4247, protocol: 'TCP' }]);
  assert.deepEqual(on.cfg.remoteApi, { address: undefined, port: 4247, caFile: '/etc/clustermesh/agent-api/ca.crt', certFile: '/etc/clustermesh/agent-api/tls.crt', keyFile: '/etc/clustermesh/agent-api/tls.key', clients: ['observer'] });
  const mount = on.pod.containers[0]!.volumeMounts.find((m) => m.mountPath === '/etc/clustermesh/agent-api')!;
  assert.equal(on.pod.volumes.find((v) => v.name === mount.name)?.secret?.secretName, 'clustermesh-agent-api');
  assert.ok(on.secrets.includes('clustermesh-agent-api') && on.secrets.includes('clustermesh-observer'));
  assert.equal(view({ ...base, remoteApiPort: '9443' }).cfg.remoteApi?.port, 9443);
  const off = view({ ...base, remoteApiPort: '0' });
  assert.equal(off.cm.data['remote-api-port'], '0');
  assert.equal(off.cfg.remoteApi, undefined);
  assert.equal(off.pod.containers[0]!.ports, undefined);
  assert.ok(!off.pod.volumes.some((v) => v.secret?.secretName === 'clustermesh-agent-api'));
  assert.ok(off.secrets.includes('clustermesh-observer'), 'the certificates are made anyway: a re-install that switches the API on finds them');
});

test("the apiserver container is ready once its start is done: an httpGet of /readyz on its metrics port at the host network's loopback, which answers 200 in phase ready only", async () => {
  const { apiserverReady, apiserverRegistry } = await import('../apiserver/metrics.ts');
  const { startMetricsServer } = await import('../util/metrics.ts');
  type Probe = { exec?: unknown; httpGet: { host: string; path: string; port: number } };
  const probeOf = (s: Parameters<typeof compileInstallSettings>[0]) => {
    const d = renderManifests(compileInstallSettings(s), CERTS).find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { hostNetwork?: boolean; containers: Array<{ name: string; readinessProbe?: Probe }> } } } };
    assert.equal(d.spec.template.spec.hostNetwork, true, '127.0.0.1 is the node\'s loopback only on the host network');
    return d.spec.template.spec.containers.find((c) => c.name === 'apiserver')!.readinessProbe!;
  };
  const probe = probeOf(base);
  assert.equal(probe.exec, undefined, 'no exec: the kubelet asks in its own process');
  assert.deepEqual(probe.httpGet, { host: '127.0.0.1', path: '/readyz', port: 9963 }, 'the default metrics address');
  assert.equal(probeOf({ ...base, apiserverMetricsPort: '9993' }).httpGet.port, 9993, '--apiserver-metrics-port');
  // The endpoint the apiserver serves, in each phase: only "ready" answers 200.
  for (const phase of ['etcd-bootstrap', 'claiming', 'exporting', 'ready'] as const) {
    const registry = apiserverRegistry({ phase: () => phase, status: () => undefined, exportErrors: () => ({}), heartbeat: () => ({ writes: 0, failures: 0, lastRoundOk: true }) });
    const server = await startMetricsServer('127.0.0.1:0', [registry], { ready: () => apiserverReady(phase) });
    try {
      const res = await fetch(`http://${server.address}${probe.httpGet.path}`);
      const body = await res.text();
      assert.equal(res.status, phase === 'ready' ? 200 : 503, `phase ${phase}: ${body}`);
      if (phase !== 'ready') assert.match(body, new RegExp(`phase ${phase}`));
      assert.equal((await fetch(`http://${server.address}/metrics`)).status, 200, '/metrics is still served');
    } finally {
      await server.close();
    }
  }
});

test("the agent container is ready when its phase is: an httpGet of /readyz on its metrics port (the agent config's default, or --agent-metrics-port) at the host network's loopback", () => {
  type Probe = { exec?: unknown; httpGet: { host: string; path: string; port: number } };
  const agentOf = (s: Parameters<typeof compileInstallSettings>[0]) => {
    const objects = renderManifests(compileInstallSettings(s), CERTS);
    const ds = objects.find((o) => o.kind === 'DaemonSet') as unknown as { spec: { template: { spec: { hostNetwork?: boolean; containers: Array<{ name: string; readinessProbe?: Probe }> } } } };
    assert.equal(ds.spec.template.spec.hostNetwork, true, "127.0.0.1 is the node's loopback only on the host network");
    const cm = objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: Record<string, string> };
    return { probe: ds.spec.template.spec.containers.find((c) => c.name === 'agent')!.readinessProbe!, agentYaml: cm.data['agent.yaml'] ?? '' };
  };
  const def = agentOf(base);
  assert.equal(def.probe.exec, undefined, 'no exec: the kubelet asks in its own process');
  assert.deepEqual(def.probe.httpGet, { host: '127.0.0.1', path: '/readyz', port: 9962 });
  assert.doesNotMatch(def.agentYaml, /metricsAddress/, "the agent config's default metricsAddress (127.0.0.1:9962) is the probe's");
  const exposed = agentOf({ ...base, agentMetricsPort: '9992' });
  assert.equal(exposed.probe.httpGet.port, 9992, '--agent-metrics-port');
  assert.match(exposed.agentYaml, /metricsAddress: 0\.0\.0\.0:9992/);
});
