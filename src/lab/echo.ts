// The lab's echo workload (`clustermesh lab workload echo`: the C program
// ECHO_BIN, as lab pods run it) run in a pod of the test bed, and the wait until
// a pod listens. Test-bed code: the chaos rig and the integration tests.
import { runIn } from './exec.ts';
import { ManagedProcess, childEnv } from './process.ts';
import type { PodInfo } from './topology.ts';
import type { EchoIdentity } from './workload.ts';
import { echoArgv, requireEchoBin } from './workload-main.ts';

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
  requireEchoBin();
  const s = new ManagedProcess({
    name: `echo ${me.pod}`,
    netns: pod.netns,
    logFile: opts.logFile ?? '/dev/null',
    argv: echoArgv({ port, ...me }),
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
