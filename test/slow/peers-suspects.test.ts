// The rows of `bench/peers --suspects` forward the way they claim: each
// variant of our datapath (bpf/lib/variant.h) still delivers the client pod's
// connection to the server pod, and lacks exactly what it says it removes —
// no service map in its programs (nolb), no counters (nometrics), no trace
// events even with forward tracing on (notrace), the tunnel traffic through
// the per-peer devices and none through cm_vxlan, with the source identity
// still arriving in the VNI (peerdev) — and the kernel-vxlan bed goes through
// its VXLAN device. Never speed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { createPeerBed, PEER_DEV_PREFIX, type DatapathVariant, type PeerBed } from '../../src/lab/peers-topology.ts';
import { listNamespaces } from '../../src/lab/topology.ts';
import { run, runIn, spawnIn, stopChild } from '../../src/lab/exec.ts';
import { collectEvents, pinDirOf, readNodeMetrics } from '../../src/lab/datapath.ts';
import { BpfMap } from '../../src/datapath/libbpf/index.js';
import { settings } from '../../src/datapath/maps/index.js';
import { tcShow } from '../helpers/tc-show.ts';

const PORT = 11121;
const PREFIX = 'cmtsus';

async function connects(bed: PeerBed): Promise<boolean> {
  for (let i = 0; i < 20; i++) {
    try {
      await runIn(bed.client.netns, ['timeout', '3', 'bash', '-c', `exec 3<>/dev/tcp/${bed.server.ip}/${PORT}`]);
      return true;
    } catch {
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  return false;
}

async function txOf(netns: string, match: (ifname: string) => boolean): Promise<number> {
  const { stdout } = await run(['ip', '-n', netns, '-s', '-j', 'link', 'show']);
  return (JSON.parse(stdout) as Array<{ ifname: string; stats64: { tx: { packets: number } } }>).filter((l) => match(l.ifname)).reduce((n, l) => n + l.stats64.tx.packets, 0);
}

/** Names of the maps the tc program on `dev`'s ingress in `netns` uses (bpftool). */
async function progMaps(netns: string, dev: string): Promise<string[]> {
  const shown = await tcShow(netns, dev, 'ingress');
  const prog = /\bid (\d+)/.exec(shown);
  assert.ok(prog, `no tc ingress program on ${dev} in ${netns}: ${shown}`);
  const info = JSON.parse((await run(['bpftool', '-j', 'prog', 'show', 'id', prog[1]!])).stdout) as { map_ids?: number[] };
  const names: string[] = [];
  for (const id of info.map_ids ?? []) names.push((JSON.parse((await run(['bpftool', '-j', 'map', 'show', 'id', String(id)])).stdout) as { name: string }).name);
  return names;
}

async function withBed(variant: DatapathVariant | 'kernel-vxlan' | 'native-lean' | 'tunnel-lean' | 'clsbpf', body: (bed: PeerBed) => Promise<void>): Promise<void> {
  const bed =
    variant === 'clsbpf'
      ? await createPeerBed('clustermesh', { prefix: PREFIX, allowPorts: [PORT], tcAttach: 'cls_bpf' })
      : variant === 'kernel-vxlan'
      ? await createPeerBed('kernel-vxlan', { prefix: PREFIX, allowPorts: [PORT] })
      : variant === 'native-lean'
        ? await createPeerBed('clustermesh-native', { prefix: PREFIX, allowPorts: [PORT], policy: false, variant: 'lean' })
      : variant === 'tunnel-lean'
        ? await createPeerBed('clustermesh', { prefix: PREFIX, allowPorts: [PORT], policy: false, variant: 'lean' })
        : await createPeerBed('clustermesh', { prefix: PREFIX, allowPorts: [PORT], variant });
  const server = spawnIn(bed.server.netns, ['sockperf', 'sr', '--tcp', '-i', bed.server.ip, '-p', String(PORT)]);
  try {
    await body(bed);
  } finally {
    await stopChild(server);
    await bed.stop();
  }
  const left = (await listNamespaces()).filter((n) => n.startsWith(`${PREFIX}-${bed.topo.id}`));
  assert.deepEqual(left, []);
}

const isPeerDev = (n: string): boolean => n.startsWith(PEER_DEV_PREFIX);

test('clustermesh-clsbpf: delivers with every program a cls_bpf filter and none on tcx', async () => {
  await withBed('clsbpf', async (bed) => {
    assert.ok(await connects(bed), 'clsbpf: no connection to the server pod');
    for (const [netns, dev] of [[bed.client.node.netns, bed.client.hostIfName], [bed.server.node.netns, 'cm_vxlan'], [bed.server.node.netns, 'eth0']] as const) {
      const shown = await tcShow(netns, dev, 'ingress');
      assert.doesNotMatch(shown, /^tcx /m, `${dev} in ${netns}: ${shown}`);
      assert.match(shown, /\bbpf\b.*\b(from_container|from_overlay|from_netdev)\b.*direct-action/, `${dev} in ${netns}: ${shown}`);
    }
  });
});

test('nolb: delivers, and neither from_container nor from_overlay uses the service maps', async () => {
  await withBed('nolb', async (bed) => {
    assert.ok(await connects(bed), 'nolb: no connection to the server pod');
    const lxc = await progMaps(bed.client.node.netns, bed.client.hostIfName);
    const overlay = await progMaps(bed.server.node.netns, 'cm_vxlan');
    assert.ok(lxc.includes('cm_endpoints') && lxc.includes('cm_metrics'), `from_container uses ${lxc.join(', ')}`);
    for (const [prog, maps] of [['from_container', lxc], ['from_overlay', overlay]] as const) {
      assert.ok(!maps.includes('cm_services') && !maps.includes('cm_revnat') && !maps.includes('cm_ct'), `${prog} of the nolb variant uses ${maps.join(', ')}`);
    }
  });
});

test('nometrics: delivers and counts nothing on either node', async () => {
  await withBed('nometrics', async (bed) => {
    assert.ok(await connects(bed), 'nometrics: no connection to the server pod');
    for (const node of [bed.client.node, bed.server.node]) assert.deepEqual(readNodeMetrics(pinDirOf(node)), [], `counters on ${node.netns}`);
    assert.ok(!(await progMaps(bed.client.node.netns, bed.client.hostIfName)).includes('cm_metrics'));
  });
});

test('notrace: delivers and reports no forwarded packet even with forward tracing on', async () => {
  await withBed('notrace', async (bed) => {
    const pinDir = pinDirOf(bed.client.node);
    const s = BpfMap.openPinned(join(pinDir, settings.MAP_NAME));
    try {
      settings.set(s, { traceForward: true, traceNew: true });
    } finally {
      s.close();
    }
    const ev = collectEvents(pinDir);
    try {
      assert.ok(await connects(bed), 'notrace: no connection to the server pod');
      const events = ev.drain();
      assert.deepEqual(events.filter((e) => e.type === 'trace'), [], 'trace events from the notrace variant');
      const toOverlay = readNodeMetrics(pinDir).find((r) => r.reasonName === 'TRACE_TO_OVERLAY');
      assert.ok(toOverlay && toOverlay.packets > 0n, 'the forwards were not counted');
    } finally {
      ev.stop();
    }
  });
});

for (const variant of ['peerdev', 'bare'] as const) {
  test(`${variant}: into the tunnel through the peer devices (cached route), none through cm_vxlan; the identity still arrives`, async () => {
    await withBed(variant, async (bed) => {
      const vxlan0 = await txOf(bed.client.node.netns, (n) => n === 'cm_vxlan');
      const peer0 = await txOf(bed.client.node.netns, isPeerDev);
      assert.ok(await connects(bed), `${variant}: no connection to the server pod`);
      assert.equal((await txOf(bed.client.node.netns, (n) => n === 'cm_vxlan')) - vxlan0, 0, 'cm_vxlan sent packets');
      assert.ok((await txOf(bed.client.node.netns, isPeerDev)) > peer0, 'the peer devices sent nothing');
      if (variant === 'peerdev') {
        // The server's ingress policy allows the port by the client pod's identity,
        // which only the VNI of the peer device carries: delivered means it arrived.
        const rows = readNodeMetrics(pinDirOf(bed.server.node));
        assert.ok(rows.some((r) => r.reasonName === 'TRACE_TO_ENDPOINT' && r.direction === 'ingress' && r.packets > 0n), `server node counters: ${JSON.stringify(rows.map((r) => r.reasonName))}`);
        assert.ok(!rows.some((r) => r.drop), `drops on the server node: ${rows.filter((r) => r.drop).map((r) => r.reasonName).join(', ')}`);
      }
    });
  });
}

test('clustermesh-native-lean: delivers with no encapsulation, no service map and no counters', async () => {
  await withBed('native-lean', async (bed) => {
    const before = await txOf(bed.client.node.netns, (n) => n === 'cm_vxlan');
    assert.ok(await connects(bed), 'native-lean: no connection to the server pod');
    assert.equal(await txOf(bed.client.node.netns, (n) => n === 'cm_vxlan'), before, 'cm_vxlan sent packets: native routing encapsulated');
    const lxc = await progMaps(bed.client.node.netns, bed.client.hostIfName);
    assert.ok(lxc.includes('cm_endpoints'), `from_container uses ${lxc.join(', ')}`);
    assert.ok(!lxc.includes('cm_services') && !lxc.includes('cm_revnat') && !lxc.includes('cm_metrics'), `from_container of the lean variant uses ${lxc.join(', ')}`);
    for (const node of [bed.client.node, bed.server.node]) assert.deepEqual(readNodeMetrics(pinDirOf(node)), [], `counters on ${node.netns}`);
  });
});

test('clustermesh-lean: delivers through the tunnel its programs write with no service map, no counters and nothing in policy conntrack', async () => {
  await withBed('tunnel-lean', async (bed) => {
    const before = await txOf(bed.client.node.netns, (n) => n === 'cm_vxlan');
    assert.ok(await connects(bed), 'tunnel-lean: no connection to the server pod');
    // Tunnel clusters' pod ranges are routed nowhere on the underlay: only the tunnel delivers, and not through the device.
    assert.equal(await txOf(bed.client.node.netns, (n) => n === 'cm_vxlan'), before, 'cm_vxlan sent packets: not the BPF encapsulation');
    assert.match(await tcShow(bed.server.node.netns, 'eth0', 'ingress'), /from_netdev/, 'from_netdev strips the tunnel on the server\'s node');
    const lxc = await progMaps(bed.client.node.netns, bed.client.hostIfName);
    assert.ok(!lxc.includes('cm_services') && !lxc.includes('cm_revnat') && !lxc.includes('cm_metrics'), `from_container of the lean variant uses ${lxc.join(', ')}`);
    for (const node of [bed.client.node, bed.server.node]) {
      assert.deepEqual(readNodeMetrics(pinDirOf(node)), [], `counters on ${node.netns}`);
      const conns = BpfMap.openPinned(join(pinDirOf(node), 'cm_policy_conn'));
      try {
        assert.equal([...conns.keys()].length, 0, `policy off: nothing tracked on ${node.netns}`);
      } finally {
        conns.close();
      }
    }
  });
});

test('kernel-vxlan: delivers through the kernel VXLAN device, no BPF on the pod veth', async () => {
  await withBed('kernel-vxlan', async (bed) => {
    const before = await txOf(bed.client.node.netns, (n) => n === 'vx0');
    assert.ok(await connects(bed), 'kernel-vxlan: no connection to the server pod');
    assert.ok((await txOf(bed.client.node.netns, (n) => n === 'vx0')) > before, 'vx0 sent nothing');
    assert.doesNotMatch(await tcShow(bed.client.node.netns, bed.client.hostIfName), /\bid \d+/, 'no program on the pod veth');
  });
});
