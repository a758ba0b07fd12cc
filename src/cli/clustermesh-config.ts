// `clustermesh enable | connect | disconnect`: the remote-cluster config files
// (ARCHITECTURE §4, src/clustermesh/config.ts) and the client certificates
// agents use to read another cluster's kvstore.
//
//   enable --cluster c2     checks c2's etcd and apiserver (cluster-config with
//                           its ID), issues the read-only client certificate
//                           (CN=remote, the `remote` role) from c2's CA and
//                           writes c2's access bundle: access.yaml + ca.crt,
//                           remote.crt, remote.key.
//   connect --cluster c1 --destination-cluster c2
//                           installs c2's access into c1's remote-cluster dir
//                           (and c1's into c2's: bidirectional by default).
//   disconnect              removes those files; agents drain the cluster.
//
// Installed layout in a cluster's remote-cluster dir (agents rescan it):
//   <dir>/c2                          the config file (endpoints, trusted-ca-file, cert-file, key-file)
//   <dir>/.certs/c2/{ca.crt,client.crt,client.key,access.yaml}
// Names starting with '.' are ignored by the agents' config scan, and the
// config file is written last, by rename, so an agent never sees it before
// its certificates.
//
// installRemoteConfig / removeRemoteConfig are the reusable part (the lab's
// mesh.ts writes the same files today and could call them).
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { z } from 'zod';
import { loadEtcdConfig } from '../apiserver/options.ts';
import { formatRemoteClusterConfig, scanConfigDir } from '../clustermesh/config.ts';
import { clusterConfigKey } from '../clustermesh/keys.ts';
import { decodeClusterConfig, isValidClusterName } from '../clustermesh/wire.ts';
import { KvClient } from '../kvstore/client.ts';
import { issueCert } from '../kvstore/pki.ts';
import type { KvConnectionConfig } from '../kvstore/types.ts';
import { DEFAULT_LAB_NAME, NoSuchLabError, readLabState, type LabCluster, type LabState } from '../lab/state.ts';
import { action, CliError, collect, EXIT_ERROR, EXIT_OK, example, parseDurationFlag, printJson, type Closer } from './common.ts';
import { labEtcdConnection, publishedClusters } from './targets.ts';

/** Everything another cluster's agents need to read this cluster's kvstore. */
export interface RemoteAccess {
  cluster: string;
  id: number;
  /** What the other clusters' agents connect to. */
  endpoints: string[];
  caFile: string;
  certFile: string;
  keyFile: string;
  serverName?: string;
}

export const ACCESS_FILE = 'access.yaml';
export const CERTS_DIR = '.certs';

const accessSchema = z.strictObject({
  cluster: z.string().refine(isValidClusterName, 'must be a valid cluster name'),
  id: z.number().int().min(1).max(511),
  endpoints: z.array(z.string().regex(/^https:\/\/[^/\s]+\/?$/, 'must be https://host:port')).min(1),
  'trusted-ca-file': z.string().min(1),
  'cert-file': z.string().min(1),
  'key-file': z.string().min(1),
  'server-name': z.string().min(1).optional(),
});

/** Writes an access bundle's access.yaml (paths relative to it when they are inside its dir). */
export function formatAccess(a: RemoteAccess, dir: string): string {
  const rel = (p: string): string => (dirname(resolve(p)) === resolve(dir) ? resolve(p).slice(resolve(dir).length + 1) : resolve(p));
  return toYaml({
    cluster: a.cluster,
    id: a.id,
    endpoints: a.endpoints,
    'trusted-ca-file': rel(a.caFile),
    'cert-file': rel(a.certFile),
    'key-file': rel(a.keyFile),
    ...(a.serverName !== undefined ? { 'server-name': a.serverName } : {}),
  });
}

/** Reads an access.yaml (a file, or a directory holding one). Errors name the file and field. */
export async function readAccess(path: string): Promise<RemoteAccess> {
  const file = existsSync(join(path, ACCESS_FILE)) ? join(path, ACCESS_FILE) : path;
  let doc: unknown;
  try {
    doc = parseYaml(await readFile(file, 'utf8'));
  } catch (err) {
    throw new CliError(`${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file (create it with: clustermesh enable)' : (err as Error).message}`);
  }
  const r = accessSchema.safeParse(doc ?? {});
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new CliError(`${file}: field ${i.code === 'unrecognized_keys' ? i.keys.join(', ') : i.path.join('.') || '(root)'}: ${i.code === 'unrecognized_keys' ? 'unknown field' : i.message}`);
  }
  const base = dirname(resolve(file));
  const a = r.data;
  return {
    cluster: a.cluster,
    id: a.id,
    endpoints: a.endpoints.map((e) => e.replace(/\/$/, '')),
    caFile: resolve(base, a['trusted-ca-file']),
    certFile: resolve(base, a['cert-file']),
    keyFile: resolve(base, a['key-file']),
    ...(a['server-name'] !== undefined ? { serverName: a['server-name'] } : {}),
  };
}

