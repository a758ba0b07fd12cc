// The apiserver's own leased keys: `cilium/cluster-config/<cluster>` (written
// first, rewritten whenever the session lease changes) and `cilium/.heartbeat`
// (RFC3339 time, rewritten every interval).
import { sleep, systemClock, type Clock } from '../util/clock.ts';
import { clusterConfigKey, heartbeatKey } from '../clustermesh/keys.ts';
import { encodeClusterConfig } from '../clustermesh/wire.ts';
import type { KvClient } from '../kvstore/client.ts';
import { rfc3339 } from '../kvstore/sync-store.ts';
import type { MaxConnectedClusters } from '../model/index.ts';

export interface HeartbeatOptions {
  kv: Pick<KvClient, 'put' | 'lease'>;
  cluster: string;
  clusterId: number;
  maxConnectedClusters: MaxConnectedClusters;
  /** This apiserver publishes ServiceExports (cilium/state/serviceexports/v1/<cluster>/): said in cluster-config. */
  serviceExportsEnabled?: boolean;
  intervalMs: number;
  clock?: Clock;
  onError?: (err: unknown) => void;
  /**
   * Run at the start of each round until it succeeds once, before any
   * heartbeat write (the apiserver claims the cluster's writer key here, so
   * an etcd that is down at start counts as failed rounds from the first).
   */
  claim?: () => Promise<void>;
}

/**
 * The cluster-config value of ARCHITECTURE §4, as a Cilium clustermesh-apiserver
 * writes it; serviceExportsEnabled when it publishes MCS-API ServiceExports
 * (with --kubeconfig), as Cilium's with clustermesh.enableMCSAPISupport.
 */
export function clusterConfigValue(clusterId: number, maxConnectedClusters: MaxConnectedClusters, serviceExportsEnabled = false): string {
  return encodeClusterConfig({ id: clusterId, capabilities: { syncedCanaries: true, maxConnectedClusters, serviceExportsEnabled } });
}

export class Heartbeat {
  private readonly clock: Clock;
  private readonly stopCtl = new AbortController();
  private configSession: string | undefined;
  private wake: AbortController | undefined;
  private loop: Promise<void> | undefined;
  private resolveFirst!: () => void;
  private beats = 0;
  /** Failed rounds; whether the last round reached etcd. */
  failures = 0;
  lastRoundOk = false;
  /** Resolves after cluster-config and the first heartbeat are written. */
  readonly firstWrite = new Promise<void>((r) => (this.resolveFirst = r));
  private resolveClaimed!: () => void;
  private isClaimed = false;
  /** Resolves once `claim` succeeded (at once without one). */
  readonly claimed = new Promise<void>((r) => (this.resolveClaimed = r));

  constructor(private readonly o: HeartbeatOptions) {
    this.clock = o.clock ?? systemClock;
  }

  start(): void {
    this.loop ??= this.run();
  }

  get count(): number {
    return this.beats;
  }

  async stop(): Promise<void> {
    this.stopCtl.abort();
    this.wake?.abort();
    await this.loop;
  }

  /** One round: the claim until it succeeded, cluster-config when the session changed, then the heartbeat. */
  async tick(): Promise<void> {
    if (!this.isClaimed) {
      await this.o.claim?.();
      this.isClaimed = true;
      this.resolveClaimed();
    }
    const session = await this.o.kv.lease();
    if (session.id !== this.configSession) {
      await this.o.kv.put(clusterConfigKey(this.o.cluster), clusterConfigValue(this.o.clusterId, this.o.maxConnectedClusters, this.o.serviceExportsEnabled ?? false), { lease: true });
      this.configSession = session.id;
      session.once('lost', () => this.wake?.abort());
    }
    await this.o.kv.put(heartbeatKey, rfc3339(this.clock.now()), { lease: true });
    this.beats++;
  }

  private async run(): Promise<void> {
    let backoff = 200;
    while (!this.stopCtl.signal.aborted) {
      let wait = this.o.intervalMs;
      try {
        await this.tick();
        this.lastRoundOk = true;
        this.resolveFirst();
        backoff = 200;
      } catch (err) {
        if (this.stopCtl.signal.aborted) return;
        this.failures++;
        this.lastRoundOk = false;
        this.o.onError?.(err);
        wait = Math.min(backoff, this.o.intervalMs);
        backoff = Math.min(backoff * 2, 10_000);
      }
      this.wake = new AbortController();
      const both = AbortSignal.any([this.stopCtl.signal, this.wake.signal]);
      await sleep(this.clock, wait, both);
    }
  }
}
