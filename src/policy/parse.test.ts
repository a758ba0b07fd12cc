import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ModelError, parseObject } from '../model/index.ts';
import {
  ALL_PORTS,
  PolicyFileError,
  parseCiliumNetworkPolicy,
  parseNetworkPolicy,
  parsePolicy,
  parsePolicyDocuments,
  parsePolicyFile,
  selectorString,
  type Peer,
  type Policy,
} from './index.ts';

const np = (spec: unknown, name = 'p', namespace: string | undefined = 'default') => ({
  apiVersion: 'networking.k8s.io/v1',
  kind: 'NetworkPolicy',
  metadata: namespace === undefined ? { name } : { name, namespace },
  spec,
});
const cnp = (spec: unknown, name = 'c', namespace = 'default') => ({
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name, namespace },
  spec,
});

const section = (p: Policy) => p.sections[0]!;
const peerString = (p: Peer): string =>
  p.kind === 'endpoints' ? selectorString(p.selector) : p.kind === 'cidr' ? `cidr ${p.prefixes.join(' ')}` : p.kind === 'entity' ? `entity ${p.entity}` : 'all';

/** Asserts `fn` throws a ModelError (or a PolicyFileError holding one) whose message matches. */
function throwsField(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    const msgs = e instanceof PolicyFileError ? e.errors.map((x) => x.message) : e instanceof ModelError ? [e.message] : [];
    assert.ok(msgs.some((m) => re.test(m)), `no error matches ${re}: ${msgs.join(' | ') || String(e)}`);
    return true;
  });
}

test('errors name the file, the object and the field', () => {
  throwsField(
    () => parsePolicy(np({ podSelector: { matchExpressions: [{ key: 'app', operator: 'Among', values: ['x'] }] } }, 'web'), 'pol.yaml'),
    /^pol\.yaml: NetworkPolicy default\/web: spec\.podSelector\.matchExpressions\[0\]\.operator: /,
  );
  throwsField(
    () => parsePolicy(np({ ingress: [{ ports: [{ port: 70000 }] }] }, 'web'), 'pol.yaml'),
    /NetworkPolicy default\/web: spec\.ingress\[0\]\.ports\[0\]\.port/,
  );
  throwsField(
    () => parsePolicy(cnp({ endpointSelector: {}, egress: [{ toCIDRSet: [{ cidr: '10.0.0.0/8', except: ['11.0.0.0/16'] }] }] }, 'c1'), 'f.yaml'),
    /^f\.yaml: CiliumNetworkPolicy default\/c1: spec\.egress\[0\]\.toCIDRSet\[0\]\.except\[0\]: 11\.0\.0\.0\/16 is not inside/,
  );
  throwsField(() => parsePolicy({ kind: 'Pod', metadata: { name: 'x' } }, 'f.yaml'), /^f\.yaml: Pod x: kind: "Pod": not a policy kind/);
});

test('a file with one bad object yields nothing, and lists every bad object', () => {
  const good = np({ podSelector: {} }, 'good');
  const bad1 = np({ ingress: [{ from: [{}] }] }, 'bad1');
  const bad2 = cnp({ endpointSelector: {}, ingress: [{ toPorts: [{ ports: [{ port: '80' }], rules: { http: [{}] } }] }] }, 'bad2');
  let caught: unknown;
  try {
    parsePolicyDocuments([good, bad1, bad2], 'mixed.yaml');
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof PolicyFileError, 'PolicyFileError');
  assert.equal(caught.file, 'mixed.yaml');
  assert.equal(caught.errors.length, 2);
  assert.match(caught.errors[0]!.message, /^mixed\.yaml: NetworkPolicy default\/bad1: spec\.ingress\[0\]\.from\[0\]: must specify a peer/);
  assert.match(caught.errors[1]!.message, /^mixed\.yaml: CiliumNetworkPolicy default\/bad2: spec\.ingress\[0\]\.toPorts\[0\]\.rules: L7 rules .* not supported/);
  assert.match(caught.message, /^mixed\.yaml: nothing applied, 2 errors:/);
  // Duplicates are refused too.
  throwsField(() => parsePolicyDocuments([good, good], 'dup.yaml'), /dup\.yaml: NetworkPolicy default\/good: metadata\.name: appears twice/);
  assert.equal(parsePolicyDocuments([good], 'ok.yaml').length, 1);
});

