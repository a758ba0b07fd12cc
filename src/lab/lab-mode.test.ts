import { test } from 'node:test';
import assert from 'node:assert/strict';
import { labMeshMode } from './lab.ts';

test('labMeshMode: the mesh is installed unless --direct or --bare; --install alone is the default; two together are refused, naming both', () => {
  assert.equal(labMeshMode({}), 'install');
  assert.equal(labMeshMode({ install: true }), 'install');
  assert.equal(labMeshMode({ direct: true }), 'direct');
  assert.equal(labMeshMode({ bare: true }), 'bare');
  assert.equal(labMeshMode({ direct: false, bare: false }), 'install');
  assert.throws(() => labMeshMode({ direct: true, bare: true }), /--direct and --bare do not go together/);
  assert.throws(() => labMeshMode({ install: true, direct: true }), /--install and --direct do not go together/);
});
