// The C structs and enums are the source of truth; this test reads the BTF of
// the compiled objects and fails when a TypeScript codec's size, offsets or
// member names, or a reason code, differ from them (Cilium's alignchecker).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { before, describe, it } from 'node:test';
import type { StructLayout } from './codec.ts';
import * as config from './config.ts';
import * as endpoints from './endpoints.ts';
import * as events from './events.ts';
import * as ipcache from './ipcache.ts';
import * as lbHint from './lb-hint.ts';
import * as metrics from './metrics.ts';
import { Direction, DropReason, EventType, TraceReason } from './reasons.ts';
import * as settings from './settings.ts';
import * as affinity from './affinity.ts';
import * as backendSlots from './backend-slots.ts';
import * as backends from './backends.ts';
import * as ct from './ct.ts';
import * as policy from './policy.ts';
import * as maglev from './maglev.ts';
import * as revnat from './revnat.ts';
import * as services from './services.ts';
import * as sock from './sock.ts';

const BPF_DIR = fileURLToPath(new URL('../../../bpf/', import.meta.url));
const OBJECTS = ['build/lxc.bpf.o', 'build/overlay.bpf.o'];
const SOCK_OBJECT = 'build/sock.bpf.o';

interface BtfMember {
  name: string;
  type_id: number;
  bits_offset: number;
  bitfield_size?: number;
}
interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: BtfMember[];
  values?: Array<{ name: string; val: number }>;
  vars?: Array<{ type_id: number; offset: number; size: number }>;
}

class Btf {
  readonly byId = new Map<number, BtfType>();
  constructor(readonly file: string, types: BtfType[]) {
    for (const t of types) this.byId.set(t.id, t);
  }

  static load(obj: string): Btf {
    const out = execFileSync('bpftool', ['btf', 'dump', 'file', BPF_DIR + obj, 'format', 'raw', '-j'], { encoding: 'utf8' });
    return new Btf(obj, (JSON.parse(out) as { types: BtfType[] }).types);
  }

  named(kind: string, name: string): BtfType {
    const found = [...this.byId.values()].filter((t) => t.kind === kind && t.name === name);
    assert.equal(found.length, 1, `${this.file}: expected one ${kind} ${name}, found ${found.length}`);
    return found[0]!;
  }

  get(id: number): BtfType {
    const t = this.byId.get(id);
    assert.ok(t, `${this.file}: no BTF type ${id}`);
    return t;
  }

  /** Skips typedef/const/volatile/restrict. */
  resolve(id: number): BtfType {
    let t = this.get(id);
    while (['TYPEDEF', 'CONST', 'VOLATILE', 'RESTRICT', 'TYPE_TAG'].includes(t.kind)) t = this.get(t.type_id!);
    return t;
  }

  sizeOf(id: number): number {
    const t = this.resolve(id);
    switch (t.kind) {
      case 'INT':
      case 'ENUM':
      case 'ENUM64':
      case 'STRUCT':
      case 'UNION':
        return t.size!;
      case 'ARRAY':
        return t.nr_elems! * this.sizeOf(t.type_id!);
      case 'PTR':
        return 8;
      default:
        throw new Error(`${this.file}: no size for ${t.kind} ${t.name}`);
    }
  }

  enumValues(name: string): Record<string, number> {
    const t = this.named('ENUM', name);
    return Object.fromEntries(t.values!.filter((v) => !v.name.startsWith('__')).map((v) => [v.name, v.val]));
  }

  /** For a BTF-defined map: the names of its key and value types (undefined when it has none). */
  mapTypes(mapName: string): { key: string | undefined; value: string | undefined } {
    const v = this.named('VAR', mapName);
    const def = this.resolve(v.type_id!);
    const member = (m: string): string | undefined => {
      const mm = def.members!.find((x) => x.name === m);
      if (!mm) return undefined;
      const ptr = this.get(mm.type_id);
      assert.equal(ptr.kind, 'PTR');
      let t = this.get(ptr.type_id!);
      while (['CONST', 'VOLATILE'].includes(t.kind)) t = this.get(t.type_id!);
      return t.name;
    };
    return { key: member('key'), value: member('value') };
  }
}

/** Every difference between a codec layout and the C struct, as readable lines. */
function layoutDrift(btf: Btf, layout: StructLayout): string[] {
  const s = btf.named('STRUCT', layout.cName);
  const diffs: string[] = [];
  if (s.size !== layout.size) diffs.push(`size: C ${s.size}, TS ${layout.size}`);
  const cNames = new Set(s.members!.map((m) => m.name));
  for (const n of Object.keys(layout.fields)) if (!cNames.has(n)) diffs.push(`${n}: in TS, not in C`);
  for (const m of s.members!) {
    const f = (layout.fields as Record<string, { offset: number; size: number }>)[m.name];
    if (!f) {
      diffs.push(`${m.name}: in C, not in TS`);
      continue;
    }
    if (m.bitfield_size) diffs.push(`${m.name}: a bitfield in C`);
    if (m.bits_offset !== f.offset * 8) diffs.push(`${m.name}: offset C ${m.bits_offset / 8}, TS ${f.offset}`);
    const size = btf.sizeOf(m.type_id);
    if (size !== f.size) diffs.push(`${m.name}: size C ${size}, TS ${f.size}`);
  }
  return diffs.map((d) => `struct ${layout.cName}: ${d}`);
}

