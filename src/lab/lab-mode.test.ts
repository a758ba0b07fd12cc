import { test } from 'node:test';
import assert from 'node:assert/strict';
import { labMeshMode } from './lab.ts';

test('labMeshMode: the mesh is installed unless --direct or --bare; both together are refused, naming both', () => {
  assert.equal(labMeshMode({}), 'install');
  assert.equal(labMeshMode({ direct: true }), 'direct');
  assert.equal(labMeshMode({ bare: true }), 'bare');
  assert.equal(labMeshMode({ direct: false, bare: false }), 'install');
  assert.throws(() => labMeshMode({ direct: true, bare: true }), /--direct and --bare do not go together/);
});
