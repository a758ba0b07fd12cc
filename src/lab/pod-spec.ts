// The pure parts of how the lab's kubelet (kubelet.ts) runs a Pod spec with
// no image: environment ($(VAR) expansion, fieldRef, ConfigMap and Secret
// keys), the files of ConfigMap and Secret volumes, where a hostPath lands on
// a node, which CNI configuration of a directory is used, and the argv of
// clustermesh-podstart (src/lab/podstart-c), which enters a container's
// cgroup and namespaces and makes its mounts before it execs the command.
// No I/O here (unit tests: pod-spec.test.ts).
import { posix, resolve } from 'node:path';
import type { V1ConfigMap, V1Container, V1Pod, V1Secret, V1Volume } from '@kubernetes/client-node';

/**
 * `$(VAR)` references in a command, an arg or an env value, as Kubernetes
 * expands them: a defined name is replaced, an undefined one stays as written,
 * `$$` is a literal `$` (so `$$(VAR)` gives `$(VAR)`).
 */
export function expandVars(s: string, env: Record<string, string>): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (ch !== '$' || i + 1 >= s.length) {
      out += ch;
      continue;
    }
    const next = s[i + 1]!;
    if (next === '$') {
      out += '$';
      i++;
    } else if (next === '(') {
      const end = s.indexOf(')', i + 2);
      if (end < 0) {
        out += s.slice(i);
        break;
      }
      const name = s.slice(i + 2, end);
      out += Object.prototype.hasOwnProperty.call(env, name) ? env[name] : `$(${name})`;
      i = end;
    } else out += ch;
  }
  return out;
}

/** What env resolution reads: the pod's own fields, its addresses, and the ConfigMaps and Secrets of its namespace. */
export interface EnvContext {
  pod: V1Pod;
  hostIP: string | undefined;
  podIP: string | undefined;
  configMap(name: string): V1ConfigMap | undefined;
  secret(name: string): V1Secret | undefined;
}

/** A value that must exist but does not: the pod waits (a real kubelet reports CreateContainerConfigError). */
export class PodConfigError extends Error {}

const secretValue = (s: V1Secret, key: string): string | undefined =>
  s.data?.[key] !== undefined ? Buffer.from(s.data[key]!, 'base64').toString('utf8') : s.stringData?.[key];

function fieldValue(path: string, ctx: EnvContext): string {
  const p = ctx.pod;
  switch (path) {
    case 'metadata.name':
      return p.metadata?.name ?? '';
    case 'metadata.namespace':
      return p.metadata?.namespace ?? '';
    case 'metadata.uid':
      return p.metadata?.uid ?? '';
    case 'spec.nodeName':
      return p.spec?.nodeName ?? '';
    case 'spec.serviceAccountName':
      return p.spec?.serviceAccountName ?? '';
    case 'status.hostIP':
      return ctx.hostIP ?? '';
    case 'status.podIP':
      return ctx.podIP ?? '';
  }
  const label = /^metadata\.labels\['(.+)'\]$/.exec(path);
  if (label) return p.metadata?.labels?.[label[1]!] ?? '';
  const ann = /^metadata\.annotations\['(.+)'\]$/.exec(path);
  if (ann) return p.metadata?.annotations?.[ann[1]!] ?? '';
  throw new PodConfigError(`fieldRef ${path} is not supported by the lab kubelet (metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'], metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.hostIP, status.podIP)`);
}

/**
 * The environment a container's spec declares, in order (envFrom first, then
 * env; later wins) over `base` (what the kubelet defines for every container),
 * each value's `$(VAR)` expanded against what is defined before it. Throws PodConfigError naming the container and the reference
 * when a non-optional ConfigMap, Secret or key is missing.
 */