const LAYOUTS: StructLayout[] = [
  lbHint.VALUE_LAYOUT,
  ipcache.KEY_LAYOUT,
  ipcache.VALUE_LAYOUT,
  endpoints.KEY_LAYOUT,
  endpoints.VALUE_LAYOUT,
  metrics.VALUE_LAYOUT,
  settings.VALUE_LAYOUT,
  events.EVENT_LAYOUT,
  services.KEY_LAYOUT,
  services.VALUE_LAYOUT,
  backends.VALUE_LAYOUT,
  backendSlots.KEY_LAYOUT,
  maglev.VALUE_LAYOUT,
  revnat.VALUE_LAYOUT,
  ct.KEY_LAYOUT,
  ct.VALUE_LAYOUT,
  affinity.KEY_LAYOUT,
  affinity.VALUE_LAYOUT,
  policy.KEY_LAYOUT,
  policy.VALUE_LAYOUT,
  policy.ENFORCE_VALUE_LAYOUT,
  policy.CONN_KEY_LAYOUT,
  policy.CONN_VALUE_LAYOUT,
  policy.CIDR_KEY_LAYOUT,
  policy.CIDR_VALUE_LAYOUT,
  policy.REV_VALUE_LAYOUT,
  policy.VERDICT_LAYOUT,
];

/** Which structs each map is declared with in C. */
const MAPS: Array<{ name: string; key: string | undefined; value: string | undefined }> = [
  { name: ipcache.MAP_NAME, key: ipcache.KEY_LAYOUT.cName, value: ipcache.VALUE_LAYOUT.cName },
  { name: endpoints.MAP_NAME, key: endpoints.KEY_LAYOUT.cName, value: endpoints.VALUE_LAYOUT.cName },
  { name: metrics.MAP_NAME, key: '__u32', value: metrics.VALUE_LAYOUT.cName },
  { name: settings.MAP_NAME, key: '__u32', value: settings.VALUE_LAYOUT.cName },
  { name: events.MAP_NAME, key: undefined, value: undefined },
  { name: services.MAP_NAME, key: services.KEY_LAYOUT.cName, value: services.VALUE_LAYOUT.cName },
  { name: backends.MAP_NAME, key: '__u32', value: backends.VALUE_LAYOUT.cName },
  { name: backendSlots.MAP_NAME, key: backendSlots.KEY_LAYOUT.cName, value: '__u32' },
  { name: maglev.MAP_NAME, key: '__u32', value: maglev.VALUE_LAYOUT.cName },
  { name: revnat.MAP_NAME, key: '__u32', value: revnat.VALUE_LAYOUT.cName },
  { name: ct.MAP_NAME, key: ct.KEY_LAYOUT.cName, value: ct.VALUE_LAYOUT.cName },
  { name: affinity.MAP_NAME, key: affinity.KEY_LAYOUT.cName, value: affinity.VALUE_LAYOUT.cName },
  { name: lbHint.MAP_NAME, key: '__u32', value: lbHint.VALUE_LAYOUT.cName },
  { name: policy.MAP_NAME, key: policy.KEY_LAYOUT.cName, value: policy.VALUE_LAYOUT.cName },
  { name: policy.ENFORCE_MAP_NAME, key: '__u32', value: policy.ENFORCE_VALUE_LAYOUT.cName },
  { name: policy.CONN_MAP_NAME, key: policy.CONN_KEY_LAYOUT.cName, value: policy.CONN_VALUE_LAYOUT.cName },
  { name: policy.CIDR_MAP_NAME, key: policy.CIDR_KEY_LAYOUT.cName, value: policy.CIDR_VALUE_LAYOUT.cName },
  { name: policy.REV_MAP_NAME, key: '__u32', value: policy.REV_VALUE_LAYOUT.cName },
];

