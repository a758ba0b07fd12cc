import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { chooseCniConf, containerArgv, expandVars, mapHostPath, netconfOfFile, PODSTART_BIN, podstartArgv, PodConfigError, projectedFiles, resolveEnv, type EnvContext } from './pod-spec.ts';

test('$(VAR) expansion: defined names replaced, unknown kept, $$ escapes, unterminated kept', () => {
  const env = { A: 'x', B: 'y z' };
  assert.equal(expandVars('$(A)-$(B)', env), 'x-y z');
  assert.equal(expandVars('$(NOPE)', env), '$(NOPE)');
  assert.equal(expandVars('$$(A)', env), '$(A)');
  assert.equal(expandVars('$$$(A)', env), '$x');
  assert.equal(expandVars('cost $5 $(A', env), 'cost $5 $(A');
  assert.equal(expandVars('end$', env), 'end$');
});

const pod: V1Pod = {
  metadata: { name: 'p1', namespace: 'ns1', uid: 'u-1', labels: { app: 'a' } },
  spec: { nodeName: 'n1', serviceAccountName: 'sa1', containers: [] },
};
const ctx = (over: Partial<EnvContext> = {}): EnvContext => ({
  pod,
  hostIP: '10.0.0.1',
  podIP: '10.0.0.1',
  configMap: (n) => (n === 'cm' ? { data: { k: 'v', other: 'o' } } : undefined),
  secret: (n) => (n === 'sec' ? { data: { pw: Buffer.from('s3cret').toString('base64') } } : undefined),
  ...over,
});

