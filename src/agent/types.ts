// The agent's local API as types: what the CNI plugin, the CLI and tests send
// and receive over `<stateDir>/agent.sock`. Shared by api.ts (server) and
// client.ts (client).
//
//   PUT    /v1/endpoints/<containerID>   EndpointRequest → EndpointInfo
//   DELETE /v1/endpoints/<containerID>   → EndpointDeleteResult (also for an unknown ID)
//   GET    /v1/endpoints                 → EndpointInfo[]
//   GET    /v1/status                    → AgentStatus (status.ts)
//   GET    /v1/services                  → ServiceInfo[] (services.ts): frontends, backends per cluster, affinity, active ones
//   GET    /v1/policy                    → PolicyInspect (policy.ts): per local endpoint the enforced directions and resolved entries
//   GET    /v1/flows?since=&verdict=&cluster=&namespace=&pod=&identity=&port=&protocol=&from-cluster=&to-cluster=&from-pod=&to-pod=&limit=
//                                        → Flow[] (flows.ts): the kept flows of this node's datapath events, oldest first
//   GET    /v1/flows?follow=1&...        → application/x-ndjson: the kept flows that match, then each new one, one per line
//   GET    /healthz                      → 200 { ready: true } | 503 { ready: false, phase }
//   POST   /v1/cni?CNI_COMMAND=&CNI_CONTAINERID=&CNI_NETNS=&CNI_IFNAME=&CNI_ARGS=&CNI_PATH=
//          body: the network config      → 200, body: the CNI plugin's stdout (result or CNI error JSON),
//                                          X-Cni-Exit-Code: its exit status, X-Cni-Agent-Ms: time spent
//                                          (what cni/clustermesh-cni.c, the plugin executable, relays)
// Errors: { error: <one sentence>, code: ApiErrorCode } with the HTTP status.
// No zod here (nor anything that loads it): the CNI plugin imports this file
// through client.ts and must start fast; the request schema is endpoint-request.ts.
import type { Labels } from '../model/index.ts';

export type { ServiceInfo, ServiceFrontendInfo, ServiceBackendInfo } from './services.ts';
export type { PolicyInspect, PolicyEndpointView, PolicyEntryView } from './policy.ts';

/** A container ID is used as a file name: plain characters only. */
export const CONTAINER_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** What a caller sends (validated by endpointRequestSchema, endpoint-request.ts). */
export type { EndpointRequest, EndpointSpec } from './endpoint-request.ts';

/** Where an endpoint stands. */
export type EndpointState =
  /** Identity held, datapath programmed. */
  | 'ready'
  /** Restored after a restart, its identity reference not re-taken yet (etcd unreachable); traffic flows with the persisted identity. */
  | 'restoring'
  /** No identity yet (etcd unreachable since it was added); not programmed. */
  | 'waiting-for-identity';

export interface EndpointInfo {
  containerID: string;
  namespace: string;
  podName: string;
  ip: string;
  hostIfName: string;
  podMac: string;
  labels: Labels;
  serviceAccount: string;
  /** This node's endpoint ID (1..65535), stable for the endpoint's life. */
  endpointID: number;
  /** The security identity, or null while it is not known. */
  identity: number | null;
  /** The identity's label set, `source:key=value`, sorted. */
  identityLabels: string[];
  /** ifindex of hostIfName when the program was attached, or null. */
  ifindex: number | null;
  /** MAC of hostIfName (the pod's gateway MAC), or null. */
  nodeMac: string | null;
  nodeName: string;
  state: EndpointState;
  /** The Endpoint object is in the cluster's store (so the apiserver exports it). */
  published: boolean;
  createdAt: string;
}

export interface EndpointDeleteResult {
  containerID: string;
  /** False when the agent had no such endpoint (DELETE is idempotent). */
  deleted: boolean;
}

export interface HealthBody {
  ready: boolean;
  phase: string;
}

export type ApiErrorCode =
  | 'invalid-request' // 400: the body or the container ID is malformed
  | 'forbidden' // 403: the remote API: a write, or a client certificate not admitted
  | 'not-found' // 404: no such route
  | 'method-not-allowed' // 405
  | 'too-large' // 413: the request body is larger than the API reads
  | 'conflict' // 409: the IP or the device belongs to another endpoint
  | 'device-not-found' // 422: hostIfName does not exist in the node's namespace
  | 'unavailable' // 503: a dependency failed (etcd for the identity; the datapath)
  | 'stopping' // 503: the agent is shutting down
  | 'internal'; // 500

export const API_ERROR_STATUS: Readonly<Record<ApiErrorCode, number>> = {
  'invalid-request': 400,
  forbidden: 403,
  'not-found': 404,
  'method-not-allowed': 405,
  'too-large': 413,
  conflict: 409,
  'device-not-found': 422,
  unavailable: 503,
  stopping: 503,
  internal: 500,
};

/** An error the API turns into `{ error, code }` with its HTTP status; the client throws it back. */
export class ApiError extends Error {
  readonly status: number;
  constructor(
    readonly code: ApiErrorCode,
    message: string,
    status?: number,
  ) {
    super(message);
    this.name = 'ApiError';
    this.status = status ?? API_ERROR_STATUS[code];
  }
}
