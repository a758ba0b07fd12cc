// The shared wiring on its own (root; namespaces named cmt-wire-*): named
// namespaces on both sides, as the lab's topology would call it, and the
// rollback when the pod side cannot be configured.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { commandTime, linkInfo, LinkExistsError, unwirePodVeth, wirePodVeth } from './wire.ts';

const id = randomBytes(3).toString('hex');
const nodeNs = `cmt-wire-${id}-n`;
const podNs = `cmt-wire-${id}-p`;
const sh = (...argv: string[]): string => execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });

before(() => {
  sh('ip', 'netns', 'add', nodeNs);
  sh('ip', 'netns', 'add', podNs);
  // The node owns 10.200.0.1 (on lo) so the pod has something to ping through its gateway.
  sh('ip', '-n', nodeNs, 'link', 'set', 'lo', 'up');
  sh('ip', '-n', nodeNs, 'addr', 'add', '10.200.0.1/32', 'dev', 'lo');
});

after(() => {
  for (const ns of [podNs, nodeNs]) {
    try {
      sh('ip', 'netns', 'del', ns);
    } catch {
      /* already gone */
    }
  }
});

test('wirePodVeth between two named namespaces: MTU, /32, static gateway, default route; the pod reaches the node', async () => {
  const before = commandTime.count;
  const info = await wirePodVeth({ hostNetns: nodeNs, hostIfName: 'lxcwire0', podNetns: podNs, podIfName: 'eth0', mtu: 1450, ip: '10.201.0.5', gatewayIP: '10.201.0.1' });
  assert.equal(commandTime.count - before, 2, 'two commands: the pair with its host side, the pod side (a pod start waits for each)');
  assert.equal(sh('ip', 'netns', 'exec', podNs, 'sysctl', '-n', 'net.ipv6.conf.all.disable_ipv6').trim(), '1', 'IPv6 is off in the pod');
  const host = await linkInfo(nodeNs, 'lxcwire0');
  const pod = await linkInfo(podNs, 'eth0');
  assert.deepEqual([host?.mac, host?.mtu, host?.ifindex], [info.hostMac, 1450, info.hostIfIndex]);
  assert.deepEqual([pod?.mac, pod?.mtu, pod?.addresses], [info.podMac, 1450, ['10.201.0.5/32']]);
  assert.match(sh('ip', '-n', podNs, 'neigh', 'show', '10.201.0.1'), new RegExp(`lladdr ${info.hostMac} PERMANENT`));
  assert.match(sh('ip', '-n', podNs, 'route', 'show', 'default'), /default via 10\.201\.0\.1 dev eth0 onlink/);
  assert.match(sh('ip', '-n', nodeNs, 'route', 'show', '10.201.0.5'), /10\.201\.0\.5 dev lxcwire0 scope link/);
  assert.match(sh('ip', 'netns', 'exec', podNs, 'ping', '-c', '1', '-W', '2', '10.200.0.1'), /1 received/);
  assert.equal(await unwirePodVeth({ hostNetns: nodeNs, hostIfName: 'lxcwire0' }), true);
  assert.equal(await linkInfo(podNs, 'eth0'), undefined, 'the peer goes with it');
  assert.equal(await unwirePodVeth({ hostNetns: nodeNs, hostIfName: 'lxcwire0' }), false, 'already gone: false, no error');
});

test('a failure while configuring the host side or the pod side removes the pair', async () => {
  // 10.201.0.300 is not an address: the host side's route fails after the pair exists (same batch).
  await assert.rejects(wirePodVeth({ hostNetns: nodeNs, hostIfName: 'lxcwire1', podNetns: podNs, podIfName: 'eth1', mtu: 1450, ip: '10.201.0.300', gatewayIP: '10.201.0.1' }), /10\.201\.0\.300\/32/);
  assert.equal(await linkInfo(nodeNs, 'lxcwire1'), undefined);
  assert.equal(await linkInfo(podNs, 'eth1'), undefined);
  // A gateway that is not an address: the pod side fails (its neighbour entry) after the host side is done.
  await assert.rejects(wirePodVeth({ hostNetns: nodeNs, hostIfName: 'lxcwire1', podNetns: podNs, podIfName: 'eth1', mtu: 1450, ip: '10.201.0.8', gatewayIP: '10.201.0.999' }), /nsenter/);
  assert.equal(await linkInfo(nodeNs, 'lxcwire1'), undefined);
  assert.equal(await linkInfo(podNs, 'eth1'), undefined);
  // And a pod namespace that does not exist: nothing is created on the node.
  await assert.rejects(wirePodVeth({ hostNetns: nodeNs, hostIfName: 'lxcwire2', podNetns: `/var/run/netns/cmt-wire-${id}-none`, podIfName: 'eth0', mtu: 1450, ip: '10.201.0.6', gatewayIP: '10.201.0.1' }));
  assert.equal(await linkInfo(nodeNs, 'lxcwire2'), undefined);
});

test('a name already taken is a LinkExistsError and the existing device is left alone', async () => {
  sh('ip', '-n', nodeNs, 'link', 'add', 'lxcwire3', 'type', 'veth', 'peer', 'name', 'lxcwire3p');
  try {
    await assert.rejects(wirePodVeth({ hostNetns: nodeNs, hostIfName: 'lxcwire3', podNetns: podNs, podIfName: 'eth3', mtu: 1450, ip: '10.201.0.7', gatewayIP: '10.201.0.1' }), LinkExistsError);
    assert.match(sh('ip', '-n', nodeNs, 'link', 'show', 'lxcwire3'), /lxcwire3@lxcwire3p/, 'still the pair it was');
    assert.equal(await linkInfo(podNs, 'eth3'), undefined);
  } finally {
    sh('ip', '-n', nodeNs, 'link', 'del', 'lxcwire3');
  }
});
