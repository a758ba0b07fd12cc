// `observe --follow`: every agent's flow stream, printed merged by time. Each
// agent first sends its kept flows that match, then new ones; the kept ones of
// every node are merged before printing, and live ones wait `reorderMs` so
// that nodes' flows still come out in time order.
//
// With `resolve` (kube context mode, as `ui --context`): the agents are found
// again every resolveMs and after a stream fails (at most once per retryMs),
// and mergeTargets (targets.ts) says what changed: a node added is followed
// from the time observe started, an agent pod that moved (another address or
// TLS material) is dialled where it is now from past the last flow seen of
// its node, a node gone is let go; a stream that fails is opened again after
// retryMs. A context that cannot be listed keeps the agents found before.
// Without `resolve` (a lab, explicit sockets), a stream that ends stays ended
// and `done` resolves once every stream has.
import type { AgentClient } from '../agent/client.ts';
import type { Flow, FlowQuery } from '../agent/flows.ts';
import { agentClientFor, mergeTargets, nodeLabel, type NodeTarget, type Targets } from './targets.ts';

/** Flows of several nodes in time order (stable: a node's own order is kept for equal times). */
export function mergeByTime(lists: Flow[][]): Flow[] {
  return lists
    .flatMap((l, n) => l.map((f, i) => ({ f, n, i })))
    .sort((a, b) => (a.f.time < b.f.time ? -1 : a.f.time > b.f.time ? 1 : a.n - b.n || a.i - b.i))
    .map((x) => x.f);
}

export interface FlowFollowerOptions {
  targets: Targets;
  /** What to ask every agent (its `limit` is for the kept flows of the start only). */
  query: FlowQuery;
  emit: (f: Flow) => void;
  warn: (s: string) => void;
  /** What changed in the agents followed (a node added, re-dialled, let go). */
  note?: (s: string) => void;
  /** Of the kept flows at the start, print only the last n (over all nodes). */
  last?: number;
  /** Finds the agents again (kube context mode); a rejection keeps the agents in use. */
  resolve?: () => Promise<Targets>;
  /** How often resolve runs (default 10 s). */
  resolveMs?: number;
  /** With resolve: how long a broken stream waits before it is opened again (default 2 s). */
  retryMs?: number;
  /** How long live flows wait for other nodes' (default 250 ms). */
  reorderMs?: number;
  /** A client of a node's agent (default agentClientFor with a 10 s timeout). */
  clientFor?: (n: NodeTarget) => AgentClient;
}

interface Follow {
  node: NodeTarget;
  client: AgentClient;
  stream: { stop(): void; ended: Promise<void> };
  /** Without resolve: its stream ended, for good. */
  ended: boolean;
}

