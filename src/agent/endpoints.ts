// The endpoints of this node: what the local API adds and deletes, kept as
// records in `<stateDir>/endpoints/<containerID>.json` so a restart (even
// after SIGKILL, even in the middle of an add) finds them again.
//
// add    = endpoint ID and IP taken synchronously (before anything awaits:
//          two adds at once never get the same ID), record written
//          (write-ahead), identity allocated for the pod's label set,
//          from_container attached to the host-side veth, the policy told
//          and settled, then desired state: the endpoints map entry, the
//          ipcache /32, the Endpoint object in the cluster's store. Resolves
//          once the maps hold it (and, for a short while, once the store does).
// delete = the reverse; unknown IDs are fine (idempotent).
// recover (at start) = every record whose device still exists is adopted
//          again with its persisted identity (so traffic never stops), its
//          identity reference re-taken in the background; a record whose
//          device is gone is dropped (its store object is pruned by the
//          publisher once the store has synced). Every endpoint ID in use —
//          in a record or in the pinned endpoints map — is taken before any
//          new one is handed out. Two records with the same endpoint ID (or
//          IP) are an error: the later one is refused (not programmed, its
//          file moved aside, logged, listed in status), never overwritten.
//
// Labels follow the cluster: the Pod object's labels (when the source has the
// Pod) and the namespace's labels make the endpoint's identity while it runs
// (refreshPod, refreshNamespace). A change of identity goes in the fail-closed
// order: the new identity allocated; the policy told the endpoint's new labels
// and identity and settled (every local policy has its verdicts for the new
// identity, the endpoint's own entries follow its new labels); only then the
// endpoints map and ipcache switch to the new identity and the Endpoint object
// is published (other nodes and, through the apiserver, other clusters); the
// old identity's reference is dropped last (the allocator deletes the
// identity after its grace period, so peers still resolve it meanwhile).
//
// Nothing here writes a map or the store directly: it edits the desired
// state of the reconcilers.
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, readdir, rename, unlink, writeFile } from 'node:fs/promises';
import { cidrRange, ipToInt } from '../cni/config.ts';
import { join } from 'node:path';
import { z } from 'zod';
import { sleep, systemClock, type Clock } from '../util/clock.ts';
import type * as endpointsMap from '../datapath/maps/endpoints.ts';
import { identityLabels, labelString, labelStrings, type Label } from '../identity/labels.ts';
import type { Endpoint, Labels } from '../model/index.ts';
import { ownerKeys, localEndpointContributions, type IpcacheEntry, type IpcacheTable } from './ipcache-desired.ts';
import type { Reconciler } from './reconciler.ts';
import { endpointObject, publishKeys } from './store-publisher.ts';
import { endpointRequestSchema } from './endpoint-request.ts';
import {
  ApiError,
  CONTAINER_ID_RE,
  type EndpointDeleteResult,
  type EndpointInfo,
  type EndpointSpec,
  type EndpointState,
} from './types.ts';

/** The datapath operations endpoints need (NodeDatapath in the agent, a fake in tests). */
export interface EndpointDatapath {
  /** Attaches from_container to the device (atomic replace); throws ApiError('device-not-found') when it does not exist. */
  attach(hostIfName: string): Promise<{ ifindex: number; hostMac: string }>;
  /** Detaches; a missing device is fine. */
  detach(hostIfName: string): void;
  deviceExists(hostIfName: string): Promise<boolean>;
  /** The pinned endpoints map at start (IP, endpoint ID): IDs in use before any record says so. */
  pinnedEndpoints?(): Array<[ip: string, endpointID: number]>;
}

/** The identity allocator as endpoints use it. */
export interface EndpointIdentities {
  allocate(labels: Label[]): Promise<{ id: number }>;
  release(id: number): Promise<unknown>;
}

