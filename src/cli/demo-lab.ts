// `clustermesh demo` (the default flow): the story of the seed, told by driving the CLI
// and real kubectl exactly as a user would type them (every step runs
// `clustermesh …` or `kubectl --kubeconfig <the lab's> --context clusterN …` as
// its own process and shows the command and what it printed):
//   1. lab up: 2 clusters x 2 nodes (etcd, the Kubernetes API, apiserver,
//      agents, node runtimes, DNS)
//   2. kubectl apply the global rebel-base Service and its Deployment in both clusters,
//      the x-wing (app=frontend) and the tie-fighter (no app label) in cluster1
//   3. the x-wing asks http://rebel-base.default.svc.cluster.local/ 20 times:
//      answers come from both clusters
//   4. the Kubernetes way (the MCS API): kubectl apply a ServiceExport of
//      rebel-base in both clusters; cluster1 gets a ServiceImport, and the
//      x-wing's answers from http://rebel-base.default.svc.clusterset.local/
//      come from both clusters
//   5. the seed's cross-cluster policy: backends admit only cluster1's
//      frontends; the x-wing still gets answers, the tie-fighter is refused,
//      and `clustermesh observe --verdict DROPPED` shows the drop and its reason
//   6. cluster1's rebel-base scaled to 0 (kubectl scale): every answer now comes from cluster2
//   7. clustermesh status
//   8. lab down (unless --keep)
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import type { PodView } from './lab.ts';

const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');
export const EXAMPLES_DIR = resolve(import.meta.dirname, '..', '..', 'examples', 'rebel-base');
export const REBEL_BASE_URL = 'http://rebel-base.default.svc.cluster.local/';
const REBEL_BASE_FQDN = 'rebel-base.default.svc.cluster.local';
export const MCS_EXPORT = resolve(import.meta.dirname, '..', '..', 'examples', 'mcs', 'rebel-base-export.yaml');
const REBEL_BASE_CLUSTERSET_URL = 'http://rebel-base.default.svc.clusterset.local/';

export interface LabDemoOptions {
  /** Lab name (default 'demo', so a user's 'default' lab is left alone). */
  name?: string;
  /** Keep the lab at the end (and after a failure) instead of `lab down`. */
  keep?: boolean;
  /** Requests the x-wing makes in step 3 and 5 (default 20). */
  requests?: number;
  /** Where lines go (default stdout). */
  print?: (line: string) => void;
  /** How `clustermesh` is run (default: this checkout's bin/clustermesh.js under this node). */
  cli?: string[];
  /** Environment of every `clustermesh` and `kubectl` command (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** The kubectl executable (default: `kubectl` on the PATH). */
  kubectl?: string;
}

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

interface Tally {
  url: string;
  requests: number;
  failures: number;
  tally: Record<string, number>;
  lastError?: string;
}


const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Answers per cluster from a client tally (keys are cluster/node/pod). */
export function byCluster(t: Pick<Tally, 'tally'>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(t.tally)) {
    const c = k.split('/')[0]!;
    out[c] = (out[c] ?? 0) + v;
  }
  return out;
}

