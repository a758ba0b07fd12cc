// Starting a process that outlives its starter (detached: the lab's etcds,
// agents, kubelets, pods) so that it is never running unrecorded. Its pid is
// only known after the spawn, and the starter may die (SIGKILL) between the
// spawn and writing the pid down; the program would then run with nobody
// knowing it (`lab down` cannot stop what it cannot find: it keeps writing
// pins and logs into what down removed).
//
// So the child starts held: a shell that waits for one line on its stdin, a
// pipe from the starter. The starter records the pid, then says 'run' and the
// shell execs the program (same pid, same start time). If the starter dies
// before that, the pipe ends without the word and the shell exits without
// running anything.
import type { ChildProcess } from 'node:child_process';

/** How a held child ends when its starter never released it. */
export const HELD_NOT_RELEASED_EXIT = 125;

const HOLD_SCRIPT = `read -r word && [ "$word" = run ] && exec "$@" </dev/null; exit ${HELD_NOT_RELEASED_EXIT}`;

/** argv that runs `argv` only once released; spawn it with stdin 'pipe' (the program's own stdin is /dev/null). */
export function heldArgv(argv: readonly string[]): string[] {
  return ['sh', '-c', HOLD_SCRIPT, 'clustermesh-held', ...argv];
}

/**
 * Runs `record(pid)` while the child is held, then releases it. When record
 * throws, the child is killed before it ran anything and the error is rethrown.
 */
export async function recordThenRelease(child: ChildProcess, record: (pid: number) => void | Promise<void>): Promise<void> {
  const stdin = child.stdin;
  if (!stdin) throw new Error('held child without a stdin pipe');
  stdin.on('error', () => undefined); // it died meanwhile: its exit tells the caller
  try {
    await record(child.pid!);
  } catch (err) {
    child.kill('SIGKILL');
    stdin.destroy();
    throw err;
  }
  stdin.end('run\n');
}
