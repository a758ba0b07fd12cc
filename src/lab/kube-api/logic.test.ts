// Unit tests of the kube-api server's pure parts: patches, selectors, protobuf, printing.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { jsonPatch, mergePatch, strategicMergePatch } from './patch.ts';
import { fieldMatcher, labelMatcher, parseLabelSelector } from './selectors.ts';
import { decodeProtobufBody } from './protobuf.ts';
import { humanDuration } from './tables.ts';
import { checkFields, schemaProblems } from './validate.ts';
import { BUILTIN_RESOURCES, resourcesOfCrd } from './resources.ts';
import type { JsonObject } from './json.ts';

test('JSON merge patch: null deletes, objects merge, lists are replaced', () => {
  const out = mergePatch({ a: 1, b: { c: 2, d: 3 }, l: [1, 2] }, { a: null, b: { c: 5 }, l: [3] });
  assert.deepEqual(out, { b: { c: 5, d: 3 }, l: [3] });
});

test('JSON patch: add, replace, remove, test, move', () => {
  const out = jsonPatch({ a: [1, 2], b: { c: 1 } }, [
    { op: 'add', path: '/a/-', value: 3 },
    { op: 'replace', path: '/b/c', value: 2 },
    { op: 'test', path: '/b/c', value: 2 },
    { op: 'move', from: '/b/c', path: '/d' },
    { op: 'remove', path: '/a/0' },
  ]);
  assert.deepEqual(out, { a: [2, 3], b: {}, d: 2 });
  assert.throws(() => jsonPatch({ a: 1 }, [{ op: 'test', path: '/a', value: 2 }]), /test failed/);
  assert.throws(() => jsonPatch({ a: 1 }, [{ op: 'remove', path: '/zz' }]), /does not exist/);
});

test('strategic merge patch: containers and ports merge by key, $patch delete, directives, atomic lists', () => {
  const pod: JsonObject = {
    metadata: { name: 'p', finalizers: ['a'] },
    spec: {
      containers: [
        { name: 'web', image: 'v1', ports: [{ containerPort: 80, protocol: 'TCP' }] },
        { name: 'side', image: 's1' },
      ],
      tolerations: [{ key: 'x' }],
    },
  };
  const out = strategicMergePatch(
    pod,
    {
      metadata: { finalizers: ['b'] },
      spec: {
        containers: [
          { name: 'web', image: 'v2', ports: [{ containerPort: 8080 }] },
          { name: 'side', $patch: 'delete' },
        ],
        $setElementOrder: undefined,
        tolerations: [{ key: 'y' }],
      },
    },
    'Pod',
  );
  const spec = out.spec as JsonObject;
  assert.deepEqual(spec.containers, [{ name: 'web', image: 'v2', ports: [{ containerPort: 80, protocol: 'TCP' }, { containerPort: 8080 }] }]);
  assert.deepEqual(spec.tolerations, [{ key: 'y' }], 'lists without a merge key are replaced');
  assert.deepEqual((out.metadata as JsonObject).finalizers, ['a', 'b'], 'finalizers merge as a set');

  const ordered = strategicMergePatch(
    { spec: { containers: [{ name: 'a' }, { name: 'b' }], volumes: [{ name: 'v' }] } },
    { spec: { '$setElementOrder/containers': [{ name: 'b' }, { name: 'a' }], '$deleteFromPrimitiveList/x': [], volumes: [{ name: 'v', $patch: 'delete' }], containers: [{ name: 'a', image: 'i' }] } },
    'Pod',
  );
  assert.deepEqual((ordered.spec as JsonObject).containers, [{ name: 'b' }, { name: 'a', image: 'i' }]);
  assert.deepEqual((ordered.spec as JsonObject).volumes, []);
  // A Service's ports merge by port.
  const svc = strategicMergePatch({ spec: { ports: [{ port: 80, name: 'http' }] } }, { spec: { ports: [{ port: 443, name: 'https' }] } }, 'Service');
  assert.deepEqual((svc.spec as JsonObject).ports, [{ port: 80, name: 'http' }, { port: 443, name: 'https' }]);
  // `$retainKeys` drops the keys it does not list.
  const dep = strategicMergePatch({ spec: { strategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1 } } } }, { spec: { strategy: { $retainKeys: ['type'], type: 'Recreate' } } }, 'Deployment');
  assert.deepEqual((dep.spec as JsonObject).strategy, { type: 'Recreate' });
});

