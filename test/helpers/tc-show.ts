// What runs on a device's tc hooks, both ways the datapath attaches: the
// tcx programs (Linux 6.6+; `tc filter show` does not list them, and
// bpftool lists them only from 7.3) and the cls_bpf filters as tc prints
// them. Tests use it where they would read `tc filter show`.
//
// As a script, run in the device's netns: prints one line per tcx program
// ("tcx ingress from_container id 42"), then tc's filter listing.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { runIn } from '../../src/lab/exec.ts';

const SELF = fileURLToPath(import.meta.url);

/** The tcx programs and cls_bpf filters on `dev` in `netns` (both hooks, or one), as text. */
export async function tcShow(netns: string, dev: string, direction?: 'ingress' | 'egress'): Promise<string> {
  const { stdout } = await runIn(netns, [process.execPath, '--import', 'tsx', SELF, dev, ...(direction ? [direction] : [])], { timeoutMs: 30_000 });
  return stdout;
}

if (process.argv[1] === SELF) {
  const { ifindexOf, tcxList } = await import('../../src/datapath/libbpf/tc.ts');
  const [dev, only] = process.argv.slice(2);
  if (!dev) throw new Error('usage: tc-show.ts DEV [ingress|egress]');
  const ifindex = ifindexOf(dev);
  const lines: string[] = [];
  for (const d of only ? [only as 'ingress' | 'egress'] : (['ingress', 'egress'] as const)) {
    for (const p of tcxList(ifindex, d)) lines.push(`tcx ${d} ${p.name} id ${p.progId}`);
    lines.push(execFileSync('tc', ['filter', 'show', 'dev', dev, d], { encoding: 'utf8' }).trimEnd());
  }
  process.stdout.write(lines.filter(Boolean).join('\n') + '\n');
}
