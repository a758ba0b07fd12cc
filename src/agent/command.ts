// The `clustermesh agent` subcommand: read and check the config, run until
// SIGTERM/SIGINT, then stop with programs attached (traffic keeps flowing).
import { Command } from 'commander';
import { startAgent } from './agent.ts';
import { AgentConfigError, LOG_LEVELS, loadAgentConfig, type AgentFlagOverrides } from './config.ts';
import { untilSignal } from '../cli/signals.ts';

export function agentCommand(): Command {
  return new Command('agent')
    .description("run the node agent inside the node's network namespace: program its eBPF datapath from the cluster and the mesh")
    .requiredOption('--config <file>', 'agent config (YAML): cluster, node, etcd, remote-cluster config dir, state and pin directories')
    .option('--cluster-name <name>', 'override clusterName')
    .option('--cluster-id <id>', 'override clusterID')
    .option('--max-connected-clusters <n>', 'override maxConnectedClusters (255 or 511)')
    .option('--node-name <name>', 'override nodeName')
    .option('--node-ip <ip>', "override nodeIP (the underlay address; absent with no underlayDevice: the Node's InternalIP from the Kubernetes API)")
    .option('--underlay-device <dev>', 'take the node IP from this device (instead of --node-ip)')
    .option('--pod-cidr <cidr>', "override podCIDR (absent: the Node's spec.podCIDRs from the Kubernetes API, waited for up to nodeWaitTimeoutSeconds)")
    .option('--tunnel-port <port>', 'override tunnelPort (VXLAN UDP port)')
    .option('--vxlan-device <name>', 'override vxlanDevice')
    .option('--clustermesh-config-dir <dir>', 'override clustermeshConfigDir (one file per remote cluster)')
    .option('--state-dir <dir>', 'override stateDir (agent.sock, persisted endpoints)')
    .option('--pin-dir <dir>', "override pinDir (the node's pin directory on the clustermesh bpffs)")
    .option('--sync-timeout-seconds <n>', 'override syncTimeoutSeconds')
    .option('--full-sync-interval-seconds <n>', 'override fullSyncIntervalSeconds')
    .option('--status-pod <namespace/name>', "override statusPod (the agent's own Pod: its status summary goes into that Pod's annotation clustermesh.io/agent-status)")
    .option('--log-level <level>', `override logLevel (${LOG_LEVELS.join(', ')})`)
    .addHelpText(
      'after',
      '\nExample:\n  ip netns exec node1 clustermesh agent --config /etc/clustermesh/agent.yaml --log-level debug\n',
    )
    .action(async (raw: AgentFlagOverrides & { config: string }, cmd: Command) => {
      const { config: file, ...flags } = raw;
      let agent;
      try {
        const cfg = await loadAgentConfig(file, flags);
        agent = await startAgent(cfg);
      } catch (err) {
        if (err instanceof AgentConfigError) cmd.error(`error: ${err.message}`, { exitCode: 2 });
        cmd.error(`error: agent failed to start: ${(err as Error).message}`, { exitCode: 1 });
      }
      await untilSignal();
      await agent.stop();
      // grpc keep-alives and fs watchers must not hold the process
      process.exit(0);
    });
}
