// The clustermesh CLI. Only the command that runs is loaded: the program lists
// every command by name and summary (what --version and --help need), and the
// module of the command named on the command line defines it in full (its
// options, help and action) when that command runs or shows its help.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { usageExitCodes } from './common.ts';

interface Entry {
  summary: string;
  load: () => Promise<Command>;
  /** Operator commands: usage errors exit 2 (common.ts). */
  usageExit?: boolean;
}

export const COMMANDS: Record<string, Entry> = {
  demo: { summary: "the seed's story on a two-cluster lab: global service, cross-cluster policy, failover", load: async () => (await import('./demo.ts')).demoCommand() },
  lab: { summary: 'a whole mesh of clusters, nodes and pods on this machine (test bed)', load: async () => (await import('./lab.ts')).labCommand() },
  datapath: { summary: "program one node's eBPF datapath", load: async () => (await import('./datapath.ts')).datapathCommand() },
  apiserver: { summary: "export this cluster's nodes, identities, endpoint IPs and global services into its mesh kvstore", load: async () => (await import('../apiserver/command.ts')).apiserverCommand() },
  agent: { summary: "run the node agent in the node's network namespace", load: async () => (await import('../agent/command.ts')).agentCommand() },
  cni: { summary: 'the CNI plugin (spec 1.0.0): ADD, DEL, CHECK, VERSION', load: async () => (await import('../cni/command.ts')).cniCommand() },
  status: { summary: 'is every cluster, agent and remote cluster connected and ready', load: async () => (await import('./status.ts')).statusCommand(), usageExit: true },
  inspect: { summary: "a node's eBPF maps, decoded", load: async () => (await import('./inspect.ts')).inspectCommand(), usageExit: true },
  observe: { summary: 'flows (drops and forwards) kept by the agents of every node, merged by time', load: async () => (await import('./observe.ts')).observeCommand(), usageExit: true },
  ui: { summary: 'a live web view of the mesh: clusters, nodes, pods, services, flows between workloads, drops, remote connections', load: async () => (await import('./ui.ts')).uiCommand(), usageExit: true },
  troubleshoot: { summary: 'check each remote-cluster connection step by step and name the fix', load: async () => (await import('./troubleshoot.ts')).troubleshootCommand(), usageExit: true },
  install: { summary: 'install clustermesh on a Kubernetes cluster (by kube context)', load: async () => (await import('../install/command.ts')).installCommand(), usageExit: true },
  uninstall: { summary: 'remove what install put on a Kubernetes cluster', load: async () => (await import('../install/command.ts')).uninstallCommand(), usageExit: true },
  enable: { summary: "make a cluster connectable: an install's Service by kube context, or a client certificate and access bundle", load: async () => (await import('./clustermesh-config.ts')).enableCommand(), usageExit: true },
  disable: { summary: "stop exposing an installed cluster's etcd to other clusters (by kube context)", load: async () => (await import('./clustermesh-config.ts')).disableCommand(), usageExit: true },
  connect: { summary: 'connect clusters (a lab, remote-cluster dirs, or installs by kube context)', load: async () => (await import('./clustermesh-config.ts')).connectCommand(), usageExit: true },
  disconnect: { summary: 'disconnect clusters (the same three ways)', load: async () => (await import('./clustermesh-config.ts')).disconnectCommand(), usageExit: true },
};

/** The package's version (bin/clustermesh.js answers a bare --version from the same field without loading this module). */
function packageVersion(): string {
  // src/cli/ and dist/js/ are both two levels below the repository root.
  return (JSON.parse(readFileSync(join(import.meta.dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
}

/** Runs the CLI on `argv` (process.argv: node, script, args). */
export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program
    .name('clustermesh')
    .description('Multi-cluster networking for Kubernetes-style clusters, with an eBPF datapath')
    .version(packageVersion())
    .showHelpAfterError()
    .addHelpText('after', '\nRun clustermesh <command> --help for its options and examples.');
  // `clustermesh status …` and `clustermesh help status` load status; other commands stay a name and a summary.
  const args = argv.slice(2);
  const wanted = args[0] === 'help' ? args[1] : args[0];
  for (const [name, e] of Object.entries(COMMANDS)) {
    if (name === wanted) {
      const cmd = await e.load();
      program.addCommand(e.usageExit ? usageExitCodes(cmd) : cmd);
    } else {
      program.command(name).summary(e.summary);
    }
  }
  await program.parseAsync(argv);
}
