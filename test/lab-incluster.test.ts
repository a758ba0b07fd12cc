// Pods of a lab reach their cluster's Kubernetes API in-cluster, as pods that
// `clustermesh install` makes do: the lab kubelet mounts a token of the pod's
// ServiceAccount (TokenRequest, bound to the pod) with ca.crt and namespace at
// /var/run/secrets/kubernetes.io/serviceaccount and sets
// KUBERNETES_SERVICE_HOST/PORT (the node-local endpoint) in a hostNetwork
// pod, where real kubectl and the Kubernetes source's in-cluster config
// (src/sources/kubernetes/kubeconfig.ts) list pods with no kubeconfig. The
// token stops working when its ServiceAccount is deleted. A pod-network pod
// gets the token but no KUBERNETES_SERVICE_* (nothing listens on
// 127.0.0.1:6443 of its namespace). Every mount point those pods need that
// the machine lacks (/etc/<x>/..., /var/lib/<x>, /var/run/secrets/...) exists only
// inside the containers: the machine never gets them, and the rest of /etc
// stays visible in the container. `lab down` leaves no mount.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { childEnv } from '../src/lab/process.ts';
import { readPodRecords, type KubeletConfig } from '../src/lab/kubelet-config.ts';
import { eventually, kubectlFor, run, show, type Run } from './helpers/kube.ts';

const REPO = resolve(import.meta.dirname, '..');
const CLI = join(REPO, 'bin', 'clustermesh.js');
const TSX = join(REPO, 'node_modules', 'tsx', 'dist', 'loader.mjs');
const CLIENT_NODE = createRequire(import.meta.url).resolve('@kubernetes/client-node');
const root = mkdtempSync(join(tmpdir(), 'cmtic-root-'));
const files = mkdtempSync(join(tmpdir(), 'cmtic-files-'));
const name = `cmtic${randomBytes(3).toString('hex')}`;
const labDir = join(root, name);
// Paths the machine does not have: the containers' mount points.
const ETC = `/etc/${name}`;
const OUT = `/var/lib/${name}-out`;
const env = childEnv({ CLUSTERMESH_LAB_ROOT: root });
// A shared path another lab on this machine may have made (an older kubelet made mount points on the machine): checked only when absent at the start.
const SECRETS = '/var/run/secrets/kubernetes.io';
const machinePaths = [ETC, OUT, `/var/lib/${name}-cache`, ...(existsSync(SECRETS) ? [] : [SECRETS])];
const cli = (args: string[], timeoutMs = 300_000): Promise<Run> => run(process.execPath, [CLI, ...args], { env, timeoutMs });
let kubeconfig = '';
const { kubectl, kubectlIn, kubectlOk } = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(files, 'kube-cache'), env: () => env });

function nodeDir(): string {
  for (const c of readdirSync(labDir, { withFileTypes: true })) {
    if (!c.isDirectory()) continue;
    for (const n of readdirSync(join(labDir, c.name), { withFileTypes: true })) if (n.isDirectory() && existsSync(join(labDir, c.name, n.name, 'kubelet.json'))) return join(labDir, c.name, n.name);
  }
  throw new Error('no node dir');
}

const nodeScript = `
const { loadKubeConnection } = await import(${JSON.stringify(join(REPO, 'src/sources/kubernetes/kubeconfig.ts'))});
const { CoreV1Api } = await import(${JSON.stringify(CLIENT_NODE)});
const conn = loadKubeConnection();
const pods = await conn.kubeConfig.makeApiClient(CoreV1Api).listNamespacedPod({ namespace: 'default' });
console.log(JSON.stringify({ description: conn.description, server: conn.server, pods: pods.items.map((p) => p.metadata.name) }));
`;