test('YAML files: several documents, List, default namespace, syntax errors with a line', () => {
  const text = [
    'apiVersion: networking.k8s.io/v1',
    'kind: NetworkPolicy',
    'metadata: {name: a}',
    'spec: {podSelector: {}}',
    '---',
    'apiVersion: v1',
    'kind: List',
    'items:',
    '- {apiVersion: cilium.io/v2, kind: CiliumNetworkPolicy, metadata: {name: b, namespace: prod}, spec: {endpointSelector: {}, ingress: [{}]}}',
    '---',
  ].join('\n');
  const ps = parsePolicyFile(text, 'two.yaml', { defaultNamespace: 'team' });
  assert.deepEqual(
    ps.map((p) => `${p.kind}/${p.namespace}/${p.name}`),
    ['NetworkPolicy/team/a', 'CiliumNetworkPolicy/prod/b'],
  );
  throwsField(() => parsePolicyFile('kind: NetworkPolicy\nmetadata: {name: [\n', 'broken.yaml'), /^broken\.yaml: document 1: line \d+/);
  // Other kinds: an error by default, skipped on request.
  const withPod = 'kind: Pod\nmetadata: {name: x, namespace: default}\n---\nkind: NetworkPolicy\nmetadata: {name: a}\n';
  throwsField(() => parsePolicyFile(withPod, 'mixed.yaml'), /mixed\.yaml: Pod default\/x: kind/);
  assert.equal(parsePolicyFile(withPod, 'mixed.yaml', { otherKinds: 'skip' }).length, 1);
});

test('the model objects from a cluster source parse too', () => {
  const obj = parseObject('NetworkPolicy', np({ podSelector: { matchLabels: { app: 'web' } } }));
  assert.equal(selectorString(section(parsePolicy(obj)).subject), '{k8s:app=web,k8s:io.kubernetes.pod.namespace=default}');
  throwsField(() => parseNetworkPolicy({ ...np({}), apiVersion: 'networking.k8s.io/v2' }), /apiVersion/);
});

test('selector operators: matchLabels and every matchExpressions operator; values checked per operator', () => {
  const p = parseNetworkPolicy(
    np({
      podSelector: {
        matchLabels: { app: 'web' },
        matchExpressions: [
          { key: 'tier', operator: 'In', values: ['b', 'a', 'a'] },
          { key: 'env', operator: 'NotIn', values: ['dev'] },
          { key: 'team', operator: 'Exists' },
          { key: 'legacy', operator: 'DoesNotExist' },
        ],
      },
    }),
  );
  assert.equal(
    selectorString(section(p).subject),
    '{!k8s:legacy,k8s:app=web,k8s:env notin (dev),k8s:io.kubernetes.pod.namespace=default,k8s:team,k8s:tier in (a,b)}',
  );
  throwsField(() => parseNetworkPolicy(np({ podSelector: { matchExpressions: [{ key: 'a', operator: 'In', values: [] }] } })), /matchExpressions\[0\]\.values: must be non-empty/);
  throwsField(() => parseNetworkPolicy(np({ podSelector: { matchExpressions: [{ key: 'a', operator: 'Exists', values: ['x'] }] } })), /matchExpressions\[0\]\.values: must be empty/);
  throwsField(() => parseNetworkPolicy(np({ podSelector: { matchLabels: { 'k8s:app': 'x' } } })), /spec\.podSelector\.matchLabels/);
});

