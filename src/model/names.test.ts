// names.ts (zod-free, for the CNI plugin) and the zod schemas of meta.ts built
// from it must accept and refuse the same values with the same messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dns1123Label, dns1123Subdomain, labelsSchema, labelValue } from './meta.ts';
import { dns1123LabelProblem, dns1123SubdomainProblem, isQualifiedName, jsonKind, labelsProblems, labelValueProblem } from './names.ts';

const samples = ['', 'a', 'web-1', '-a', 'a-', 'A', 'a.b', 'a_b', '1', 'a'.repeat(63), 'a'.repeat(64), `${'a'.repeat(63)}.b`, 'x'.repeat(254), 'café', 'a b', 'a..b'];

test('the hand-written checks agree with the zod schemas, message for message', () => {
  for (const [problem, schema] of [
    [dns1123LabelProblem, dns1123Label],
    [dns1123SubdomainProblem, dns1123Subdomain],
    [labelValueProblem, labelValue],
  ] as const) {
    for (const s of samples) {
      const r = schema.safeParse(s);
      assert.equal(problem(s), r.success ? undefined : r.error.issues[0]!.message, `${problem.name}(${JSON.stringify(s)})`);
    }
  }
  const maps: unknown[] = [{}, { app: 'web' }, { 'example.com/team': '' }, { 'bad key': 'x' }, { app: 'a b' }, { app: 3 }, { '/x': 'y' }, { 'a/b/c': 'd' }];
  for (const m of maps) assert.equal(labelsProblems(m).length === 0, labelsSchema.safeParse(m).success, JSON.stringify(m));
});

test('qualified names, label maps and JSON kinds for messages', () => {
  assert.ok(isQualifiedName('app') && isQualifiedName('example.com/app') && isQualifiedName('a.b_c-d'));
  assert.ok(!isQualifiedName('') && !isQualifiedName('/app') && !isQualifiedName('Example.com/app') && !isQualifiedName('a/') && !isQualifiedName('-a'));
  assert.deepEqual(labelsProblems({ ok: 'x', 'no good': 'x', v: '-' }), [
    ['no good', 'not a qualified name ([prefix/]name)'],
    ['v', 'alphanumerics, "-", "_" and ".", starting and ending alphanumeric'],
  ]);
  assert.deepEqual(labelsProblems(null), [[undefined, 'must be an object of label keys to values, got null']]);
  assert.equal(jsonKind('x'.repeat(50)), `a string ("${'x'.repeat(40)}…")`);
  assert.equal(jsonKind({}), 'an object');
  assert.equal(jsonKind(true), 'a boolean (true)');
});
