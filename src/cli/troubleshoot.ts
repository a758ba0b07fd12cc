// `clustermesh troubleshoot`: for every remote-cluster config a node's agent
// reads, the checks a user would otherwise do by hand, in order, stopping at
// the first that fails, with the likely fix:
//   config      the file parses; CA, certificate and key are readable, the key
//               belongs to the certificate, the certificate is valid now and
//               issued by the trusted CA
//   dns         the endpoint's host name resolves (an address needs none)
//   tcp         something accepts connections there
//   tls         the server's certificate is trusted by trusted-ca-file and names
//               the host (or server-name); the server accepts our certificate
//   etcd-read   the certificate's user may read cilium/cluster-config/<cluster>,
//               and the etcd publishes that cluster (not another)
//   cluster-id  its ID differs from ours and from every other remote's
//
// The checks must run where the agent runs: in a lab, inside each node's
// network namespace (this command re-runs itself there with --config-dir).
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { connect as netConnect, isIP } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { checkServerIdentity, connect as tlsConnect, type PeerCertificate } from 'node:tls';
import { Command } from 'commander';
import { ConfigError, loadRemoteClusterConfig, scanConfigDir, toConnectionConfig, type RemoteClusterConfig } from '../clustermesh/config.ts';
import { clusterConfigKey } from '../clustermesh/keys.ts';
import { decodeClusterConfig } from '../clustermesh/wire.ts';
import { KvClient } from '../kvstore/client.ts';
import { KvError } from '../kvstore/types.ts';
import { execFile } from 'node:child_process';
import { action, CliError, EXIT_ERROR, EXIT_NOT_OK, EXIT_OK, example, outputOption, printJson, type Closer, type OutputFormat } from './common.ts';
import { publishedClusters, resolveTargets, type TargetFlags } from './targets.ts';

export type StepName = 'config' | 'dns' | 'tcp' | 'tls' | 'etcd-read' | 'cluster-id';
export const STEPS: readonly StepName[] = ['config', 'dns', 'tcp', 'tls', 'etcd-read', 'cluster-id'];

export interface Step {
  step: StepName;
  /** null: not run because an earlier step failed. */
  ok: boolean | null;
  detail: string;
  fix: string | null;
}

export interface RemoteCheck {
  /** Where the checks ran ('cluster1/node1', or 'local'). */
  from: string;
  /** The remote cluster (the file name). */
  cluster: string;
  file: string;
  endpoint: string | null;
  /** The remote's cluster ID as its etcd publishes it, when read. */
  clusterId: number | null;
  ok: boolean;
  steps: Step[];
}

export interface TroubleshootReport {
  ok: boolean;
  checks: RemoteCheck[];
  /** Nodes or dirs that could not be checked at all. */
  errors: string[];
}

const CONNECT_TIMEOUT_MS = 3000;

class StepFailure extends Error {
  constructor(
    message: string,
    readonly fix: string | null,
  ) {
    super(message);
  }
}

function cnOf(cert: X509Certificate): string {
  return /CN=([^\n,]+)/.exec(cert.subject)?.[1] ?? cert.subject;
}

async function checkFiles(cfg: RemoteClusterConfig): Promise<string> {
  const [caPem, certPem, keyPem] = await Promise.all([readFile(cfg.caFile), readFile(cfg.certFile), readFile(cfg.keyFile)]);
  let ca: X509Certificate;
  let cert: X509Certificate;
  try {
    ca = new X509Certificate(caPem);
  } catch (err) {
    throw new StepFailure(`trusted-ca-file ${cfg.caFile} is not a PEM certificate (${(err as Error).message})`, 'point trusted-ca-file at the CA certificate of the remote cluster\'s etcd');
  }
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw new StepFailure(`cert-file ${cfg.certFile} is not a PEM certificate (${(err as Error).message})`, 'point cert-file at the client certificate issued for this cluster (clustermesh enable / connect writes one)');
  }
  try {
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) throw new Error('the key does not belong to the certificate');
  } catch (err) {
    throw new StepFailure(`key-file ${cfg.keyFile} does not match cert-file ${cfg.certFile} (${(err as Error).message})`, 'use the key that was generated with the certificate; re-run clustermesh connect to reinstall both');
  }
  const now = Date.now();
  if (Date.parse(cert.validTo) < now) throw new StepFailure(`the client certificate (CN=${cnOf(cert)}) expired on ${cert.validTo}`, `issue a new one: clustermesh enable --cluster ${cfg.name}, then clustermesh connect again`);
  if (Date.parse(cert.validFrom) > now) throw new StepFailure(`the client certificate (CN=${cnOf(cert)}) is valid only from ${cert.validFrom}`, 'check the clocks of this node and of the machine that issued it');
  if (Date.parse(ca.validTo) < now) throw new StepFailure(`the trusted CA expired on ${ca.validTo}`, `rotate the CA of ${cfg.name}'s etcd and reinstall its access`);
  const issued = cert.checkIssued(ca);
  return `files readable; client certificate CN=${cnOf(cert)} valid until ${cert.validTo}${issued ? ', issued by the trusted CA' : ' (not issued by trusted-ca-file: fine only if the remote etcd trusts its issuer)'}`;
}