/**
 * Installs `access` as a remote cluster of the cluster whose agents read
 * `configDir`: certificates under .certs/<cluster>/, then the config file by
 * rename. Idempotent; replaces what was there.
 */
export async function installRemoteConfig(configDir: string, access: RemoteAccess): Promise<{ file: string; certDir: string }> {
  if (!isValidClusterName(access.cluster)) throw new CliError(`cluster name '${access.cluster}' is invalid: at most 32 lowercase letters, digits and '-', starting and ending with a letter or digit`);
  const dir = resolve(configDir);
  const certDir = join(dir, CERTS_DIR, access.cluster);
  await mkdir(certDir, { recursive: true, mode: 0o700 });
  const installed: RemoteAccess = { ...access, caFile: join(certDir, 'ca.crt'), certFile: join(certDir, 'client.crt'), keyFile: join(certDir, 'client.key') };
  const copy = async (from: string, to: string): Promise<void> => {
    if (resolve(from) === to) return;
    await copyFile(from, `${to}.tmp`);
    await rename(`${to}.tmp`, to);
  };
  await copy(access.caFile, installed.caFile);
  await copy(access.certFile, installed.certFile);
  await copy(access.keyFile, installed.keyFile);
  await chmod(installed.keyFile, 0o600);
  await writeFile(join(certDir, ACCESS_FILE), formatAccess(installed, certDir));
  const file = join(dir, access.cluster);
  const tmp = join(dir, `.${access.cluster}.tmp`);
  await writeFile(
    tmp,
    formatRemoteClusterConfig({
      endpoints: access.endpoints,
      caFile: `${CERTS_DIR}/${access.cluster}/ca.crt`,
      certFile: `${CERTS_DIR}/${access.cluster}/client.crt`,
      keyFile: `${CERTS_DIR}/${access.cluster}/client.key`,
      ...(access.serverName !== undefined ? { serverName: access.serverName } : {}),
    }),
  );
  await rename(tmp, file);
  return { file, certDir };
}

/** Removes a remote cluster's config file (first: agents drain it) and its certificates. False when there was none. */
export async function removeRemoteConfig(configDir: string, cluster: string): Promise<boolean> {
  const file = join(resolve(configDir), cluster);
  const existed = existsSync(file);
  await rm(file, { force: true });
  await rm(join(resolve(configDir), CERTS_DIR, cluster), { recursive: true, force: true });
  return existed;
}

/** IDs of the remote clusters configured in a dir, where known (from .certs/<name>/access.yaml or `known`). */
export async function configuredRemotes(configDir: string, known: ReadonlyMap<string, number> = new Map()): Promise<Map<string, number | undefined>> {
  const scan = await scanConfigDir(configDir);
  const out = new Map<string, number | undefined>();
  for (const name of [...scan.configs.keys(), ...scan.errors.keys()]) {
    let id = known.get(name);
    const accessFile = join(resolve(configDir), CERTS_DIR, name, ACCESS_FILE);
    if (existsSync(accessFile)) id = (await readAccess(accessFile).catch(() => undefined))?.id ?? id;
    out.set(name, id);
  }
  return out;
}

/**
 * Why `source` must not import `destination`, or null. Names must be valid
 * and differ, IDs must differ, and no other remote of the source may hold
 * the destination's ID.
 */
export function connectProblem(source: { name: string; id: number }, destination: { name: string; id: number }, existing: ReadonlyMap<string, number | undefined>): string | null {
  for (const c of [source, destination]) {
    if (!isValidClusterName(c.name)) return `cluster name '${c.name}' is invalid: at most 32 lowercase letters, digits and '-', starting and ending with a letter or digit`;
  }
  if (source.name === destination.name) return `cannot connect cluster ${source.name} to itself`;
  if (source.id === destination.id) {
    return `clusters ${source.name} and ${destination.name} both have cluster ID ${source.id}; IDs must be unique in a mesh (give one of them another --cluster-id and restart its apiserver and agents)`;
  }
  for (const [name, id] of existing) {
    if (name !== destination.name && id === destination.id) {
      return `cluster ${source.name} already imports cluster ${name} with ID ${id}; ${destination.name} has the same ID, and IDs must be unique in a mesh (disconnect ${name} first, or change one cluster's ID)`;
    }
  }
  return null;
}

