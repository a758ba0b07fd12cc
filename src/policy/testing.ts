// Test fixtures of the policy layer. Used by *.test.ts only.
import type { PolicyMapEntry } from './types.ts';

/** A policy map entry: endpoint 1, ingress, allow any identity, protocol and port, but for what p sets. */
export const policyEntry = (p: Partial<PolicyMapEntry>): PolicyMapEntry => ({
  endpointId: 1,
  direction: 'ingress',
  remoteIdentity: 0,
  protocol: 0,
  port: 0,
  portEnd: 65535,
  verdict: 'allow',
  ...p,
});