test('label selectors: equality, sets, existence, and errors name the selector', () => {
  const m = labelMatcher('app=web,tier!=db,env in (a, b),!canary,zone');
  const obj = (labels: Record<string, string>): JsonObject => ({ metadata: { labels } });
  assert.equal(m(obj({ app: 'web', env: 'a', zone: 'z' })), true);
  assert.equal(m(obj({ app: 'web', env: 'a', zone: 'z', canary: '1' })), false);
  assert.equal(m(obj({ app: 'web', env: 'c', zone: 'z' })), false);
  assert.equal(m(obj({ app: 'web', env: 'b', zone: 'z', tier: 'db' })), false);
  assert.equal(labelMatcher('')(obj({})), true);
  assert.deepEqual(parseLabelSelector('a notin (x)'), [{ op: 'notin', key: 'a', values: ['x'] }]);
  assert.throws(() => parseLabelSelector('a=b=c'), /invalid label value|unable to parse/);
});

test('field selectors: the supported fields of a kind, others refused by name', () => {
  const m = fieldMatcher('spec.nodeName=n1,metadata.namespace!=kube-system', 'Pod', 'pods');
  assert.equal(m({ metadata: { namespace: 'default' }, spec: { nodeName: 'n1' } }), true);
  assert.equal(m({ metadata: { namespace: 'kube-system' }, spec: { nodeName: 'n1' } }), false);
  assert.throws(() => fieldMatcher('spec.nodeName=n1', 'ConfigMap', 'configmaps'), /field label not supported: spec.nodeName/);
});

// ---- protobuf: a minimal encoder to build request bodies.
const varint = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
};
const field = (num: number, bytes: Buffer | string): Buffer => {
  const b = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
  return Buffer.from([...varint((num << 3) | 2), ...varint(b.length), ...b]);
};
const intField = (num: number, v: number): Buffer => Buffer.from([...varint(num << 3), ...varint(v)]);

test('protobuf bodies decode to the JSON form: maps, bytes, IntOrString, Time, zero values dropped', () => {
  const meta = Buffer.concat([field(1, 'web'), field(2, ''), field(11, Buffer.concat([field(1, 'app'), field(2, 'web')])), field(8, Buffer.alloc(0))]);
  const secret = Buffer.concat([field(1, meta), field(2, Buffer.concat([field(1, 'k'), field(2, Buffer.from([0, 1, 2]))])), field(3, 'Opaque')]);
  const unknown = Buffer.concat([field(1, Buffer.concat([field(1, 'v1'), field(2, 'Secret')])), field(2, secret)]);
  const body = Buffer.concat([Buffer.from([0x6b, 0x38, 0x73, 0]), unknown]);
  assert.deepEqual(decodeProtobufBody(body), { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'web', labels: { app: 'web' } }, data: { k: 'AAEC' }, type: 'Opaque' });

  // A Service port's targetPort (IntOrString) and a creationTimestamp (Time).
  const port = Buffer.concat([intField(3, 80), field(4, Buffer.concat([intField(1, 0), intField(2, 8080)]))]);
  const svcMeta = Buffer.concat([field(1, 's'), field(8, intField(1, 1_700_000_000))]);
  const svc = Buffer.concat([field(1, svcMeta), field(2, field(1, port))]);
  const svcBody = Buffer.concat([Buffer.from([0x6b, 0x38, 0x73, 0]), field(1, Buffer.concat([field(1, 'v1'), field(2, 'Service')])), field(2, svc)]);
  assert.deepEqual(decodeProtobufBody(svcBody), {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: 's', creationTimestamp: '2023-11-14T22:13:20Z' },
    spec: { ports: [{ port: 80, targetPort: 8080 }] },
  });
  assert.throws(() => decodeProtobufBody(Buffer.from('{}')), /magic bytes/);
});