test('NetworkPolicy policyTypes: Ingress always, Egress only with egress rules; rules of undeclared directions ignored', () => {
  assert.deepEqual(section(parseNetworkPolicy(np({ podSelector: {} }))).enforce, { ingress: true, egress: false });
  assert.deepEqual(section(parseNetworkPolicy(np({ egress: [] }))).enforce, { ingress: true, egress: false });
  assert.deepEqual(section(parseNetworkPolicy(np({ egress: [{}] }))).enforce, { ingress: true, egress: true });
  const egressOnly = parseNetworkPolicy(np({ policyTypes: ['Egress'], ingress: [{}], egress: [{}] }));
  assert.deepEqual(section(egressOnly).enforce, { ingress: false, egress: true });
  assert.deepEqual(section(egressOnly).rules.map((r) => r.direction), ['egress']);
  assert.equal(section(parseNetworkPolicy(np({ policyTypes: ['Ingress', 'Egress'] }))).rules.length, 0);
  throwsField(() => parseNetworkPolicy(np({ policyTypes: ['Ingress', 'Ingress'] })), /spec\.policyTypes: duplicate/);
  throwsField(() => parseNetworkPolicy(np({ policyTypes: ['Sideways'] })), /spec\.policyTypes\[0\]/);
});

test('NetworkPolicy peers: empty from = all; podSelector alone, namespaceSelector alone, both in one peer; ipBlock', () => {
  const p = parseNetworkPolicy(
    np({
      ingress: [
        {},
        { from: [] },
        {
          from: [
            { podSelector: { matchLabels: { app: 'client' } } },
            { namespaceSelector: { matchLabels: { team: 'a' } } },
            { namespaceSelector: { matchLabels: { team: 'a' } }, podSelector: { matchLabels: { app: 'client' } } },
            { namespaceSelector: {} },
            { ipBlock: { cidr: '10.0.0.0/8', except: ['10.96.0.0/12'] } },
          ],
        },
      ],
    }),
  );
  const rules = section(p).rules;
  assert.deepEqual(rules[0]!.peers, [{ kind: 'all' }]);
  assert.deepEqual(rules[0]!.ports, [ALL_PORTS]);
  assert.deepEqual(rules[1]!.peers, [{ kind: 'all' }]);
  assert.deepEqual(rules[2]!.peers.map(peerString), [
    '{k8s:app=client,k8s:io.kubernetes.pod.namespace=default}',
    '{k8s:io.cilium.k8s.namespace.labels.team=a,k8s:io.kubernetes.pod.namespace}',
    '{k8s:app=client,k8s:io.cilium.k8s.namespace.labels.team=a,k8s:io.kubernetes.pod.namespace}',
    '{k8s:io.kubernetes.pod.namespace}',
    'cidr 10.0.0.0/10 10.64.0.0/11 10.112.0.0/12 10.128.0.0/9',
  ]);
  throwsField(
    () => parseNetworkPolicy(np({ ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/8' }, podSelector: {} }] }] })),
    /spec\.ingress\[0\]\.from\[0\]\.ipBlock: may not be combined/,
  );
  throwsField(() => parseNetworkPolicy(np({ ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['10.0.0.0/8'] } }] }] })), /except\[0\]: 10\.0\.0\.0\/8 is not a strict subset/);
  throwsField(() => parseNetworkPolicy(np({ ingress: [{ from: [{ ipBlock: { cidr: '10.0.0/8' } }] }] })), /ipBlock\.cidr: not a CIDR/);
  // IPv6 blocks are accepted and select nothing (IPv4 datapath).
  const v6 = parseNetworkPolicy(np({ ingress: [{ from: [{ ipBlock: { cidr: 'fd00::/8' } }] }] }));
  assert.deepEqual(section(v6).rules[0]!.peers[0], { kind: 'cidr', cidr: 'fd00::/8', except: [], prefixes: [] });
});

test('NetworkPolicy ports: number, name, protocols, endPort', () => {
  const p = parseNetworkPolicy(
    np({
      egress: [
        {
          ports: [
            { port: 80 },
            { port: 'http' },
            { protocol: 'UDP', port: 53 },
            { protocol: 'SCTP', port: 9000, endPort: 9100 },
            { protocol: 'UDP' },
            {},
          ],
        },
      ],
    }),
  );
  assert.deepEqual(section(p).rules[0]!.ports, [
    { kind: 'range', protocol: 6, port: 80, portEnd: 80 },
    { kind: 'named', protocol: 6, name: 'http' },
    { kind: 'range', protocol: 17, port: 53, portEnd: 53 },
    { kind: 'range', protocol: 132, port: 9000, portEnd: 9100 },
    { kind: 'range', protocol: 17, port: 0, portEnd: 65535 },
    { kind: 'range', protocol: 6, port: 0, portEnd: 65535 }, // protocol defaults to TCP
  ]);
  throwsField(() => parseNetworkPolicy(np({ ingress: [{ ports: [{ port: 'http', endPort: 90 }] }] })), /ports\[0\]\.endPort: may only be set when port is a number/);
  throwsField(() => parseNetworkPolicy(np({ ingress: [{ ports: [{ port: 90, endPort: 80 }] }] })), /ports\[0\]\.endPort: must be >= port/);
  throwsField(() => parseNetworkPolicy(np({ ingress: [{ ports: [{ port: 'Http_1' }] }] })), /ports\[0\]\.port/);
  throwsField(() => parseNetworkPolicy(np({ ingress: [{ ports: [{ protocol: 'ICMP' }] }] })), /ports\[0\]\.protocol/);
});