export function resolveEnv(c: V1Container, ctx: EnvContext, base: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = { ...base };
  const where = `container ${c.name}`;
  for (const from of c.envFrom ?? []) {
    const prefix = from.prefix ?? '';
    if (from.configMapRef) {
      const cm = ctx.configMap(from.configMapRef.name ?? '');
      if (!cm) {
        if (from.configMapRef.optional) continue;
        throw new PodConfigError(`${where}: envFrom configmap "${from.configMapRef.name}" not found`);
      }
      for (const [k, v] of Object.entries(cm.data ?? {})) env[prefix + k] = v;
    } else if (from.secretRef) {
      const s = ctx.secret(from.secretRef.name ?? '');
      if (!s) {
        if (from.secretRef.optional) continue;
        throw new PodConfigError(`${where}: envFrom secret "${from.secretRef.name}" not found`);
      }
      for (const k of new Set([...Object.keys(s.data ?? {}), ...Object.keys(s.stringData ?? {})])) env[prefix + k] = secretValue(s, k)!;
    }
  }
  for (const e of c.env ?? []) {
    const vf = e.valueFrom;
    if (!vf) {
      env[e.name] = expandVars(e.value ?? '', env);
    } else if (vf.fieldRef) {
      env[e.name] = fieldValue(vf.fieldRef.fieldPath, ctx);
    } else if (vf.configMapKeyRef) {
      const ref = vf.configMapKeyRef;
      const v = ctx.configMap(ref.name ?? '')?.data?.[ref.key];
      if (v !== undefined) env[e.name] = v;
      else if (!ref.optional) throw new PodConfigError(`${where}: env ${e.name}: key "${ref.key}" of configmap "${ref.name}" not found`);
    } else if (vf.secretKeyRef) {
      const ref = vf.secretKeyRef;
      const s = ctx.secret(ref.name ?? '');
      const v = s ? secretValue(s, ref.key) : undefined;
      if (v !== undefined) env[e.name] = v;
      else if (!ref.optional) throw new PodConfigError(`${where}: env ${e.name}: key "${ref.key}" of secret "${ref.name}" not found`);
    } else throw new PodConfigError(`${where}: env ${e.name}: only value, fieldRef, configMapKeyRef and secretKeyRef are supported by the lab kubelet`);
  }
  return env;
}

/** command + args with `$(VAR)` expanded against the container's environment. */
export function containerArgv(c: V1Container, env: Record<string, string>): string[] {
  return [...(c.command ?? []), ...(c.args ?? [])].map((s) => expandVars(s, env));
}

/** Machine paths hostPath volumes share with the machine (read-only), as kind's nodes do. */
export const DEFAULT_SHARED_HOST_PATHS = ['/lib/modules', '/sys', '/proc', '/dev'];

/**
 * Where hostPath `p` of a pod lands: `<hostRoot>/<p>` (each lab node has a
 * host filesystem of its own), or the machine's `p` itself when it is (under)
 * one of `shared` (then read-only).
 */
export function mapHostPath(p: string, hostRoot: string, shared: string[]): { path: string; shared: boolean } {
  if (!posix.isAbsolute(p)) throw new PodConfigError(`hostPath ${JSON.stringify(p)} is not an absolute path`);
  const norm = posix.normalize(p);
  if (shared.some((s) => norm === s || norm.startsWith(s.endsWith('/') ? s : `${s}/`))) return { path: norm, shared: true };
  return { path: posix.join(hostRoot, norm), shared: false };
}

/** The CNI configuration a runtime uses from a directory's file names: the lexically first *.conflist, *.conf or *.json. */
export function chooseCniConf(files: string[]): string | undefined {
  return files.filter((f) => /\.(conflist|conf|json)$/.test(f) && !f.startsWith('.')).sort()[0];
}

/**
 * The one plugin's network config of a CNI config file's text: a conflist
 * (`{cniVersion, name, plugins: [{type, ...}]}`, with name and cniVersion
 * put into the plugin's config as a runtime does) or a single .conf. A
 * conflist of more than one plugin is refused (the lab kubelet does not chain).
 */