test('field validation: unknown fields of built-in kinds and of CRD schemas', () => {
  const pod = BUILTIN_RESOURCES.find((r) => r.kind === 'Pod')!;
  assert.deepEqual(checkFields(pod, { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', lables: {} }, spec: { containers: [{ name: 'c', imagee: 'x' }] } }), ['metadata.lables', 'spec.containers[0].imagee']);
  const [cr] = resourcesOfCrd({
    metadata: { name: 'things.example.com' },
    spec: {
      group: 'example.com',
      scope: 'Namespaced',
      names: { kind: 'Thing', plural: 'things' },
      versions: [{ name: 'v1', served: true, storage: true, schema: { openAPIV3Schema: { type: 'object', properties: { spec: { type: 'object', properties: { size: { type: 'integer' } } }, status: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } } } } }],
    },
  });
  assert.deepEqual(checkFields(cr!, { apiVersion: 'example.com/v1', kind: 'Thing', metadata: { name: 't' }, spec: { size: 1, colour: 'red' }, status: { anything: 1 } }), ['spec.colour']);
});

test("a custom resource's values are checked against its CRD schema with kube-apiserver's wording", () => {
  const [cr] = resourcesOfCrd({
    metadata: { name: 'boxes.example.com' },
    spec: {
      group: 'example.com',
      scope: 'Namespaced',
      names: { kind: 'Box', plural: 'boxes' },
      versions: [
        {
          name: 'v1',
          served: true,
          storage: true,
          schema: {
            openAPIV3Schema: {
              type: 'object',
              required: ['spec'],
              properties: {
                spec: {
                  type: 'object',
                  required: ['kind'],
                  properties: {
                    kind: { type: 'string', enum: ['small', 'large'] },
                    size: { type: 'integer', minimum: 1, maximum: 10 },
                    tags: { type: 'array', items: { type: 'string', maxLength: 3 } },
                    open: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true },
                  },
                },
              },
            },
          },
        },
      ],
    },
  });
  const box = (spec: unknown): JsonObject => ({ apiVersion: 'example.com/v1', kind: 'Box', metadata: { name: 'b' }, ...(spec === undefined ? {} : { spec }) }) as JsonObject;
  assert.deepEqual(schemaProblems(cr!, box({ kind: 'small', size: 3, tags: ['a'], open: { any: [1] } })), []);
  assert.deepEqual(schemaProblems(cr!, box(undefined)), [{ field: 'spec', type: 'Required value', message: '' }]);
  assert.deepEqual(
    schemaProblems(cr!, box({ kind: 'huge', size: 11, tags: ['abcd', 7] })).map((c) => `${c.field}: ${c.type}: ${c.message}`),
    [
      'spec.kind: Unsupported value: "huge": supported values: "small", "large"',
      'spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10',
      'spec.tags[0]: Too long: may not be more than 3 bytes',
      'spec.tags[1]: Invalid value: "integer": spec.tags[1] in body must be of type string: "integer"',
    ],
  );
  assert.deepEqual(schemaProblems(cr!, box({ size: '3' })).map((c) => c.field), ['spec.size', 'spec.kind']);
});

test('ages print as kubectl prints them', () => {
  assert.equal(humanDuration(45_000), '45s');
  assert.equal(humanDuration(192_000), '3m12s');
  assert.equal(humanDuration(17 * 60_000), '17m');
  assert.equal(humanDuration((5 * 60 + 3) * 60_000), '5h3m');
  assert.equal(humanDuration(30 * 3_600_000), '30h');
  assert.equal(humanDuration((3 * 24 + 4) * 3_600_000), '3d4h');
});
