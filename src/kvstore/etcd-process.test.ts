// Readiness of startEtcd(), with a stand-in etcd binary (a shell script that
// logs what etcd logs when it serves), so the timing can be forced.
//
// Issue 20: `lab up --clusters 4 --nodes 2` once failed with "etcd: not ready
// after 90000 ms" although etcd's log said it served 4 s after start. start()
// measured where "this start's" log begins only after spawning etcd and awaiting
// the pid file; on a loaded machine etcd had logged "serving client traffic" by
// then, so the wait skipped the line it was waiting for.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { startEtcd } from './etcd-process.ts';

/** A fake etcd: logs the serving line at once (unless `<dir>/silent` exists), then sleeps. */
async function fakeEtcd(dir: string): Promise<string> {
  const bin = join(dir, 'fake-etcd.sh');
  await writeFile(
    bin,
    [
      '#!/bin/sh',
      `if [ ! -e ${JSON.stringify(join(dir, 'silent'))} ]; then`,
      `  echo '{"level":"info","msg":"serving client traffic securely","address":"127.0.0.1:1"}' >&2`,
      'fi',
      'exec sleep 60',
      '',
    ].join('\n'),
  );
  await chmod(bin, 0o755);
  return bin;
}

/** Keeps the event loop busy 100 ms of every turn (a loaded machine, as seen from node). */
function starveEventLoop(): () => void {
  const t = setInterval(() => {
    const until = performance.now() + 100;
    while (performance.now() < until) {
      /* busy */
    }
  }, 1);
  return () => clearInterval(t);
}

test('etcd that serves before start() looks at its log is seen as ready', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cmt-etcd-ready-'));
  const binary = await fakeEtcd(dir);
  let stopStarving = starveEventLoop();
  try {
    const server = await startEtcd({ dir: join(dir, 'etcd'), binary, auth: false, startTimeoutMs: 3000 });
    stopStarving();
    try {
      assert.equal(server.running, true);
      // Positive control for the offset: a restart that never logs "serving" is not
      // taken for ready on the strength of the first run's line (same log file).
      await server.stop();
      await writeFile(join(dir, 'silent'), '');
      stopStarving = starveEventLoop();
      await assert.rejects(server.start(), /etcd: not ready after 3000 ms/);
    } finally {
      stopStarving();
      await server.stop();
    }
  } finally {
    stopStarving();
    await rm(dir, { recursive: true, force: true });
  }
});
