// A record of every topology this machine has up, so what a crashed process
// built (a test killed mid-run, a demo interrupted with SIGKILL) can still be
// removed exactly: one small JSON file per topology with the creator's pid and
// the namespaces it made, under /run (gone after a reboot, like namespaces).
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const REGISTRY_DIR = '/run/clustermesh/topologies';

export interface TopologyRecord {
  name: string;
  pid: number;
  namespaces: string[];
}

export function recordTopology(rec: TopologyRecord, dir = REGISTRY_DIR): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${rec.name}.json`), JSON.stringify(rec));
}

export function forgetTopology(name: string, dir = REGISTRY_DIR): void {
  rmSync(join(dir, `${name}.json`), { force: true });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Records whose creating process is gone: what a crash left behind. */
export function orphanedTopologies(dir = REGISTRY_DIR): TopologyRecord[] {
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
  const out: TopologyRecord[] = [];
  for (const f of files) {
    try {
      const rec = JSON.parse(readFileSync(join(dir, f), 'utf8')) as TopologyRecord;
      if (!alive(rec.pid)) out.push(rec);
    } catch {
      // a torn write of a crashed process: nothing to recover from it
      rmSync(join(dir, f), { force: true });
    }
  }
  return out;
}
