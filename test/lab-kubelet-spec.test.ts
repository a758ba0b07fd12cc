// The lab kubelet runs pod specs as a real kubelet would, with no image:
// a hostNetwork DaemonSet (one pod per node, by the lab's DaemonSet
// controller) with an init container, env from fieldRef/ConfigMap/Secret and
// $(VAR) expansion, ConfigMap/Secret/emptyDir/hostPath volumes in a private
// mount namespace (hostPath on each node's own host filesystem), a
// Bidirectional mount made in an init container seen by the next container,
// an exec readiness probe, ConfigMap updates reaching the mounted file,
// a pod deleted coming back, a template change rolled out
// (`kubectl rollout status`), a pod-network pod that waits for a CNI
// configuration in the node's cniConfDir (its plugin reaching the agent
// through a path of the node's host filesystem, cniHostPaths), a failing init
// container run again until it succeeds, and a killed container restarted and
// counted in RESTARTS. The mount points (all under a directory the machine
// does not have) exist only in the containers. After `lab down` nothing is left:
// no mounts, namespaces or processes of the lab.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { childEnv } from '../src/lab/process.ts';
import { readPodRecords, type KubeletConfig } from '../src/lab/kubelet-config.ts';
import { eventually, kubectlFor, run, show, type Run } from './helpers/kube.ts';

const CLI = resolve(import.meta.dirname, '..', 'bin', 'clustermesh.js');
const root = mkdtempSync(join(tmpdir(), 'cmtks-root-'));
const files = mkdtempSync(join(tmpdir(), 'cmtks-files-'));
const name = `cmtks${randomBytes(3).toString('hex')}`;
const labDir = join(root, name);
// Every node's pod networking comes from <nodeDir>/cni-conf (the test writes the conflists).
// The image cmt.example/tools:1 holds one file the machine does not have.
// Mount points the containers need are all under M, which the machine does not have: they exist only in the containers.
const M = `/opt/${name}`;
const IMAGE_FILE = `${M}/lib/tool.txt`;
/** The CNI plugin sees this path from the node's host filesystem (cniHostPaths). */
const CNI_VIEW = `/run/${name}-cni`;
writeFileSync(join(files, 'tool.txt'), 'from the image\n');
const env = childEnv({
  CLUSTERMESH_LAB_ROOT: root,
  CLUSTERMESH_LAB_KUBELET_CONFIG: JSON.stringify({
    cniConfDir: '${nodeDir}/cni-conf',
    images: { 'cmt.example/tools:1': { [IMAGE_FILE]: join(files, 'tool.txt') } },
    cniHostPaths: [CNI_VIEW],
  }),
});
const cli = (args: string[], timeoutMs = 300_000): Promise<Run> => run(process.execPath, [CLI, ...args], { env, timeoutMs });
let kubeconfig = '';
const { kubectl, kubectlIn, kubectlOk } = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(files, 'kube-cache'), env: () => env });
const NS = 'default';

/** The node dirs of the lab (each with its kubelet.json), by node name. */
function nodeDirs(): Map<string, string> {
  const out = new Map<string, string>();
  if (!existsSync(labDir)) return out;
  for (const c of readdirSync(labDir, { withFileTypes: true })) {
    if (!c.isDirectory()) continue;
    for (const n of readdirSync(join(labDir, c.name), { withFileTypes: true })) {
      const f = join(labDir, c.name, n.name, 'kubelet.json');
      if (n.isDirectory() && existsSync(f)) out.set((JSON.parse(readFileSync(f, 'utf8')) as KubeletConfig).node, join(labDir, c.name, n.name));
    }
  }
  return out;
}

/**
 * A node's conflist: the lab's own plugin config as its one plugin; with
 * `viaHostRoot`, its agentSocket is a path of the node's host filesystem
 * (a symlink there to the agent's socket) that the plugin sees through cniHostPaths.
 */
function writeConflist(nodeDir: string, viaHostRoot = false): void {
  const cfg = JSON.parse(readFileSync(join(nodeDir, 'kubelet.json'), 'utf8')) as KubeletConfig;
  const { cniVersion, name: netName, ...plugin } = cfg.netconf;
  if (viaHostRoot) {
    const link = join(nodeDir, 'root', CNI_VIEW, 'agent.sock');
    mkdirSync(join(nodeDir, 'root', CNI_VIEW), { recursive: true });
    rmSync(link, { force: true });
    execFileSync('ln', ['-s', String(plugin.agentSocket), link]);
    plugin.agentSocket = `${CNI_VIEW}/agent.sock`;
  }
  mkdirSync(join(nodeDir, 'cni-conf'), { recursive: true });
  writeFileSync(join(nodeDir, 'cni-conf', '.tmp'), JSON.stringify({ cniVersion, name: netName, plugins: [plugin] }));
  execFileSync('mv', [join(nodeDir, 'cni-conf', '.tmp'), join(nodeDir, 'cni-conf', '10-clustermesh.conflist')]);
}