export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface EndpointManagerOptions {
  clusterName: string;
  nodeName: string;
  nodeIP: string;
  /** This node's pod CIDR: an endpoint's IP must be a host address in it (not the node's own address). */
  podCIDR?: string;
  stateDir: string;
  datapath: EndpointDatapath;
  identities: EndpointIdentities;
  /** Labels of a namespace, when the cluster source knows it. */
  namespaceLabels: (namespace: string) => Labels | undefined;
  /** Labels of a Pod object, when the cluster source has it: they win over the labels of the add. */
  podLabels?: (namespace: string, name: string) => Labels | undefined;
  /**
   * The cluster source has listed namespaces and pods. A restored or relabelled endpoint's
   * identity is re-derived only then: before, a namespace's labels would be missing and the
   * endpoint would allocate a wrong identity for a moment. Default: always.
   */
  labelsKnown?: () => boolean;
  /**
   * Tells the policy the endpoints changed (it reads list()) and resolves once
   * the resulting policy is in the maps (or a bound passed): called before an
   * endpoint's new identity reaches the endpoints map and ipcache.
   */
  policySettled?: () => Promise<unknown>;
  endpointsMap: Reconciler<endpointsMap.Value>;
  ipcache: IpcacheTable;
  ipcacheMap: Reconciler<IpcacheEntry>;
  publisher: Reconciler<Endpoint>;
  log: Logger;
  clock?: Clock;
  /** How long add/delete wait for the maps (default 10 s). */
  applyTimeoutMs?: number;
  /** How long add waits for the store write before answering with published: false (default 2 s). */
  publishWaitMs?: number;
}

const RECORD_VERSION = 1;

const recordSchema = z.object({
  version: z.literal(RECORD_VERSION),
  containerID: z.string().regex(CONTAINER_ID_RE),
  namespace: z.string(),
  podName: z.string(),
  ip: z.string(),
  hostIfName: z.string(),
  podMac: z.string(),
  labels: z.record(z.string(), z.string()),
  serviceAccount: z.string(),
  endpointID: z.number().int().min(1).max(0xffff),
  uid: z.string(),
  identity: z.number().int().nullable(),
  createdAt: z.string(),
});
export type EndpointRecord = z.infer<typeof recordSchema>;

interface Live {
  ifindex: number;
  hostMac: string;
}

interface Held {
  id: number;
  labels: string;
}

export class EndpointManager {
  private readonly o: EndpointManagerOptions;
  private readonly clock: Clock;
  private readonly dir: string;
  private readonly records = new Map<string, EndpointRecord>();
  private readonly live = new Map<string, Live>();
  private readonly held = new Map<string, Held>();
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Endpoint ID → its owner: a container ID, or `pinned:<ip>` for an entry of the pinned map without a record. */
  private readonly idOwners = new Map<number, string>();
  /** Where the search for a free endpoint ID starts: a freed ID is reused only after the others went round. */
  private nextID = 1;
  /** Loud problems (duplicates refused), for status: key → message. */
  private readonly problems = new Map<string, string>();
  /** Containers whose identity is being (re)taken; `again` = their labels changed meanwhile. */
  private readonly relabelling = new Map<string, { again: boolean }>();
  private readonly stopCtl = new AbortController();
  private stopping = false;

  constructor(opts: EndpointManagerOptions) {
    this.o = opts;
    this.clock = opts.clock ?? systemClock;
    this.dir = join(opts.stateDir, 'endpoints');
  }

  // ---- API operations