async function resolveHost(host: string): Promise<{ address: string; detail: string }> {
  if (isIP(host)) return { address: host, detail: `${host} is an address (no DNS needed)` };
  try {
    const all = await lookup(host, { all: true });
    return { address: all[0]!.address, detail: `${host} resolves to ${all.map((a) => a.address).join(', ')}` };
  } catch (err) {
    throw new StepFailure(`${host} does not resolve (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, `check the name in endpoints, and the DNS this node uses (/etc/resolv.conf); or use the etcd's address`);
  }
}

function tcpReach(address: string, port: number): Promise<string> {
  const t0 = Date.now();
  return new Promise((resolveP, reject) => {
    const s = netConnect({ host: address, port, timeout: CONNECT_TIMEOUT_MS });
    s.once('connect', () => {
      s.destroy();
      resolveP(`connected to ${address}:${port} in ${Date.now() - t0} ms`);
    });
    s.once('timeout', () => {
      s.destroy();
      reject(new StepFailure(`no answer from ${address}:${port} within ${CONNECT_TIMEOUT_MS} ms`, 'the address is not routed from this node or packets are filtered: check the underlay routes between the clusters and firewalls'));
    });
    s.once('error', (err: NodeJS.ErrnoException) => {
      s.destroy();
      if (err.code === 'ECONNREFUSED') reject(new StepFailure(`connection refused by ${address}:${port}`, `nothing listens there: is the remote cluster's etcd running, and listening on ${address}:${port} (--listen-client-urls)?`));
      else if (err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH') reject(new StepFailure(`${address} is unreachable from this node (${err.code})`, 'add a route to the remote cluster\'s etcd address on this node (or fix the router between the clusters)'));
      else reject(new StepFailure(`cannot connect to ${address}:${port} (${err.code ?? err.message})`, null));
    });
  });
}

const UNTRUSTED = new Set(['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_GET_ISSUER_CERT', 'CERT_SIGNATURE_FAILURE']);

function sanOf(peer: PeerCertificate): string {
  return peer.subjectaltname ?? '(none)';
}

async function tlsHandshake(cfg: RemoteClusterConfig, host: string, address: string, port: number): Promise<string> {
  const [ca, cert, key] = await Promise.all([readFile(cfg.caFile), readFile(cfg.certFile), readFile(cfg.keyFile)]);
  const name = cfg.serverName ?? host;
  return await new Promise((resolveP, reject) => {
    const s = tlsConnect({ host: address, port, ca, cert, key, rejectUnauthorized: false, ALPNProtocols: ['h2'], timeout: CONNECT_TIMEOUT_MS, ...(isIP(name) ? {} : { servername: name }) });
    let settled = false;
    const fail = (e: StepFailure): void => {
      if (settled) return;
      settled = true;
      s.destroy();
      reject(e);
    };
    s.once('timeout', () => fail(new StepFailure(`TLS handshake with ${address}:${port} did not finish within ${CONNECT_TIMEOUT_MS} ms`, 'is it an etcd serving TLS on that port (https:// client URL)?')));
    s.once('error', (err: NodeJS.ErrnoException) => {
      const msg = err.message.toLowerCase();
      if (/alert (bad certificate|unknown ca|certificate required|certificate unknown|access denied)/.test(msg)) {
        fail(new StepFailure(`the server rejected our client certificate (${err.message})`, `cert-file ${cfg.certFile} is not issued by a CA ${cfg.name}'s etcd trusts (--trusted-ca-file of that etcd): re-run clustermesh connect to install a certificate issued by ${cfg.name}'s CA`));
      } else if (msg.includes('wrong version number') || msg.includes('packet length too long')) {
        fail(new StepFailure(`${address}:${port} does not speak TLS (${err.message})`, 'the etcd serves plain HTTP there; the mesh requires https:// with client certificates'));
      } else fail(new StepFailure(`TLS handshake failed (${err.message})`, null));
    });
    s.once('secureConnect', () => {
      const peer = s.getPeerCertificate();
      const authErr = s.authorizationError as unknown as string | Error | null;
      const code = authErr === null || authErr === undefined ? null : typeof authErr === 'string' ? authErr : ((authErr as NodeJS.ErrnoException).code ?? authErr.message);
      if (code !== null) {
        if (UNTRUSTED.has(code)) return fail(new StepFailure(`the server's certificate (issuer ${peer.issuer?.CN ?? '?'}) is not signed by trusted-ca-file ${cfg.caFile} (${code})`, `use the CA certificate of ${cfg.name}'s etcd as trusted-ca-file (clustermesh connect installs it)`));
        if (code === 'CERT_HAS_EXPIRED') return fail(new StepFailure(`the server's certificate expired on ${peer.valid_to}`, `renew ${cfg.name}'s etcd server certificate`));
        return fail(new StepFailure(`the server's certificate is not trusted (${code})`, null));
      }
      const idErr = checkServerIdentity(name, peer);
      if (idErr) {
        return fail(new StepFailure(`the server's certificate does not name ${name} (it names ${sanOf(peer)})`, `use an endpoint the certificate names, or set server-name: to one of its DNS names in ${cfg.file}`));
      }
      // With TLS 1.3 the server judges our certificate after the handshake: give its alert a moment to arrive.
      setTimeout(() => {
        if (settled) return;
        settled = true;
        const protocol = s.getProtocol() ?? 'TLS';
        s.destroy();
        resolveP(`server certificate of ${name} verified by trusted-ca-file; our certificate accepted (${protocol})`);
      }, 300);
    });
  });
}