interface PodView {
  name: string;
  uid: string;
  node: string;
  phase: string;
  ready: boolean;
  hash: string;
  message: string;
  podIP: string;
  restarts: number;
}

async function pods(selector: string): Promise<PodView[]> {
  const j = JSON.parse(await kubectlOk('get', 'pods', '-n', NS, '-l', selector, '-o', 'json')) as {
    items: Array<{ metadata: { name: string; uid: string; labels?: Record<string, string>; deletionTimestamp?: string }; spec: { nodeName?: string }; status?: { phase?: string; message?: string; podIP?: string; conditions?: Array<{ type: string; status: string; message?: string }>; containerStatuses?: Array<{ restartCount: number }> } }>;
  };
  return j.items
    .filter((p) => !p.metadata.deletionTimestamp)
    .map((p) => ({
      name: p.metadata.name,
      uid: p.metadata.uid,
      node: p.spec.nodeName ?? '',
      phase: p.status?.phase ?? '',
      ready: p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false,
      hash: p.metadata.labels?.['controller-revision-hash'] ?? '',
      message: [p.status?.message ?? '', ...(p.status?.conditions ?? []).map((c) => c.message ?? '')].join(' '),
      podIP: p.status?.podIP ?? '',
      restarts: p.status?.containerStatuses?.reduce((a, c) => a + c.restartCount, 0) ?? 0,
    }));
}

/** The pid of a running container of a pod (from its node's pod record). */
function containerPid(podUid: string, container: string): number | undefined {
  for (const dir of nodeDirs().values()) {
    const rec = readPodRecords(dir).find((r) => r.uid === podUid);
    const c = rec?.containers.find((x) => x.name === container && !x.init);
    if (c?.pid) return c.pid;
  }
  return undefined;
}