  async add(containerID: string, body: unknown): Promise<EndpointInfo> {
    checkContainerID(containerID);
    const parsed = endpointRequestSchema.safeParse(body);
    if (!parsed.success) {
      const i = parsed.error.issues[0]!;
      throw new ApiError('invalid-request', `endpoint ${containerID}: ${i.path.map(String).join('.') || '(body)'}: ${i.message}`);
    }
    const spec = parsed.data;
    const badIP = this.o.podCIDR === undefined ? undefined : foreignAddress(spec.ip, this.o.podCIDR, this.o.nodeIP);
    if (badIP) throw new ApiError('invalid-request', `endpoint ${containerID}: ip: ${badIP}`);
    return await this.locked(containerID, async () => {
      this.checkOpen();
      // Synchronous up to persist(): the IP is checked and the endpoint ID taken before anything
      // awaits, so adds of other containers running at the same time see both.
      for (const r of this.records.values()) {
        if (r.containerID !== containerID && r.ip === spec.ip)
          throw new ApiError('conflict', `endpoint ${containerID}: IP ${spec.ip} belongs to endpoint ${r.containerID} (${r.namespace}/${r.podName}) on this node`);
        // Two endpoints on one device: the second attach would take the first one's traffic, and deleting either detach both.
        if (r.containerID !== containerID && r.hostIfName === spec.hostIfName)
          throw new ApiError('conflict', `endpoint ${containerID}: device ${spec.hostIfName} belongs to endpoint ${r.containerID} (${r.namespace}/${r.podName}) on this node`);
      }
      const prev = this.records.get(containerID);
      // The Pod object's labels, when the cluster has it, are the pod's labels (what `kubectl label` changes).
      const labels = { ...(this.o.podLabels?.(spec.namespace, spec.podName) ?? spec.labels) };
      const unchanged = prev !== undefined && sameSpec(prev, { ...spec, labels });
      const rec: EndpointRecord = {
        version: RECORD_VERSION,
        containerID,
        namespace: spec.namespace,
        podName: spec.podName,
        ip: spec.ip,
        hostIfName: spec.hostIfName,
        podMac: spec.podMac,
        labels,
        serviceAccount: spec.serviceAccount ?? 'default',
        endpointID: prev?.endpointID ?? this.takeEndpointID(containerID),
        uid: prev?.uid ?? randomUUID(),
        identity: prev?.identity ?? null,
        createdAt: prev?.createdAt ?? new Date(this.clock.now()).toISOString(),
      };
      this.records.set(containerID, rec);
      if (prev && (prev.ip !== rec.ip || prev.hostIfName !== rec.hostIfName)) this.unprogram(prev, { detach: prev.hostIfName !== rec.hostIfName });
      const t0 = this.clock.now();
      const ms: Record<string, number> = {};
      const lap = (what: string): void => {
        ms[what] = this.clock.now() - t0;
      };
      try {
        await this.persist(rec);
      } catch (err) {
        if (prev) this.records.set(containerID, prev);
        else await this.forget(containerID);
        throw err;
      }
      lap('persisted');

      let live: Live;
      try {
        live = await this.o.datapath.attach(rec.hostIfName);
        lap('attached');
      } catch (err) {
        if (!prev) await this.forget(containerID);
        throw err;
      }
      this.live.set(containerID, live);
      let change: IdentityChange;
      try {
        change = await this.ensureIdentity(rec);
        lap('identity');
      } catch (err) {
        if (!prev) {
          this.o.datapath.detach(rec.hostIfName);
          await this.forget(containerID);
        }
        throw new ApiError('unavailable', `endpoint ${containerID}: no identity for its labels: ${(err as Error).message}`);
      }
      // The policy first (this endpoint's entries, every verdict for its identity), then the maps.
      await this.settlePolicy();
      lap('policy');
      this.program(rec);
      await this.waitProgrammed(rec);
      lap('programmed');
      if (change.release !== undefined) this.releaseIdentity(change.release);
      const key = publishKeys.endpoint(rec.namespace, rec.podName);
      await this.o.publisher.whenApplied(key, this.o.publishWaitMs ?? 2000).catch(() => undefined);
      lap('published');
      const fields = { containerID, pod: `${rec.namespace}/${rec.podName}`, ip: rec.ip, identity: rec.identity, endpointID: rec.endpointID, ms };
      if (unchanged) this.o.log.debug(fields, 'endpoint add repeated; unchanged');
      else this.o.log.info(fields, prev ? 'endpoint updated' : 'endpoint added');
      return this.info(rec);
    });
  }