async function etcdRead(cfg: RemoteClusterConfig, closer: Closer): Promise<{ id: number; detail: string }> {
  const kv = new KvClient(toConnectionConfig(cfg, CONNECT_TIMEOUT_MS));
  closer.add(() => kv.close());
  const key = clusterConfigKey(cfg.name);
  let cn = 'the certificate\'s user';
  try {
    cn = `user ${cnOf(new X509Certificate(await readFile(cfg.certFile)))}`;
  } catch {
    // named generically
  }
  let pair;
  try {
    pair = await kv.get(key);
  } catch (err) {
    const kind = err instanceof KvError ? err.kind : 'other';
    if (kind === 'permission') throw new StepFailure(`${cn} may not read ${key} (${(err as Error).message})`, `grant ${cn} read on cilium/cluster-config/, cilium/state/ and cilium/synced/ in ${cfg.name}'s etcd (the 'remote' role), or install a certificate of a user that has it (clustermesh connect)`);
    if (kind === 'unauthenticated') throw new StepFailure(`${cfg.name}'s etcd does not accept ${cn} (${(err as Error).message})`, `the etcd has no such user: issue the certificate with CN=remote (clustermesh enable --cluster ${cfg.name}) and reinstall it`);
    throw new StepFailure(`reading ${key} failed (${(err as Error).message})`, null);
  }
  if (!pair) {
    const published = await publishedClusters(kv).catch(() => new Map<string, number>());
    if (published.size > 0) {
      const names = [...published].map(([n, i]) => `${n} (ID ${i})`).join(', ');
      throw new StepFailure(`this etcd publishes the cluster-config of ${names}, not of ${cfg.name}`, `the file is named ${cfg.name} but points at another cluster's etcd: rename it to the cluster it points at, or fix its endpoints`);
    }
    throw new StepFailure(`${key} does not exist (yet)`, `the apiserver of ${cfg.name} is not running or not connected to its etcd; start it (clustermesh apiserver --cluster-name ${cfg.name} ...)`);
  }
  const d = decodeClusterConfig(cfg.name, pair.key, pair.value);
  if (!d.ok) throw new StepFailure(`${key} is unusable (${d.detail})`, `the apiserver of ${cfg.name} writes a cluster-config this version cannot read; upgrade one of them`);
  return { id: d.value.id, detail: `read ${key} as ${cn}: cluster ID ${d.value.id}` };
}

