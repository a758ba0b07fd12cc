// A lab of the tests that drive `clustermesh lab` as a user would: its own lab
// root and scratch directory, a unique lab name, the CLI with the lab's
// kubeconfig, kubectl by context, the lab's workstation (`lab run`) and the
// workload client in a pod. up() in before(), down() in after(): the lab goes
// down and both directories are removed even when a test (or up) failed.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { childEnv } from '../../src/lab/process.ts';
import { kubectlFor, ok, run, show, type Run } from './kube.ts';

export const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');

/** What `clustermesh lab workload client --json` prints last. */
export interface Tally {
  requests: number;
  failures: number;
  tally: Record<string, number>;
  lastError?: string;
}

export interface LabFixture {
  /** The lab's name (`${prefix}` and six hex digits). */
  name: string;
  /** The lab root (CLUSTERMESH_LAB_ROOT) and this lab's directory in it. */
  root: string;
  labDir: string;
  /** A scratch directory of the test's own. */
  files: string;
  env: NodeJS.ProcessEnv;
  /** The lab's kubeconfig file ('' until up()). */
  kubeconfig(): string;
  /** bin/clustermesh with the lab root and the lab's kubeconfig. */
  cli(args: string[], timeoutMs?: number): Promise<Run>;
  /** `clustermesh ...args` on the lab's workstation (`lab run`): what reaches the nodes' and load balancers' addresses (this host must not dial them). */
  ws(args: string[], timeoutMs?: number): Promise<Run>;
  /** Any command on the lab's workstation (`lab run --lab NAME -- ...args`). */
  onWorkstation(args: string[], timeoutMs?: number): Promise<Run>;
  /** kubectl with the lab's kubeconfig (kubectlIn for a manifest on stdin). */
  kube: ReturnType<typeof kubectlFor>;
  kubectl(cluster: string, args: string[]): Promise<Run>;
  kubectlOk(cluster: string, args: string[]): Promise<string>;
  /** `count` requests from pod `pod` (of `cluster`, default cluster1) to `url`: the workload client, in the pod's namespace; all failed when it printed no tally. */
  client(pod: string, url: string, count: number, timeoutMs?: number, cluster?: string): Promise<Tally>;
  /** `lab up --lab NAME ...upArgs`, then reads the lab's kubeconfig. */
  up(): Promise<void>;
  /** `lab down` when the lab was recorded, then removes the root and scratch directories (those also when down fails). */
  down(): Promise<void>;
}

/** A lab named `${prefix}xxxxxx`, brought up by `lab up --lab NAME ...o.up` (e.g. ['--bare', '--clusters', '2', '--nodes', '1']). */
export function labFixture(prefix: string, o: { up: string[]; upTimeoutMs?: number }): LabFixture {
  const root = mkdtempSync(join(tmpdir(), `${prefix}-root-`));
  const files = mkdtempSync(join(tmpdir(), `${prefix}-files-`));
  const name = `${prefix}${randomBytes(3).toString('hex')}`;
  const env = childEnv({ CLUSTERMESH_LAB_ROOT: root });
  let kubeconfig = '';
  const cli = (args: string[], timeoutMs = 300_000): Promise<Run> => run(process.execPath, [CLI, ...args], { env: { ...env, KUBECONFIG: kubeconfig }, timeoutMs });
  const k = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(files, 'kube-cache'), env: () => env, timeoutMs: 330_000 });
  return {
    name,
    root,
    labDir: join(root, name),
    files,
    env,
    kubeconfig: () => kubeconfig,
    cli,
    ws: (args, timeoutMs = 300_000) => cli(['lab', 'run', '--lab', name, '--', process.execPath, CLI, ...args], timeoutMs),
    onWorkstation: (args, timeoutMs = 300_000) => cli(['lab', 'run', '--lab', name, '--', ...args], timeoutMs),
    kube: k,
    kubectl: (cluster, args) => k.kubectl('--context', cluster, ...args),
    kubectlOk: (cluster, args) => k.kubectlOk('--context', cluster, ...args),
    async client(pod, url, count, timeoutMs = 3000, cluster = 'cluster1') {
      const r = await cli(['lab', 'exec', pod, '--lab', name, '--cluster', cluster, '--', 'clustermesh', 'lab', 'workload', 'client', url, '-n', String(count), '--timeout', String(timeoutMs), '--json'], count * timeoutMs + 30_000);
      try {
        return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as Tally;
      } catch {
        return { requests: count, failures: count, tally: {}, lastError: show(r) };
      }
    },
    async up() {
      const r = await cli(['lab', 'up', '--lab', name, ...o.up], o.upTimeoutMs ?? 600_000);
      assert.equal(r.code, 0, show(r));
      kubeconfig = (await ok(cli(['lab', 'kubeconfig', '--lab', name]), 'lab kubeconfig')).trim();
    },
    async down() {
      try {
        if (existsSync(join(root, name, 'lab.json'))) {
          const d = await cli(['lab', 'down', '--lab', name], 180_000);
          if (d.code !== 0) console.log(`# lab down: ${show(d)}`);
        }
      } finally {
        rmSync(files, { recursive: true, force: true });
        rmSync(root, { recursive: true, force: true });
      }
    },
  };
}