// ---- enable ----------------------------------------------------------------

/** Checks that `kv` serves `cluster`'s cluster-config and returns its ID; the errors say what is wrong. */
export async function verifyClusterConfig(kv: KvClient, cluster: string, where: string, expectedId?: number): Promise<number> {
  let pair;
  try {
    pair = await kv.get(clusterConfigKey(cluster));
  } catch (err) {
    throw new CliError(`cannot read ${clusterConfigKey(cluster)} from ${where} (${(err as Error).message}); run 'clustermesh troubleshoot' for the failing step`);
  }
  if (!pair) {
    const published = await publishedClusters(kv).catch(() => new Map<string, number>());
    if (published.size > 0) {
      throw new CliError(`${where} publishes the cluster-config of ${[...published].map(([n, i]) => `${n} (ID ${i})`).join(', ')}, not of ${cluster}: the cluster name does not match its etcd (check --cluster / --destination-cluster, or the apiserver's --cluster-name)`);
    }
    throw new CliError(`${where} has no ${clusterConfigKey(cluster)}: the apiserver of ${cluster} is not running or has not connected yet (start it with: clustermesh apiserver --cluster-name ${cluster} ...)`);
  }
  const d = decodeClusterConfig(cluster, pair.key, pair.value);
  if (!d.ok) throw new CliError(`${where}: ${clusterConfigKey(cluster)} is unusable (${d.detail})`);
  if (expectedId !== undefined && d.value.id !== expectedId) {
    throw new CliError(`cluster ${cluster} is recorded with ID ${expectedId}, but its apiserver publishes ID ${d.value.id} (${where}): the IDs do not match; restart the apiserver with --cluster-id ${expectedId} or fix the record`);
  }
  return d.value.id;
}

function labClusterOf(lab: LabState, name: string, flag: string): LabCluster {
  const c = lab.clusters.find((x) => x.name === name);
  if (!c) throw new CliError(`${flag} ${name}: no such cluster in lab ${lab.name}; known: ${lab.clusters.map((x) => x.name).join(', ') || 'none'}`);
  return c;
}

export function labAccessDir(c: LabCluster): string {
  return join(c.dir ?? dirname(c.remoteConfigDir), 'clustermesh-access');
}

function readLab(name: string): LabState {
  let lab: LabState;
  try {
    lab = readLabState(name);
  } catch (err) {
    if (err instanceof NoSuchLabError) throw new CliError(`${err.message} (without a lab, give the files: see --help)`);
    throw new CliError((err as Error).message);
  }
  // An installed (or bare) lab's mesh lives in its clusters' install, not in files of the lab: its clusters are reached by context.
  if (lab.install) {
    const [a, b] = lab.clusters.map((c) => c.name);
    throw new CliError(
      `lab ${lab.name} runs the mesh as clustermesh install's pods (namespace ${lab.install.namespace}), not as lab processes: --lab works on labs of \`lab up --direct\`; ` +
        `connect this lab's clusters by kube context from its workstation, e.g. clustermesh lab run --lab ${lab.name} -- clustermesh connect --context ${a ?? 'cluster1'} --destination-context ${b ?? 'cluster2'}`,
      EXIT_ERROR,
    );
  }
  return lab;
}

/**
 * Enables a lab cluster: verifies its etcd and apiserver, issues the
 * read-only client certificate (once) and writes its access bundle.
 */
export async function enableLabCluster(c: LabCluster, closer: Closer): Promise<RemoteAccess & { bundleDir: string }> {
  const kv = new KvClient(labEtcdConnection(c, 5000));
  closer.add(() => kv.close());
  const id = await verifyClusterConfig(kv, c.name, `the etcd of ${c.name}`, c.id);
  const pki = c.etcd.dir ? join(c.etcd.dir, 'pki') : dirname(c.etcd.caFile);
  const caKey = join(pki, 'ca.key');
  const userDir = join(pki, 'users');
  let certFile = join(userDir, 'remote.crt');
  let keyFile = join(userDir, 'remote.key');
  if (!existsSync(certFile) || !existsSync(keyFile)) {
    if (!existsSync(caKey)) throw new CliError(`cannot issue a client certificate for ${c.name}: no CA key at ${caKey}`);
    const issued = await issueCert({ commonName: `clustermesh-${c.name}-ca`, certFile: c.etcd.caFile, keyFile: caKey }, { commonName: 'remote', usage: 'client', outDir: userDir, name: 'remote' });
    certFile = issued.certFile;
    keyFile = issued.keyFile;
  }
  const access: RemoteAccess = { cluster: c.name, id, endpoints: [...c.etcd.endpoints], caFile: c.etcd.caFile, certFile, keyFile };
  const bundleDir = labAccessDir(c);
  await writeBundle(bundleDir, access);
  // The certificate must be able to read what an importer reads: try it (through the local endpoint).
  const asRemote: KvConnectionConfig = { ...labEtcdConnection(c, 5000), certFile, keyFile };
  const rkv = new KvClient(asRemote);
  closer.add(() => rkv.close());
  await verifyClusterConfig(rkv, c.name, `the etcd of ${c.name} as user 'remote'`, id);
  return { ...access, bundleDir };
}

