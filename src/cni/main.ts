// `clustermesh cni`: runs the CNI plugin executable (cni/clustermesh-cni.c,
// built by scripts/setup.sh into cni/build/) with this process's environment
// and stdin, and exits with its status. The plugin itself is that C program,
// which forwards the request to the node's agent (the work runs there:
// src/cni/plugin.ts); this entry is for people and scripts that have the CLI
// on their PATH. bin/clustermesh.js runs it without the CLI framework.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The plugin executable (src/cni/ and dist/js/ are both two levels below the root). */
export const CNI_PLUGIN_PATH = fileURLToPath(new URL('../../cni/build/clustermesh-cni', import.meta.url));

/** Runs one CNI command through the plugin executable and exits with its code. */
export async function main(): Promise<never> {
  if (!existsSync(CNI_PLUGIN_PATH)) {
    process.stdout.write(JSON.stringify({ cniVersion: '1.0.0', code: 999, msg: `the CNI plugin executable ${CNI_PLUGIN_PATH} is not built; run ./scripts/setup.sh` }, null, 1) + '\n');
    process.exit(1);
  }
  const r = spawnSync(CNI_PLUGIN_PATH, [], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
