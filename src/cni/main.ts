// `clustermesh cni` as the kubelet calls it: CNI_* environment, network config
// on stdin, result on stdout. bin/clustermesh.js runs this entry directly (no
// CLI framework: a pod start pays only for the plugin); `clustermesh cni`
// through the full CLI ends up here too.
import { runCni } from './plugin.ts';

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return '';
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Runs one CNI command and exits with its code. */
export async function main(): Promise<never> {
  const out = await runCni(process.env, await readStdin());
  process.stdout.write(out.stdout);
  process.exit(out.exitCode);
}
