// The node-local Kubernetes API endpoint of a lab (what
// k3s's agent load balancer is to its nodes): a TCP listener on
// 127.0.0.1:6443 inside one network namespace (a node's, or a cluster's
// control-plane namespace) that pipes every connection to the cluster's
// kube-apiserver unix socket (<cluster dir>/kube-api/api.sock).
//
// Why: the kube-apiserver listens on 127.0.0.1 of the machine's network
// namespace (where kubectl runs); the agents, kubelets and the clustermesh
// apiserver run in namespaces of their own and cannot reach it. A unix socket
// is reachable from every network namespace, TCP is what kubeconfig clients
// speak. TLS passes through untouched: clients still verify the server
// certificate (it names 127.0.0.1) and present their client certificate.
//
// One small process per namespace (`clustermesh lab kube-api-endpoint`,
// started by `lab up`), so the endpoint is there before the
// agent and the apiserver of that namespace start.
import { renameSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { spliceSockets } from '../util/splice.ts';

/** Where node-local clients find their cluster's API (every lab). */
export const NODE_LOCAL_API_HOST = '127.0.0.1';
export const NODE_LOCAL_API_PORT = 6443;

export interface KubeApiEndpointOptions {
  /** The kube-apiserver's TLS unix socket. */
  socket: string;
  host?: string;
  port?: number;
}

/** Starts the forwarder; resolves once it listens. */
export async function startKubeApiEndpoint(o: KubeApiEndpointOptions): Promise<Server> {
  const server = createServer((client) => spliceSockets(client, connect(o.socket)));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? NODE_LOCAL_API_PORT, o.host ?? NODE_LOCAL_API_HOST, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

/** `clustermesh lab kube-api-endpoint --socket S [--listen HOST:PORT] [--ready-file F]`: runs until SIGTERM/SIGINT. */
export async function runKubeApiEndpoint(o: { socket: string; listen?: string; readyFile?: string }): Promise<void> {
  const listen = o.listen ?? `${NODE_LOCAL_API_HOST}:${NODE_LOCAL_API_PORT}`;
  const m = /^([^:\s]+):(\d{1,5})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) throw new Error(`--listen must be host:port, got '${listen}'`);
  const server = await startKubeApiEndpoint({ socket: o.socket, host: m[1]!, port: Number(m[2]) });
  if (o.readyFile !== undefined) {
    writeFileSync(`${o.readyFile}.tmp`, `${process.pid}\n`);
    renameSync(`${o.readyFile}.tmp`, o.readyFile);
  }
  process.stdout.write(JSON.stringify({ time: new Date().toISOString(), msg: 'forwarding the Kubernetes API', listen, socket: o.socket }) + '\n');
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  server.close();
  process.exit(0);
}