/** Runs every step for one config file (the first endpoint; more are tried as extra checks). */
export async function checkRemoteConfigFile(file: string, from: string, closer: Closer): Promise<RemoteCheck> {
  const name = file.slice(file.lastIndexOf('/') + 1);
  const check: RemoteCheck = { from, cluster: name, file: resolvePath(file), endpoint: null, clusterId: null, ok: false, steps: [] };
  const run = async <T>(step: StepName, fn: () => Promise<T>, detail: (v: T) => string): Promise<T | undefined> => {
    if (check.steps.some((s) => s.ok !== true)) {
      check.steps.push({ step, ok: null, detail: 'not checked (an earlier step failed)', fix: null });
      return undefined;
    }
    try {
      const v = await fn();
      check.steps.push({ step, ok: true, detail: detail(v), fix: null });
      return v;
    } catch (err) {
      const e = err instanceof StepFailure ? err : new StepFailure((err as Error).message, null);
      check.steps.push({ step, ok: false, detail: e.message, fix: e.fix });
      return undefined;
    }
  };
  const cfg = await run(
    'config',
    async () => {
      let c: RemoteClusterConfig;
      try {
        c = await loadRemoteClusterConfig(file);
      } catch (err) {
        const ce = err as ConfigError;
        throw new StepFailure(ce.message, ce.field ? `fix field ${ce.field} (fields: endpoints, trusted-ca-file, cert-file, key-file, server-name)` : 'fix the file, or remove it if the cluster is not part of the mesh');
      }
      return { c, detail: await checkFiles(c) };
    },
    (v) => v.detail,
  );
  const url = cfg ? new URL(cfg.c.endpoints[0]!) : undefined;
  if (url) check.endpoint = cfg!.c.endpoints[0]!;
  const host = url ? url.hostname.replace(/^\[|\]$/g, '') : '';
  const port = url ? Number(url.port || 2379) : 0;
  const addr = await run('dns', () => resolveHost(host), (v) => v.detail);
  await run('tcp', () => tcpReach(addr!.address, port), (v) => v);
  await run('tls', () => tlsHandshake(cfg!.c, host, addr!.address, port), (v) => v);
  const read = await run('etcd-read', () => etcdRead(cfg!.c, closer), (v) => v.detail);
  if (read) check.clusterId = read.id;
  // cluster-id is judged across all files of the dir (checkConfigDir).
  return check;
}

/** Every config of a dir, then the ID step across them. */
export async function checkConfigDir(dir: string, from: string, local: { name?: string; id?: number }, closer: Closer): Promise<RemoteCheck[]> {
  const scan = await scanConfigDir(dir).catch((err: Error) => {
    throw new CliError(`cannot read the remote-cluster dir ${dir}: ${err.message}`);
  });
  const files = [...scan.configs.values()].map((c) => c.file).concat([...scan.errors.values()].map((e) => e.file)).sort();
  const checks = await Promise.all(files.map((f) => checkRemoteConfigFile(f, from, closer)));
  for (const c of checks) {
    if (c.steps.some((s) => s.ok !== true)) {
      c.steps.push({ step: 'cluster-id', ok: null, detail: 'not checked (an earlier step failed)', fix: null });
      continue;
    }
    const clash = checks.find((o) => o !== c && o.clusterId !== null && o.clusterId === c.clusterId);
    if (local.id !== undefined && c.clusterId === local.id) {
      c.steps.push({ step: 'cluster-id', ok: false, detail: `${c.cluster} has cluster ID ${c.clusterId}, the same as this cluster${local.name ? ` (${local.name})` : ''}`, fix: 'cluster IDs must be unique in a mesh: give one of the clusters another ID (apiserver and agents --cluster-id)' });
    } else if (clash) {
      c.steps.push({ step: 'cluster-id', ok: false, detail: `${c.cluster} and ${clash.cluster} both have cluster ID ${c.clusterId}`, fix: `the agent refuses the second one it sees; disconnect one of them or change its ID` });
    } else {
      c.steps.push({ step: 'cluster-id', ok: true, detail: `ID ${c.clusterId} is unique${local.id !== undefined ? ` (this cluster: ${local.id})` : ''}`, fix: null });
    }
  }
  for (const c of checks) c.ok = c.steps.every((s) => s.ok === true);
  return checks;
}

/** Runs argv inside a network namespace; resolves with stdout also when it exits 1 (checks failed), rejects otherwise. */
function runInNamespace(netns: string, argv: string[]): Promise<string> {
  return new Promise((resolveP, reject) => {
    execFile('ip', ['netns', 'exec', netns, ...argv], { timeout: 60_000, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (err as unknown as { code?: unknown }).code : 0;
      if (!err || code === EXIT_NOT_OK) resolveP(stdout);
      else reject(new Error(stderr.trim() || err.message));
    });
  });
}

