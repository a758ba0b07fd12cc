// `clustermesh datapath …`: program one node's datapath (reading it: inspect.ts, observe.ts).
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { nodePlanSchema } from '../agent/node-plan.js';
import { applyNodePlan } from '../agent/apply-plan.js';

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

export function datapathCommand(): Command {
  const dp = new Command('datapath')
    .description("program one node's eBPF datapath (read its maps and events with: clustermesh inspect, clustermesh observe)")
    .addHelpText('after', '\nExample:\n  clustermesh datapath apply --plan node1.yaml\n');
  dp.command('apply')
    .description("run inside a node's network namespace: create the VXLAN device, load and attach the programs, and make the maps hold exactly the plan's endpoints and routes")
    .requiredOption('--plan <file>', 'node plan (JSON or YAML): node, endpoints, routes')
    .addHelpText('after', '\nExample:\n  ip netns exec cm-c1-node1 clustermesh datapath apply --plan node1.yaml\n')
    .action(async (o: { plan: string }) => {
      const plan = readPlanFile(o.plan);
      const summary = await applyNodePlan(plan);
      console.log(JSON.stringify(summary));
    });
  // Reading a node's maps and events: `clustermesh inspect metrics|ipcache|... --pin-dir DIR`
  // and `clustermesh observe --pin-dir DIR` (src/cli/inspect.ts, observe.ts).
  return dp;
}
