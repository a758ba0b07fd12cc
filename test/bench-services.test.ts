// bench/services' two loads, against the real things (root): 100,000 services
// in our real cm_* maps, seen by the real from_container program, and
// kube-proxy's rules for a few thousand services accepted by the real
// iptables-restore. (100,000 services of iptables rules take a minute or more
// to load: the benchmark does that, not the test.)
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { removePinDir } from '../src/datapath/bpffs.ts';
import { TcAction, type BpfObject } from '../src/datapath/libbpf/index.ts';
import * as config from '../src/datapath/maps/config.ts';
import * as endpoints from '../src/datapath/maps/endpoints.ts';
import * as services from '../src/datapath/maps/services.ts';
import { parseIpv4, tcpFrame } from '../src/datapath/test-packets.ts';
import { datapathSkipReason, loadDatapathObject, tempPinDir, uniqueSuffix } from '../src/datapath/testing.ts';
import { run } from '../src/lab/exec.ts';
import {
  CRR_PORT, MEASURED_VIP, addFillers, fillerVip, kubeServices, kubeServicesRuleCount, loadKubeProxyRules, loadMeasuredService, openServiceMaps, removeFillers, type ServiceMaps,
} from '../bench/services/fixture.ts';
import { sepChain, svcChain } from '../src/lab/kube-proxy.ts';

const SERVER = { ip: '10.102.1.11', cluster: 2 };
const CLIENT = { ip: '10.101.1.11', mac: '0a:00:00:00:00:0b' };
const GW_MAC = '0e:00:00:00:00:01';
const CFG: config.DatapathConfig = { vxlanIfindex: 42, nodeIp: '10.1.0.1', clusterId: 1, redirectPeer: false, tunnelMtu: 1450 };

describe('bench/services: 100,000 services in the real maps', { skip: datapathSkipReason(), timeout: 120_000 }, () => {
  let dir: string | undefined;
  let lxc: BpfObject | undefined;
  let maps: ServiceMaps | undefined;

  before(() => {
    dir = tempPinDir('cmtsvcb');
    lxc = loadDatapathObject('lxc.bpf.o', dir, CFG);
    maps = openServiceMaps(dir);
    endpoints.update(lxc.map(endpoints.MAP_NAME), { ip: CLIENT.ip }, { ifindex: 1, identity: 0x10100, endpointId: 1, flags: 0, mac: CLIENT.mac, nodeMac: GW_MAC });
  });
  after(() => {
    maps?.close();
    lxc?.close();
    if (dir) removePinDir(dir);
  });

  const syn = (dst: string, dport: number, sport: number) => {
    const r = lxc!.program('from_container').testRun({ data: tcpFrame({ srcMac: CLIENT.mac, dstMac: GW_MAC, src: CLIENT.ip, dst, sport, dport }) });
    return { retval: r.retval, dst: parseIpv4(r.dataOut).dst };
  };
  const count = (m: ServiceMaps['services']) => {
    let n = 0;
    for (const _ of m.keys()) n++;
    return n;
  };

  test('written as the bench writes them, every frontend is there and a SYN to the measured VIP or to a filler is translated; removal leaves the measured service alone', () => {
    loadMeasuredService(maps!, SERVER);
    addFillers(maps!, 0, 99_999, SERVER.cluster);
    assert.equal(count(maps!.services), 100_001, 'the measured service has two frontends, plus 99,999 fillers');
    assert.equal(count(maps!.backends), 100_001);
    const m = syn(MEASURED_VIP, CRR_PORT[0], 40000);
    assert.notEqual(m.retval, TcAction.shot);
    assert.equal(m.dst, SERVER.ip, 'the measured VIP goes to the server pod');
    const f = syn(fillerVip(54_321), 80, 40001);
    assert.notEqual(f.dst, fillerVip(54_321), 'a filler VIP is translated too');
    assert.match(f.dst, /^10\.102\./, 'to its backend in cluster 2');
    removeFillers(maps!, 0, 99_999);
    assert.equal(count(maps!.services), 2);
    assert.equal(count(maps!.backends), 2);
    assert.ok(services.lookup(maps!.services, { vip: MEASURED_VIP, port: CRR_PORT[0], protocol: 'TCP' }));
  });
});

const iptablesMissing = !existsSync('/usr/sbin/iptables-nft-restore') && !process.env.CI ? 'iptables not installed (scripts/setup.sh installs it)' : undefined;

describe('bench/services: kube-proxy rules with the real iptables-restore', { skip: datapathSkipReason() ?? iptablesMissing, timeout: 120_000 }, () => {
  const netns = `cmtsvcb-${uniqueSuffix()}`;
  before(async () => {
    await run(['ip', 'netns', 'add', netns]);
  });
  after(async () => {
    await run(['ip', 'netns', 'del', netns]).catch(() => undefined);
  });

  test('2,000 services load; KUBE-SERVICES has one rule per service port plus NodePorts, the measured service in the middle, DNAT to the server', async () => {
    await loadKubeProxyRules(netns, 2000, SERVER, '10.101.0.0/16', 'nft');
    assert.equal(await kubeServicesRuleCount(netns, 'nft'), 2002);
    const rules = execFileSync('ip', ['netns', 'exec', netns, 'iptables-nft', '-t', 'nat', '-S', 'KUBE-SERVICES'], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.startsWith('-A '));
    const at = rules.findIndex((l) => l.includes(`-d ${MEASURED_VIP}/32`));
    assert.equal(at, 999, 'after half of the 1,999 fillers');
    assert.match(rules.at(-1)!, /--dst-type LOCAL -j KUBE-NODEPORTS/, 'the NodePorts rule stays last');
    const measured = kubeServices(2000, SERVER).find((s) => s.vip === MEASURED_VIP && s.port === CRR_PORT[0])!;
    assert.match(rules[at]!, new RegExp(`--dport ${CRR_PORT[0]} -j ${svcChain(measured)}$`));
    const sep = execFileSync('ip', ['netns', 'exec', netns, 'iptables-nft', '-t', 'nat', '-S', sepChain(measured, measured.endpoints[0]!)], { encoding: 'utf8' });
    assert.match(sep, new RegExp(`-j DNAT --to-destination ${SERVER.ip.replace(/\./g, '\\.')}:${CRR_PORT[1]}`));
  });
});
