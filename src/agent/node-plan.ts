// What one node's datapath must hold, as data: the endpoints on this node and
// the routes to every other pod, node and cluster. For now the lab computes it
// from its topology; the control plane (agent reconcilers) will compute the
// same shape from the cluster source and the remote-cluster import.
import { z } from 'zod';
import { DEFAULT_TUNNEL_ENCAP, NATIVE_CIDRS_MAX, ROUTING_MODES, TUNNEL_ENCAPS, type RoutingMode, type TunnelEncap } from '../datapath/maps/config.ts';

const ipv4 = z.string().regex(/^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/, 'must be an IPv4 address');
const mac = z.string().regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i, 'must be a MAC address aa:bb:cc:dd:ee:ff');
const identity = z.number().int().min(1).max(0xffffff);

export const nodePlanSchema = z.object({
  nodeName: z.string().min(1),
  clusterID: z.number().int().min(0).max(511),
  nodeIP: ipv4,
  /** Pin directory of this node's maps, on the project's bpffs. */
  pinDir: z.string().startsWith('/'),
  vxlanDevice: z.string().min(1).max(15).default('cm_vxlan'),
  tunnelPort: z.number().int().min(1).max(65535).default(8472),
  redirectPeer: z.boolean().default(true),
  /** Directory of lxc.bpf.o and overlay.bpf.o (default bpf/build); another is for measurement variants (bpf/lib/variant.h). */
  objectsDir: z.string().min(1).optional(),
  /** Also emit an event for every forwarded packet (drops always emit one). */
  traceForwards: z.boolean().default(false),
  /** cgroup v2 directory of the node's pods: socket-level load balancing there (absent: off). */
  socketLBCgroup: z.string().startsWith('/').optional(),
  /** tunnel (default) or native: destinations inside nativeRoutingCIDRs unencapsulated (bpf/lib/native.h). */
  routingMode: z.enum(ROUTING_MODES as [RoutingMode, ...RoutingMode[]]).default('tunnel'),
  nativeRoutingCIDRs: z.array(z.string().regex(/^\d+\.\d+\.\d+\.\d+\/\d{1,2}$/, 'must be an IPv4 prefix a.b.c.d/len')).max(NATIVE_CIDRS_MAX).default([]),
  /** bpf (default: the programs encapsulate, bpf/lib/encap.h) or device (the VXLAN device does). */
  tunnelEncap: z.enum(TUNNEL_ENCAPS as [TunnelEncap, ...TunnelEncap[]]).default(DEFAULT_TUNNEL_ENCAP),
  /** auto (default: tcx on Linux 6.6+, else cls_bpf), tcx or cls_bpf. */
  tcAttach: z.enum(['auto', 'tcx', 'cls_bpf']).default('auto'),
  endpoints: z.array(
    z.object({
      ip: ipv4,
      identity,
      hostIfName: z.string().min(1).max(15),
      podMac: mac,
      endpointID: z.number().int().min(1).max(0xffff),
    }),
  ),
  /** ipcache entries beyond the local endpoints: remote pods (with their node as tunnel endpoint), nodes. */
  routes: z.array(
    z.object({
      prefix: z.string().regex(/^\d+\.\d+\.\d+\.\d+\/\d{1,2}$/, 'must be an IPv4 prefix a.b.c.d/len'),
      identity,
      tunnelEndpoint: ipv4.optional(),
    }),
  ),
});

export type NodePlan = z.infer<typeof nodePlanSchema>;
export type NodePlanInput = z.input<typeof nodePlanSchema>;