export function formatReport(r: TroubleshootReport): string {
  const out: string[] = [];
  for (const c of r.checks) {
    out.push(`${c.from} -> ${c.cluster}${c.endpoint ? ` (${c.endpoint})` : ''}: ${c.ok ? 'ok' : 'FAILED'}`);
    for (const s of c.steps) {
      out.push(`  ${(s.ok === null ? 'skip' : s.ok ? 'ok' : 'FAIL').padEnd(5)} ${s.step.padEnd(11)} ${s.detail}`);
      if (s.fix) out.push(`        fix: ${s.fix}`);
    }
  }
  for (const e of r.errors) out.push(`error: ${e}`);
  if (r.checks.length === 0 && r.errors.length === 0) out.push('no remote clusters configured (nothing to check); connect one with: clustermesh connect');
  out.push(r.ok ? 'all checks passed' : 'some checks failed');
  return out.join('\n');
}

interface TroubleshootFlags extends TargetFlags {
  output: OutputFormat;
  configDir?: string;
  clusterName?: string;
  clusterId?: number;
  from?: string;
}

export function troubleshootCommand(): Command {
  const cmd = new Command('troubleshoot').description(
    "check every remote-cluster config the agents use, step by step (config and certificates, DNS, TCP, TLS with the right CA, etcd permission to read cilium/cluster-config, unique cluster ID), and say which step fails and the likely fix; exit 1 when one fails",
  );
  cmd
    .option('--lab <name>', 'the lab to check (each node is checked from inside its network namespace)', 'default')
    .option('--cluster <name>', 'only this cluster (repeatable)', (v: string, p: string[] | undefined) => [...(p ?? []), v])
    .option('--node <name>', "only this node: 'node1' or 'cluster1/node1' (repeatable)", (v: string, p: string[] | undefined) => [...(p ?? []), v])
    .option('--config-dir <dir>', 'no lab: check this remote-cluster dir from here (run it on the node, where the agent runs)')
    .option('--cluster-name <name>', 'with --config-dir: this cluster\'s name')
    .option('--cluster-id <id>', 'with --config-dir: this cluster\'s ID (to find ID clashes)', (v) => Number(v))
    .option('--from <label>', 'with --config-dir: how to name where the checks ran', 'local')
    .addOption(outputOption())
    .action(
      action('troubleshoot', async (closer, o: TroubleshootFlags) => {
        const report: TroubleshootReport = { ok: true, checks: [], errors: [] };
        if (o.configDir !== undefined) {
          if (!existsSync(o.configDir)) throw new CliError(`--config-dir ${o.configDir} does not exist (it is the clustermeshConfigDir of the node's agent config)`);
          report.checks = await checkConfigDir(o.configDir, o.from ?? 'local', { ...(o.clusterName ? { name: o.clusterName } : {}), ...(o.clusterId !== undefined && Number.isInteger(o.clusterId) ? { id: o.clusterId } : {}) }, closer);
        } else {
          const t = await resolveTargets({ lab: o.lab, ...(o.cluster ? { cluster: o.cluster } : {}), ...(o.node ? { node: o.node } : {}) }, closer);
          if (t.nodes.length === 0) throw new CliError(`no nodes to check in lab ${t.lab?.name}`, EXIT_ERROR);
          const cli = resolvePath(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');
          const results = await Promise.all(
            t.nodes.map(async (n) => {
              if (!n.netns || !n.configDir) return { node: n.key, error: `node ${n.key}: its namespace or remote-cluster dir is not recorded in the lab` };
              const argv = [process.execPath, cli, 'troubleshoot', '--config-dir', n.configDir, '--from', n.key, '-o', 'json', ...(n.cluster ? ['--cluster-name', n.cluster] : []), ...(n.clusterId !== undefined ? ['--cluster-id', String(n.clusterId)] : [])];
              try {
                const stdout = await runInNamespace(n.netns, argv);
                const parsed = JSON.parse(stdout) as TroubleshootReport;
                return { node: n.key, report: parsed };
              } catch (err) {
                return { node: n.key, error: `node ${n.key}: the checks could not run in namespace ${n.netns} (${(err as Error).message.split('\n')[0]})` };
              }
            }),
          );
          for (const r of results) {
            if ('report' in r && r.report) {
              report.checks.push(...r.report.checks);
              report.errors.push(...r.report.errors);
            } else if ('error' in r && r.error) report.errors.push(r.error);
          }
        }
        report.ok = report.errors.length === 0 && report.checks.every((c) => c.ok);
        if (o.output === 'json') printJson(report);
        else console.log(formatReport(report));
        return report.ok ? EXIT_OK : EXIT_NOT_OK;
      }),
    );
  return example(cmd, 'clustermesh troubleshoot                       # every node of the lab named default', 'clustermesh troubleshoot --cluster cluster1 -o json', 'clustermesh troubleshoot --config-dir /etc/clustermesh/remote-clusters --cluster-name c1 --cluster-id 1');
}
