// ManagedProcess with beforeRun (src/util/held-start.ts): the program runs
// only after beforeRun returned, with the pid beforeRun saw; a starter that
// dies inside beforeRun (the killed `lab up` between a spawn and its state
// save) leaves nothing running and the program never ran.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ManagedProcess, childEnv } from './process.ts';
import { HELD_NOT_RELEASED_EXIT } from '../util/held-start.ts';
import { processStartTime, sameProcessAlive } from './state.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe('ManagedProcess beforeRun: held until recorded', () => {
  test('the program runs after beforeRun, as the pid beforeRun got, stdin /dev/null, extra fds passed on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cmt-held-'));
    const marker = join(dir, 'ran');
    const extra = openSync(join(dir, 'fd3'), 'w');
    let seen: { pid: number; ranBefore: boolean; startTime: string | undefined } | undefined;
    const p = new ManagedProcess({
      name: 'held',
      logFile: join(dir, 'log'),
      // $$ of this sh is the pid: the hold and the program share it (exec).
      argv: ['sh', '-c', `echo $$ > ${marker}; readlink /proc/self/fd/0 >> ${marker}; echo via-fd3 >&3; exec sleep 30`],
      detached: true,
      extraFds: [extra],
      beforeRun: async (pid) => {
        await sleep(300); // the program would have run by now were it not held
        seen = { pid, ranBefore: existsSync(marker), startTime: processStartTime(pid) };
      },
    });
    try {
      await p.start();
      closeSync(extra);
      assert.ok(seen, 'beforeRun was called');
      assert.equal(seen.ranBefore, false, 'nothing ran before beforeRun returned');
      await until('the program to run', () => existsSync(marker) && readFileSync(marker, 'utf8').split('\n').length >= 3);
      const [pid, stdin] = readFileSync(marker, 'utf8').trim().split('\n');
      assert.equal(Number(pid), seen.pid, 'the program has the pid beforeRun recorded');
      assert.equal(p.pid, seen.pid);
      assert.equal(stdin, '/dev/null');
      assert.ok(sameProcessAlive({ pid: seen.pid, startTime: seen.startTime }), 'the start time recorded while held is the program\'s');
      await until('fd 3 to be written', () => readFileSync(join(dir, 'fd3'), 'utf8') === 'via-fd3\n');
    } finally {
      await p.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('beforeRun that throws: start() rejects with its error, the program never ran, the child is gone', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cmt-held-'));
    const marker = join(dir, 'ran');
    let pid: number | undefined;
    const p = new ManagedProcess({
      name: 'held',
      logFile: join(dir, 'log'),
      argv: ['sh', '-c', `touch ${marker}; exec sleep 30`],
      detached: true,
      beforeRun: (x) => {
        pid = x;
        throw new Error('state not writable');
      },
    });
    try {
      await assert.rejects(p.start(), /state not writable/);
      assert.equal(p.running, false);
      assert.ok(pid !== undefined && !sameProcessAlive({ pid }));
      await sleep(200);
      assert.equal(existsSync(marker), false, 'the program never ran');
    } finally {
      await p.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a starter SIGKILLed inside beforeRun (up killed before its state save): the program never runs, nothing is left', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cmt-held-'));
    const marker = join(dir, 'ran');
    const pidFile = join(dir, 'held.pid');
    const starter = join(dir, 'starter.mts');
    // A detached child (it would outlive its starter, like the lab's agents) whose starter dies before recording it.
    writeFileSync(
      starter,
      `import { ManagedProcess } from ${JSON.stringify(resolve(import.meta.dirname, 'process.ts'))};
import { writeFileSync } from 'node:fs';
const p = new ManagedProcess({
  name: 'orphan-to-be',
  logFile: ${JSON.stringify(join(dir, 'log'))},
  argv: ['sh', '-c', 'touch ${marker}; exec sleep 60'],
  detached: true,
  beforeRun: (pid) => {
    writeFileSync(${JSON.stringify(pidFile)}, String(pid));
    process.kill(process.pid, 'SIGKILL');
  },
});
await p.start();
`,
    );
    let held: number | undefined;
    try {
      const child = spawn(process.execPath, ['--import', 'tsx', starter], { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe'], cwd: resolve(import.meta.dirname, '..', '..') });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const signal = await new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_c, s) => r(s)));
      assert.equal(signal, 'SIGKILL', `the starter was killed in beforeRun: ${stderr}`);
      held = Number(readFileSync(pidFile, 'utf8'));
      const h = held;
      await until(`the held child ${h} to exit`, () => !sameProcessAlive({ pid: h }));
      await sleep(200);
      assert.equal(existsSync(marker), false, 'the program never ran');
    } finally {
      if (held !== undefined && sameProcessAlive({ pid: held })) process.kill(held, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test(`the hold without a release word exits ${HELD_NOT_RELEASED_EXIT}`, async () => {
    const { heldArgv } = await import('../util/held-start.ts');
    const [cmd, ...args] = heldArgv(['sh', '-c', 'exit 0']);
    const c = spawn(cmd!, args, { stdio: ['pipe', 'ignore', 'ignore'] });
    c.stdin.end('no\n');
    const code = await new Promise<number | null>((r) => c.once('exit', (x) => r(x)));
    assert.equal(code, HELD_NOT_RELEASED_EXIT);
  });
});
