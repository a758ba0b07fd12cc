// `clustermesh cni`: runs the CNI plugin executable (cni/build/clustermesh-cni,
// what a kubelet calls) with the CNI_* environment and the network config on
// stdin. Only the flags and help are here; main.ts loads when the command runs.
import { Command } from 'commander';

export function cniCommand(): Command {
  return new Command('cni')
    .description('CNI plugin (spec 1.0.0): ADD, DEL, CHECK and VERSION of a pod network, driven by CNI_* environment variables and the network config on stdin; runs cni/build/clustermesh-cni, which hands the request to the agent at agentSocket')
    .addHelpText(
      'after',
      `
Example:
  echo '{"cniVersion":"1.0.0","name":"clustermesh","type":"clustermesh","agentSocket":"/var/run/clustermesh/agent.sock","ipam":{"podCIDR":"10.101.1.0/24"}}' |
    CNI_COMMAND=ADD CNI_CONTAINERID=c0ffee CNI_NETNS=/var/run/netns/pod1 CNI_IFNAME=eth0 \\
    CNI_ARGS='K8S_POD_NAMESPACE=default;K8S_POD_NAME=web' clustermesh cni

The result (or a CNI error {cniVersion, code, msg, details} with a non-zero exit) is printed on stdout.
Error codes: 1 incompatible version, 4 invalid environment, 6 stdin not JSON, 7 invalid network config,
11 try again later (agent unreachable or not ready), 999 other.
A kubelet runs the executable itself (cni/build/clustermesh-cni, built by scripts/setup.sh; no Node.js):
put it in CNI_PATH under the config's type, "clustermesh".`,
    )
    .action(async () => {
      await (await import('./main.ts')).main();
    });
}
