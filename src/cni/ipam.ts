// A host-local allocator over the node's pod CIDR. State is one JSON file per
// network in a per-node directory; every read-modify-write happens under an
// exclusive-create lockfile (`lock`, holding the owner's pid so a lock left by
// a killed plugin is recognised and taken over).
import { mkdirSync, openSync, closeSync, readFileSync, renameSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { cidrRange, intToIp, ipToInt } from './config.ts';
import { CniCode, CniError } from './errors.ts';

export interface Allocation {
  containerID: string;
  ifName: string;
}

interface State {
  version: 1;
  /** The last address handed out (the next search starts after it, so addresses are not reused at once). */
  last: string | null;
  allocations: Record<string, Allocation>;
}

export interface IpamRange {
  podCIDR: string;
  gateway: string;
  rangeStart: string;
  rangeEnd: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class HostLocalIpam {
  readonly stateFile: string;
  readonly lockFile: string;

  constructor(
    readonly dataDir: string,
    readonly range: IpamRange,
    private readonly lockTimeoutMs = 10_000,
  ) {
    this.stateFile = join(dataDir, 'allocations.json');
    this.lockFile = join(dataDir, 'lock');
  }

  /** Runs fn holding the lock; CniError 11 when the lock stays held by a live process. */
  async withLock<T>(fn: (state: State) => T | Promise<T>): Promise<T> {
    mkdirSync(this.dataDir, { recursive: true, mode: 0o700 });
    const deadline = Date.now() + this.lockTimeoutMs;
    for (;;) {
      let fd: number;
      try {
        fd = openSync(this.lockFile, 'wx', 0o600);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        let owner = NaN;
        try {
          owner = Number(readFileSync(this.lockFile, 'utf8').trim());
        } catch {
          continue; // released between open and read
        }
        if (Number.isInteger(owner) && owner > 0 && !alive(owner)) {
          try {
            unlinkSync(this.lockFile); // its owner died holding it
          } catch {
            /* someone else took it over */
          }
          continue;
        }
        if (Date.now() > deadline) throw new CniError(CniCode.TryAgainLater, `IPAM lock ${this.lockFile} is held by pid ${owner}; try again later`);
        await sleep(10 + Math.random() * 20);
        continue;
      }
      try {
        writeSync(fd, String(process.pid));
      } finally {
        closeSync(fd);
      }
      try {
        const state = this.read();
        const out = await fn(state);
        this.write(state);
        return out;
      } finally {
        try {
          unlinkSync(this.lockFile);
        } catch {
          /* already gone */
        }
      }
    }
  }

  private read(): State {
    let text: string;
    try {
      text = readFileSync(this.stateFile, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, last: null, allocations: {} };
      throw err;
    }
    const s = JSON.parse(text) as State;
    if (s.version !== 1 || typeof s.allocations !== 'object') throw new Error(`IPAM state ${this.stateFile} has an unknown format`);
    return s;
  }

  private write(state: State): void {
    const tmp = `${this.stateFile}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(state, null, 1) + '\n', { mode: 0o600 });
    renameSync(tmp, this.stateFile);
  }

  /** The address held by a container's interface, if any (no lock: a read of a file replaced atomically). */
  lookup(containerID: string, ifName: string): string | undefined {
    const s = this.read();
    return Object.entries(s.allocations).find(([, a]) => a.containerID === containerID && a.ifName === ifName)?.[0];
  }

  /**
   * The container's address: the one it already holds, else `requested` when
   * free, else the next free one of the range. `fresh` says whether this call
   * took it (so a failed ADD knows to give it back).
   */
  async allocate(containerID: string, ifName: string, requested?: string): Promise<{ ip: string; fresh: boolean }> {
    return await this.withLock((s) => {
      const held = Object.entries(s.allocations).find(([, a]) => a.containerID === containerID && a.ifName === ifName)?.[0];
      if (held !== undefined) {
        if (requested !== undefined && requested !== held)
          throw new CniError(CniCode.Generic, `container ${containerID} already holds ${held}, not the requested ${requested}`);
        return { ip: held, fresh: false };
      }
      if (requested !== undefined) {
        const owner = s.allocations[requested];
        if (owner) throw new CniError(CniCode.Generic, `requested address ${requested} is already allocated to container ${owner.containerID}`);
        s.allocations[requested] = { containerID, ifName };
        return { ip: requested, fresh: true };
      }
      const [net, bcast] = cidrRange(this.range.podCIDR);
      const lo = Math.max(ipToInt(this.range.rangeStart), net + 1);
      const hi = Math.min(ipToInt(this.range.rangeEnd), bcast - 1);
      const gw = ipToInt(this.range.gateway);
      const size = hi - lo + 1;
      const last = s.last !== null ? ipToInt(s.last) : hi;
      for (let i = 1; i <= size; i++) {
        const n = lo + ((((last - lo + i) % size) + size) % size);
        const ip = intToIp(n);
        if (n === gw || s.allocations[ip]) continue;
        s.allocations[ip] = { containerID, ifName };
        s.last = ip;
        return { ip, fresh: true };
      }
      throw new CniError(CniCode.Generic, `no free address in ${this.range.rangeStart}-${this.range.rangeEnd} of ${this.range.podCIDR}`);
    });
  }

  /** Gives back the container's address; the address released, or undefined when it held none. */
  async release(containerID: string, ifName: string): Promise<string | undefined> {
    return await this.withLock((s) => {
      const held = Object.entries(s.allocations).filter(([, a]) => a.containerID === containerID && a.ifName === ifName);
      for (const [ip] of held) delete s.allocations[ip];
      return held[0]?.[0];
    });
  }

  /** Every allocation (for tests and CHECK). */
  list(): Record<string, Allocation> {
    return { ...this.read().allocations };
  }
}