const manifest = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: lister, namespace: default}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: probe, namespace: default}
data:
  probe.mjs: ${JSON.stringify(nodeScript)}
  run.sh: |
    out=${OUT}
    sa=/var/run/secrets/kubernetes.io/serviceaccount
    {
      echo "api=\${KUBERNETES_SERVICE_HOST:-none}:\${KUBERNETES_SERVICE_PORT:-none}"
      echo "kubeconfig=\${KUBECONFIG:-none}"
      echo "namespace=$(cat $sa/namespace)"
      echo "files=$(ls $sa | tr '\\n' ' ')"
      echo "etc-passwd=$(test -f /etc/passwd && echo visible)"
      echo "port6443=$(node -e "require('net').connect(6443, '127.0.0.1').on('connect', () => { console.log('open'); process.exit(0) }).on('error', (e) => { console.log(e.code); process.exit(0) })")"
    } > $out/$POD.env.txt
    if [ "$POD" = incluster ]; then
      kubectl get pods -n default -o name > $out/kubectl.txt 2>&1 || echo "kubectl failed" >> $out/kubectl.txt
      node --import ${TSX} ${ETC}/probe/probe.mjs > $out/node.txt 2>&1 || echo "node failed" >> $out/node.txt
    fi
    touch $out/$POD.done
    exec sleep 100000
---
apiVersion: v1
kind: Pod
metadata: {name: incluster, namespace: default}
spec:
  hostNetwork: true
  serviceAccountName: lister
  containers:
  - name: main
    image: busybox
    command: [sh, ${ETC}/probe/run.sh]
    env: [{name: POD, value: incluster}, {name: KUBECACHEDIR, value: /var/lib/${name}-cache}]
    volumeMounts:
    - {name: probe, mountPath: ${ETC}/probe}
    - {name: out, mountPath: ${OUT}}
    - {name: cache, mountPath: /var/lib/${name}-cache}
  volumes:
  - {name: probe, configMap: {name: probe}}
  - {name: out, hostPath: {path: /var/lib/cmt-incluster, type: DirectoryOrCreate}}
  - {name: cache, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: podnet, namespace: default}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, ${ETC}/probe/run.sh]
    env: [{name: POD, value: podnet}]
    volumeMounts:
    - {name: probe, mountPath: ${ETC}/probe}
    - {name: out, mountPath: ${OUT}}
  volumes:
  - {name: probe, configMap: {name: probe}}
  - {name: out, hostPath: {path: /var/lib/cmt-incluster, type: DirectoryOrCreate}}
