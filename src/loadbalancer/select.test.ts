import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type BackendCandidate, parseTopologyAffinity, selectBackends } from './select.ts';

let nextId = 1;
function be(local: boolean, o: Partial<BackendCandidate> = {}): BackendCandidate {
  const id = nextId++;
  return { id, ip: `10.${local ? 101 : 102}.0.${id}`, port: 8080, clusterId: local ? 1 : 2, local, ready: true, terminating: false, clusterGone: false, ...o };
}
const ids = (s: { active: BackendCandidate[] }) => s.active.map((b) => b.id);

describe('selectBackends', () => {
  it("'none' uses local and remote backends alike (remote ones are not black-holed)", () => {
    const l = be(true);
    const r1 = be(false);
    const r2 = be(false);
    assert.deepEqual(selectBackends([r2, l, r1], 'none'), { active: [l, r1, r2], tier: 'all' });
    assert.deepEqual(ids(selectBackends([r1, r2], parseTopologyAffinity('none'))), [r1.id, r2.id]);
  });

  it("'local' keeps using the local backends that remain, one by one, then falls back to remote, then returns", () => {
    const locals = [be(true), be(true), be(true)];
    const remotes = [be(false), be(false)];
    const all = () => [...locals, ...remotes];
    assert.deepEqual(selectBackends(all(), 'local'), { active: locals, tier: 'local' });
    locals[0]!.ready = false;
    assert.deepEqual(ids(selectBackends(all(), 'local')), [locals[1]!.id, locals[2]!.id]);
    locals[1]!.terminating = true;
    assert.deepEqual(ids(selectBackends(all(), 'local')), [locals[2]!.id], 'the last local backend takes everything');
    locals[2]!.ready = false;
    assert.deepEqual(selectBackends(all(), 'local'), { active: remotes, tier: 'remote-fallback' });
    locals[0]!.ready = true;
    assert.deepEqual(selectBackends(all(), 'local'), { active: [locals[0]!], tier: 'local' }, 'back as soon as one local backend is ready');
  });

  it("'remote' is the mirror image", () => {
    const l = be(true);
    const r = be(false);
    assert.deepEqual(selectBackends([l, r], 'remote'), { active: [r], tier: 'remote' });
    r.clusterGone = true;
    assert.deepEqual(selectBackends([l, r], 'remote'), { active: [l], tier: 'local-fallback' });
  });

  it('never chooses a backend whose cluster announced it gone, a terminating or an unready one', () => {
    const gone = be(false, { clusterGone: true });
    const term = be(true, { terminating: true });
    const unready = be(true, { ready: false });
    for (const a of ['none', 'local', 'remote'] as const) assert.deepEqual(selectBackends([gone, term, unready], a), { active: [], tier: 'none' });
  });

  it('parses the annotation leniently: unknown or absent = none', () => {
    assert.deepEqual(['local', ' Remote ', 'none', '', 'sideways', undefined].map(parseTopologyAffinity), ['local', 'remote', 'none', 'none', 'none', 'none']);
  });
});
