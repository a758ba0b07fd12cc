// Run by sock.test.ts inside a test node netns: drives the socket-LB part of
// NodeDatapath through start / stop keeping links / restart / stop / start
// without it, and prints what the kernel had attached after each step as one
// JSON object on stdout.
import { cgroupQuery } from './libbpf/cgroup.ts';
import { NodeDatapath, SOCK_PROGRAMS, type NodeDatapathOptions } from './node.ts';

const [nodeName, cgroup] = process.argv.slice(2);
if (!nodeName || !cgroup) throw new Error('usage: sock.test-helper.ts NODE_NAME CGROUP');

const attached = (): Record<string, number[]> => Object.fromEntries(SOCK_PROGRAMS.map((p) => [p.hook, cgroupQuery(cgroup, p.hook)]));
const base: NodeDatapathOptions = { nodeName, nodeIP: '10.1.0.2', clusterID: 1, vxlanDevice: 'cm_vx' };
const out: Record<string, unknown> = {};

const a = new NodeDatapath({ ...base, socketLBCgroup: cgroup });
await a.start();
const st = a.socketLB();
out.status = { enabled: st.enabled, cgroup: st.cgroup, attached: st.programs.every((p) => p.attached), stats: st.stats };
const firstIds = Object.fromEntries(st.programs.map((p) => [p.hook, [p.progId]]));
out.afterStart = JSON.stringify(attached()) === JSON.stringify(firstIds);
await a.stop({ detach: false });
out.afterStopKeep = JSON.stringify(attached()) === JSON.stringify(firstIds);

const b = new NodeDatapath({ ...base, socketLBCgroup: cgroup });
await b.start();
const secondIds = Object.fromEntries(b.socketLB().programs.map((p) => [p.hook, [p.progId]]));
out.afterRestart = { replaced: JSON.stringify(attached()) === JSON.stringify(secondIds), newIds: JSON.stringify(secondIds) !== JSON.stringify(firstIds) };
await b.stop();
out.afterStop = attached();

const c = new NodeDatapath({ ...base, socketLBCgroup: cgroup });
await c.start();
await c.stop({ detach: false });
const d = new NodeDatapath(base);
await d.start();
out.offAfterOn = { attached: attached(), status: d.socketLB().enabled };
await d.destroy();
console.log(JSON.stringify(out));