`;

describe('lab: pods reach their cluster API in-cluster; mount points only inside containers', { timeout: 900_000 }, () => {
  let up = false;
  after(async () => {
    if (up) {
      const down = await cli(['lab', 'down', '--lab', name]);
      if (down.code !== 0) console.error(`lab down ${name}: ${show(down)}`);
    }
    rmSync(files, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  });

  test('up; a hostNetwork pod lists pods with kubectl and the in-cluster config, using its mounted token', async () => {
    const r = await cli(['lab', 'up', '--lab', name, '--clusters', '1', '--nodes', '1']);
    up = true;
    assert.equal(r.code, 0, show(r));
    kubeconfig = (await cli(['lab', 'kubeconfig', '--lab', name])).stdout.trim();
    await eventually('the default ServiceAccount', async () => (await kubectl('get', 'sa', 'default', '-n', 'default')).code === 0, 60_000, 500);
    const a = await kubectlIn(manifest, 'apply', '-f', '-');
    assert.equal(a.code, 0, show(a));
    const out = join(nodeDir(), 'root', 'var', 'lib', 'cmt-incluster');
    await eventually('both pods ran their probe', () => existsSync(join(out, 'incluster.done')) && existsSync(join(out, 'podnet.done')), 180_000, 500);
    const hostEnv = readFileSync(join(out, 'incluster.env.txt'), 'utf8');
    assert.match(hostEnv, /^api=127\.0\.0\.1:6443$/m);
    assert.match(hostEnv, /^kubeconfig=none$/m, 'the kubelet\'s KUBECONFIG is not passed on');
    assert.match(hostEnv, /^namespace=default$/m);
    assert.match(hostEnv, /^files=ca\.crt namespace token $/m);
    assert.match(hostEnv, /^etc-passwd=visible$/m, 'the rest of /etc is there in the container');
    assert.match(hostEnv, /^port6443=open$/m);
    assert.equal(readFileSync(join(out, 'kubectl.txt'), 'utf8').split('\n').filter(Boolean).sort().join(' '), 'pod/incluster pod/podnet');
    const viaSource = JSON.parse(readFileSync(join(out, 'node.txt'), 'utf8').trim().split('\n').pop()!) as { description: string; server: string; pods: string[] };
    assert.equal(viaSource.description, 'in-cluster service account');
    assert.equal(viaSource.server, 'https://127.0.0.1:6443');
    assert.deepEqual(viaSource.pods.sort(), ['incluster', 'podnet']);
    // A pod-network pod: the token, but no KUBERNETES_SERVICE_* (nothing listens on 127.0.0.1:6443 of its namespace).
    const podEnv = readFileSync(join(out, 'podnet.env.txt'), 'utf8');
    assert.match(podEnv, /^api=none:none$/m);
    assert.match(podEnv, /^files=ca\.crt namespace token $/m);
    assert.match(podEnv, /^port6443=ECONNREFUSED$/m);
    // None of the containers' mount points is on the machine.
    for (const p of machinePaths) assert.ok(!existsSync(p), `${p} is not on the machine`);
  });

  test('the token: bound to the pod, signed for the ServiceAccount; refused once the ServiceAccount is deleted', async () => {
    const rec = readPodRecords(nodeDir()).find((x) => x.name === 'incluster')!;
    const token = readFileSync(join(rec.dir, 'serviceaccount', 'token'), 'utf8');
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { sub: string; exp: number; iat: number; 'kubernetes.io': { pod: { name: string; uid: string } } };
    assert.equal(claims.sub, 'system:serviceaccount:default:lister');
    assert.equal(claims['kubernetes.io'].pod.name, 'incluster');
    assert.equal(claims['kubernetes.io'].pod.uid, rec.uid);
    assert.equal(claims.exp - claims.iat, 3607);
    const cfg = JSON.parse(readFileSync(join(nodeDir(), 'kubelet.json'), 'utf8')) as KubeletConfig;
    assert.ok(cfg.node);
    const server = (await kubectlOk('config', 'view', '--minify', '-o', 'jsonpath={.clusters[0].cluster.server}')).trim();
    const ca = (await kubectlOk('config', 'view', '--minify', '-o', 'jsonpath={.clusters[0].cluster.certificate-authority}')).trim();
    const asToken = (): Promise<Run> => run('kubectl', ['--server', server, '--certificate-authority', ca, '--token', token, 'get', 'pods', '-n', 'default', '-o', 'name'], { env: { ...env, KUBECONFIG: '/dev/null', KUBECACHEDIR: join(files, 'kc-token') } });
    const ok = await asToken();
    assert.equal(ok.code, 0, show(ok));
    await kubectlOk('delete', 'serviceaccount', 'lister', '-n', 'default');
    const refused = await asToken();
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /Unauthorized: serviceaccounts "lister" not found in namespace default/);
  });

  test('down leaves no mount, and the machine never had the mount points', async () => {
    const down = await cli(['lab', 'down', '--lab', name]);
    assert.equal(down.code, 0, show(down));
    up = false;
    const mounts = execFileSync('findmnt', ['-rn', '-o', 'TARGET,SOURCE'], { encoding: 'utf8' }).split('\n').filter((t) => t.includes(labDir) || t.includes(name) || t.includes('clustermesh-lab'));
    assert.deepEqual(mounts, []);
    for (const p of machinePaths) assert.ok(!existsSync(p), `${p} is not on the machine`);
  });
});