  async delete(containerID: string): Promise<EndpointDeleteResult> {
    checkContainerID(containerID);
    return await this.locked(containerID, async () => {
      const rec = this.records.get(containerID);
      if (!rec) return { containerID, deleted: false };
      this.unprogram(rec, { detach: false });
      this.records.delete(containerID);
      this.live.delete(containerID);
      this.publish(rec.namespace, rec.podName);
      try {
        await Promise.all([
          this.o.endpointsMap.whenApplied(rec.ip, this.o.applyTimeoutMs ?? 10_000),
          this.o.ipcacheMap.whenApplied(`${rec.ip}/32`, this.o.applyTimeoutMs ?? 10_000),
        ]);
      } catch (err) {
        this.o.log.warn({ containerID, err: (err as Error).message }, 'endpoint delete: maps not updated yet; the reconcilers keep retrying');
      }
      this.o.datapath.detach(rec.hostIfName);
      await this.unlinkRecord(containerID);
      this.freeEndpointID(rec.endpointID, containerID);
      const held = this.held.get(containerID);
      this.held.delete(containerID);
      if (held) this.releaseIdentity(held.id);
      this.o.log.info({ containerID, pod: `${rec.namespace}/${rec.podName}`, ip: rec.ip }, 'endpoint deleted');
      return { containerID, deleted: true };
    });
  }

  list(): EndpointInfo[] {
    return [...this.records.values()].sort((a, b) => a.endpointID - b.endpointID).map((r) => this.info(r));
  }

  get(containerID: string): EndpointInfo | undefined {
    const r = this.records.get(containerID);
    return r ? this.info(r) : undefined;
  }

  get size(): number {
    return this.records.size;
  }

  /** Counts for status, and the problems found (duplicates refused). */
  status(): { endpoints: number; ready: number; restoring: number; waitingForIdentity: number; identities: number; problems: string[] } {
    const infos = this.list();
    return {
      endpoints: infos.length,
      ready: infos.filter((i) => i.state === 'ready').length,
      restoring: infos.filter((i) => i.state === 'restoring').length,
      waitingForIdentity: infos.filter((i) => i.state === 'waiting-for-identity').length,
      identities: new Set(infos.map((i) => i.identity).filter((x) => x !== null)).size,
      problems: [...this.problems.values()],
    };
  }

  // ---- restart

