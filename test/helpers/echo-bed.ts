// The bed of the datapath integration tests (test/datapath.test.ts,
// test/native-routing.test.ts): a topology, the clustermesh datapath on every
// node, the echo server on every pod; and a fetch from inside a pod.
import { resolve } from 'node:path';
import { startClustermeshDatapath, type LabDatapath } from '../../src/lab/datapath.ts';
import { startEcho, waitListening } from '../../src/lab/echo.ts';
import { runIn } from '../../src/lab/exec.ts';
import type { ManagedProcess } from '../../src/lab/process.ts';
import { createTopology, destroyTopology, type PodInfo, type Topology, type TopologySpec } from '../../src/lab/topology.ts';

const FETCH = resolve(import.meta.dirname, 'fetch.ts');

/** Where the echo servers of startEchoBed listen. */
export const ECHO_PORT = 8080;

export interface EchoBed {
  topo: Topology;
  dp: LabDatapath;
  /** Stops the echo servers and the datapath, removes the topology. */
  stop(): Promise<void>;
}

/** Creates the topology, starts the datapath and an echo server on ECHO_PORT in every pod; resolves once all listen. */
export async function startEchoBed(spec: TopologySpec): Promise<EchoBed> {
  const topo = await createTopology(spec);
  let dp: LabDatapath | undefined;
  const servers: ManagedProcess[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(servers.map((s) => s.stop(2000)));
    await dp?.stop();
    await destroyTopology(topo);
  };
  try {
    dp = await startClustermeshDatapath(topo);
    for (const p of topo.pods) servers.push(await startEcho(p, ECHO_PORT));
    await Promise.all(topo.pods.map((p) => waitListening(p, ECHO_PORT)));
    return { topo, dp, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

export interface PodFetch {
  status: number;
  bytes: number;
  sha256: string;
  announcedSha256?: string;
  /** The body, when shorter than 4 KiB. */
  text?: string;
}

/** GET url from inside src's namespace (test/helpers/fetch.ts). */
export async function fetchFrom(src: PodInfo, url: string): Promise<PodFetch> {
  const { stdout } = await runIn(src.netns, [process.execPath, '--import', 'tsx', FETCH, url, '15000'], { timeoutMs: 30_000 });
  return JSON.parse(stdout) as PodFetch;
}