async function writeBundle(dir: string, a: RemoteAccess): Promise<RemoteAccess> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const out: RemoteAccess = { ...a, caFile: join(dir, 'ca.crt'), certFile: join(dir, 'remote.crt'), keyFile: join(dir, 'remote.key') };
  for (const [from, to] of [
    [a.caFile, out.caFile],
    [a.certFile, out.certFile],
    [a.keyFile, out.keyFile],
  ] as const) {
    if (resolve(from) !== resolve(to)) await copyFile(from, to);
  }
  await chmod(out.keyFile, 0o600);
  await writeFile(join(dir, ACCESS_FILE), formatAccess(out, dir));
  return out;
}

// ---- connect / disconnect in a lab ------------------------------------------

export type ConnectionMode = 'unicast' | 'bidirectional' | 'mesh';

/** The ordered (source, destination) pairs a connect or disconnect touches. */
export function connectionPairs(cluster: string, destinations: string[], mode: ConnectionMode): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  const add = (a: string, b: string): void => {
    if (a !== b && !pairs.some(([x, y]) => x === a && y === b)) pairs.push([a, b]);
  };
  if (mode === 'mesh') {
    const all = [cluster, ...destinations];
    for (const a of all) for (const b of all) add(a, b);
    return pairs;
  }
  for (const d of destinations) {
    add(cluster, d);
    if (mode === 'bidirectional') add(d, cluster);
  }
  return pairs;
}

interface ConnectFlags {
  lab: string;
  cluster?: string;
  destinationCluster?: string[];
  connectionMode: ConnectionMode;
  output: 'text' | 'json';
  // explicit (no lab)
  configDir?: string;
  clusterName?: string;
  clusterId?: number;
  destinationAccess?: string[];
  // by kube context (clusters installed with clustermesh install)
  context?: string[];
  destinationContext?: string[];
  kubeconfig?: string;
  namespace: string;
  endpoint?: string[];
  destinationEndpoint?: string[];
}

/**
 * The installed clusters a by-context connect or disconnect touches, read
 * through their Kubernetes APIs, and the ordered (source, destination) pairs:
 * one --context and one --destination-context (both ways, or unicast), or,
 * with --connection-mode mesh, every pair of the clusters of every --context
 * (and --destination-context) given.
 */
async function contextPairs(o: ConnectFlags, verb: 'connect' | 'disconnect') {
  const { loadKubeConfig } = await import('../install/apply.ts');
  const { readInstalledCluster, meshPairs } = await import('../install/connect.ts');
  const contexts = o.context ?? [];
  const destinations = o.destinationContext ?? [];
  const read = (ctx: string, endpoints: string[] | undefined, flag: string) => readInstalledCluster(loadKubeConfig({ kubeconfig: o.kubeconfig, context: ctx }), o.namespace, endpoints, flag, verb === 'connect');
  if (o.connectionMode === 'mesh') {
    const all = [...contexts, ...destinations];
    if (all.length < 2) throw new CliError('--connection-mode mesh by context: give every cluster of the mesh, e.g. --context c1 --context c2 --context c3 (at least two)');
    const twice = all.find((c, i) => all.indexOf(c) !== i);
    if (twice !== undefined) throw new CliError(`--context ${twice} is given twice`);
    if (o.endpoint?.length || o.destinationEndpoint?.length) {
      throw new CliError('--endpoint and --destination-endpoint name one pair\'s clusters; with --connection-mode mesh every endpoint comes from its cluster\'s Service (see clustermesh enable --context), or connect that pair on its own');
    }
    // Sequential: each read names its context in its errors, and nothing is written before all are read.
    const clusters = [];
    for (const c of all) clusters.push(await read(c, undefined, '--context'));
    return meshPairs(clusters);
  }
  if (contexts.length !== 1 || destinations.length !== 1) {
    throw new CliError(
      contexts.length > 1 || destinations.length > 1
        ? `--context and --destination-context name one pair (given ${contexts.length} and ${destinations.length}); for more clusters use --connection-mode mesh --context c1 --context c2 --context c3`
        : '--context and --destination-context go together (the two clusters, by kube context)',
    );
  }
  const a = await read(contexts[0]!, o.endpoint, '--context');
  const b = await read(destinations[0]!, o.destinationEndpoint, '--destination-context');
  if (a.name === b.name && a.context === b.context) throw new CliError(`--context and --destination-context name the same cluster (${a.context})`);
  return o.connectionMode === 'unicast' ? [[a, b] as const] : [[a, b] as const, [b, a] as const];
}

