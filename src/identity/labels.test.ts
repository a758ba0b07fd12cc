import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseObject } from '../model/index.ts';
import { identityLabels, labelString, labelStrings, parseLabelString, podIdentityLabels } from './labels.ts';

test('label string of a pod: sorted, k8s: prefix, trailing ;', () => {
  const s = labelString(identityLabels({ cluster: 'c1', namespace: 'default', serviceAccount: 'default', podLabels: { app: 'x' } }));
  assert.equal(
    s,
    'k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.cilium.k8s.policy.serviceaccount=default;k8s:io.kubernetes.pod.namespace=default;',
  );
  assert.deepEqual(parseLabelString(s).map((l) => l.key), ['app', 'io.cilium.k8s.policy.cluster', 'io.cilium.k8s.policy.serviceaccount', 'io.kubernetes.pod.namespace']);
});

test('namespace labels, service account, derived labels win, order independence', () => {
  const pod = parseObject('Pod', {
    kind: 'Pod',
    metadata: { name: 'p', namespace: 'team-a', labels: { zeta: '1', 'app.kubernetes.io/name': 'web', 'io.kubernetes.pod.namespace': 'spoof' } },
    spec: { serviceAccountName: 'robot' },
  });
  const ns = parseObject('Namespace', { kind: 'Namespace', metadata: { name: 'team-a', labels: { env: 'prod' } } });
  const labels = podIdentityLabels('c2', pod, ns);
  assert.deepEqual(labelStrings(labels), [
    'k8s:app.kubernetes.io/name=web',
    'k8s:io.cilium.k8s.namespace.labels.env=prod',
    'k8s:io.cilium.k8s.policy.cluster=c2',
    'k8s:io.cilium.k8s.policy.serviceaccount=robot',
    'k8s:io.kubernetes.pod.namespace=team-a',
    'k8s:zeta=1',
  ]);
  assert.equal(labelString([...labels].reverse()), labelString(labels));
  assert.throws(() => parseLabelString('nosource'), /invalid label string/);
});
