// The endpoints of this node: what the local API adds and deletes, kept as
// records in `<stateDir>/endpoints/<containerID>.json` so a restart (even
// after SIGKILL, even in the middle of an add) finds them again.
//
// add    = record written first (write-ahead), identity allocated for the
//          pod's label set, from_container attached to the host-side veth,
//          then desired state: the endpoints map entry, the ipcache /32, the
//          Endpoint object in the cluster's store. Resolves once the maps hold
//          it (and, for a short while, once the store does).
// delete = the reverse; unknown IDs are fine (idempotent).
// recover (at start) = every record whose device still exists is adopted
//          again with its persisted identity (so traffic never stops), its
//          identity reference re-taken in the background; a record whose
//          device is gone is dropped (its store object is pruned by the
//          publisher once the store has synced).
//
// Nothing here writes a map or the store directly: it edits the desired
// state of the reconcilers.
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, readdir, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { sleep, systemClock, type Clock } from '../util/clock.ts';
import type * as endpointsMap from '../datapath/maps/endpoints.ts';
import { identityLabels, labelString, labelStrings, type Label } from '../identity/labels.ts';
import type { ClusterObject, Labels } from '../model/index.ts';
import { ownerKeys, localEndpointContributions, type IpcacheEntry, type IpcacheTable } from './ipcache-desired.ts';
import type { Reconciler } from './reconciler.ts';
import { endpointObject, publishKeys } from './store-publisher.ts';
import {
  ApiError,
  CONTAINER_ID_RE,
  endpointRequestSchema,
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
  stateDir: string;
  datapath: EndpointDatapath;
  identities: EndpointIdentities;
  /** Labels of a namespace, when the cluster source knows it. */
  namespaceLabels: (namespace: string) => Labels | undefined;
  endpointsMap: Reconciler<endpointsMap.Value>;
  ipcache: IpcacheTable;
  ipcacheMap: Reconciler<IpcacheEntry>;
  publisher: Reconciler<ClusterObject>;
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
  private readonly adopting = new Set<string>();
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
    return await this.locked(containerID, async () => {
      this.checkOpen();
      for (const r of this.records.values()) {
        if (r.containerID !== containerID && r.ip === spec.ip)
          throw new ApiError('conflict', `endpoint ${containerID}: IP ${spec.ip} belongs to endpoint ${r.containerID} (${r.namespace}/${r.podName}) on this node`);
      }
      const prev = this.records.get(containerID);
      const unchanged = prev !== undefined && sameSpec(prev, spec);
      const rec: EndpointRecord = {
        version: RECORD_VERSION,
        containerID,
        namespace: spec.namespace,
        podName: spec.podName,
        ip: spec.ip,
        hostIfName: spec.hostIfName,
        podMac: spec.podMac,
        labels: { ...spec.labels },
        serviceAccount: spec.serviceAccount ?? 'default',
        endpointID: prev?.endpointID ?? this.nextEndpointID(),
        uid: prev?.uid ?? randomUUID(),
        identity: prev?.identity ?? null,
        createdAt: prev?.createdAt ?? new Date(this.clock.now()).toISOString(),
      };
      if (prev && (prev.ip !== rec.ip || prev.hostIfName !== rec.hostIfName)) this.unprogram(prev, { detach: prev.hostIfName !== rec.hostIfName });
      const t0 = this.clock.now();
      const ms: Record<string, number> = {};
      const lap = (what: string): void => {
        ms[what] = this.clock.now() - t0;
      };
      await this.persist(rec);
      lap('persisted');
      this.records.set(containerID, rec);

      let live: Live;
      try {
        live = await this.o.datapath.attach(rec.hostIfName);
        lap('attached');
      } catch (err) {
        if (!prev) await this.forget(containerID);
        throw err;
      }
      this.live.set(containerID, live);
      try {
        await this.ensureIdentity(rec);
        lap('identity');
      } catch (err) {
        if (!prev) {
          this.o.datapath.detach(rec.hostIfName);
          await this.forget(containerID);
        }
        throw new ApiError('unavailable', `endpoint ${containerID}: no identity for its labels: ${(err as Error).message}`);
      }
      this.program(rec);
      await this.waitProgrammed(rec);
      lap('programmed');
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

  /** Counts for status. */
  status(): { endpoints: number; ready: number; restoring: number; waitingForIdentity: number; identities: number } {
    const infos = this.list();
    return {
      endpoints: infos.length,
      ready: infos.filter((i) => i.state === 'ready').length,
      restoring: infos.filter((i) => i.state === 'restoring').length,
      waitingForIdentity: infos.filter((i) => i.state === 'waiting-for-identity').length,
      identities: new Set(infos.map((i) => i.identity).filter((x) => x !== null)).size,
    };
  }

  // ---- restart

  /**
   * Reads the persisted records: adopts those whose device exists (program
   * re-attached atomically, desired state from the persisted identity) and
   * drops the others. Identity references are re-taken in the background.
   */
  async recover(): Promise<{ adopted: string[]; dropped: string[] }> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const adopted: string[] = [];
    const dropped: string[] = [];
    for (const f of (await readdir(this.dir)).sort()) {
      if (!f.endsWith('.json')) {
        if (f.endsWith('.tmp')) await unlink(join(this.dir, f)).catch(() => undefined);
        continue;
      }
      const path = join(this.dir, f);
      let rec: EndpointRecord;
      try {
        rec = recordSchema.parse(JSON.parse(await readFile(path, 'utf8')));
        if (`${rec.containerID}.json` !== f) throw new Error(`holds ${rec.containerID}`);
      } catch (err) {
        this.o.log.error({ file: path, err: (err as Error).message }, 'unreadable endpoint record; moved aside');
        await rename(path, `${path}.invalid`).catch(() => undefined);
        continue;
      }
      if (!(await this.o.datapath.deviceExists(rec.hostIfName))) {
        await unlink(path).catch(() => undefined);
        dropped.push(rec.containerID);
        this.o.log.info({ containerID: rec.containerID, device: rec.hostIfName, ip: rec.ip }, 'endpoint dropped: its device is gone');
        continue;
      }
      this.records.set(rec.containerID, rec);
      try {
        this.live.set(rec.containerID, await this.o.datapath.attach(rec.hostIfName));
      } catch (err) {
        this.o.log.error({ containerID: rec.containerID, err: (err as Error).message }, 'cannot re-attach endpoint program; will retry on the next add');
      }
      if (rec.identity !== null) this.program(rec);
      adopted.push(rec.containerID);
      void this.adoptIdentity(rec.containerID);
    }
    if (adopted.length || dropped.length) this.o.log.info({ adopted: adopted.length, dropped: dropped.length }, 'endpoints restored from the state directory');
    return { adopted, dropped };
  }

  /** Re-derives identities of a namespace's endpoints (its labels changed). */
  refreshNamespace(namespace: string): void {
    for (const rec of this.records.values()) {
      if (rec.namespace !== namespace) continue;
      const held = this.held.get(rec.containerID);
      if (!held || held.labels === labelString(this.labelsOf(rec))) continue;
      void this.locked(rec.containerID, async () => {
        const cur = this.records.get(rec.containerID);
        if (!cur || this.stopping) return;
        try {
          await this.ensureIdentity(cur);
          this.program(cur);
        } catch (err) {
          this.o.log.warn({ containerID: cur.containerID, err: (err as Error).message }, 'identity refresh failed; keeping the old identity');
        }
      });
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

  /** Holds the identity of rec's current label set (allocating, releasing the old one); persists a changed number. */
  private async ensureIdentity(rec: EndpointRecord): Promise<void> {
    const labels = this.labelsOf(rec);
    const str = labelString(labels);
    const held = this.held.get(rec.containerID);
    if (held && held.labels === str) {
      if (rec.identity !== held.id) {
        rec.identity = held.id;
        await this.persist(rec);
      }
      return;
    }
    const a = await this.o.identities.allocate(labels);
    this.held.set(rec.containerID, { id: a.id, labels: str });
    if (held) this.releaseIdentity(held.id);
    if (rec.identity !== a.id) {
      if (rec.identity !== null) this.o.log.info({ containerID: rec.containerID, from: rec.identity, to: a.id }, 'endpoint identity changed');
      rec.identity = a.id;
      await this.persist(rec);
    }
  }

  /** After a restart: take the identity reference again, retrying with backoff while etcd is unreachable. */
  private async adoptIdentity(containerID: string): Promise<void> {
    if (this.adopting.has(containerID)) return;
    this.adopting.add(containerID);
    try {
      let delay = 200;
      for (;;) {
        if (this.stopping) return;
        const done = await this.locked(containerID, async () => {
          const rec = this.records.get(containerID);
          if (!rec || this.stopping) return true;
          try {
            await this.ensureIdentity(rec);
            this.program(rec);
            return true;
          } catch (err) {
            this.o.log.warn({ containerID, err: (err as Error).message, retryInMs: delay }, 'cannot take the identity reference of a restored endpoint yet');
            return false;
          }
        });
        if (done) return;
        if (!(await sleep(this.clock, delay, this.stopCtl.signal))) return;
        delay = Math.min(delay * 2, 10_000);
      }
    } finally {
      this.adopting.delete(containerID);
    }
  }

  private releaseIdentity(id: number): void {
    // Still held by another endpoint of this node with the same labels? The allocator counts references.
    this.o.identities.release(id).catch((err: unknown) => this.o.log.warn({ identity: id, err: (err as Error).message }, 'identity release failed'));
  }

  /** Writes the desired state of one endpoint (needs its identity). */
  private program(rec: EndpointRecord): void {
    const live = this.live.get(rec.containerID);
    if (rec.identity === null) return;
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

  private nextEndpointID(): number {
    const used = new Set([...this.records.values()].map((r) => r.endpointID));
    for (let id = 1; id <= 0xffff; id++) if (!used.has(id)) return id;
    throw new ApiError('unavailable', 'no free endpoint ID on this node (65535 in use)');
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
    this.records.delete(containerID);
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

function sameSpec(rec: EndpointRecord, spec: EndpointSpec): boolean {
  return (
    rec.namespace === spec.namespace &&
    rec.podName === spec.podName &&
    rec.ip === spec.ip &&
    rec.hostIfName === spec.hostIfName &&
    rec.podMac === spec.podMac &&
    rec.serviceAccount === (spec.serviceAccount ?? 'default') &&
    JSON.stringify(Object.entries(rec.labels).sort()) === JSON.stringify(Object.entries(spec.labels).sort())
  );
}

function checkContainerID(id: string): void {
  if (!CONTAINER_ID_RE.test(id)) throw new ApiError('invalid-request', `container ID ${JSON.stringify(id.slice(0, 140))} must be 1..128 characters of [A-Za-z0-9_.-], starting alphanumeric`);
}