  /**
   * Reads the persisted records: adopts those whose device exists (program
   * re-attached atomically, desired state from the persisted identity) and
   * drops the others; refuses a record whose endpoint ID or IP another record
   * holds. Takes every endpoint ID in use (records, pinned map) before the
   * first add. Identity references are re-taken in the background.
   */
  async recover(): Promise<{ adopted: string[]; dropped: string[]; refused: string[] }> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const adopted: string[] = [];
    const dropped: string[] = [];
    const refused: string[] = [];
    const found: Array<{ rec: EndpointRecord; path: string }> = [];
    for (const f of (await readdir(this.dir)).sort()) {
      if (!f.endsWith('.json')) {
        if (f.endsWith('.tmp')) await unlink(join(this.dir, f)).catch(() => undefined);
        continue;
      }
      const path = join(this.dir, f);
      try {
        const rec = recordSchema.parse(JSON.parse(await readFile(path, 'utf8')));
        if (`${rec.containerID}.json` !== f) throw new Error(`holds ${rec.containerID}`);
        found.push({ rec, path });
      } catch (err) {
        this.o.log.error({ file: path, err: (err as Error).message }, 'unreadable endpoint record; moved aside');
        await rename(path, `${path}.invalid`).catch(() => undefined);
      }
    }
    // The older endpoint keeps a contested ID or IP.
    found.sort((a, b) => (a.rec.createdAt < b.rec.createdAt ? -1 : a.rec.createdAt > b.rec.createdAt ? 1 : a.rec.containerID < b.rec.containerID ? -1 : 1));
    const byIP = new Map<string, string>();
    for (const { rec, path } of found) {
      const idOwner = this.idOwners.get(rec.endpointID);
      const ipOwner = byIP.get(rec.ip);
      if (idOwner !== undefined || ipOwner !== undefined) {
        const what = idOwner !== undefined ? `endpoint ID ${rec.endpointID} belongs to endpoint ${idOwner}` : `IP ${rec.ip} belongs to endpoint ${ipOwner}`;
        this.problem(
          `duplicate/${rec.containerID}`,
          { containerID: rec.containerID, endpointID: rec.endpointID, ip: rec.ip, record: `${path}.duplicate` },
          `endpoint ${rec.containerID} (${rec.namespace}/${rec.podName}) refused at restore: its ${what} (restored first); its record was moved to ${path}.duplicate and it is not programmed (its traffic is dropped) until its pod is added again`,
        );
        await rename(path, `${path}.duplicate`).catch(() => undefined);
        refused.push(rec.containerID);
        continue;
      }
      if (!(await this.o.datapath.deviceExists(rec.hostIfName))) {
        await unlink(path).catch(() => undefined);
        dropped.push(rec.containerID);
        this.o.log.info({ containerID: rec.containerID, device: rec.hostIfName, ip: rec.ip }, 'endpoint dropped: its device is gone');
        continue;
      }
      this.idOwners.set(rec.endpointID, rec.containerID);
      byIP.set(rec.ip, rec.containerID);
      this.records.set(rec.containerID, rec);
      try {
        this.live.set(rec.containerID, await this.o.datapath.attach(rec.hostIfName));
      } catch (err) {
        this.o.log.error({ containerID: rec.containerID, err: (err as Error).message }, 'cannot re-attach endpoint program; will retry on the next add');
      }
      if (rec.identity !== null) this.program(rec);
      adopted.push(rec.containerID);
      this.retakeIdentity(rec.containerID);
    }
    this.adoptPinnedIDs(byIP);
    this.nextID = Math.max(0, ...this.idOwners.keys()) + 1;
    if (this.nextID > 0xffff) this.nextID = 1;
    if (adopted.length || dropped.length || refused.length)
      this.o.log.info({ adopted: adopted.length, dropped: dropped.length, refused: refused.length }, 'endpoints restored from the state directory');
    return { adopted, dropped, refused };
  }

  /** Endpoint IDs in the pinned map without a record stay taken (their entries are stale until pruned). */
  private adoptPinnedIDs(byIP: ReadonlyMap<string, string>): void {
    let pinned: Array<[string, number]>;
    try {
      pinned = this.o.datapath.pinnedEndpoints?.() ?? [];
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'cannot read the pinned endpoints map; IDs in it may be handed out again');
      return;
    }
    for (const [ip, id] of pinned) {
      const cid = byIP.get(ip);
      const owner = this.idOwners.get(id);
      if (cid !== undefined) {
        const rec = this.records.get(cid)!;
        if (rec.endpointID !== id)
          this.o.log.warn({ ip, pinnedEndpointID: id, containerID: cid, endpointID: rec.endpointID }, 'the pinned endpoints map held another endpoint ID for this IP; its record wins');
        continue;
      }
      if (owner === undefined) this.idOwners.set(id, `pinned:${ip}`);
      else if (owner.startsWith('pinned:'))
        this.problem(`pinned/${id}`, { endpointID: id, ips: [owner.slice(7), ip] }, `the pinned endpoints map holds endpoint ID ${id} for both ${owner.slice(7)} and ${ip}, neither with a record; both entries are pruned`);
    }
  }

  /** Re-derives identities of a namespace's endpoints (its labels changed). */
  refreshNamespace(namespace: string): void {
    for (const rec of this.records.values()) {
      if (rec.namespace !== namespace) continue;
      const held = this.held.get(rec.containerID);
      if (held && held.labels !== labelString(this.labelsOf(rec))) this.retakeIdentity(rec.containerID);
    }
  }

  /** Follows a Pod object's labels (they changed, or the Pod appeared): the endpoints of that pod get the identity of its labels. */
  refreshPod(namespace: string, name: string): void {
    const labels = this.o.podLabels?.(namespace, name);
    if (!labels) return;
    for (const rec of this.records.values()) {
      if (rec.namespace === namespace && rec.podName === name && !sameLabels(rec.labels, labels)) this.retakeIdentity(rec.containerID);
    }
  }

  /** Stops background work. Records, maps and store objects stay (a restart adopts them). */
  async stop(): Promise<void> {
    this.stopping = true;
    this.stopCtl.abort();
    await Promise.all([...this.locks.values()].map((p) => p.catch(() => undefined)));
  }

  // ---- internals

  private labelsOf(rec: EndpointRecord): Label[] {
    const nsLabels = this.o.namespaceLabels(rec.namespace);
    return identityLabels({
      cluster: this.o.clusterName,
      namespace: rec.namespace,
      serviceAccount: rec.serviceAccount,
      podLabels: rec.labels,
      ...(nsLabels ? { namespaceLabels: nsLabels } : {}),
    });
  }

  /**
   * Holds the identity of rec's current label set (allocating it) and
   * persists a changed number. The reference of the identity held before is
   * not dropped here: `release` names it, for the caller to drop once the new
   * one is programmed. `changed`: rec.identity is another number now.
   */
  private async ensureIdentity(rec: EndpointRecord): Promise<IdentityChange> {
    const labels = this.labelsOf(rec);
    const str = labelString(labels);
    const held = this.held.get(rec.containerID);
    const before = rec.identity;
    if (held && held.labels === str) {
      if (rec.identity !== held.id) {
        rec.identity = held.id;
        await this.persist(rec);
      }
      return { changed: before !== rec.identity };
    }
    const a = await this.o.identities.allocate(labels);
    this.held.set(rec.containerID, { id: a.id, labels: str });
    if (rec.identity !== a.id) {
      rec.identity = a.id;
      await this.persist(rec);
    }
    return { changed: before !== rec.identity, ...(held ? { release: held.id } : {}) };
  }

  /**
   * Takes the identity of an endpoint's current labels (the Pod object's,
   * the namespace's) and programs it in the fail-closed order (file comment),
   * retrying with backoff while etcd is unreachable: after a restart, and
   * when the labels change. Labels changing meanwhile make it go again.
   */
  private retakeIdentity(containerID: string): void {
    const running = this.relabelling.get(containerID);
    if (running) {
      running.again = true;
      return;
    }
    const state = { again: false };
    this.relabelling.set(containerID, state);
    void (async () => {
      let delay = 200;
      try {
        while (!this.stopping) {
          state.again = false;
          const done = await this.locked(containerID, () => this.identityPass(containerID, delay));
          if (done && !state.again) return;
          if (done) continue;
          if (!(await sleep(this.clock, delay, this.stopCtl.signal))) return;
          delay = Math.min(delay * 2, 10_000);
        }
      } finally {
        this.relabelling.delete(containerID);
      }
    })();
  }

  /** One attempt of retakeIdentity (under the container's lock); false = try again later. */
  private async identityPass(containerID: string, retryInMs: number): Promise<boolean> {
    const rec = this.records.get(containerID);
    if (!rec || this.stopping) return true;
    if (this.o.labelsKnown && !this.o.labelsKnown()) return false; // keeps its identity meanwhile
    const t0 = this.clock.now();
    const podLabels = this.o.podLabels?.(rec.namespace, rec.podName);
    const from = { identity: rec.identity, labels: rec.labels };
    try {
      if (podLabels && !sameLabels(rec.labels, podLabels)) {
        rec.labels = { ...podLabels };
        await this.persist(rec);
      }
      const change = await this.ensureIdentity(rec);
      if (!change.changed) {
        this.program(rec); // the labels in the Endpoint object, or a restored endpoint's desired state
        return true;
      }
      await this.settlePolicy();
      this.program(rec);
      await this.waitProgrammed(rec).catch((err: unknown) => this.o.log.warn({ containerID, err: (err as Error).message }, 'identity changed; the maps are not confirmed yet (the reconcilers keep retrying)'));
      if (change.release !== undefined) this.releaseIdentity(change.release);
      this.o.log.info(
        { containerID, pod: `${rec.namespace}/${rec.podName}`, from: from.identity, to: rec.identity, labels: rec.labels, previousLabels: from.labels, ms: this.clock.now() - t0 },
        'endpoint identity changed (labels changed)',
      );
      return true;
    } catch (err) {
      this.o.log.warn({ containerID, err: (err as Error).message, retryInMs }, 'cannot take the identity of the endpoint\'s labels yet; it keeps its current identity');
      return false;
    }
  }

  /** The policy has seen the endpoints as they are now and written its maps (bounded by the policy's own wait). */
  private async settlePolicy(): Promise<void> {
    await this.o.policySettled?.().catch((err: unknown) => this.o.log.warn({ err: (err as Error).message }, 'policy not settled; going on'));
  }

  private releaseIdentity(id: number): void {
    // Still held by another endpoint of this node with the same labels? The allocator counts references.
    this.o.identities.release(id).catch((err: unknown) => this.o.log.warn({ identity: id, err: (err as Error).message }, 'identity release failed'));
  }

  /** Writes the desired state of one endpoint (needs its identity). */
  private program(rec: EndpointRecord): void {
    const live = this.live.get(rec.containerID);
    if (rec.identity === null) return;
    const owner = this.idOwners.get(rec.endpointID);
    if (owner !== rec.containerID) {
      // Cannot happen while IDs are only taken by takeEndpointID(); never overwrite another endpoint's ID.
      const msg = `endpoint ${rec.containerID} not programmed: its endpoint ID ${rec.endpointID} belongs to ${owner ?? 'nobody'}`;
      this.problem(`duplicate/${rec.containerID}`, { containerID: rec.containerID, endpointID: rec.endpointID, owner }, msg);
      throw new ApiError('conflict', msg);
    }
    if (live) {
      this.o.endpointsMap.upsert(rec.ip, {
        ifindex: live.ifindex,
        identity: rec.identity,
        endpointId: rec.endpointID,
        flags: 0,
        mac: rec.podMac,
        nodeMac: live.hostMac,
      });
    }
    this.o.ipcache.setOwner(ownerKeys.localEndpoint(rec.containerID), localEndpointContributions({ ip: rec.ip, identity: rec.identity }));
    this.publish(rec.namespace, rec.podName);
  }

  /** Withdraws one endpoint's desired state (not its store object: publish() decides that). */
  private unprogram(rec: EndpointRecord, opts: { detach: boolean }): void {
    this.o.endpointsMap.remove(rec.ip);
    this.o.ipcache.removeOwner(ownerKeys.localEndpoint(rec.containerID));
    if (opts.detach) this.o.datapath.detach(rec.hostIfName);
  }

  /** The desired store object of a pod name: the newest local endpoint of that name, or none. */
  private publish(namespace: string, podName: string): void {
    const key = publishKeys.endpoint(namespace, podName);
    let best: EndpointRecord | undefined;
    for (const r of this.records.values()) {
      if (r.namespace !== namespace || r.podName !== podName || r.identity === null) continue;
      if (!best || r.createdAt > best.createdAt) best = r;
    }
    if (!best || best.identity === null) {
      this.o.publisher.remove(key);
      return;
    }
    this.o.publisher.upsert(
      key,
      endpointObject({
        namespace,
        podName,
        uid: best.uid,
        labels: best.labels,
        endpointID: best.endpointID,
        identity: best.identity,
        identityLabels: labelStrings(this.labelsOf(best)),
        ip: best.ip,
        nodeName: this.o.nodeName,
        nodeIP: this.o.nodeIP,
      }),
    );
  }

  private async waitProgrammed(rec: EndpointRecord): Promise<void> {
    const t = this.o.applyTimeoutMs ?? 10_000;
    try {
      await Promise.all([this.o.endpointsMap.whenApplied(rec.ip, t), this.o.ipcacheMap.whenApplied(`${rec.ip}/32`, t)]);
    } catch (err) {
      throw new ApiError('unavailable', `endpoint ${rec.containerID}: datapath not programmed: ${(err as Error).message}`);
    }
  }

  private info(rec: EndpointRecord): EndpointInfo {
    const live = this.live.get(rec.containerID);
    const held = this.held.get(rec.containerID);
    const state: EndpointState = rec.identity === null ? 'waiting-for-identity' : held ? 'ready' : 'restoring';
    return {
      containerID: rec.containerID,
      namespace: rec.namespace,
      podName: rec.podName,
      ip: rec.ip,
      hostIfName: rec.hostIfName,
      podMac: rec.podMac,
      labels: { ...rec.labels },
      serviceAccount: rec.serviceAccount,
      endpointID: rec.endpointID,
      identity: rec.identity,
      identityLabels: labelStrings(this.labelsOf(rec)),
      ifindex: live?.ifindex ?? null,
      nodeMac: live?.hostMac ?? null,
      nodeName: this.o.nodeName,
      state,
      published: this.o.publisher.isApplied(publishKeys.endpoint(rec.namespace, rec.podName)),
      createdAt: rec.createdAt,
    };
  }

  /** Takes a free endpoint ID for containerID, synchronously (the caller must not await before recording it). */
  private takeEndpointID(containerID: string): number {
    for (let n = 0; n < 0xffff; n++) {
      const id = ((this.nextID - 1 + n) % 0xffff) + 1;
      if (this.idOwners.has(id)) continue;
      this.idOwners.set(id, containerID);
      this.nextID = (id % 0xffff) + 1;
      return id;
    }
    throw new ApiError('unavailable', 'no free endpoint ID on this node (65535 in use)');
  }

  private freeEndpointID(id: number, containerID: string): void {
    if (this.idOwners.get(id) === containerID) this.idOwners.delete(id);
  }

  /** A loud problem: logged as an error and listed in status until the agent restarts. */
  private problem(key: string, fields: object, msg: string): void {
    this.problems.set(key, msg);
    this.o.log.error(fields, msg);
  }

  private async persist(rec: EndpointRecord): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const path = join(this.dir, `${rec.containerID}.json`);
    const tmp = `${path}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(rec, null, 2) + '\n', { mode: 0o600 });
    await rename(tmp, path);
  }

  private async unlinkRecord(containerID: string): Promise<void> {
    await unlink(join(this.dir, `${containerID}.json`)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  /** Undoes a failed first add: no record, no identity reference. */
  private async forget(containerID: string): Promise<void> {
    const rec = this.records.get(containerID);
    this.records.delete(containerID);
    if (rec) this.freeEndpointID(rec.endpointID, containerID);
    this.live.delete(containerID);
    await this.unlinkRecord(containerID);
    const held = this.held.get(containerID);
    this.held.delete(containerID);
    if (held) this.releaseIdentity(held.id);
  }

  private checkOpen(): void {
    if (this.stopping) throw new ApiError('stopping', 'the agent is shutting down');
  }

  /** Operations on one container ID never interleave. */
  private async locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.catch(() => undefined).then(fn);
    const tail = run.catch(() => undefined);
    this.locks.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    }
  }
}

interface IdentityChange {
  /** The endpoint has another identity number now. */
  changed: boolean;
  /** The identity held before: its reference is to be dropped once the new one is programmed. */
  release?: number;
}

function sameLabels(a: Labels, b: Labels): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
}

function sameSpec(rec: EndpointRecord, spec: EndpointSpec): boolean {
  return (
    rec.namespace === spec.namespace &&
    rec.podName === spec.podName &&
    rec.ip === spec.ip &&
    rec.hostIfName === spec.hostIfName &&
    rec.podMac === spec.podMac &&
    rec.serviceAccount === (spec.serviceAccount ?? 'default') &&
    sameLabels(rec.labels, spec.labels)
  );
}

/**
 * Why ip cannot be a pod of this node (undefined when it can): outside the
 * node's pod CIDR (another node's or cluster's address: this node's maps would
 * claim it), its network or broadcast address, or the node's own address.
 */
export function foreignAddress(ip: string, podCIDR: string, nodeIP: string): string | undefined {
  const [net, bcast] = cidrRange(podCIDR);
  const n = ipToInt(ip);
  if (n < net || n > bcast) return `${ip} is not in this node's pod CIDR ${podCIDR}`;
  if (n === net || n === bcast) return `${ip} is the ${n === net ? 'network' : 'broadcast'} address of this node's pod CIDR ${podCIDR}`;
  if (ip === nodeIP) return `${ip} is this node's own address`;
  return undefined;
}

function checkContainerID(id: string): void {
  if (!CONTAINER_ID_RE.test(id)) throw new ApiError('invalid-request', `container ID ${JSON.stringify(id.slice(0, 140))} must be 1..128 characters of [A-Za-z0-9_.-], starting alphanumeric`);
}