test('env: fieldRef, configMap and secret keys, envFrom with prefix, expansion in order, optional honoured', () => {
  const c: V1Container = {
    name: 'c',
    envFrom: [{ configMapRef: { name: 'cm' }, prefix: 'CM_' }, { secretRef: { name: 'absent', optional: true } }],
    env: [
      { name: 'NODE', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
      { name: 'NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'NS', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
      { name: 'UID', valueFrom: { fieldRef: { fieldPath: 'metadata.uid' } } },
      { name: 'SA', valueFrom: { fieldRef: { fieldPath: 'spec.serviceAccountName' } } },
      { name: 'HOST', valueFrom: { fieldRef: { fieldPath: 'status.hostIP' } } },
      { name: 'APP', valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } },
      { name: 'K', valueFrom: { configMapKeyRef: { name: 'cm', key: 'k' } } },
      { name: 'PW', valueFrom: { secretKeyRef: { name: 'sec', key: 'pw' } } },
      { name: 'MAYBE', valueFrom: { secretKeyRef: { name: 'sec', key: 'nope', optional: true } } },
      { name: 'G', value: 'on $(NODE) $$(NODE) $(LATER)' },
      { name: 'LATER', value: 'l' },
    ],
    command: ['run', '$(NODE)'],
    args: ['--pw=$(PW)', '$(MISSING)'],
  };
  const env = resolveEnv(c, ctx());
  assert.deepEqual(env, {
    CM_k: 'v', CM_other: 'o', NODE: 'n1', NAME: 'p1', NS: 'ns1', UID: 'u-1', SA: 'sa1', HOST: '10.0.0.1', APP: 'a', K: 'v', PW: 's3cret', G: 'on n1 $(NODE) $(LATER)', LATER: 'l',
  });
  assert.deepEqual(containerArgv(c, env), ['run', 'n1', '--pw=s3cret', '$(MISSING)']);
});

test('env: a missing non-optional reference is a PodConfigError naming container, key and object', () => {
  const missKey: V1Container = { name: 'agent', env: [{ name: 'X', valueFrom: { configMapKeyRef: { name: 'cm', key: 'absent' } } }] };
  assert.throws(() => resolveEnv(missKey, ctx()), (e: unknown) => e instanceof PodConfigError && /container agent: env X: key "absent" of configmap "cm" not found/.test(e.message));
  const missSecret: V1Container = { name: 'c', envFrom: [{ secretRef: { name: 'gone' } }] };
  assert.throws(() => resolveEnv(missSecret, ctx()), /envFrom secret "gone" not found/);
  const badField: V1Container = { name: 'c', env: [{ name: 'X', valueFrom: { fieldRef: { fieldPath: 'spec.hostname' } } }] };
  assert.throws(() => resolveEnv(badField, ctx()), /fieldRef spec\.hostname is not supported/);
});

test('hostPath: each node under its hostRoot, shared machine paths as they are', () => {
  const shared = ['/lib/modules', '/sys'];
  assert.deepEqual(mapHostPath('/opt/cni/bin', '/lab/n1/root', shared), { path: '/lab/n1/root/opt/cni/bin', shared: false });
  assert.deepEqual(mapHostPath('/var/lib/../run/x', '/lab/n1/root', shared), { path: '/lab/n1/root/var/run/x', shared: false });
  assert.deepEqual(mapHostPath('/lib/modules', '/r', shared), { path: '/lib/modules', shared: true });
  assert.deepEqual(mapHostPath('/sys/fs/bpf', '/r', shared), { path: '/sys/fs/bpf', shared: true });
  assert.deepEqual(mapHostPath('/system', '/r', shared), { path: '/r/system', shared: false });
  assert.throws(() => mapHostPath('relative/p', '/r', shared), /not an absolute path/);
});

test('CNI config: the lexically first *.conflist/*.conf; a conflist of one plugin gets name and cniVersion', () => {
  assert.equal(chooseCniConf(['20-b.conflist', '10-a.conf', 'README', '.hidden.conf', '05-x.conflist.tmp']), '10-a.conf');
  assert.equal(chooseCniConf(['notes.txt']), undefined);
  assert.deepEqual(netconfOfFile('{"cniVersion":"1.0.0","name":"mesh","plugins":[{"type":"clustermesh","agentSocket":"/s"}]}', 'f'), {
    type: 'clustermesh', agentSocket: '/s', cniVersion: '1.0.0', name: 'mesh',
  });
  assert.deepEqual(netconfOfFile('{"cniVersion":"1.0.0","name":"n","type":"bridge"}', 'f').type, 'bridge');
  assert.throws(() => netconfOfFile('{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"},{"type":"portmap"}]}', '/etc/cni/net.d/10.conflist'), /10\.conflist: 2 plugins; the lab kubelet runs a conflist of one plugin only/);
  assert.throws(() => netconfOfFile('{nope', 'x.conf'), /x\.conf: not JSON/);
});

test('ConfigMap and Secret volume files: all keys or items, modes, optional, missing key', () => {
  const cm = { data: { a: '1', b: '2' } };
  assert.deepEqual(projectedFiles({ name: 'v', configMap: { name: 'cm' } }, cm).map((f) => [f.path, f.data.toString(), f.mode]), [['a', '1', 0o644], ['b', '2', 0o644]]);
  assert.deepEqual(
    projectedFiles({ name: 'v', secret: { secretName: 's', defaultMode: 0o400, items: [{ key: 'x', path: 'd/x.pem' }, { key: 'y', path: 'y', mode: 0o600 }] } }, { data: { x: Buffer.from('X').toString('base64'), y: Buffer.from('Y').toString('base64') } }).map((f) => [f.path, f.data.toString(), f.mode]),
    [['d/x.pem', 'X', 0o400], ['y', 'Y', 0o600]],
  );
  assert.deepEqual(projectedFiles({ name: 'v', secret: { secretName: 's', optional: true } }, undefined), []);
  assert.throws(() => projectedFiles({ name: 'cfg', configMap: { name: 'cm' } }, undefined), /volume cfg: configmap "cm" not found/);
  assert.throws(() => projectedFiles({ name: 'cfg', configMap: { name: 'cm', items: [{ key: 'z', path: 'z' }] } }, cm), /volume cfg: key "z" of configmap "cm" not found/);
  assert.throws(() => projectedFiles({ name: 'cfg', configMap: { name: 'cm', items: [{ key: 'a', path: '../a' }] } }, cm), /must be relative and stay inside/);
});

test('podstart argv: held start, cgroup, netns or a mount namespace of its own, mount flags, bidirectional sources, the program after --', () => {
  const mounts = [
    { source: "/v/it's", target: '/etc/x', readOnly: true, file: false, recursive: false },
    { source: '/h/f', target: '/usr/bin/tool', readOnly: false, file: true, recursive: true },
    { source: '/h/d', target: '/etc/x/sub', readOnly: false, file: false, recursive: false },
  ];
  const a = podstartArgv({ hold: true, cgroup: '/cg/n1', netns: 'pod-1', mounts: { list: mounts, bidirectional: ['/h/d'], scratch: '/pods/p1/main.mnt' } }, ['sh', '-c', 'exec "$@"']);
  assert.equal(a[0], PODSTART_BIN);
  assert.deepEqual(a.slice(1), [
    '--hold', '--cgroup', '/cg/n1', '--netns', 'pod-1', '--scratch', '/pods/p1/main.mnt',
    '--mount', 'r', "/v/it's", '/etc/x', '--mount', 'fR', '/h/f', '/usr/bin/tool', '--mount', '-', '/h/d', '/etc/x/sub',
    '--bidirectional', '/h/d', '--', 'sh', '-c', 'exec "$@"',
  ]);
  // A hostNetwork pod: no netns; with mounts, a mount namespace of its own.
  assert.deepEqual(podstartArgv({ mountNs: 'unchanged', mounts: { list: mounts.slice(0, 1), bidirectional: [], scratch: '/s' } }, ['p']).slice(1), ['--mount-ns', 'unchanged', '--scratch', '/s', '--mount', 'r', "/v/it's", '/etc/x', '--', 'p']);
  assert.deepEqual(podstartArgv({}, ['p', '--x']).slice(1), ['--', 'p', '--x']);
  assert.throws(() => podstartArgv({ mounts: { list: mounts, bidirectional: [], scratch: '/s' } }, ['p']), /mount namespace of their own/);
});