export async function runLabDemo(opts: LabDemoOptions = {}): Promise<boolean> {
  const name = opts.name ?? 'demo';
  const n = opts.requests ?? 20;
  const print = opts.print ?? ((l: string) => console.log(l));
  const cliArgv = opts.cli ?? [process.execPath, CLI];
  const checks: Array<{ what: string; ok: boolean; detail: string }> = [];
  const t0 = Date.now();

  // Ctrl-C reaches the running `clustermesh` child too (same process group); the
  // demo then stops at the next step and still takes its lab down (unless --keep).
  let interrupted = false;
  const onSigint = (): void => {
    interrupted = true;
    print('\n   (interrupted: stopping after this command)');
  };
  process.on('SIGINT', onSigint);

  const step = (title: string, shows: string): void => {
    if (interrupted) throw new Error('interrupted');
    print('');
    print(`== ${title}`);
    print(`   ${shows}`);
  };
  const check = (what: string, ok: boolean, detail = ''): boolean => {
    checks.push({ what, ok, detail });
    print(`   ${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? `: ${detail}` : ''}`);
    return ok;
  };

  const quote = (args: string[]): string => args.map((a) => (/[\s"'*]/.test(a) ? `'${a}'` : a)).join(' ');
  /** Runs `clustermesh ARGS`; echoes the command and (unless quiet) its output, indented. */
  const cm = (args: string[], o: { quiet?: boolean; timeoutMs?: number; live?: boolean } = {}): Promise<CliResult> => {
    if (!o.quiet) print(`   $ clustermesh ${quote(args)}`);
    return runCommand(cliArgv, args, o);
  };
  /** The lab's kubeconfig (`clustermesh lab kubeconfig`), known once the lab is up. */
  let kubeconfig = '';
  /** Runs real `kubectl --kubeconfig <the lab's> --context CLUSTER ARGS`; echoes the command and its output, indented. */
  const kubectl = (cluster: string, args: string[], o: { quiet?: boolean; timeoutMs?: number } = {}): Promise<CliResult> => {
    const full = ['--kubeconfig', kubeconfig, '--context', cluster, ...args];
    if (!o.quiet) print(`   $ kubectl ${quote(full)}`);
    return runCommand([opts.kubectl ?? 'kubectl'], full, o);
  };
  const runCommand = (argv: string[], args: string[], o: { quiet?: boolean; timeoutMs?: number; live?: boolean }): Promise<CliResult> => {
    const started = Date.now();
    return new Promise((res) => {
      const child = spawn(argv[0]!, [...argv.slice(1), ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...(opts.env ? { env: opts.env } : {}) });
      let stdout = '';
      let stderr = '';
      let partial = '';
      const echo = (chunk: string): void => {
        if (o.quiet || !o.live) return;
        partial += chunk;
        const lines = partial.split('\n');
        partial = lines.pop()!;
        for (const l of lines) print(`     ${l}`);
      };
      child.stdout.setEncoding('utf8').on('data', (c: string) => {
        stdout += c;
        echo(c);
      });
      child.stderr.setEncoding('utf8').on('data', (c: string) => {
        stderr += c;
        echo(c);
      });
      const timer = setTimeout(() => child.kill('SIGTERM'), o.timeoutMs ?? 120_000);
      child.on('error', (err) => {
        stderr += err.message;
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        if (!o.quiet) {
          if (o.live && partial) print(`     ${partial}`);
          if (!o.live) for (const l of `${stdout}${stderr}`.trimEnd().split('\n')) if (l) print(`     ${l}`);
        }
        res({ code, stdout, stderr, ms: Date.now() - started });
      });
    });
  };

  const pods = async (): Promise<PodView[]> => {
    const r = await cm(['lab', 'get', 'pods', '--lab', name, '-o', 'json'], { quiet: true });
    if (r.code !== 0) return [];
    try {
      return JSON.parse(r.stdout) as PodView[];
    } catch {
      return [];
    }
  };

  const waitPods = async (what: string, cond: (p: PodView[]) => boolean, timeoutMs = 120_000): Promise<boolean> => {
    const end = Date.now() + timeoutMs;
    let last: PodView[] = [];
    while (Date.now() < end) {
      last = await pods();
      if (cond(last)) return true;
      await sleep(500);
    }
    const notReady = last.filter((p) => !p.ready).map((p) => `${p.cluster}/${p.namespace}/${p.name} ${p.phase}`);
    check(what, false, `not within ${timeoutMs / 1000} s${notReady.length ? `; not ready: ${notReady.join(', ')}` : ''}`);
    return false;
  };

  const client = async (pod: string, url: string, count: number, timeoutMs = 3000, quiet = false): Promise<Tally> => {
    const r = await cm(['lab', 'exec', pod, '--lab', name, '--cluster', 'cluster1', '--', 'clustermesh', 'lab', 'workload', 'client', url, '-n', String(count), '--timeout', String(timeoutMs), '--json'], {
      quiet: true,
      timeoutMs: count * timeoutMs + 30_000,
    });
    let t: Tally;
    try {
      t = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as Tally;
    } catch {
      t = { url, requests: count, failures: count, tally: {}, lastError: (r.stderr || r.stdout).trim().split('\n')[0] ?? `exit ${r.code}` };
    }
    if (!quiet) {
      print(`   $ clustermesh lab exec ${pod} --cluster cluster1 -- clustermesh lab workload client ${url} -n ${count}`);
      print(`     ${count - t.failures} of ${count} answered${t.failures ? `, ${t.failures} failed${t.lastError ? ` (${t.lastError})` : ''}` : ''}`);
      for (const [k, v] of Object.entries(t.tally).sort()) print(`     ${String(v).padStart(4)}  ${k}`);
      const bc = byCluster(t);
      if (Object.keys(bc).length) print(`     by cluster: ${Object.entries(bc).sort().map(([c, v]) => `${c} ${v}`).join(', ')}`);
    }
    return t;
  };

  /** Repeats `attempt` until `good` holds or the time is up; returns the last result. */
  const until = async <T>(attempt: () => Promise<T>, good: (t: T) => boolean, timeoutMs: number, waiting: string): Promise<T> => {
    const end = Date.now() + timeoutMs;
    let said = false;
    for (;;) {
      const r = await attempt();
      if (good(r) || Date.now() > end) return r;
      if (!said) print(`   (${waiting}; retrying for up to ${timeoutMs / 1000} s)`);
      said = true;
      await sleep(1000);
    }
  };

  let up = false;
  try {
    // ---- 1
    step(`lab up: 2 clusters x 2 nodes (lab '${name}')`, 'namespaces for nodes and a router, per cluster the Kubernetes API over its etcd (mutual TLS), a node runtime per node and the cluster DNS; then the mesh put on them as on real clusters: clustermesh install (agent DaemonSet, apiserver and its etcd) and clustermesh connect, by kube context');
    const upRes = await cm(['lab', 'up', '--lab', name, '--clusters', '2', '--nodes', '2'], { live: true, timeoutMs: 300_000 });
    up = upRes.code === 0;
    if (!check('lab up', up, up ? `${(upRes.ms / 1000).toFixed(1)} s` : `exit ${upRes.code}`)) {
      if (/already|running|exists/i.test(upRes.stdout + upRes.stderr)) print(`   a lab named ${name} is running: remove it with 'clustermesh lab down --lab ${name}' or pick another with --lab`);
      return false;
    }
    const kc = await cm(['lab', 'kubeconfig', '--lab', name]);
    kubeconfig = kc.stdout.trim();
    if (!check('the lab\'s kubeconfig (a context per cluster)', kc.code === 0 && kubeconfig !== '', kc.code === 0 ? kubeconfig : `exit ${kc.code}`)) return false;

    // ---- 2
    step('kubectl apply the rebel base to both clusters and two clients to cluster1', 'a global Service rebel-base (port 80 -> 8080) with 2 echo pods per cluster; x-wing (app=frontend) and tie-fighter (no app label) in cluster1');
    for (const [file, cluster] of [['rebel-base.yaml', 'cluster1'], ['rebel-base.yaml', 'cluster2'], ['clients.yaml', 'cluster1']] as const) {
      const r = await kubectl(cluster, ['apply', '-f', resolve(EXAMPLES_DIR, file)]);
      check(`kubectl apply ${file} in ${cluster}`, r.code === 0, r.code === 0 ? '' : `exit ${r.code}${r.code === null || /ENOENT/.test(r.stderr) ? ' (is kubectl installed? ./scripts/setup.sh installs it)' : ''}`);
    }
    const storyReady = (ps: PodView[]): boolean => {
      const rb = (c: string) => ps.filter((p) => p.cluster === c && p.deployment === 'rebel-base' && p.ready).length;
      const has = (pod: string) => ps.some((p) => p.cluster === 'cluster1' && p.name === pod && p.ready && p.podIP);
      return rb('cluster1') >= 2 && rb('cluster2') >= 2 && has('x-wing') && has('tie-fighter');
    };
    if (await waitPods('every pod of the story ready', storyReady)) check('every pod of the story ready', true);
    for (const cluster of ['cluster1', 'cluster2']) await kubectl(cluster, ['get', 'pods', '-o', 'wide']);

    // ---- 3
    step(`the x-wing asks ${REBEL_BASE_URL} ${n} times`, 'the name resolves through the cluster DNS to cluster1\'s ClusterIP; the global Service balances over the backends of both clusters');
    let url = REBEL_BASE_URL;
    const dns = await until(
      // glibc retries a silent server for a long time: bound each attempt.
      () => cm(['lab', 'exec', 'x-wing', '--lab', name, '--cluster', 'cluster1', '--', 'timeout', '8', 'getent', 'hosts', REBEL_BASE_FQDN], { quiet: true, timeoutMs: 30_000 }),
      (r) => r.code === 0,
      30_000,
      'the name does not resolve yet',
    );
    print(`   $ clustermesh lab exec x-wing --cluster cluster1 -- getent hosts ${REBEL_BASE_FQDN}`);
    print(`     ${(dns.stdout.trim() || dns.stderr.trim() || (dns.code === 124 ? 'no answer within 8 s' : dns.code === 2 ? 'not found' : `exit ${dns.code}`)).split('\n')[0]}`);
    if (!check('cluster DNS answers the Service name in the pod', dns.code === 0)) {
      // The rest of the story still runs, by ClusterIP, so one missing piece does not hide the others.
      const svc = await kubectl('cluster1', ['get', 'service', 'rebel-base', '-o', 'jsonpath={.spec.clusterIP}']);
      try {
        const ip = svc.code === 0 ? svc.stdout.trim() : undefined;
        if (ip) {
          url = `http://${ip}/`;
          print(`   continuing with the ClusterIP: ${url} (see: kubectl --context cluster1 -n kube-system get pods; clustermesh lab logs)`);
        }
      } catch {
        /* keep the name */
      }
    }
    const both = (t: Tally): boolean => Object.keys(byCluster(t)).length >= 2 && t.failures === 0;
    // The global Service merges the other cluster's backends as soon as its agents have them: wait for that with a few requests.
    await until(() => client('x-wing', url, 6, 3000, true), both, 30_000, 'not every cluster answers yet: the global Service is still merging');
    const tally = await client('x-wing', url, n, 3000);
    check('answers from both clusters', both(tally), Object.entries(byCluster(tally)).sort().map(([c, v]) => `${c} ${v}`).join(', ') || `none (${tally.lastError ?? ''})`);

    // ---- 4
    step('the Kubernetes way: export rebel-base with the Multi-Cluster Services API (a ServiceExport in both clusters)', `cluster1 gets a ServiceImport with its own virtual IP; ${REBEL_BASE_CLUSTERSET_URL} balances over the pods of every exporting cluster`);
    for (const cluster of ['cluster1', 'cluster2']) {
      const r = await kubectl(cluster, ['apply', '-f', MCS_EXPORT]);
      check(`kubectl apply rebel-base-export.yaml in ${cluster}`, r.code === 0, r.code === 0 ? '' : `exit ${r.code}`);
    }
    const imported = await until(
      () => kubectl('cluster1', ['get', 'serviceimport', 'rebel-base', '-o', 'jsonpath={.spec.ips[0]} {.status.clusters[*].cluster}'], { quiet: true }),
      (r) => r.code === 0 && /^\S+ .*cluster1.*cluster2|^\S+ .*cluster2.*cluster1/.test(r.stdout.trim()),
      60_000,
      'the ServiceImport does not list both clusters yet',
    );
    await kubectl('cluster1', ['get', 'serviceimports']);
    check('cluster1 imports rebel-base from both clusters', imported.code === 0 && /cluster1/.test(imported.stdout) && /cluster2/.test(imported.stdout), imported.stdout.trim() || imported.stderr.trim());
    await until(() => client('x-wing', REBEL_BASE_CLUSTERSET_URL, 6, 3000, true), both, 60_000, 'not every cluster answers by the clusterset name yet');
    const mcs = await client('x-wing', REBEL_BASE_CLUSTERSET_URL, n, 3000);
    check('answers by the clusterset name from both clusters', both(mcs), Object.entries(byCluster(mcs)).sort().map(([c, v]) => `${c} ${v}`).join(', ') || `none (${mcs.lastError ?? ''})`);

    // ---- 5
    step('the seed\'s cross-cluster policy: app=backend admits only app=frontend of cluster1 (applied in both clusters)', 'identity-based policy in eBPF: the x-wing is still answered, the tie-fighter is refused, and the datapath says why');
    for (const cluster of ['cluster2', 'cluster1']) {
      const r = await kubectl(cluster, ['apply', '-f', resolve(EXAMPLES_DIR, 'policy.yaml')]);
      check(`kubectl apply policy.yaml in ${cluster}`, r.code === 0, r.code === 0 ? '' : `exit ${r.code}`);
    }
    // Until every agent has the policy, a request may still pass; wait for the tie-fighter to be refused.
    await until(() => client('tie-fighter', url, 2, 1000, true), (t) => t.failures === 2, 30_000, 'the policy is not in every datapath yet');
    const xw = await client('x-wing', url, 10, 3000);
    check('x-wing (app=frontend) is answered', xw.failures === 0 && xw.requests - xw.failures === 10, `${10 - xw.failures} of 10, by cluster ${JSON.stringify(byCluster(xw))}`);
    const tf = await client('tie-fighter', url, 4, 1500);
    check('tie-fighter (no app label) is refused', tf.failures === 4, `${tf.failures} of 4 refused`);
    const obs = await cm(['observe', '--lab', name, '--verdict', 'DROPPED', '--last', '6'], { timeoutMs: 60_000 });
    const dropLines = obs.stdout.split('\n').filter((l) => /polic/i.test(l));
    check('observe shows the drop with its reason', obs.code === 0 && dropLines.length > 0, dropLines.length ? `${dropLines.length} policy drop${dropLines.length === 1 ? '' : 's'} listed` : `no policy drop in the output (exit ${obs.code})`);

    // ---- 6
    step('cluster1 loses its rebel base: scale it to 0', 'the global Service fails over: every answer now comes from cluster2, with nothing changed in the client');
    const sc = await kubectl('cluster1', ['scale', 'deployment/rebel-base', '--replicas', '0']);
    check('kubectl scale cluster1 rebel-base to 0', sc.code === 0);
    await waitPods('cluster1 rebel-base pods gone', (ps) => !ps.some((p) => p.cluster === 'cluster1' && p.deployment === 'rebel-base'), 60_000);
    const only2 = (t: Tally): boolean => t.failures === 0 && Object.keys(t.tally).length > 0 && Object.keys(byCluster(t)).every((c) => c === 'cluster2');
    await until(() => client('x-wing', url, 4, 3000, true), only2, 30_000, 'cluster1 backends still being removed');
    const after = await client('x-wing', url, n, 3000);
    check('every answer from cluster2', only2(after), Object.entries(byCluster(after)).map(([c, v]) => `${c} ${v}`).join(', ') || `none (${after.lastError ?? ''})`);

    // ---- 7
    step('clustermesh status', 'per cluster: etcd and apiserver, every node connected to every cluster, what each remote cluster shares');
    const st = await cm(['status', '--lab', name], { timeoutMs: 60_000 });
    check('status: everything connected', st.code === 0, st.code === 0 ? '' : `exit ${st.code}`);
  } catch (err) {
    check('the demo ran to its end', false, (err as Error).message);
  } finally {
    if (up && !opts.keep) {
      interrupted = false;
      step('lab down', 'every process, namespace, pin and file the lab made is removed');
      const d = await cm(['lab', 'down', '--lab', name], { live: true, timeoutMs: 120_000 });
      check('lab down', d.code === 0);
    } else if (up) {
      print('');
      print(`== the lab '${name}' keeps running; look around, then: clustermesh lab down --lab ${name}`);
      print(`   export KUBECONFIG=$(clustermesh lab kubeconfig --lab ${name}); kubectl --context cluster1 get pods -o wide`);
      print(`   clustermesh lab exec x-wing --lab ${name} --cluster cluster1 -- clustermesh lab workload client ${REBEL_BASE_URL} -n 20`);
      print(`   clustermesh observe --lab ${name} --verdict DROPPED`);
    }
  }
  process.off('SIGINT', onSigint);
  const failed = checks.filter((c) => !c.ok);
  print('');
  print(failed.length === 0 ? `demo: all ${checks.length} checks passed in ${((Date.now() - t0) / 1000).toFixed(0)} s` : `demo: ${failed.length} of ${checks.length} checks FAILED: ${failed.map((c) => c.what).join('; ')}`);
  return failed.length === 0;
}
