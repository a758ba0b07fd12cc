// Test helper: makes TCP ports of the root network namespace's loopback
// reachable on the loopback of another namespace, through unix sockets (the
// filesystem is shared across network namespaces).
//
//   inner half (this file, run inside the namespace):
//     node --import tsx netns-bridge.test-helper.ts <port>=<unix socket> ...
//     listens on 127.0.0.1:<port> and forwards each connection to the socket.
//   outer half (bridgeOuter, in the test process): listens on the socket and
//     forwards to 127.0.0.1:<port> of the root namespace.
//
// TLS passes through untouched, so a client in the namespace talks to
// https://127.0.0.1:<port> exactly as it would in the root namespace.
import { connect, createServer, type Server } from 'node:net';
import { unlinkSync } from 'node:fs';
import { spliceSockets } from '../util/splice.ts';

/** The root-namespace half: unix socket → 127.0.0.1:port. Returns the server (close it in finally). */
export function bridgeOuter(socketPath: string, port: number): Promise<Server> {
  try {
    unlinkSync(socketPath);
  } catch {
    // not there
  }
  const server = createServer((client) => spliceSockets(client, connect({ host: '127.0.0.1', port })));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve(server));
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const specs = process.argv.slice(2).map((a) => {
    const [port, path] = a.split('=');
    if (!port || !path) throw new Error(`usage: netns-bridge.test-helper.ts <port>=<unix socket> ...`);
    return { port: Number(port), path };
  });
  let listening = 0;
  for (const { port, path } of specs) {
    const server = createServer((client) => spliceSockets(client, connect(path)));
    server.listen({ host: '127.0.0.1', port }, () => {
      if (++listening === specs.length) process.stdout.write('listening\n');
    });
  }
  process.on('SIGTERM', () => process.exit(0));
}