export class FlowFollower {
  readonly #o: FlowFollowerOptions & { resolveMs: number; retryMs: number; reorderMs: number; clientFor: (n: NodeTarget) => AgentClient };
  #targets: Targets;
  readonly #follows = new Map<NodeTarget, Follow>();
  /** Past the last flow printed or queued, by node key: a re-dialled agent goes on from there. */
  readonly #lastSeen = new Map<string, Date>();
  /** The last warning given for a node's stream (a node that stays down is said once). */
  readonly #lastWarning = new Map<string, string>();
  readonly #warned = new Set<string>();
  /** Kept flows of the start, one list per node that has not sent all of them yet. */
  readonly #backlog = new Map<NodeTarget, Flow[]>();
  /** Kept flows of the start of the nodes that have sent all of them (or are gone). */
  #allBacklogs: Flow[][] = [];
  #live: Flow[] = [];
  #startedAt = new Date();
  #stopped = false;
  #resolving = false;
  #resolvedAt = 0;
  #failed = 0;
  #problems = 0;
  #allEnded = false;
  readonly #timers: NodeJS.Timeout[] = [];
  #done!: () => void;
  /** Resolves when every stream has ended for good (never with resolve: streams are opened again), or at stop. */
  readonly done = new Promise<void>((r) => (this.#done = r));

  constructor(o: FlowFollowerOptions) {
    this.#o = { resolveMs: 10_000, retryMs: 2000, reorderMs: 250, clientFor: (n) => agentClientFor(n, { timeoutMs: 10_000 }), ...o };
    this.#targets = o.targets;
    for (const p of o.targets.problems ?? []) this.#warned.add(p);
  }

  /** The nodes followed now. */
  get nodes(): NodeTarget[] {
    return [...this.#follows.keys()];
  }

  /** The nodes followed now, with their clients. */
  get agents(): Array<[NodeTarget, AgentClient]> {
    return [...this.#follows].map(([n, f]) => [n, f.client]);
  }

  /** Without resolve: every stream ended by itself (not stopped). */
  get allEnded(): boolean {
    return this.#allEnded;
  }

  /** Streams that failed, and resolutions that reported a context or node that could not be read. */
  get troubles(): number {
    return this.#failed + this.#problems;
  }

  start(): void {
    this.#startedAt = new Date();
    this.#resolvedAt = Date.now();
    for (const n of this.#targets.nodes) {
      this.#backlog.set(n, []);
      this.#follow(n, this.#o.query);
    }
    if (this.#backlog.size === 0) this.#printBacklog();
    this.#timers.push(setInterval(() => this.#flush(false), 100));
    if (this.#o.resolve) this.#timers.push(setInterval(() => void this.#resolveAgain(true), this.#o.resolveMs));
  }

  /** Stops every stream and prints what is still queued. The clients stay open for a last question (close()). */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const t of this.#timers) clearInterval(t);
    for (const f of this.#follows.values()) f.stream.stop();
    if (this.#backlog.size > 0) {
      // what came of the nodes still sending their kept flows
      this.#allBacklogs.push(...this.#backlog.values());
      this.#backlog.clear();
      this.#printBacklog();
    }
    this.#flush(true);
    this.#done();
  }

  close(): void {
    this.stop();
    for (const f of this.#follows.values()) f.client.close();
    this.#follows.clear();
  }

  /** A node's kept flows are in (or it is gone before they were: it does not hold the others back). */
  #backlogDone(n: NodeTarget): void {
    const b = this.#backlog.get(n);
    if (!b) return;
    this.#backlog.delete(n);
    this.#allBacklogs.push(b);
    if (this.#backlog.size === 0) this.#printBacklog();
  }

  #printBacklog(): void {
    const all = mergeByTime(this.#allBacklogs);
    this.#allBacklogs = [];
    for (const f of this.#o.last !== undefined ? all.slice(-this.#o.last) : all) this.#o.emit(f);
  }

  #flush(all: boolean): void {
    if (this.#backlog.size > 0 && !all) return;
    const cut = new Date(Date.now() - this.#o.reorderMs).toISOString();
    const ready = all ? this.#live : this.#live.filter((f) => f.time <= cut);
    if (ready.length === 0) return;
    this.#live = all ? [] : this.#live.filter((f) => f.time > cut);
    for (const f of mergeByTime([ready])) this.#o.emit(f);
  }

  #follow(n: NodeTarget, q: FlowQuery, client = this.#follows.get(n)?.client ?? this.#o.clientFor(n)): void {
    const stream = client.followFlows(
      q,
      (f) => {
        const t = Date.parse(f.time);
        const last = this.#lastSeen.get(n.key);
        if (!last || t >= last.getTime()) this.#lastSeen.set(n.key, new Date(t + 1));
        const b = this.#backlog.get(n);
        if (b) b.push(f);
        else this.#live.push(f);
      },
      {
        onLost: (k) => this.#o.warn(`${nodeLabel(n)}: ${k} flows dropped by the agent: this reader was too slow`),
        onBacklogEnd: () => {
          this.#lastWarning.delete(n.key);
          this.#backlogDone(n);
        },
      },
    );
    const f: Follow = { node: n, client, stream, ended: false };
    this.#follows.set(n, f);
    const ended = (why: string, failed: boolean): void => {
      // stopped, or the node let go / dialled elsewhere
      if (this.#stopped || this.#follows.get(n) !== f) return;
      if (failed) this.#failed++;
      if (this.#lastWarning.get(n.key) !== why) this.#o.warn(`${nodeLabel(n)}: ${why}`);
      this.#lastWarning.set(n.key, why);
      this.#backlogDone(n);
      if (!this.#o.resolve) {
        f.ended = true;
        if ([...this.#follows.values()].every((x) => x.ended)) {
          this.#allEnded = true;
          this.#done();
        }
        return;
      }
      // a failed dial may be a restarted agent pod: where are the agents now?
      void this.#resolveAgain(false);
      setTimeout(() => {
        if (!this.#stopped && this.#follows.get(n) === f) this.#follow(n, this.#since(n), client);
      }, this.#o.retryMs).unref();
    };
    stream.ended.then(
      () => ended('the agent closed the flow stream', false),
      (err: unknown) => ended((err as Error).message, true),
    );
  }

  /** The query of a stream opened again or anew: past the node's last flow seen, else from the start of observe. */
  #since(n: NodeTarget): FlowQuery {
    const { limit: _limit, ...q } = this.#o.query;
    const from = this.#lastSeen.get(n.key) ?? this.#startedAt;
    return { ...q, since: q.since && q.since > from ? q.since : from };
  }

  async #resolveAgain(periodic: boolean): Promise<void> {
    const resolve = this.#o.resolve;
    if (!resolve || this.#resolving || this.#stopped) return;
    if (!periodic && Date.now() - this.#resolvedAt < this.#o.retryMs) return;
    this.#resolving = true;
    try {
      const fresh = await resolve();
      if (this.#stopped) return;
      for (const p of fresh.problems ?? []) {
        this.#problems++;
        this.#warnOnce(p);
      }
      const ch = mergeTargets(this.#targets, fresh);
      this.#targets = ch.targets;
      for (const n of ch.removed) {
        this.#letGo(n);
        this.#o.note?.(`${nodeLabel(n)}: no longer listed; let go`);
      }
      for (const { old, now } of ch.replaced) {
        this.#letGo(old);
        this.#follow(now, this.#since(now));
        this.#o.note?.(`${nodeLabel(now)}: its agent moved; following it there`);
      }
      for (const n of ch.added) {
        this.#follow(n, this.#since(n));
        this.#o.note?.(`${nodeLabel(n)}: a new node; following it`);
      }
    } catch (err) {
      this.#problems++;
      this.#warnOnce(`finding the agents again: ${(err as Error).message} (still following the ones found before)`);
    } finally {
      this.#resolving = false;
      this.#resolvedAt = Date.now();
    }
  }

  #letGo(n: NodeTarget): void {
    const f = this.#follows.get(n);
    this.#follows.delete(n);
    f?.stream.stop();
    f?.client.close();
    this.#lastWarning.delete(n.key);
    this.#backlogDone(n);
  }

  #warnOnce(s: string): void {
    if (this.#warned.has(s)) return;
    this.#warned.add(s);
    this.#o.warn(s);
  }
}