export function netconfOfFile(text: string, file: string): Record<string, unknown> {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (err) {
    throw new Error(`CNI config ${file}: not JSON: ${(err as Error).message}`);
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new Error(`CNI config ${file}: not a JSON object`);
  const o = j as Record<string, unknown>;
  if ('plugins' in o) {
    if (!Array.isArray(o.plugins) || o.plugins.length === 0) throw new Error(`CNI config ${file}: plugins must be a non-empty list`);
    if (o.plugins.length > 1) throw new Error(`CNI config ${file}: ${o.plugins.length} plugins; the lab kubelet runs a conflist of one plugin only`);
    const p = o.plugins[0] as Record<string, unknown>;
    if (typeof p?.type !== 'string') throw new Error(`CNI config ${file}: plugins[0].type must be a string`);
    return { ...p, cniVersion: o.cniVersion, name: o.name };
  }
  if (typeof o.type !== 'string') throw new Error(`CNI config ${file}: type must be a string`);
  return o;
}

/** A file of a ConfigMap or Secret volume: path relative to the volume, content, mode. */
export interface ProjectedFile {
  path: string;
  data: Buffer;
  mode: number;
}

/**
 * The files of a configMap or secret volume (every key, or `items` with key,
 * path and mode; defaultMode 0644). `undefined` object: optional gives no
 * files, otherwise PodConfigError.
 */
export function projectedFiles(vol: V1Volume, obj: V1ConfigMap | V1Secret | undefined): ProjectedFile[] {
  const src = vol.configMap ?? vol.secret;
  if (!src) throw new Error(`volume ${vol.name} is neither configMap nor secret`);
  const what = vol.configMap ? `configmap "${vol.configMap.name}"` : `secret "${vol.secret!.secretName}"`;
  if (!obj) {
    if (src.optional) return [];
    throw new PodConfigError(`volume ${vol.name}: ${what} not found`);
  }
  const values = new Map<string, Buffer>();
  if (vol.configMap) {
    const cm = obj as V1ConfigMap;
    for (const [k, v] of Object.entries(cm.data ?? {})) values.set(k, Buffer.from(v));
    for (const [k, v] of Object.entries(cm.binaryData ?? {})) values.set(k, Buffer.from(v, 'base64'));
  } else {
    const s = obj as V1Secret;
    for (const [k, v] of Object.entries(s.data ?? {})) values.set(k, Buffer.from(v, 'base64'));
    for (const [k, v] of Object.entries(s.stringData ?? {})) if (!values.has(k)) values.set(k, Buffer.from(v));
  }
  const mode = src.defaultMode ?? 0o644;
  if (!src.items?.length) return [...values].sort(([a], [b]) => a.localeCompare(b)).map(([path, data]) => ({ path, data, mode }));
  const out: ProjectedFile[] = [];
  for (const it of src.items) {
    const data = values.get(it.key);
    if (data === undefined) {
      if (src.optional) continue;
      throw new PodConfigError(`volume ${vol.name}: key "${it.key}" of ${what} not found`);
    }
    const path = posix.normalize(it.path);
    if (posix.isAbsolute(path) || path.startsWith('..')) throw new PodConfigError(`volume ${vol.name}: item path ${JSON.stringify(it.path)} must be relative and stay inside the volume`);
    out.push({ path, data, mode: it.mode ?? mode });
  }
  return out;
}

/** One bind mount of a container's mount namespace. */
export interface ContainerMount {
  source: string;
  target: string;
  readOnly: boolean;
  /** The target is a file (a bind of a file needs a file to mount on). */
  file: boolean;
  /** rbind (hostPath: submounts come along). */
  recursive: boolean;
}

/** The lab kubelet's container start, built by scripts/setup.sh (`make -C src/lab/podstart-c`) into dist/lab/. */
export const PODSTART_BIN = resolve(import.meta.dirname, '..', '..', 'dist', 'lab', 'clustermesh-podstart');

/** How PODSTART_BIN starts a command. */
export interface PodStart {
  /** Wait for "run" on stdin first (src/util/held-start.ts's protocol: spawn with stdin 'pipe', then recordThenRelease). */
  hold?: boolean;
  /** Join this cgroup (the node's) before anything else runs. */
  cgroup?: string;
  /** Run in this network namespace, as `ip netns exec` would (which gives a mount namespace of its own too). */
  netns?: string;
  /** Without netns: a mount namespace of its own, every mount a slave ('slave') or as it is ('unchanged', for bidirectional mounts). */
  mountNs?: 'slave' | 'unchanged';
  /** The bind mounts, made in that mount namespace (a directory of the pod for scratch, see PODSTART_BIN's source). */
  mounts?: { list: ContainerMount[]; bidirectional: string[]; scratch: string };
}

/**
 * argv that runs `argv` as `o` says, in one process that execs it at the end
 * (src/lab/podstart-c/clustermesh-podstart.c): the held start, the cgroup, the
 * namespaces and the container's mounts. Mount points the machine lacks are
 * made in overlays inside the namespace, never on the machine; a target under
 * another mount's target gets its mount point inside that volume (as a
 * container runtime makes it); `bidirectional` sources stay peers of the
 * machine's mounts, so a mount made under them inside shows outside.
 */
export function podstartArgv(o: PodStart, argv: readonly string[]): string[] {
  const out = [PODSTART_BIN];
  if (o.hold) out.push('--hold');
  if (o.cgroup !== undefined) out.push('--cgroup', o.cgroup);
  if (o.netns !== undefined) out.push('--netns', o.netns);
  else if (o.mountNs !== undefined) out.push('--mount-ns', o.mountNs);
  if (o.mounts?.list.length) {
    if (o.netns === undefined && o.mountNs === undefined) throw new Error('podstartArgv: mounts need a mount namespace of their own (netns or mountNs)');
    out.push('--scratch', o.mounts.scratch);
    for (const m of o.mounts.list) out.push('--mount', `${m.readOnly ? 'r' : ''}${m.file ? 'f' : ''}${m.recursive ? 'R' : ''}` || '-', m.source, m.target);
    for (const b of o.mounts.bidirectional) out.push('--bidirectional', b);
  }
  out.push('--', ...argv);
  return out;
}