test('CiliumNetworkPolicy: selectors with source prefixes, namespace added unless named, entities, CIDRs, ports', () => {
  const p = parseCiliumNetworkPolicy(
    cnp(
      {
        endpointSelector: { matchLabels: { 'k8s:app': 'web' } },
        ingress: [
          {
            fromEndpoints: [
              { matchLabels: { app: 'client' } },
              { matchLabels: { 'any:app': 'client', 'k8s:io.kubernetes.pod.namespace': 'other' } },
              {},
              { matchLabels: { 'reserved:host': '' } },
            ],
            fromEntities: ['world', 'cluster', 'all'],
            fromCIDR: ['192.168.1.7', '172.16.0.0/12'],
            fromCIDRSet: [{ cidr: '10.0.0.0/8', except: ['10.128.0.0/9'] }],
            toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }, { port: '8000', endPort: 8100 }, { port: 'dns', protocol: 'UDP' }, { port: 443 }] }],
          },
        ],
      },
      'c',
      'prod',
    ),
  );
  const s = section(p);
  assert.equal(selectorString(s.subject), '{k8s:app=web,k8s:io.kubernetes.pod.namespace=prod}');
  assert.deepEqual(s.rules[0]!.peers.map(peerString), [
    '{any:app=client,k8s:io.kubernetes.pod.namespace=prod}',
    '{any:app=client,k8s:io.kubernetes.pod.namespace=other}',
    '{k8s:io.kubernetes.pod.namespace=prod}',
    '{reserved:host=}',
    'entity world',
    'entity cluster',
    'all',
    'cidr 192.168.1.7/32',
    'cidr 172.16.0.0/12',
    'cidr 10.0.0.0/9',
  ]);
  assert.deepEqual(s.rules[0]!.ports, [
    { kind: 'range', protocol: 6, port: 80, portEnd: 80 },
    { kind: 'range', protocol: 0, port: 8000, portEnd: 8100 },
    { kind: 'named', protocol: 17, name: 'dns' },
    { kind: 'range', protocol: 0, port: 443, portEnd: 443 },
  ]);
});

test('CiliumNetworkPolicy rule shapes: toPorts-only = every peer, {} = none; deny sections; enableDefaultDeny; specs', () => {
  const p = parseCiliumNetworkPolicy(
    cnp({
      endpointSelector: {},
      ingress: [{}, { toPorts: [{ ports: [{ port: '80' }] }] }],
      egressDeny: [{ toEntities: ['world'] }],
    }),
  );
  const s = section(p);
  assert.deepEqual(s.enforce, { ingress: true, egress: true });
  assert.deepEqual(s.rules.map((r) => [r.direction, r.verdict, r.peers.map(peerString).join(',')]), [
    ['ingress', 'allow', ''],
    ['ingress', 'allow', 'all'],
    ['egress', 'deny', 'entity world'],
  ]);
  // `ingress: []` does not enforce; enableDefaultDeny overrides either way.
  assert.deepEqual(section(parseCiliumNetworkPolicy(cnp({ endpointSelector: {}, ingress: [] }))).enforce, { ingress: false, egress: false });
  assert.deepEqual(
    section(parseCiliumNetworkPolicy(cnp({ endpointSelector: {}, ingress: [{}], enableDefaultDeny: { ingress: false, egress: true } }))).enforce,
    { ingress: false, egress: true },
  );
  const multi = parseCiliumNetworkPolicy({ ...cnp(undefined), spec: undefined, specs: [{ endpointSelector: { matchLabels: { a: 'x' } }, ingress: [{}] }, { endpointSelector: { matchLabels: { b: 'y' } }, egress: [{}] }] });
  assert.equal(multi.sections.length, 2);
  assert.deepEqual(multi.sections.map((x) => x.enforce), [{ ingress: true, egress: false }, { ingress: false, egress: true }]);
});

