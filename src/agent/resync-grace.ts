// Withdrawals of remote state, held back briefly while that remote settles.
//
// When a remote cluster's kvstore comes back after an outage — possibly
// empty, then refilled by its apiserver from its agents — the import re-lists
// and prunes what is not there *yet*, and the refill re-adds it a moment
// later. Applied as they come, such withdrawals would flap the datapath for
// entries that never went away. So: a withdrawal arriving while the remote is
// not ready, or within `graceMs` after it became ready again, is applied only
// after `graceMs`, and forgotten when the same owner claims its entries again
// meanwhile. Any other withdrawal (a pod deleted in a healthy remote, a
// remote removed from the mesh and drained) is applied at once.
import { systemClock, type Clock, type TimerHandle } from '../util/clock.ts';
import type { RemoteClusterState } from '../clustermesh/remote-cluster.ts';

/** States in which a remote's withdrawals may be artefacts of a resync. */
const SETTLING: ReadonlySet<RemoteClusterState> = new Set<RemoteClusterState>(['connecting', 'waiting-config', 'syncing', 'disconnected']);

export interface ResyncGraceOptions {
  graceMs: number;
  clock?: Clock;
}

export class ResyncGrace {
  private readonly clock: Clock;
  private readonly graceMs: number;
  /** cluster → state, and when it last became ready (after having been something else). */
  private readonly remotes = new Map<string, { state: RemoteClusterState; readyAt: number | null }>();
  private readonly pending = new Map<string, TimerHandle>();
  private held = 0;
  private cancelled = 0;

  constructor(opts: ResyncGraceOptions) {
    this.clock = opts.clock ?? systemClock;
    this.graceMs = opts.graceMs;
  }

  /** Feed every state change of a remote (RemoteCluster.onStatus). */
  observe(cluster: string, state: RemoteClusterState): void {
    const cur = this.remotes.get(cluster);
    const readyAt = state === 'ready' && cur && cur.state !== 'ready' ? this.clock.now() : state === 'ready' ? (cur?.readyAt ?? null) : null;
    this.remotes.set(cluster, { state, readyAt });
  }

  /** True while withdrawals of `cluster` are held back. */
  settling(cluster: string): boolean {
    const r = this.remotes.get(cluster);
    if (!r || this.graceMs <= 0) return false;
    if (SETTLING.has(r.state)) return true;
    return r.state === 'ready' && r.readyAt !== null && this.clock.now() - r.readyAt < this.graceMs;
  }

  /** Applies `apply` now, or after the grace when the remote is settling (replacing an earlier held one of the owner). */
  withdraw(owner: string, cluster: string, apply: () => void): void {
    this.cancel(owner, false);
    if (!this.settling(cluster)) {
      apply();
      return;
    }
    this.held++;
    const h = this.clock.setTimeout(() => {
      this.pending.delete(owner);
      apply();
    }, this.graceMs);
    this.pending.set(owner, h);
  }

  /** The owner claims entries again: a held withdrawal of it is dropped. */
  claim(owner: string): void {
    this.cancel(owner, true);
  }

  /** Applies nothing more; held withdrawals are dropped (the state they would remove stays, as on any stop). */
  stop(): void {
    for (const h of this.pending.values()) this.clock.clearTimeout(h);
    this.pending.clear();
  }

  status(): { held: number; pending: number; cancelled: number; settling: string[] } {
    return { held: this.held, pending: this.pending.size, cancelled: this.cancelled, settling: [...this.remotes.keys()].filter((c) => this.settling(c)) };
  }

  private cancel(owner: string, count: boolean): void {
    const h = this.pending.get(owner);
    if (!h) return;
    this.clock.clearTimeout(h);
    this.pending.delete(owner);
    if (count) this.cancelled++;
  }
}
