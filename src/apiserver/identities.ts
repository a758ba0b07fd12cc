// Identities of the cluster's pods: the apiserver holds a reference (user
// "apiserver") on the identity of every pod that is not terminated, so every
// identity in use is in the kvstore (cilium/state/identities/v1/id/<id>) even
// before an agent allocates it; agents allocating the same labels get the same
// number. The identities canary is written once every pod of the initial list
// has its identity. Unused identities age out through the allocator's gc.
import type { Logger } from 'pino';
import { sleep, systemClock, type Clock } from '../util/clock.ts';
import type { AllocatedIdentity } from '../identity/allocator.ts';
import { labelString, podIdentityLabels } from '../identity/labels.ts';
import type { Namespace, Pod } from '../model/index.ts';
import { refKey, type Resource, type Unsubscribe } from '../sources/index.ts';
import type { KeySink } from './export.ts';

/** The part of IdentityAllocator used here. */
export interface PodIdentityAllocator {
  allocate(labels: string): Promise<AllocatedIdentity>;
  release(id: number): Promise<boolean>;
}

export interface PodIdentitiesOptions {
  cluster: string;
  pods: Resource<Pod>;
  namespaces: Resource<Namespace>;
  allocator: PodIdentityAllocator;
  /** Receives only markInitialSyncDone(): the identities canary. */
  canary: Pick<KeySink, 'markInitialSyncDone'>;
  log: Logger;
  clock?: Clock;
  /** Retry delay after a failed allocation, doubled up to 10 s (default 200 ms). */
  retryMs?: number;
}

interface Held {
  labels: string;
  id: number;
}

export class PodIdentities {
  private readonly desired = new Map<string, string>(); // pod ref → label string
  private readonly held = new Map<string, Held>();
  private readonly dirty = new Set<string>();
  private readonly podsByNs = new Map<string, Set<string>>();
  private initialPending: Set<string> | undefined;
  private podsSynced = false;
  private nsSynced = false;
  private canaryDone = false;
  private running = false;
  private failures = 0;
  private readonly stopCtl = new AbortController();
  private readonly unsubscribe: Unsubscribe[] = [];
  private readonly clock: Clock;
  private resolveInitial!: () => void;
  /** Resolves once every pod of the initial list holds its identity. */
  readonly initialSyncDone = new Promise<void>((r) => (this.resolveInitial = r));

  constructor(private readonly o: PodIdentitiesOptions) {
    this.clock = o.clock ?? systemClock;
  }

  start(): void {
    this.unsubscribe.push(
      this.o.namespaces.watch((ev) => {
        if (ev.kind === 'synced') {
          this.nsSynced = true;
          return this.maybeInitial();
        }
        for (const ref of this.podsByNs.get(ev.object.metadata.name) ?? []) this.recompute(ref);
      }),
      this.o.pods.watch((ev) => {
        if (ev.kind === 'synced') {
          this.podsSynced = true;
          return this.maybeInitial();
        }
        const ref = refKey(ev.object.metadata);
        const ns = ev.object.metadata.namespace;
        if (ev.kind === 'delete') {
          this.podsByNs.get(ns)?.delete(ref);
          if (this.podsByNs.get(ns)?.size === 0) this.podsByNs.delete(ns);
        } else {
          let s = this.podsByNs.get(ns);
          if (!s) this.podsByNs.set(ns, (s = new Set()));
          s.add(ref);
        }
        this.recompute(ref);
      }),
    );
  }

  stop(): void {
    this.stopCtl.abort();
    for (const off of this.unsubscribe.splice(0)) off();
  }

  /** pod ref → identity currently held for it. */
  identities(): Map<string, number> {
    return new Map([...this.held].map(([ref, h]) => [ref, h.id]));
  }

  status(): { pods: number; identities: number; pending: number; failures: number; synced: boolean } {
    return {
      pods: this.desired.size,
      identities: new Set([...this.held.values()].map((h) => h.id)).size,
      pending: this.dirty.size,
      failures: this.failures,
      synced: this.canaryDone,
    };
  }

