// The local cluster source of the agent and the apiserver: the Kubernetes API
// (KubernetesSource) for every Kubernetes kind, and the cluster's etcd for
// Endpoint objects (mesh state, Cilium's kvstore mode: src/sources/store).
// One ClusterSource that the caller starts and stops.
import type { KvClient } from '../kvstore/client.ts';
import type { ObjectKind } from '../model/index.ts';
import type { Clock } from '../util/clock.ts';
import { KubernetesSource, type KubernetesSourceOptions } from './kubernetes/source.ts';
import { readKubeAccess } from './kubernetes/kube-access.ts';
import { EndpointSource } from './store/source.ts';
import type { ClusterSource, SourceProblem } from './types.ts';

export interface LocalSourceOptions {
  /** Kubeconfig file of the cluster's API (its current context); undefined: KUBECONFIG, the in-cluster service account, or ~/.kube/config (readKubeAccess). */
  kubeconfig?: string | undefined;
  onProblem?: (problem: SourceProblem) => void;
  onError?: (kind: ObjectKind, err: Error) => void;
  onHandlerError?: (kind: ObjectKind, err: unknown) => void;
  clock?: Clock;
}

export interface LocalSource {
  source: ClusterSource;
  /** For logs and status: `kubernetes <kubeconfig (context c)> <server>; …`. */
  description: string;
}

/** A KubernetesSource whose Endpoint kind comes from etcd; starts and stops both. */
class KubernetesWithEtcdEndpoints extends KubernetesSource {
  constructor(
    opts: Omit<KubernetesSourceOptions, 'endpoints'>,
    private readonly store: EndpointSource,
  ) {
    super({ ...opts, endpoints: store.endpoints });
  }

  override async start(): Promise<void> {
    await this.store.start();
    await super.start();
  }

  override async stop(): Promise<void> {
    await super.stop();
    await this.store.stop();
  }
}

/** Builds the local source; a kubeconfig that cannot be read (or none found) throws naming the file and the reason. */
export function openLocalSource(kv: KvClient, o: LocalSourceOptions): LocalSource {
  const handlers = {
    ...(o.onProblem ? { onProblem: o.onProblem } : {}),
    ...(o.onError ? { onError: o.onError } : {}),
    ...(o.onHandlerError ? { onHandlerError: o.onHandlerError } : {}),
    ...(o.clock ? { clock: o.clock } : {}),
  };
  const conn = readKubeAccess(o.kubeconfig !== undefined ? { kubeconfig: o.kubeconfig } : {});
  const endpoints = new EndpointSource(kv, handlers);
  return {
    source: new KubernetesWithEtcdEndpoints({ kubeConfig: conn.access, ...handlers }, endpoints),
    description: `kubernetes ${conn.description} ${conn.server}; Endpoint objects from etcd`,
  };
}
