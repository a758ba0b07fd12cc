// `clustermesh cni` as the kubelet calls it: CNI_* environment, network config
// on stdin, result on stdout. bin/clustermesh.js runs this entry directly (no
// CLI framework: a pod start pays only for the plugin); `clustermesh cni`
// through the full CLI ends up here too.
import { runCni } from './plugin.ts';
import { commandTime } from './wire.ts';

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return '';
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Runs one CNI command and exits with its code. */
export async function main(): Promise<never> {
  // For bench/startup: CLUSTERMESH_CNI_TIMING=1 reports on stderr how long the
  // process took to get here, the command took, its agent calls took, and the
  // commands it ran (ip, nsenter) took.
  const timing = process.env.CLUSTERMESH_CNI_TIMING === '1' ? await agentTimer() : undefined;
  const startMs = performance.now();
  const out = await runCni(process.env, await readStdin());
  if (timing) process.stderr.write(`${JSON.stringify({ startMs, runMs: performance.now() - startMs, agentMs: timing.ms, commands: commandTime.count, commandsMs: commandTime.ms })}\n`);
  process.stdout.write(out.stdout);
  process.exit(out.exitCode);
}

async function agentTimer(): Promise<{ ms: number }> {
  const { AgentClient } = await import('../agent/client.ts');
  const t = { ms: 0 };
  const proto = AgentClient.prototype as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
  for (const name of ['health', 'putEndpoint', 'deleteEndpoint', 'listEndpoints'] as const) {
    const orig = proto[name]!;
    proto[name] = async function (this: unknown, ...a: unknown[]) {
      const t0 = performance.now();
      try {
        return await orig.apply(this, a);
      } finally {
        t.ms += performance.now() - t0;
      }
    };
  }
  return t;
}
