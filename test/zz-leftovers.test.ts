// Runs last (files run in name order): the suite left no namespace, pin or process behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { listNamespaces } from '../src/lab/topology.ts';
import { DEFAULT_BPFFS_ROOT } from '../src/datapath/bpffs.ts';
import { labCgroupRoot } from '../src/lab/cgroup.ts';

test('no test namespace is left behind', async () => {
  const left = (await listNamespaces()).filter((n) => n.startsWith('cmt'));
  assert.deepEqual(left, []);
});

test('no test pin directory is left on the clustermesh bpffs', () => {
  const left = existsSync(DEFAULT_BPFFS_ROOT) ? readdirSync(DEFAULT_BPFFS_ROOT).filter((n) => n.startsWith('cmt')) : [];
  assert.deepEqual(left, []);
});

test('no test node cgroup is left behind', () => {
  const root = labCgroupRoot({ mount: false });
  const left = root !== undefined && existsSync(root) ? readdirSync(root).filter((n) => n.startsWith('cmt')) : [];
  assert.deepEqual(left, []);
});
