// The long-running processes `lab up` starts besides agents and apiservers:
// `clustermesh lab kube-api-endpoint|kubelet|kube-apiserver` and the cluster
// DNS pods' `clustermesh lab workload dns`. bin/clustermesh.js calls main()
// directly, so each loads its own module and what it imports, not the whole
// `lab` command (src/cli/lab.ts imports lab up/down, the mesh, the Kubernetes
// client's every API: ~1 s of CPU and ~100 MB before it does anything; a 4 x 2
// lab starts 12 endpoints, 8 kubelets, 4 API servers and 4 DNS pods).
// src/cli/lab.ts defines the same commands for --help and runs the same
// functions; anything this does not take exactly (help, unknown flags) returns
// false and the full CLI explains.
import { parseArgs } from 'node:util';

type Flags = Record<string, { type: 'string' }>;

/** The flags of `args` when they are exactly `required` plus any of `optional`, each once; else undefined. */
function flags(args: string[], required: string[], optional: string[] = []): Record<string, string> | undefined {
  const options: Flags = {};
  for (const f of [...required, ...optional]) options[f] = { type: 'string' };
  let values: Record<string, string | undefined>;
  try {
    const parsed = parseArgs({ args, options, strict: true, allowPositionals: false, tokens: true });
    // Given twice: commander keeps the last, parseArgs too; leave that (and its message) to the full CLI.
    const names = parsed.tokens.filter((t) => t.kind === 'option').map((t) => (t as { name: string }).name);
    if (new Set(names).size !== names.length) return undefined;
    values = parsed.values as Record<string, string | undefined>;
  } catch {
    return undefined;
  }
  if (required.some((f) => values[f] === undefined)) return undefined;
  return values as Record<string, string>;
}

/** argv: what follows `clustermesh lab`. True when it ran the command. */
export async function main(argv: string[]): Promise<boolean> {
  const [which, ...args] = argv;
  if (which === 'kube-api-endpoint') {
    const o = flags(args, ['socket'], ['listen', 'ready-file']);
    if (!o) return false;
    await (await import('./kube-api-endpoint.ts')).runKubeApiEndpoint({
      socket: o.socket!,
      ...(o.listen !== undefined ? { listen: o.listen } : {}),
      ...(o['ready-file'] !== undefined ? { readyFile: o['ready-file'] } : {}),
    });
    return true;
  }
  if (which === 'kubelet' || which === 'kube-apiserver') {
    const o = flags(args, ['config']);
    if (!o) return false;
    if (which === 'kubelet') await (await import('./kubelet.ts')).runKubelet(o.config!);
    else await (await import('./kube-apiserver.ts')).runKubeApiServer(o.config!);
    return true;
  }
  if (which === 'workload' && args[0] === 'dns' && !args.some((a) => a === '-h' || a === '--help')) {
    // The same commander command as `clustermesh lab workload dns` (its parsers and messages), without the rest of `lab`.
    const { Command } = await import('commander');
    const { dnsWorkloadCommand } = await import('../cli/lab-dns.ts');
    const program = new Command('clustermesh lab workload').showHelpAfterError();
    program.addCommand(dnsWorkloadCommand());
    await program.parseAsync(args, { from: 'user' });
    return true;
  }
  return false;
}
