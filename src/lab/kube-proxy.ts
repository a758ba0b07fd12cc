// The kube-proxy baseline of bench/services and bench/peers: the iptables rules kube-proxy's iptables
// mode writes for ClusterIP services, as one iptables-restore input. Per
// service port, in the nat table:
//
//   KUBE-SERVICES   -d VIP/32 -p tcp --dport P          -j KUBE-SVC-<hash>
//   KUBE-SVC-<hash> ! -s <clusterCIDR> -d VIP -p tcp --dport P -j KUBE-MARK-MASQ
//                   (one rule per endpoint, with -m statistic for all but the last) -j KUBE-SEP-<hash>
//   KUBE-SEP-<hash> -s <endpoint>/32 -j KUBE-MARK-MASQ
//                   -p tcp -j DNAT --to-destination <endpoint>:<port>
//
// each with `-m comment` as kube-proxy writes them (the endpoint rules lose
// theirs above 1,000 endpoints, kube-proxy's "large cluster mode"),
//
// plus the fixed hooks and chains (PREROUTING/OUTPUT -> KUBE-SERVICES, the
// NodePorts rule last in KUBE-SERVICES, KUBE-POSTROUTING masquerade, the
// filter table's KUBE-FORWARD). The first packet of a connection walks
// KUBE-SERVICES rule by rule until its VIP matches; later packets follow
// conntrack and never see the nat table. Chain names are built the way
// kube-proxy builds them: "KUBE-SVC-" + the first 16 base32 characters of
// sha256(servicePortName + protocol).
import { createHash } from 'node:crypto';

export interface KubeService {
  namespace: string;
  name: string;
  portName: string;
  vip: string;
  port: number;
  protocol: 'TCP' | 'UDP';
  endpoints: ReadonlyArray<{ ip: string; port: number }>;
}

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 (no padding) of a buffer. */
export function base32(buf: Buffer): string {
  let out = '';
  let bits = 0;
  let acc = 0;
  for (const byte of buf) {
    acc = (acc << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += BASE32[(acc << (5 - bits)) & 31];
  return out;
}

const hashName = (prefix: string, s: string): string => prefix + base32(createHash('sha256').update(s).digest()).slice(0, 16);

export const servicePortName = (s: KubeService): string => `${s.namespace}/${s.name}:${s.portName}`;
export const svcChain = (s: KubeService): string => hashName('KUBE-SVC-', servicePortName(s) + s.protocol.toLowerCase());
export const sepChain = (s: KubeService, ep: { ip: string; port: number }): string =>
  hashName('KUBE-SEP-', servicePortName(s) + s.protocol.toLowerCase() + `${ep.ip}:${ep.port}`);

/**
 * The iptables-restore input for these services, in this order in
 * KUBE-SERVICES. Without --noflush it replaces the nat and filter tables
 * whole, so loading N services after M is one call either way.
 * `forwardChain`: a filter chain of the caller's (e.g. a network policy),
 * jumped to from FORWARD after kube-proxy's own rules.
 */
export function kubeProxyRules(services: readonly KubeService[], clusterCIDR: string, opts: { forwardChain?: { name: string; rules: readonly string[] } } = {}): string {
  const nat: string[] = ['*nat'];
  const chains = [':PREROUTING ACCEPT [0:0]', ':INPUT ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]', ':POSTROUTING ACCEPT [0:0]', ':KUBE-SERVICES - [0:0]', ':KUBE-NODEPORTS - [0:0]', ':KUBE-POSTROUTING - [0:0]', ':KUBE-MARK-MASQ - [0:0]'];
  const rules: string[] = [
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    '-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000',
    '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
    '-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0',
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
  ];
  const perService: string[] = [];
  // kube-proxy's "large cluster mode" (more than 1,000 endpoints in all):
  // no comments on the endpoint rules, to keep the ruleset smaller.
  const large = services.reduce((n, s) => n + s.endpoints.length, 0) > 1000;
  for (const s of services) {
    const spn = servicePortName(s);
    const proto = s.protocol.toLowerCase();
    const svc = svcChain(s);
    chains.push(`:${svc} - [0:0]`);
    rules.push(`-A KUBE-SERVICES -d ${s.vip}/32 -p ${proto} -m comment --comment "${spn} cluster IP" -m ${proto} --dport ${s.port} -j ${svc}`);
    perService.push(`-A ${svc} ! -s ${clusterCIDR} -d ${s.vip}/32 -p ${proto} -m comment --comment "${spn} cluster IP" -m ${proto} --dport ${s.port} -j KUBE-MARK-MASQ`);
    s.endpoints.forEach((ep, i) => {
      const sep = sepChain(s, ep);
      chains.push(`:${sep} - [0:0]`);
      const left = s.endpoints.length - i;
      const pick = left > 1 ? ` -m statistic --mode random --probability ${(1 / left).toFixed(10)}` : '';
      const jumpComment = large ? '' : ` -m comment --comment "${spn} -> ${ep.ip}:${ep.port}"`;
      const sepComment = large ? '' : ` -m comment --comment "${spn}"`;
      perService.push(`-A ${svc}${jumpComment}${pick} -j ${sep}`);
      perService.push(`-A ${sep} -s ${ep.ip}/32${sepComment} -j KUBE-MARK-MASQ`);
      perService.push(`-A ${sep} -p ${proto}${sepComment} -m ${proto} -j DNAT --to-destination ${ep.ip}:${ep.port}`);
    });
  }
  rules.push('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS');
  // (concat, not push(...): 500,000 arguments overflow the stack)
  const filter = [
    '*filter',
    ':INPUT ACCEPT [0:0]',
    ':FORWARD ACCEPT [0:0]',
    ':OUTPUT ACCEPT [0:0]',
    ':KUBE-FORWARD - [0:0]',
    ':KUBE-SERVICES - [0:0]',
    ':KUBE-EXTERNAL-SERVICES - [0:0]',
    ':KUBE-NODEPORTS - [0:0]',
    ':KUBE-PROXY-FIREWALL - [0:0]',
    ...(opts.forwardChain ? [`:${opts.forwardChain.name} - [0:0]`] : []),
    '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
    '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
    '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
    '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
    ...(opts.forwardChain ? [`-A FORWARD -j ${opts.forwardChain.name}`] : []),
    '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
    '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP',
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    ...(opts.forwardChain?.rules ?? []),
    'COMMIT',
  ];
  return nat.concat(chains, rules, perService, ['COMMIT'], filter).join('\n') + '\n';
}
