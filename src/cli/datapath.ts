// `clustermesh datapath …`: program and inspect one node's datapath.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { nodePlanSchema } from '../agent/node-plan.js';
import { applyNodePlan } from '../agent/apply-plan.js';
import { BpfMap } from '../datapath/libbpf/index.js';
import { events, metrics, reasonName, type MapHandle } from '../datapath/maps/index.js';
import { formatEvent } from '../datapath/format.js';

export function readPlanFile(file: string) {
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`);
  }
  const parsed = nodePlanSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `  ${i.path.join('.') || '(root)'}: ${i.message}`).join('\n');
    throw new Error(`${file}: invalid node plan:\n${issues}`);
  }
  return parsed.data;
}

function withPinned<T>(pinDir: string, name: string, fn: (m: MapHandle & BpfMap) => T): T {
  const map = BpfMap.openPinned(join(pinDir, name));
  try {
    return fn(map);
  } finally {
    map.close();
  }
}

export function datapathCommand(): Command {
  const dp = new Command('datapath').description("program and inspect one node's eBPF datapath");
  dp.command('apply')
    .description("run inside a node's network namespace: create the VXLAN device, load and attach the programs, and make the maps hold exactly the plan's endpoints and routes")
    .requiredOption('--plan <file>', 'node plan (JSON or YAML): node, endpoints, routes')
    .action(async (o: { plan: string }) => {
      const plan = readPlanFile(o.plan);
      const summary = await applyNodePlan(plan);
      console.log(JSON.stringify(summary));
    });
  dp.command('metrics')
    .description('print the per-reason packet counters of a node (summed over CPUs)')
    .requiredOption('--pin-dir <dir>', "the node's pin directory on the clustermesh bpffs")
    .option('--json', 'print JSON')
    .action((o: { pinDir: string; json?: boolean }) => {
      const rows = withPinned(o.pinDir, metrics.MAP_NAME, (m) => metrics.read(m));
      if (o.json) {
        console.log(JSON.stringify(rows.map((r) => ({ ...r, reasonName: reasonName(r.reason), packets: Number(r.packets), bytes: Number(r.bytes) }))));
        return;
      }
      for (const r of rows) console.log(`${r.direction.padEnd(8)} ${reasonName(r.reason).padEnd(28)} ${String(r.packets).padStart(10)} pkts ${String(r.bytes).padStart(14)} bytes`);
    });
  dp.command('events')
    .description("print a node's datapath events (drops; forwards when tracing is on) as they happen")
    .requiredOption('--pin-dir <dir>', "the node's pin directory on the clustermesh bpffs")
    .option('--json', 'print one JSON object per line')
    .option('--count <n>', 'stop after n events', (v) => Number(v))
    .action(async (o: { pinDir: string; json?: boolean; count?: number }) => {
      const map = BpfMap.openPinned(join(o.pinDir, events.MAP_NAME));
      let seen = 0;
      const ac = new AbortController();
      const reader = events.openReader(map, (e) => {
        console.log(o.json ? JSON.stringify({ ...e, timestamp: String(e.timestamp) }) : formatEvent(e));
        if (o.count !== undefined && ++seen >= o.count) ac.abort();
      });
      process.once('SIGINT', () => ac.abort());
      process.once('SIGTERM', () => ac.abort());
      try {
        while (!ac.signal.aborted) {
          reader.poll(0);
          await new Promise((r) => setTimeout(r, 50));
        }
      } finally {
        reader.close();
        map.close();
      }
    });
  return dp;
}