test('CiliumNetworkPolicy: what is not enforced here is refused by name', () => {
  const bad = (spec: unknown, re: RegExp) => throwsField(() => parseCiliumNetworkPolicy(cnp(spec, 'x'), 'c.yaml'), re);
  bad({ endpointSelector: {}, egress: [{ toFQDNs: [{ matchName: 'example.com' }] }] }, /spec\.egress\[0\]\.toFQDNs: toFQDNs is not supported/);
  bad({ endpointSelector: {}, egress: [{ toServices: [{}] }] }, /spec\.egress\[0\]\.toServices/);
  bad({ endpointSelector: {}, ingress: [{ icmps: [{}] }] }, /spec\.ingress\[0\]\.icmps/);
  bad({ nodeSelector: {}, ingress: [{}] }, /spec\.nodeSelector: nodeSelector \(host policies\) is not supported/);
  bad({ ingress: [{}] }, /spec\.endpointSelector: is required/);
  bad({ endpointSelector: { matchLabels: { 'reserved:host': '' } } }, /spec\.endpointSelector: reserved: labels/);
  bad({ endpointSelector: {}, ingress: [{ fromEntities: ['everything'] }] }, /spec\.ingress\[0\]\.fromEntities\[0\]: entity must be one of/);
  bad({ endpointSelector: {}, ingress: [{ toPorts: [{ ports: [{ port: '80', protocol: 'ICMP' }] }] }] }, /toPorts\[0\]\.ports\[0\]\.protocol/);
  bad({ endpointSelector: {}, ingress: [{ toPorts: [{ ports: [{ port: '99999' }] }] }] }, /toPorts\[0\]\.ports\[0\]\.port: port 99999 is out of range/);
  bad({ endpointSelector: {}, ingress: [{ toPorts: [{ ports: [{ port: '90', endPort: 80 }] }] }] }, /toPorts\[0\]\.ports\[0\]\.endPort: must be >= port/);
  bad({ endpointSelector: { matchLabels: { 'weird:app': 'x' } } }, /spec\.endpointSelector\.matchLabels\.weird:app: unknown label source "weird"/);
  bad({ endpointSelector: {}, ingress: [{ fromEndpoints: [{ matchLabels: {} }], bogus: 1 }] }, /spec\.ingress\[0\]: .*bogus/i);
  throwsField(() => parseCiliumNetworkPolicy({ ...cnp(undefined), spec: undefined }), /spec: spec or specs is required/);
});

test('CiliumClusterwideNetworkPolicy: no namespace on the object or its selectors; a namespace on it is refused; files keep it cluster-scoped', () => {
  const ccnp = {
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumClusterwideNetworkPolicy',
    metadata: { name: 'web-from-frontend' },
    spec: { endpointSelector: { matchLabels: { app: 'web' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'frontend' } }] }] },
  };
  const p = parsePolicy(ccnp);
  assert.deepEqual([p.kind, p.namespace, p.name], ['CiliumClusterwideNetworkPolicy', '', 'web-from-frontend']);
  const s = section(p);
  assert.equal(selectorString(s.subject), '{any:app=web}');
  assert.deepEqual(s.rules[0]!.peers.map((x) => (x.kind === 'endpoints' ? selectorString(x.selector) : x.kind)), ['{any:app=frontend}']);
  throwsField(() => parsePolicy({ ...ccnp, metadata: { name: 'x', namespace: 'default' } }), /metadata\.namespace/);
  const [fromFile] = parsePolicyDocuments([ccnp], 'ccnp.yaml');
  assert.equal(fromFile!.namespace, '', 'the default namespace of a file is not put on a clusterwide policy');
});
