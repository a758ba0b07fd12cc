// The CNI plugin executable of a lab (what `lab up` puts in CNI_PATH): only
// `clustermesh cni`, without loading every other command of the CLI, so a pod
// start does not pay for modules the plugin never uses.
import { cniCommand } from '../cni/command.ts';

await cniCommand().name('clustermesh').parseAsync(process.argv);
