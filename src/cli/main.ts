import { Command } from 'commander';

const program = new Command();
program
  .name('clustermesh')
  .description('Multi-cluster networking for Kubernetes-style clusters, with an eBPF datapath')
  .version('0.1.0');

await program.parseAsync(process.argv);
