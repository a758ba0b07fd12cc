import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ManifestError, parseManifest, templateHash, type Deployment } from './manifest.ts';

const deployment = (over: string = ''): string => `apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 3
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      containers:
      - name: echo
        command: [clustermesh, lab, workload, echo]
        ports: [{containerPort: 8080}]
${over}`;

function refused(text: string): string[] {
  try {
    parseManifest(text, 'f.yaml');
  } catch (err) {
    assert.ok(err instanceof ManifestError, String(err));
    assert.match(err.message, /^f\.yaml: nothing applied/);
    return [...err.problems];
  }
  assert.fail('the file was accepted');
}

test('every supported kind parses, with the default namespace filled in and empty documents skipped', () => {
  const objs = parseManifest(
    `${deployment()}---
kind: Namespace
metadata: {name: team}
---
kind: Pod
metadata: {name: client, namespace: team}
spec: {containers: [{name: c, command: [sleep, infinity]}]}
---
kind: Service
metadata: {name: echo}
spec: {selector: {app: echo}, ports: [{port: 8080}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec: {podSelector: {matchLabels: {app: echo}}, ingress: [{from: [{podSelector: {}}]}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cnp}
spec: {endpointSelector: {matchLabels: {app: echo}}, ingress: [{fromEndpoints: [{matchLabels: {app: x}}]}]}
---
`,
    'f.yaml',
  );
  assert.deepEqual(
    objs.map((o) => `${o.doc}:${o.kind}:${(o.object.metadata as { namespace?: string }).namespace ?? '-'}/${o.object.metadata.name}`),
    ['1:Deployment:default/echo', '2:Namespace:-/team', '3:Pod:team/client', '4:Service:default/echo', '5:NetworkPolicy:default/np', '6:CiliumNetworkPolicy:default/cnp'],
  );
  const d = objs[0]!.object as Deployment;
  assert.equal(d.spec.replicas, 3);
});

test('each bad document is named with its index, object and field; one report for the whole file', () => {
  const problems = refused(`kind: Pod
metadata: {name: ok}
spec: {containers: [{name: c, command: [x]}]}
---
kind: Service
metadata: {name: broken}
spec: {ports: [{port: 70000}]}
---
kind: ReplicaSet
metadata: {name: nope}
---
${deployment().replace('containerPort: 8080', 'containerPort: "http"')}---
kind: Service
metadata: {name: vip}
spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}
`);
  assert.equal(problems.length, 4, problems.join('\n'));
  assert.match(problems[0]!, /^document 2 \(Service default\/broken\): field spec\.ports\[0\]\.port: /);
  assert.match(problems[1]!, /^document 3 \(ReplicaSet nope\): field kind: 'ReplicaSet' is not supported; the lab takes Namespace, Pod, Deployment/);
  assert.match(problems[2]!, /^document 4 \(Deployment default\/echo\): field spec\.template\.spec\.containers\[0\]\.ports\[0\]\.containerPort: /);
  assert.match(problems[3]!, /^document 5 \(Service default\/vip\): field spec\.clusterIP: 10\.0\.0\.1 is outside the Service CIDR 10\.96\.0\.0\/16/);
});

test('YAML syntax errors name the document and line; duplicates and selector mismatches are refused', () => {
  const syntax = refused(`kind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: [unclosed\n`);
  assert.match(syntax[0]!, /^document 2: invalid YAML at line \d+, column \d+/);
  const dup = refused(`kind: Namespace\nmetadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: a}\n`);
  assert.match(dup[0]!, /^document 2 \(Namespace a\): field metadata\.name: appears twice in the file/);
  const sel = refused(deployment().replace('labels: {app: echo}', 'labels: {app: other}'));
  assert.match(sel[0]!, /field spec\.template\.metadata\.labels: must include the selector's app: echo/);
  const policy = refused(`kind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {matchLabels: {app: x}}, policyTypes: [Sideways]}\n`);
  assert.match(policy[0]!, /^document 1 \(NetworkPolicy default\/p\): field spec\.policyTypes/);
});

test('the template hash changes with the template, not with replicas', () => {
  const a = parseManifest(deployment(), 'a')[0]!.object as Deployment;
  const b = parseManifest(deployment().replace('replicas: 3', 'replicas: 1'), 'b')[0]!.object as Deployment;
  const c = parseManifest(deployment().replace('echo]', 'echo, --port, "9090"]'), 'c')[0]!.object as Deployment;
  assert.equal(templateHash(a), templateHash(b));
  assert.notEqual(templateHash(a), templateHash(c));
});

test('re-applying a running Pod with changed labels updates its labels in the store (kubectl label); uid, node and status stay', async () => {
  const { applyObjects } = await import('./manifest.ts');
  const data = new Map<string, { value: string; modRevision: string }>();
  let rev = 0;
  const kv = {
    get: async (key: string) => (data.has(key) ? { key, ...data.get(key)! } : undefined),
    put: async (key: string, value: string) => {
      data.set(key, { value, modRevision: String(++rev) });
      return String(rev);
    },
    list: async (prefix: string) => ({ pairs: [...data].filter(([k]) => k.startsWith(prefix)).map(([key, v]) => ({ key, ...v })), revision: String(rev) }),
  };
  const target = { name: 'cluster1', nodes: ['node1', 'node2'], kv: kv as never };
  const pod = (labels: string): string => `kind: Namespace
metadata: {name: default}
---
kind: Pod
metadata: {name: web, labels: ${labels}}
spec: {containers: [{name: c, command: [sleep, infinity]}]}
`;
  await applyObjects(target, parseManifest(pod('{app: web}'), 'f.yaml'));
  const key = [...data.keys()].find((k) => k.includes('/pods/'))!;
  const first = JSON.parse(data.get(key)!.value) as { metadata: { uid: string }; spec: { nodeName: string } };
  // The kubelet wrote the status meanwhile.
  data.set(key, { value: JSON.stringify({ ...first, status: { phase: 'Running', podIP: '10.101.1.5', conditions: [{ type: 'Ready', status: 'True' }] } }), modRevision: String(++rev) });
  const lines = await applyObjects(target, parseManifest(pod('{app: web, locked: "yes"}'), 'f.yaml'));
  assert.deepEqual(lines.find((l) => l.ref === 'pod/web')?.action, 'configured');
  const after = JSON.parse(data.get(key)!.value) as { metadata: { uid: string; labels: Record<string, string> }; spec: { nodeName: string }; status: { podIP: string } };
  assert.deepEqual(after.metadata.labels, { app: 'web', locked: 'yes' });
  assert.equal(after.metadata.uid, first.metadata.uid, 'same pod (the kubelet keys pods by uid: nothing restarts)');
  assert.equal(after.spec.nodeName, first.spec.nodeName);
  assert.equal(after.status.podIP, '10.101.1.5');
});