function parseClusterId(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 511) throw new CliError(`--cluster-id: must be 1..511, got '${v}'`);
  return n;
}

async function connectAction(closer: Closer, o: ConnectFlags): Promise<number> {
  const done: Array<{ source: string; destination: string; file: string }> = [];
  if (o.context !== undefined || o.destinationContext !== undefined) {
    const pairs = await contextPairs(o, 'connect');
    const { connectInstalledPairs, remoteKeys } = await import('../install/connect.ts');
    await connectInstalledPairs(pairs);
    for (const [c, d] of pairs) done.push({ source: c.name, destination: d.name, file: `${c.context}: secret ${c.namespace}/clustermesh-remotes, key ${remoteKeys(d.name).config}` });
  } else if (o.configDir !== undefined || o.destinationAccess !== undefined) {
    // Explicit: install destination bundles into one config dir (unicast).
    if (!o.configDir) throw new CliError('--config-dir is required with --destination-access (the remote-cluster dir of the source cluster\'s agents)');
    if (!o.clusterName || o.clusterId === undefined) throw new CliError('--cluster-name and --cluster-id of the source cluster are required with --config-dir (to refuse a destination with the same name or ID)');
    if (!o.destinationAccess?.length) throw new CliError('--destination-access FILE is required with --config-dir (an access.yaml written by clustermesh enable)');
    const existing = await configuredRemotes(o.configDir);
    for (const file of o.destinationAccess) {
      const a = await readAccess(file);
      const problem = connectProblem({ name: o.clusterName, id: o.clusterId }, { name: a.cluster, id: a.id }, existing);
      if (problem) throw new CliError(problem, EXIT_ERROR);
      const r = await installRemoteConfig(o.configDir, a);
      existing.set(a.cluster, a.id);
      done.push({ source: o.clusterName, destination: a.cluster, file: r.file });
    }
  } else {
    if (!o.cluster) throw new CliError('--cluster is required (the cluster to connect)');
    if (!o.destinationCluster?.length && o.connectionMode !== 'mesh') throw new CliError('--destination-cluster is required (the cluster to connect to)');
    const lab = readLab(o.lab);
    const src = labClusterOf(lab, o.cluster, '--cluster');
    const dests = o.destinationCluster?.length ? o.destinationCluster : lab.clusters.map((c) => c.name).filter((n) => n !== src.name);
    for (const d of dests) {
      labClusterOf(lab, d, '--destination-cluster');
      if (d === src.name) throw new CliError(`cannot connect cluster ${d} to itself (--cluster and --destination-cluster name the same cluster)`);
    }
    const pairs = connectionPairs(src.name, dests, o.connectionMode);
    // Check every pair before changing anything.
    const accesses = new Map<string, RemoteAccess>();
    for (const name of new Set(pairs.map(([, d]) => d))) accesses.set(name, await enableLabCluster(labClusterOf(lab, name, '--destination-cluster'), closer));
    const labIds = new Map(lab.clusters.map((c) => [c.name, c.id] as const));
    const plans: Array<{ source: LabCluster; access: RemoteAccess }> = [];
    for (const [s, d] of pairs) {
      const source = labClusterOf(lab, s, '--cluster');
      const existing = await configuredRemotes(source.remoteConfigDir, labIds);
      for (const p of plans) if (p.source === source) existing.set(p.access.cluster, p.access.id);
      const access = accesses.get(d)!;
      const problem = connectProblem({ name: source.name, id: source.id }, { name: access.cluster, id: access.id }, existing);
      if (problem) throw new CliError(problem, EXIT_ERROR);
      plans.push({ source, access });
    }
    for (const p of plans) {
      const r = await installRemoteConfig(p.source.remoteConfigDir, p.access);
      done.push({ source: p.source.name, destination: p.access.cluster, file: r.file });
    }
  }
  if (o.output === 'json') printJson({ connected: done });
  else {
    for (const d of done) console.log(`connected ${d.source} -> ${d.destination} (${d.file})`);
    console.log("agents pick the change up by themselves; watch them connect with: clustermesh status --wait");
  }
  return EXIT_OK;
}