  private recompute(ref: string): void {
    const [namespace = '', name = ''] = ref.split('/');
    const pod = this.o.pods.get({ namespace, name });
    let want: string | undefined;
    if (pod && pod.status.phase !== 'Succeeded' && pod.status.phase !== 'Failed') {
      try {
        want = labelString(podIdentityLabels(this.o.cluster, pod, this.o.namespaces.get({ name: namespace })));
      } catch (err) {
        this.o.log.warn({ pod: ref, err: (err as Error).message }, 'pod labels do not form an identity');
      }
    }
    if (want === undefined) this.desired.delete(ref);
    else this.desired.set(ref, want);
    if (this.held.get(ref)?.labels !== want) {
      this.dirty.add(ref);
      this.kick();
    } else {
      this.dirty.delete(ref);
      this.doneInitial(ref);
    }
  }

  private maybeInitial(): void {
    if (!this.podsSynced || !this.nsSynced || this.initialPending) return;
    // Pods seen before the namespaces synced may lack namespace labels: redo them.
    for (const ref of [...this.desired.keys()]) this.recompute(ref);
    // Not `dirty`: the worker may already have taken pods out of it.
    this.initialPending = new Set([...this.desired].filter(([ref, labels]) => this.held.get(ref)?.labels !== labels).map(([ref]) => ref));
    this.checkInitial();
    this.kick();
  }

  private doneInitial(ref: string): void {
    if (this.initialPending?.delete(ref)) this.checkInitial();
  }

  private checkInitial(): void {
    if (this.canaryDone || !this.initialPending || this.initialPending.size > 0) return;
    this.canaryDone = true;
    this.o.canary.markInitialSyncDone();
    this.resolveInitial();
  }

  private kick(): void {
    // Nothing is allocated before pods and namespaces synced: labels need the namespace's.
    if (!this.podsSynced || !this.nsSynced) return;
    if (this.running || this.stopCtl.signal.aborted) return;
    this.running = true;
    void this.work().finally(() => {
      this.running = false;
      if (this.dirty.size > 0 && !this.stopCtl.signal.aborted) this.kick();
    });
  }

  /** Makes held match desired, one pod at a time; failures are retried with backoff. */
  private async work(): Promise<void> {
    let delay = this.o.retryMs ?? 200;
    while (this.dirty.size > 0 && !this.stopCtl.signal.aborted) {
      const ref = this.dirty.values().next().value as string;
      this.dirty.delete(ref);
      const want = this.desired.get(ref);
      const cur = this.held.get(ref);
      if (cur?.labels === want) {
        this.doneInitial(ref);
        continue;
      }
      try {
        if (want !== undefined) {
          const r = await this.o.allocator.allocate(want);
          this.held.set(ref, { labels: want, id: r.id });
          if (r.isNew) this.o.log.info({ pod: ref, identity: r.id }, 'identity allocated');
        } else this.held.delete(ref);
        delay = this.o.retryMs ?? 200;
      } catch (err) {
        this.failures++;
        this.o.log.warn({ pod: ref, err: (err as Error).message }, 'identity allocation failed; retrying');
        this.dirty.add(ref);
        if (!(await sleep(this.clock, delay, this.stopCtl.signal))) return;
        delay = Math.min(delay * 2, 10_000);
        continue;
      }
      if (cur !== undefined) {
        // A failed release is not retried: the ref goes with the session, the identity with gc.
        await this.o.allocator.release(cur.id).catch((err: unknown) => {
          this.failures++;
          this.o.log.warn({ pod: ref, identity: cur.id, err: (err as Error).message }, 'identity release failed');
        });
      }
      // A change that arrived meanwhile marked the pod dirty again; it is handled next round.
      if (this.desired.get(ref) === this.held.get(ref)?.labels) this.doneInitial(ref);
    }
  }
}
