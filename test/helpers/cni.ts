// The CNI plugin run as a kubelet runs it (test/cni.test.ts, test/bad-input.test.ts).
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { childEnv } from '../../src/lab/process.ts';

/** The plugin executable (cni/build, built by scripts/setup.sh). */
export const CNI_PLUGIN = resolve(import.meta.dirname, '..', '..', 'cni', 'build', 'clustermesh-cni');
const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');

export interface PluginRun {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed, undefined when empty or not JSON. */
  json: any;
}

export interface RunPluginOptions {
  /** Run in this network namespace (a node's), as that node's kubelet would: with CNI_PATH /opt/cni/bin unless env sets it. */
  netns?: string;
  /** Run `clustermesh cni` instead of the executable. */
  viaCli?: boolean;
}

/**
 * Runs the plugin with the CNI variables in env and conf on stdin (a string
 * or Buffer as it is, anything else as JSON); resolves with its exit code and
 * output.
 */
export function runPlugin(env: Record<string, string>, conf: unknown, opts: RunPluginOptions = {}): Promise<PluginRun> {
  const argv = opts.viaCli ? [process.execPath, CLI, 'cni'] : [CNI_PLUGIN];
  const full = opts.netns === undefined ? argv : ['ip', 'netns', 'exec', opts.netns, ...argv];
  return new Promise((done, fail) => {
    const child = spawn(full[0]!, full.slice(1), { env: childEnv(opts.netns === undefined ? env : { CNI_PATH: '/opt/cni/bin', ...env }), stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', fail);
    child.once('close', (code) => {
      let json: unknown;
      try {
        json = stdout.trim() ? JSON.parse(stdout) : undefined;
      } catch {
        json = undefined;
      }
      done({ code, stdout, stderr, json });
    });
    child.stdin.on('error', () => undefined); // the plugin may stop reading an oversized config
    child.stdin.end(typeof conf === 'string' || Buffer.isBuffer(conf) ? conf : JSON.stringify(conf));
  });
}
