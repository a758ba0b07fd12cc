// The lab's echo workload (`clustermesh lab workload echo`, workload.ts) run in
// a pod of the test bed, and the wait until a pod listens. Test-bed code: the
// chaos rig and the integration tests. Kept apart from workload.ts, which the
// lab pods' own bundle (workload-pod.cjs) carries.
import { resolve } from 'node:path';
import { runIn } from './exec.ts';
import { ManagedProcess, childEnv } from './process.ts';
import type { PodInfo } from './topology.ts';
import type { EchoIdentity } from './workload.ts';

const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');

export interface StartEchoOptions {
  /** Who the server says answered; default the pod's own cluster, node and name. */
  as?: EchoIdentity;
  /** Where its output goes; default /dev/null. */
  logFile?: string;
}

/**
 * Starts the echo server on port in pod's namespace and resolves once it is
 * spawned (not yet listening: waitListening). Stop it with stop().
 */
export async function startEcho(pod: Pick<PodInfo, 'name' | 'netns' | 'clusterName' | 'node'>, port: number, opts: StartEchoOptions = {}): Promise<ManagedProcess> {
  const me = opts.as ?? { cluster: pod.clusterName, node: pod.node.name, pod: pod.name };
  const s = new ManagedProcess({
    name: `echo ${me.pod}`,
    netns: pod.netns,
    logFile: opts.logFile ?? '/dev/null',
    argv: [process.execPath, CLI, 'lab', 'workload', 'echo', '--port', String(port), '--cluster', me.cluster, '--node', me.node, '--pod', me.pod],
    env: childEnv(),
  });
  await s.start();
  return s;
}

/** Resolves once something listens on TCP port in pod's namespace; throws after timeoutMs. */
export async function waitListening(pod: Pick<PodInfo, 'name' | 'netns'>, port: number, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { stdout } = await runIn(pod.netns, ['ss', '-Htln', `sport = :${port}`]);
    if (stdout.trim()) return;
    if (Date.now() > deadline) throw new Error(`${pod.name}: nothing listens on :${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
