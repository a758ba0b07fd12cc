// One line of text per datapath event, for the CLI and the demo.
import type { DatapathEvent } from './maps/events.js';

export function formatEvent(e: DatapathEvent): string {
  const proto = e.protocol === 6 ? 'tcp' : e.protocol === 17 ? 'udp' : e.protocol === 1 ? 'icmp' : `proto ${e.protocol}`;
  const ports = e.protocol === 6 || e.protocol === 17 ? [`:${e.srcPort}`, `:${e.dstPort}`] : ['', ''];
  const tunnel = e.tunnelEndpoint ? ` via ${e.tunnelEndpoint}` : '';
  return `${e.type.toUpperCase().padEnd(5)} ${e.reasonName.padEnd(22)} ${e.direction.padEnd(7)} ${e.srcIp}${ports[0]} (id ${e.srcIdentity}) -> ${e.dstIp}${ports[1]} (id ${e.dstIdentity}) ${proto} len ${e.length} if ${e.ifindex}${tunnel}`;
}
