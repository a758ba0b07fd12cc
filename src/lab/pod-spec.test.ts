import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { chooseCniConf, containerArgv, expandVars, mapHostPath, mountScript, netconfOfFile, PodConfigError, projectedFiles, resolveEnv, type EnvContext } from './pod-spec.ts';

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

test('mount script: staged binds, read-only remounts, file targets, mount points in overlays, nested targets, shell quoting, bidirectional sources kept as peers', () => {
  const s = mountScript(
    [
      { source: "/v/it's", target: '/etc/x', readOnly: true, file: false, recursive: false },
      { source: '/h/f', target: '/usr/bin/tool', readOnly: false, file: true, recursive: true },
      { source: '/h/d', target: '/etc/x/sub', readOnly: false, file: false, recursive: false },
      { source: '/h/ro', target: '/opt/ro', readOnly: true, file: false, recursive: true },
    ],
    [],
    '/pods/p1/main.mnt',
  );
  // The sources are bound on the namespace's tmpfs first, before any overlay could hide them.
  assert.match(s, /^S='\/pods\/p1\/main.mnt'$/m);
  assert.match(s, /mount -t tmpfs -o mode=0700 clustermesh-lab "\$S\/t"/);
  assert.match(s, /^mkdir "\$S\/t\/src" "\$S\/t\/src\/0" "\$S\/t\/src\/2" "\$S\/t\/src\/3" "\$S\/t\/1" "\$S\/t\/1\/upper" "\$S\/t\/1\/work" .* "\$S\/t\/3\/work"$/m, 'the staging dirs and the overlays\' dirs (one per top-level target) in one mkdir');
  // A read-only plain bind is read-only from its staging on (mount binds and remounts in one process).
  assert.match(s, /^mount --bind -o ro '\/v\/it'\\''s' "\$S\/t\/src\/0"$/m);
  assert.match(s, /^mount --rbind '\/h\/ro' "\$S\/t\/src\/3"$/m);
  assert.match(s, /: > "\$S\/t\/src\/1"\nmount --rbind '\/h\/f' "\$S\/t\/src\/1"/);
  // Mount points: the top-level targets through point (an overlay where the machine lacks one), a nested one inside its volume.
  assert.match(s, /^point '\/etc\/x' d$/m);
  assert.match(s, /^point '\/usr\/bin\/tool' f$/m);
  assert.doesNotMatch(s, /^point '\/etc\/x\/sub'/m);
  assert.match(s, /\[ -d '\/etc\/x\/sub' \] \|\| mkdir -p '\/etc\/x\/sub'\nmount --move "\$S\/t\/src\/2" '\/etc\/x\/sub'/);
  assert.match(s, /mount --move "\$S\/t\/src\/0" '\/etc\/x'\n(?!mount -o remount)/);
  assert.match(s, /mount --move "\$S\/t\/src\/3" '\/opt\/ro'\nmount -o remount,bind,ro '\/opt\/ro'/, 'a recursive bind is made read-only after its move');
  // Path arithmetic and the mount table in the shell and one awk: no dirname, realpath on the usual path, findmnt, sort.
  assert.doesNotMatch(s, /\$\(dirname|findmnt|\| *sort/);
  assert.match(s, /mount -t overlay clustermesh-lab -o "lowerdir=\$a,upperdir=\$d\/upper,workdir=\$d\/work" "\$S\/r"/);
  assert.match(s, /pivot_root \. "\.\$S\/old"/);
  assert.doesNotMatch(s, /mkdir -p '\/etc\/x'$/m, 'no mount point made directly on the machine');
  assert.match(s, /exec "\$@"\n$/);
  assert.doesNotMatch(s, /make-slave/);
  assert.match(mountScript([], ['/run/b'], '/s'), /case "\$t" in '\/run\/b'\|'\/run\/b'\/\*\) ;; \*\) mount --make-slave/);
});
