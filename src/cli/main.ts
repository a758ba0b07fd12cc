import { Command } from 'commander';
import { labCommand } from './lab.js';
import { datapathCommand } from './datapath.js';
import { demoCommand } from './demo.js';
import { apiserverCommand } from '../apiserver/command.js';
import { agentCommand } from '../agent/command.js';
import { cniCommand } from '../cni/command.js';
import { statusCommand } from './status.js';
import { inspectCommand } from './inspect.js';
import { observeCommand } from './observe.js';
import { troubleshootCommand } from './troubleshoot.js';
import { connectCommand, disconnectCommand, enableCommand } from './clustermesh-config.js';
import { usageExitCodes } from './common.js';

const program = new Command();
program
  .name('clustermesh')
  .description('Multi-cluster networking for Kubernetes-style clusters, with an eBPF datapath')
  .version('0.1.0')
  .showHelpAfterError();

program.addCommand(demoCommand());
program.addCommand(labCommand());
program.addCommand(datapathCommand());
program.addCommand(apiserverCommand());
program.addCommand(agentCommand());
program.addCommand(cniCommand());
for (const cmd of [statusCommand(), inspectCommand(), observeCommand(), troubleshootCommand(), enableCommand(), connectCommand(), disconnectCommand()]) {
  program.addCommand(usageExitCodes(cmd));
}

await program.parseAsync(process.argv);