async function disconnectAction(_closer: Closer, o: ConnectFlags): Promise<number> {
  const done: Array<{ source: string; destination: string; removed: boolean }> = [];
  if (o.context !== undefined || o.destinationContext !== undefined) {
    const { disconnectInstalledPairs } = await import('../install/connect.ts');
    for (const [source, destination, removed] of await disconnectInstalledPairs(await contextPairs(o, 'disconnect'))) done.push({ source, destination, removed });
  } else if (o.configDir !== undefined) {
    if (!o.destinationCluster?.length) throw new CliError('--destination-cluster is required (the remote cluster to remove from --config-dir)');
    for (const d of o.destinationCluster) done.push({ source: o.clusterName ?? o.configDir, destination: d, removed: await removeRemoteConfig(o.configDir, d) });
  } else {
    if (!o.cluster) throw new CliError('--cluster is required (the cluster to disconnect)');
    const lab = readLab(o.lab);
    labClusterOf(lab, o.cluster, '--cluster');
    const dests = o.destinationCluster?.length ? o.destinationCluster : lab.clusters.map((c) => c.name).filter((n) => n !== o.cluster);
    for (const d of dests) labClusterOf(lab, d, '--destination-cluster');
    for (const [s, d] of connectionPairs(o.cluster, dests, o.connectionMode)) {
      done.push({ source: s, destination: d, removed: await removeRemoteConfig(labClusterOf(lab, s, '--cluster').remoteConfigDir, d) });
    }
  }
  if (o.output === 'json') printJson({ disconnected: done });
  else {
    for (const d of done) console.log(`${d.removed ? 'disconnected' : 'was not connected:'} ${d.source} -> ${d.destination}`);
    console.log('agents drain the removed clusters by themselves');
  }
  return EXIT_OK;
}

// ---- commands ----------------------------------------------------------------

const outputOpt = (): Option => new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text');