const manifest = (version: string): string => `
apiVersion: v1
kind: ConfigMap
metadata: {name: probe-script, namespace: ${NS}}
data:
  run.sh: |
    set -e
    out=${M}/out/$POD_NAME.txt
    {
      echo "node=$NODE_NAME pod=$POD_NAME host=$HOST_IP podip=$POD_IP"
      echo "greeting=$GREETING"
      echo "fromcm=$FROM_CM fromsecret=$FROM_SECRET prefixed=$CM_color"
      echo "args=$*"
      echo "cm-file=$(cat ${M}/etc/settings/color)"
      echo "secret-file=$(cat ${M}/etc/creds/password)"
      echo "secret-item=$(cat ${M}/etc/creds-items/nested/pw.txt)"
      echo "init=$(cat ${M}/scratch/init.txt)"
      echo "shared-mount=$(cat ${M}/shared/marker)"
      echo "netns=$(readlink /proc/self/ns/net)"
      echo "image-file=$(cat ${IMAGE_FILE})"
      echo "version=${version}"
    } > $out.tmp
    mv $out.tmp $out
    exec sleep 100000
---
apiVersion: v1
kind: ConfigMap
metadata: {name: probe-settings, namespace: ${NS}}
data: {color: blue}
---
apiVersion: v1
kind: Secret
metadata: {name: probe-creds, namespace: ${NS}}
stringData: {password: hunter2, other: x}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe, namespace: ${NS}}
spec:
  selector: {matchLabels: {app: probe}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {app: probe}, annotations: {version: "${version}"}}
    spec:
      hostNetwork: true
      serviceAccountName: default
      priorityClassName: system-node-critical
      tolerations: [{operator: Exists}]
      initContainers:
      - name: mount-shared
        image: cmt.example/tools:1
        command: [sh, -c, 'grep -q "^cmt-shared ${M}/shared " /proc/mounts || mount -t tmpfs cmt-shared ${M}/shared; echo "made by $(POD_NAME)" > ${M}/shared/marker']
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        securityContext: {privileged: true}
        volumeMounts: [{name: shared, mountPath: ${M}/shared, mountPropagation: Bidirectional}]
      - name: init
        image: cmt.example/tools:1
        command: [sh, -c, 'echo "init ran for $(POD_NAME)" > ${M}/scratch/init.txt']
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        volumeMounts: [{name: scratch, mountPath: ${M}/scratch}]
      containers:
      - name: main
        image: cmt.example/tools:1
        command: [sh, ${M}/scripts/run.sh]
        args: ['$(NODE_NAME)', '$$(NODE_NAME)', '$(UNDEFINED_VAR)']
        securityContext: {capabilities: {add: [NET_ADMIN]}}
        env:
        - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: FROM_CM, valueFrom: {configMapKeyRef: {name: probe-settings, key: color}}}
        - {name: FROM_SECRET, valueFrom: {secretKeyRef: {name: probe-creds, key: password}}}
        - {name: MAYBE, valueFrom: {secretKeyRef: {name: probe-absent, key: k, optional: true}}}
        - {name: GREETING, value: 'hello $(NODE_NAME)'}
        envFrom: [{configMapRef: {name: probe-settings}, prefix: CM_}]
        readinessProbe:
          exec: {command: [sh, -c, 'test "$(cat ${M}/etc/settings/ready 2>/dev/null)" = yes']}
          periodSeconds: 1
          failureThreshold: 1
        volumeMounts:
        - {name: script, mountPath: ${M}/scripts, readOnly: true}
        - {name: settings, mountPath: ${M}/etc/settings}
        - {name: creds, mountPath: ${M}/etc/creds}
        - {name: creds-items, mountPath: ${M}/etc/creds-items}
        - {name: scratch, mountPath: ${M}/scratch}
        - {name: out, mountPath: ${M}/out}
        - {name: shared, mountPath: ${M}/shared, mountPropagation: HostToContainer}
      volumes:
      - {name: script, configMap: {name: probe-script, defaultMode: 0755}}
      - {name: settings, configMap: {name: probe-settings}}
      - {name: creds, secret: {secretName: probe-creds, defaultMode: 0400}}
      - {name: creds-items, secret: {secretName: probe-creds, items: [{key: password, path: nested/pw.txt}]}}
      - {name: scratch, emptyDir: {}}
      - {name: out, hostPath: {path: /var/lib/cmt-probe, type: DirectoryOrCreate}}
      - {name: shared, hostPath: {path: ${M}/shared, type: DirectoryOrCreate}}
`;

