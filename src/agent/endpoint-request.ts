// The body of PUT /v1/endpoints/<containerID> (types.ts), as the agent
// validates it. Apart from types.ts so that the API's client (the CNI plugin)
// does not load zod.
import { z } from 'zod';
import { dns1123Label, dns1123Subdomain, labelsSchema } from '../model/index.ts';
import { IPV4_RE } from '../model/names.ts';

const ipv4 = z.string().regex(IPV4_RE, 'must be an IPv4 address');

export const endpointRequestSchema = z.object({
  namespace: dns1123Label,
  podName: dns1123Subdomain,
  ip: ipv4,
  /** The pod's host-side veth in the node's network namespace. */
  hostIfName: z
    .string()
    .min(1)
    .max(15, 'at most 15 characters (a Linux device name)')
    .regex(/^[A-Za-z0-9_.:-]+$/, 'must be a device name'),
  /** MAC of the pod's own interface (eth0 in the pod). */
  podMac: z
    .string()
    .regex(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/, 'must be a MAC address aa:bb:cc:dd:ee:ff')
    .transform((s) => s.toLowerCase()),
  labels: labelsSchema.default({}),
  serviceAccount: dns1123Subdomain.optional(),
});

/** What a caller sends. */
export type EndpointRequest = z.input<typeof endpointRequestSchema>;
/** The request after validation (defaults filled, MAC lowercased). */
export type EndpointSpec = z.output<typeof endpointRequestSchema>;