export function enableCommand(): Command {
  const cmd = new Command('enable')
    .description(
      "make a cluster connectable. A cluster installed with clustermesh install (--context): set (--service-type, --node-port) or keep how other clusters reach its etcd (its Service clustermesh-apiserver, which install already exposes), wait until that address answers with the certificate remote agents use, print it; idempotent (clustermesh disable reverses it). " +
        "A lab cluster (--cluster) or an etcd given by files (--etcd-config): check its etcd and apiserver (cluster-config with its ID), issue the read-only client certificate other clusters' agents use, and write its access bundle (access.yaml, ca.crt, remote.crt, remote.key)",
    )
    .option('--lab <name>', 'the lab the cluster is in', DEFAULT_LAB_NAME)
    .option('--cluster <name>', 'the cluster to enable')
    .option('--etcd-config <file>', "no lab: an admin client config of the cluster's etcd (endpoints, trusted-ca-file, cert-file, key-file)")
    .option('--ca-key <file>', "no lab: the key of the etcd's CA (signs the client certificate)")
    .option('--endpoint <url>', "no lab: what other clusters' agents connect to (repeatable; default: the --etcd-config endpoints)", collect)
    .option('--output-dir <dir>', 'no lab: where to write the access bundle')
    .option('--context <name>', "a cluster installed with clustermesh install (by kube context): set or check how other clusters reach its etcd (the Service install made), wait until that address answers and print it")
    .option('--kubeconfig <file>', 'with --context: kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
    .option('--namespace <ns>', 'with --context: namespace of the install', 'clustermesh-system')
    .addOption(new Option('--service-type <type>', 'with --context: NodePort or LoadBalancer (default: keep the type install gave it)').choices(['NodePort', 'LoadBalancer']))
    .option('--node-port <port>', 'with --context and NodePort: the port (default: the one it has, else 32000 + cluster ID)')
    .addOption(new Option('--wait-duration <duration>', 'with --context: how long to wait for the address to answer').argParser(parseDurationFlag).default(120_000, '2m'))
    .addOption(outputOpt())
    .action(
      action('enable', async (closer, o: { lab: string; cluster?: string; etcdConfig?: string; caKey?: string; endpoint?: string[]; outputDir?: string; output: string; context?: string; kubeconfig?: string; namespace: string; serviceType?: 'NodePort' | 'LoadBalancer'; nodePort?: string; waitDuration: number }) => {
        if (o.context !== undefined) {
          if (o.cluster !== undefined || o.etcdConfig !== undefined) throw new CliError('--context names an installed cluster; --cluster (lab) and --etcd-config (files) are other ways: give one');
          const r = await exposeByContext(o, o.serviceType);
          if (o.output === 'json') printJson(r);
          else console.log(`enabled ${r.cluster} (ID ${r.id}, context ${r.context}): other clusters reach its etcd at ${r.endpoints.join(', ')} (service ${o.namespace}/clustermesh-apiserver, ${r.type}${r.changed ? `, was ${r.was}` : ''})${r.changed && r.was !== 'ClusterIP' ? '\nclusters already connected to it hold its old address: connect them again (clustermesh connect --context ...)' : ''}`);
          return EXIT_OK;
        }
        if (o.serviceType !== undefined || o.nodePort !== undefined) throw new CliError('--service-type and --node-port go with --context (an installed cluster)');
        let result: RemoteAccess & { bundleDir: string };
        if (o.etcdConfig !== undefined) {
          if (!o.caKey || !o.outputDir) throw new CliError('--ca-key and --output-dir are required with --etcd-config');
          const conn = await loadEtcdConfig(o.etcdConfig).catch((err: Error) => {
            throw new CliError(err.message);
          });
          const kv = new KvClient({ ...conn, timeoutMs: conn.timeoutMs ?? 5000 });
          closer.add(() => kv.close());
          let name = o.cluster;
          if (!name) {
            const published = await publishedClusters(kv).catch((err: Error) => {
              throw new CliError(`--etcd-config ${o.etcdConfig}: ${err.message}`);
            });
            if (published.size !== 1) throw new CliError(`--etcd-config ${o.etcdConfig}: the etcd publishes ${published.size} cluster-configs; name the cluster with --cluster`);
            name = [...published.keys()][0]!;
          }
          const id = await verifyClusterConfig(kv, name, `the etcd of --etcd-config ${o.etcdConfig}`);
          const issued = await issueCert({ commonName: `clustermesh-${name}-ca`, certFile: conn.caFile, keyFile: resolve(o.caKey) }, { commonName: 'remote', usage: 'client', outDir: resolve(o.outputDir), name: 'remote' });
          const a = await writeBundle(resolve(o.outputDir), { cluster: name, id, endpoints: o.endpoint?.length ? o.endpoint : conn.endpoints, caFile: conn.caFile, certFile: issued.certFile, keyFile: issued.keyFile, ...(conn.serverName ? { serverName: conn.serverName } : {}) });
          result = { ...a, bundleDir: resolve(o.outputDir) };
        } else {
          if (!o.cluster) throw new CliError('--cluster is required (the cluster to enable)');
          const lab = readLab(o.lab);
          result = await enableLabCluster(labClusterOf(lab, o.cluster, '--cluster'), closer);
        }
        if (o.output === 'json') printJson({ cluster: result.cluster, id: result.id, endpoints: result.endpoints, bundle: join(result.bundleDir, ACCESS_FILE) });
        else console.log(`enabled ${result.cluster} (ID ${result.id}, ${result.endpoints.join(', ')}); access bundle: ${join(result.bundleDir, ACCESS_FILE)}`);
        return EXIT_OK;
      }),
    );
  return example(
    cmd,
    'clustermesh enable --cluster cluster2',
    'clustermesh enable --etcd-config admin-etcd.yaml --ca-key /etc/etcd/pki/ca.key --endpoint https://etcd.c2.example:2379 --output-dir ./c2-access',
    'clustermesh enable --context kind-c2                               # an install: check its Service answers, print the address',
    'clustermesh enable --context kind-c2 --service-type LoadBalancer   # change how other clusters reach it',
  );
}

/** enable / disable by context: the install's Service (src/install/enable.ts). */
async function exposeByContext(o: { context?: string; kubeconfig?: string; namespace: string; nodePort?: string; waitDuration: number; output: string }, serviceType: 'NodePort' | 'LoadBalancer' | 'ClusterIP' | undefined) {
  const { loadKubeConfig } = await import('../install/apply.ts');
  const { exposeInstalled } = await import('../install/enable.ts');
  const kc = loadKubeConfig({ kubeconfig: o.kubeconfig, context: o.context });
  return await exposeInstalled(kc, o.namespace, { serviceType, nodePort: o.nodePort }, o.waitDuration, (l) => (o.output === 'json' ? process.stderr.write(`${l}\n`) : console.log(l)));
}

export function disableCommand(): Command {
  const cmd = new Command('disable')
    .description(
      "stop exposing an installed cluster's etcd to other clusters (the reverse of enable --context): its Service clustermesh-apiserver becomes ClusterIP; " +
        "other clusters' agents lose their connection to it (disconnect them to remove their entries); a re-install or enable --context exposes it again",
    )
    .requiredOption('--context <name>', 'the kube context of the installed cluster')
    .option('--kubeconfig <file>', 'kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
    .option('--namespace <ns>', 'namespace of the install', 'clustermesh-system')
    .addOption(outputOpt())
    .action(
      action('disable', async (_closer, o: { context: string; kubeconfig?: string; namespace: string; output: string }) => {
        const r = await exposeByContext({ ...o, waitDuration: 0 }, 'ClusterIP');
        if (o.output === 'json') printJson(r);
        else console.log(`${r.changed ? 'disabled' : 'already disabled:'} ${r.cluster} (context ${r.context}): service ${o.namespace}/clustermesh-apiserver is ClusterIP${r.changed ? ` (was ${r.was})` : ''}; other clusters cannot reach its etcd`);
        return EXIT_OK;
      }),
    );
  return example(cmd, 'clustermesh disable --context kind-c2');
}

function connectOptions(cmd: Command, verb: 'connect' | 'disconnect'): Command {
  return cmd
    .option('--lab <name>', 'the lab the clusters are in', DEFAULT_LAB_NAME)
    .option('--cluster <name>', `the cluster to ${verb}`)
    .option('--destination-cluster <name>', `the cluster to ${verb} ${verb === 'connect' ? 'to' : 'from'} (repeatable; default with --connection-mode mesh: every other cluster of the lab)`, collect)
    .addOption(new Option('--connection-mode <mode>', 'unicast: only --cluster (--context) imports the destination; bidirectional: both ways; mesh: every pair of the clusters named (by context: every --context)').choices(['unicast', 'bidirectional', 'mesh']).default('bidirectional'))
    .option('--config-dir <dir>', "no lab: the source cluster's remote-cluster dir (its agents' clustermeshConfigDir)")
    .option('--context <name>', `clusters installed with clustermesh install: the kube context of the cluster to ${verb} (repeatable with --connection-mode mesh: every cluster of the mesh)`, collect)
    .option('--destination-context <name>', `the kube context of the cluster to ${verb} ${verb === 'connect' ? 'to' : 'from'}`, collect)
    .option('--kubeconfig <file>', 'kubeconfig holding both contexts (default: $KUBECONFIG, then ~/.kube/config)')
    .option('--namespace <ns>', 'namespace of both installs', 'clustermesh-system')
    .addOption(outputOpt());
}

export function connectCommand(): Command {
  const cmd = connectOptions(new Command('connect'), 'connect')
    .description("connect clusters: install each destination's access (config file and client certificate) into the source's remote-cluster dir, or, for clusters installed with clustermesh install (--context/--destination-context), into each one's Secret clustermesh-remotes; agents connect by themselves. Checks both sides first and refuses clusters whose names do not match their etcd, whose IDs collide, whose maxConnectedClusters differ, or whose etcd cannot be reached with the certificates the agents will use")
    .option('--cluster-name <name>', 'no lab: the source cluster name (with --config-dir)')
    .option('--cluster-id <id>', 'no lab: the source cluster ID (with --config-dir)', parseClusterId)
    .option('--destination-access <file>', 'no lab: an access.yaml written by clustermesh enable (repeatable)', collect)
    .option('--endpoint <url>', "by context: how the destination's agents reach this cluster's etcd (repeatable; default: from its Service: node InternalIPs and the NodePort, or the load balancer)", collect)
    .option('--destination-endpoint <url>', "by context: how this cluster's agents reach the destination's etcd (repeatable; default: from its Service)", collect)
    .action(action('connect', connectAction));
  return example(
    cmd,
    'clustermesh connect --cluster cluster1 --destination-cluster cluster2',
    'clustermesh connect --cluster cluster1 --connection-mode mesh        # every cluster of the lab with every other',
    'clustermesh connect --config-dir /etc/clustermesh/remote-clusters --cluster-name c1 --cluster-id 1 --destination-access ./c2-access/access.yaml',
    'clustermesh connect --context kind-c1 --destination-context kind-c2   # clusters installed with clustermesh install',
    'clustermesh connect --connection-mode mesh --context c1 --context c2 --context c3   # every pair; all checked before any Secret is written',
  );
}

export function disconnectCommand(): Command {
  const cmd = connectOptions(new Command('disconnect'), 'disconnect')
    .description("disconnect clusters: remove the config files (and certificates) of the destination from the source's remote-cluster dir, or by kube context from the installs' Secrets (both ways by default); agents drain what they learned from it")
    .option('--cluster-name <name>', 'no lab: the source cluster name (for messages)')
    .action(action('disconnect', disconnectAction));
  return example(cmd, 'clustermesh disconnect --cluster cluster1 --destination-cluster cluster2', 'clustermesh disconnect --config-dir /etc/clustermesh/remote-clusters --destination-cluster c2', 'clustermesh disconnect --context kind-c1 --destination-context kind-c2', 'clustermesh disconnect --connection-mode mesh --context c1 --context c2 --context c3');
}
