// Two sockets joined both ways (a byte-level forwarder's one connection): what
// one side sends the other receives; an error or close on either side closes
// both. TLS passes through untouched.
import type { Socket } from 'node:net';

export function spliceSockets(a: Socket, b: Socket): void {
  const close = (): void => {
    a.destroy();
    b.destroy();
  };
  for (const s of [a, b]) {
    s.on('error', close);
    s.on('close', close);
  }
  a.pipe(b);
  b.pipe(a);
}