describe('lab kubelet: pod specs as a kubelet runs them, a DaemonSet, CNI config from a directory', { timeout: 900_000 }, () => {
  let up = false;
  after(async () => {
    if (up) {
      const down = await cli(['lab', 'down', '--lab', name]);
      if (down.code !== 0) console.error(`lab down ${name}: ${show(down)}`);
    }
    rmSync(files, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
    // Nothing should be there (the mount points were made in the containers); a failed run may have left some.
    rmSync(M, { recursive: true, force: true });
    rmSync(CNI_VIEW, { recursive: true, force: true });
  });

  test('up with cniConfDir: pods start once each node has a conflist', async () => {
    // The conflists are written as soon as the kubelet configs exist (before any pod needs them).
    let writing = true;
    const writer = (async () => {
      const done = new Set<string>();
      while (writing) {
        for (const [node, dir] of nodeDirs()) {
          if (done.has(node)) continue;
          writeConflist(dir);
          done.add(node);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    // --direct: this file's kubelets get a kubelet config of its own (CLUSTERMESH_LAB_KUBELET_CONFIG), which leaves out the
    // install's image mapping; the installed agent pods run under the lab's own kubelet config (test/lab-install*.test.ts).
    const r = await cli(['lab', 'up', '--direct', '--lab', name, '--clusters', '1', '--nodes', '2']);
    up = true;
    writing = false;
    await writer;
    assert.equal(r.code, 0, show(r));
    assert.doesNotMatch(r.stdout, /cluster DNS .* not ready/);
    kubeconfig = (await cli(['lab', 'kubeconfig', '--lab', name])).stdout.trim();
    assert.equal(nodeDirs().size, 2);
  });

  test('a hostNetwork DaemonSet: one pod per node, init containers, env, volumes, node netns, own hostPath per node, exec readiness', async () => {
    const nodes = nodeDirs();
    writeFileSync(join(files, 'ds.yaml'), manifest('v1'));
    await kubectlOk('apply', '-f', join(files, 'ds.yaml'));
    const running = await eventually(
      'a Running probe pod on each node',
      async () => {
        const ps = await pods('app=probe');
        return ps.length === 2 && ps.every((p) => p.phase === 'Running') && new Set(ps.map((p) => p.node)).size === 2 ? ps : undefined;
      },
      120_000,
      500,
    );
    assert.deepEqual(new Set(running.map((p) => p.node)), new Set(nodes.keys()));
    for (const p of running) {
      const nodeDir = nodes.get(p.node)!;
      const cfg = JSON.parse(readFileSync(join(nodeDir, 'kubelet.json'), 'utf8')) as KubeletConfig;
      assert.equal(p.podIP, cfg.nodeIP, 'a hostNetwork pod has the node IP');
      const out = join(nodeDir, 'root', 'var', 'lib', 'cmt-probe', `${p.name}.txt`);
      const text = await eventually(`${out}`, () => (existsSync(out) ? readFileSync(out, 'utf8') : undefined), 60_000, 200);
      const nodeNetns = execFileSync('ip', ['netns', 'exec', cfg.nodeNetns, 'readlink', '/proc/self/ns/net'], { encoding: 'utf8' }).trim();
      assert.match(text, new RegExp(`^node=${p.node} pod=${p.name} host=${cfg.nodeIP!.replace(/\./g, '\\.')} podip=${cfg.nodeIP!.replace(/\./g, '\\.')}$`, 'm'));
      assert.match(text, new RegExp(`^greeting=hello ${p.node}$`, 'm'));
      assert.match(text, /^fromcm=blue fromsecret=hunter2 prefixed=blue$/m);
      assert.match(text, new RegExp(`^args=${p.node} \\$\\(NODE_NAME\\) \\$\\(UNDEFINED_VAR\\)$`, 'm'));
      assert.match(text, /^cm-file=blue$/m);
      assert.match(text, /^secret-file=hunter2$/m);
      assert.match(text, /^secret-item=hunter2$/m);
      assert.match(text, new RegExp(`^init=init ran for ${p.name}$`, 'm'));
      assert.match(text, /^image-file=from the image$/m);
      assert.ok(!existsSync(M), `${M}: the containers' mount points are not made on the machine`);
      assert.match(text, /^shared-mount=made by probe-/m, 'the Bidirectional mount of the init container is seen by the next container');
      assert.match(text, new RegExp(`^netns=${nodeNetns.replace(/[[\]]/g, '\\$&')}$`, 'm'), 'runs in the node network namespace');
      // The hostPath is this node's own: not the other node's, not the machine's.
      const other = [...nodes.values()].find((d) => d !== nodeDir)!;
      assert.ok(!existsSync(join(other, 'root', 'var', 'lib', 'cmt-probe', `${p.name}.txt`)));
      assert.ok(!existsSync(`/var/lib/cmt-probe/${p.name}.txt`));
      // The mount made in the init container shows on the node's side of the hostPath.
      const mnt = execFileSync('findmnt', ['-rn', '-o', 'TARGET,FSTYPE', '-T', join(nodeDir, 'root', M, 'shared')], { encoding: 'utf8' });
      assert.match(mnt, /tmpfs/, mnt);
      // Secret file mode from defaultMode.
      const pid = containerPid(p.uid, 'main')!;
      assert.equal(execFileSync('nsenter', [`--target=${pid}`, '--mount', 'stat', '-L', '-c', '%a', `${M}/etc/creds/password`], { encoding: 'utf8' }).trim(), '400');
      assert.equal(p.ready, false, 'not ready: the exec probe fails until the ConfigMap has ready=yes');
    }
    // Still not ready a few seconds on (the probe keeps failing).
    await new Promise((r) => setTimeout(r, 3000));
    assert.ok((await pods('app=probe')).every((p) => !p.ready));

    // A ConfigMap change reaches the mounted file (documented: within a few seconds), and so the probe succeeds.
    const t0 = Date.now();
    await kubectlOk('patch', 'configmap', 'probe-settings', '-n', NS, '--type', 'merge', '-p', '{"data":{"color":"green","ready":"yes"}}');
    for (const p of running) {
      const pid = containerPid(p.uid, 'main')!;
      await eventually(`color=green in ${p.name}`, () => execFileSync('nsenter', [`--target=${pid}`, '--mount', 'cat', `${M}/etc/settings/color`], { encoding: 'utf8' }) === 'green', 30_000, 200);
    }
    console.log(`# ConfigMap change seen in the mounted files after ${Date.now() - t0} ms`);
    await eventually('both probe pods ready', async () => ((await pods('app=probe')).filter((p) => p.ready).length === 2 ? true : undefined), 60_000, 500);
    const rs = await kubectl('rollout', 'status', 'daemonset/probe', '-n', NS, '--timeout=60s');
    assert.equal(rs.code, 0, show(rs));
    assert.match(rs.stdout, /successfully rolled out/);
    const ds = JSON.parse(await kubectlOk('get', 'daemonset', 'probe', '-n', NS, '-o', 'json')) as { status: Record<string, number> };
    assert.deepEqual([ds.status.desiredNumberScheduled, ds.status.currentNumberScheduled, ds.status.numberReady, ds.status.updatedNumberScheduled, ds.status.numberAvailable], [2, 2, 2, 2, 2]);
  });

  test('a deleted DaemonSet pod comes back on its node; a template change rolls out', async () => {
    const before = await pods('app=probe');
    const victim = before[0]!;
    await kubectlOk('delete', 'pod', victim.name, '-n', NS, '--wait=false');
    const back = await eventually(
      'a new ready probe pod on the node',
      async () => (await pods('app=probe')).find((p) => p.node === victim.node && p.name !== victim.name && p.ready),
      120_000,
      500,
    );
    assert.ok(back);
    const hashBefore = back.hash;
    writeFileSync(join(files, 'ds2.yaml'), manifest('v2'));
    await kubectlOk('apply', '-f', join(files, 'ds2.yaml'));
    const rs = await kubectl('rollout', 'status', 'daemonset/probe', '-n', NS, '--timeout=180s');
    assert.equal(rs.code, 0, show(rs));
    const after = await pods('app=probe');
    assert.equal(after.length, 2);
    assert.ok(after.every((p) => p.hash !== hashBefore && p.ready), JSON.stringify(after));
    assert.equal(new Set(after.map((p) => p.node)).size, 2);
    for (const p of after) {
      const out = join(nodeDirs().get(p.node)!, 'root', 'var', 'lib', 'cmt-probe', `${p.name}.txt`);
      await eventually(`version=v2 in ${out}`, () => existsSync(out) && /^version=v2$/m.test(readFileSync(out, 'utf8')), 30_000, 200);
    }
  });

  test('a pod-network pod waits with "network not ready" until the node has a CNI configuration', async () => {
    const [node, dir] = [...nodeDirs()].sort()[1]!;
    rmSync(join(dir, 'cni-conf', '10-clustermesh.conflist'));
    await kubectlIn(
      `apiVersion: apps/v1
kind: Deployment
metadata: {name: waiter, namespace: ${NS}}
spec:
  replicas: 1
  selector: {matchLabels: {app: waiter}}
  template:
    metadata: {labels: {app: waiter}}
    spec:
      nodeSelector: {kubernetes.io/hostname: ${node}}
      containers:
      - {name: main, image: busybox, command: [sleep, '100000']}
`,
      'apply',
      '-f',
      '-',
    ).then((r) => assert.equal(r.code, 0, show(r)));
    const waiting = await eventually('the waiter pod Pending with network not ready', async () => (await pods('app=waiter')).find((p) => p.phase === 'Pending' && /network not ready: no CNI configuration in /.test(p.message)), 60_000, 500);
    assert.equal(waiting.node, node);
    assert.ok(waiting.message.includes(join(dir, 'cni-conf')), waiting.message);
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal((await pods('app=waiter'))[0]!.phase, 'Pending', 'still waiting');
    // The agent socket named by the new conflist exists only on the node's host filesystem.
    writeConflist(dir, true);
    assert.ok(!existsSync(`${CNI_VIEW}/agent.sock`));
    const cfg = JSON.parse(readFileSync(join(dir, 'kubelet.json'), 'utf8')) as KubeletConfig;
    const podCIDR = String((cfg.netconf.ipam as { podCIDR: string }).podCIDR);
    const ready = await eventually('the waiter pod ready', async () => (await pods('app=waiter')).find((p) => p.ready), 60_000, 500);
    assert.equal(ready.podIP.split('.').slice(0, 3).join('.'), podCIDR.split('.').slice(0, 3).join('.'), `${ready.podIP} in ${podCIDR}`);
    const rs = await kubectl('rollout', 'status', 'deployment/waiter', '-n', NS, '--timeout=60s');
    assert.equal(rs.code, 0, show(rs));
  });

  test('init containers run in order: a failing one again with backoff (Init:CrashLoopBackOff), a running one shows Init:1/2; a killed container is restarted and counted', async () => {
    const [node, dir] = [...nodeDirs()].sort()[0]!;
    await kubectlIn(
      `apiVersion: v1
kind: Pod
metadata: {name: gated, namespace: ${NS}, labels: {app: gated}}
spec:
  nodeName: ${node}
  hostNetwork: true
  initContainers:
  - {name: fails-until-open, image: busybox, command: [test, -f, /gate/open-1], volumeMounts: [{name: gate, mountPath: /gate}]}
  - {name: waits-until-open, image: busybox, command: [sh, -c, 'while [ ! -f /gate/open-2 ]; do sleep 0.2; done'], volumeMounts: [{name: gate, mountPath: /gate}]}
  containers:
  - {name: main, image: busybox, command: [sleep, '100000']}
  volumes:
  - {name: gate, hostPath: {path: /var/lib/cmt-gate, type: DirectoryOrCreate}}
`,
      'apply',
      '-f',
      '-',
    ).then((r) => assert.equal(r.code, 0, show(r)));
    const log = join(dir, 'kubelet.log');
    await eventually('the first init container failed twice', () => (readFileSync(log, 'utf8').match(/init container failed; running it again.*default\/gated/g) ?? []).length >= 2, 90_000, 500);
    await eventually('kubectl shows Init:CrashLoopBackOff', async () => /\bInit:CrashLoopBackOff\b/.test(await kubectlOk('get', 'pod', 'gated', '-n', NS, '--no-headers')), 60_000, 300);
    assert.equal((await pods('app=gated'))[0]!.phase, 'Pending');
    writeFileSync(join(dir, 'root', 'var', 'lib', 'cmt-gate', 'open-1'), '');
    await eventually('kubectl shows Init:1/2', async () => /\bInit:1\/2\b/.test(await kubectlOk('get', 'pod', 'gated', '-n', NS, '--no-headers')), 90_000, 500);
    assert.ok(!readFileSync(log, 'utf8').includes('"container started","pod":"default/gated"'), 'the container waits for the init containers');
    writeFileSync(join(dir, 'root', 'var', 'lib', 'cmt-gate', 'open-2'), '');
    const ready = await eventually('gated ready', async () => (await pods('app=gated')).find((p) => p.ready && p.phase === 'Running'), 90_000, 500);
    assert.equal(ready.restarts, 0);
    // The container killed: restarted with backoff, RESTARTS 1.
    process.kill(containerPid(ready.uid, 'main')!, 'SIGKILL');
    await eventually('RESTARTS 1 and ready again', async () => {
      const line = await kubectlOk('get', 'pod', 'gated', '-n', NS, '--no-headers');
      return /^gated\s+1\/1\s+Running\s+1\b/.test(line) ? line : undefined;
    }, 60_000, 500);
    await kubectlOk('delete', 'pod', 'gated', '-n', NS, '--wait=false');
  });

  test('down leaves no mount, namespace or process of the lab', async () => {
    const nodes = [...nodeDirs().values()];
    const pids = nodes.flatMap((d) => readPodRecords(d).flatMap((r) => r.containers.flatMap((c) => (c.pid ? [c.pid] : []))));
    assert.ok(pids.length >= 4, `container pids recorded: ${pids.join(' ')}`);
    assert.ok(execFileSync('findmnt', ['-rn', '-o', 'TARGET'], { encoding: 'utf8' }).includes(labDir), 'mounts under the lab dir exist before down');
    const down = await cli(['lab', 'down', '--lab', name]);
    assert.equal(down.code, 0, show(down));
    up = false;
    const mounts = execFileSync('findmnt', ['-rn', '-o', 'TARGET'], { encoding: 'utf8' }).split('\n').filter((t) => t.includes(labDir) || t.includes(name));
    assert.deepEqual(mounts, []);
    const netns = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(name));
    assert.deepEqual(netns, []);
    const procs = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(labDir);
      } catch {
        return false;
      }
    });
    assert.deepEqual(procs, []);
    assert.deepEqual(pids.filter((p) => existsSync(`/proc/${p}`) && !readFileSync(`/proc/${p}/stat`, 'utf8').includes(') Z ')), [], 'no container process left');
    for (const d of nodes) assert.ok(!existsSync(d), `${d} removed`);
  });
});