describe('TypeScript codecs match the C structs (BTF)', () => {
  const btfs: Btf[] = [];
  before(() => {
    execFileSync('make', ['-s', '-C', BPF_DIR, ...OBJECTS], { stdio: ['ignore', 'ignore', 'inherit'] });
    for (const o of OBJECTS) btfs.push(Btf.load(o));
  });

  for (const [i, obj] of OBJECTS.entries()) {
    describe(obj, () => {
      for (const layout of LAYOUTS) {
        it(`struct ${layout.cName} has the codec's size and offsets`, () => {
          assert.deepEqual(layoutDrift(btfs[i]!, layout), []);
        });
      }

      it('each map is declared with the codec structs', () => {
        for (const m of MAPS) assert.deepEqual(btfs[i]!.mapTypes(m.name), { key: m.key, value: m.value }, m.name);
      });

      it('reason codes, directions, event types and settings flags match the C enums', () => {
        const btf = btfs[i]!;
        assert.deepEqual(btf.enumValues('cm_drop_reason'), DropReason);
        assert.deepEqual(btf.enumValues('cm_trace_reason'), TraceReason);
        assert.deepEqual(btf.enumValues('cm_direction'), Direction);
        assert.deepEqual(btf.enumValues('cm_metrics_layout'), metrics.MetricsLayout);
        assert.deepEqual(btf.enumValues('cm_event_type'), EventType);
        assert.deepEqual(btf.enumValues('cm_settings_flag'), settings.SettingsFlag);
        assert.deepEqual(btf.enumValues('lb_service_flag'), services.ServiceFlag);
        assert.deepEqual(btf.enumValues('lb_backend_flag'), backends.BackendFlag);
        assert.deepEqual(btf.enumValues('cm_ct_dir'), ct.CtDir);
        assert.deepEqual(btf.enumValues('cm_ct_flag'), ct.CtFlag);
        assert.deepEqual(btf.enumValues('cm_ct_lifetime'), ct.CtLifetime);
        assert.deepEqual(btf.enumValues('cm_policy_flag'), policy.PolicyFlag);
        assert.deepEqual(btf.enumValues('cm_policy_enforce_flag'), policy.PolicyEnforceFlag);
        assert.deepEqual(btf.enumValues('cm_policy_verdict_flag'), policy.PolicyVerdictFlag);
        assert.deepEqual(btf.enumValues('cm_policy_conn_way'), policy.PolicyConnWay);
        assert.deepEqual(btf.enumValues('cm_identity_scope'), ipcache.IdentityScope);
      });

      it('every per-node setting is a 4-byte const volatile in .rodata', () => {
        const sec = btfs[i]!.named('DATASEC', '.rodata');
        const sizes = new Map(sec.vars!.map((v) => [btfs[i]!.get(v.type_id).name, v.size] as const));
        for (const name of Object.values(config.CONST_NAMES)) assert.equal(sizes.get(name), config.CONST_SIZE, name);
        assert.equal(sizes.get(config.NATIVE_CIDRS_NAME), config.NATIVE_CIDRS_SIZE, config.NATIVE_CIDRS_NAME);
      });
    });
  }

  describe(SOCK_OBJECT, () => {
    let btf: Btf;
    before(() => {
      execFileSync('make', ['-s', '-C', BPF_DIR, SOCK_OBJECT], { stdio: ['ignore', 'ignore', 'inherit'] });
      btf = Btf.load(SOCK_OBJECT);
    });
    // The service maps it shares with lxc.bpf.o (same pins) and its own.
    const shared = [services.MAP_NAME, backends.MAP_NAME, backendSlots.MAP_NAME, maglev.MAP_NAME, revnat.MAP_NAME, affinity.MAP_NAME];
    it('its structs have the codecs\' sizes and offsets', () => {
      const layouts = [sock.KEY_LAYOUT, sock.VALUE_LAYOUT, services.KEY_LAYOUT, services.VALUE_LAYOUT, backends.VALUE_LAYOUT, backendSlots.KEY_LAYOUT, maglev.VALUE_LAYOUT, revnat.VALUE_LAYOUT, affinity.KEY_LAYOUT, affinity.VALUE_LAYOUT];
      for (const l of layouts) assert.deepEqual(layoutDrift(btf, l), [], l.cName);
    });
    it('its maps are declared with the codec structs', () => {
      for (const m of MAPS.filter((x) => shared.includes(x.name))) assert.deepEqual(btf.mapTypes(m.name), { key: m.key, value: m.value }, m.name);
      assert.deepEqual(btf.mapTypes(sock.REVNAT_MAP_NAME), { key: sock.KEY_LAYOUT.cName, value: sock.VALUE_LAYOUT.cName });
      assert.deepEqual(btf.mapTypes(sock.STATS_MAP_NAME), { key: '__u32', value: '__u64' });
    });
    it('the stat indexes match enum cm_sock_stat', () => {
      const want = Object.fromEntries(sock.SOCK_STATS.map((n, i) => [sock.SOCK_STAT_C_NAMES[n], i]));
      assert.deepEqual(btf.enumValues('cm_sock_stat'), { ...want, SOCK_STAT_MAX: sock.SOCK_STATS.length });
    });
  });

  it('the drift check itself catches a moved member, a wrong size and a missing member', () => {
    const btf = btfs[0]!;
    const good = endpoints.VALUE_LAYOUT;
    const moved = { ...good, fields: { ...good.fields, mac: { offset: 13, size: 6 } } };
    assert.match(layoutDrift(btf, moved).join('\n'), /mac: offset C 12, TS 13/);
    assert.match(layoutDrift(btf, { ...good, size: 28 }).join('\n'), /size: C 24, TS 28/);
    const { flags: _flags, ...rest } = good.fields;
    assert.match(layoutDrift(btf, { ...good, fields: rest as typeof good.fields }).join('\n'), /flags: in C, not in TS/);
  });
});
