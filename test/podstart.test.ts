// clustermesh-podstart (src/lab/podstart-c), how the lab kubelet starts every
// container: the held start, the node cgroup, the pod's network namespace as
// `ip netns exec` gives it, and the container's mounts in a private mount
// namespace, with mount points the machine lacks made in overlays and nothing
// created on the machine. Real namespaces, mounts and cgroups, each uniquely
// named and removed in finally. No traffic.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { labCgroupRoot } from '../src/lab/cgroup.ts';
import { HELD_NOT_RELEASED_EXIT } from '../src/util/held-start.ts';
import { PODSTART_BIN, podstartArgv, type PodStart } from '../src/lab/pod-spec.ts';

const uniq = `pst${process.pid.toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;

function run(o: PodStart, script: string, stdin = 'run\n'): { code: number | null; out: string; err: string } {
  const [cmd, ...args] = podstartArgv(o, ['sh', '-c', script]);
  const r = spawnSync(cmd!, args, { input: stdin, encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function netnsInode(name: string): number {
  return statSync(`/run/netns/${name}`).ino;
}

test('held start: nothing runs without "run" on stdin (exit 125); released, the program gets /dev/null as stdin', () => {
  const dir = mkdtempSync(join(tmpdir(), `${uniq}-`));
  try {
    const marker = join(dir, 'ran');
    for (const word of ['', 'go\n', 'running\n']) {
      const r = run({ hold: true }, `touch ${marker}`, word);
      assert.equal(r.code, HELD_NOT_RELEASED_EXIT, `stdin ${JSON.stringify(word)}`);
      assert.equal(existsSync(marker), false, `stdin ${JSON.stringify(word)}: the program ran`);
    }
    const r = run({ hold: true }, `touch ${marker}; wc -c; readlink /proc/self/fd/0`, 'run\nmore input for nobody\n');
    assert.equal(r.code, 0, r.err);
    assert.ok(existsSync(marker));
    assert.deepEqual(r.out.trim().split('\n'), ['0', '/dev/null']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("pod namespace and mounts: the pod's netns, /sys and /etc/netns files as ip netns exec gives them; staged binds, read-only, file and nested targets, overlays for missing mount points; the machine unchanged", () => {
  const ns = `${uniq}-pod`;
  const dir = mkdtempSync(join(tmpdir(), `${uniq}-`));
  const etcNetns = `/etc/netns/${ns}`;
  // Targets the machine lacks (checked below): under /run (the service account's place), /usr/bin and /opt.
  const sa = `/var/run/secrets/${uniq}/serviceaccount`;
  const tool = `/usr/bin/${uniq}-tool`;
  const ro = `/opt/${uniq}-ro`;
  for (const p of [sa, tool, ro, `/run/secrets/${uniq}`]) assert.equal(existsSync(p), false, `${p} exists before the test`);
  assert.equal(spawnSync('ip', ['netns', 'add', ns]).status, 0);
  try {
    mkdirSync(join(dir, 'token'), { recursive: true });
    writeFileSync(join(dir, 'token', 'token'), 'tok');
    writeFileSync(join(dir, 'tool'), 'tool-bytes');
    mkdirSync(join(dir, 'data', 'inner'), { recursive: true });
    writeFileSync(join(dir, 'data', 'inner', 'x'), 'xx');
    mkdirSync(join(dir, 'scratch'));
    mkdirSync(etcNetns, { recursive: true });
    writeFileSync(join(etcNetns, 'resolv.conf'), `nameserver 10.99.0.10\nsearch ${uniq}.svc.cluster.local\n`);
    const o: PodStart = {
      hold: true,
      netns: ns,
      mounts: {
        scratch: join(dir, 'scratch'),
        bidirectional: [],
        list: [
          { source: join(dir, 'token'), target: sa, readOnly: true, file: false, recursive: false },
          { source: join(dir, 'tool'), target: tool, readOnly: true, file: true, recursive: false },
          { source: join(dir, 'data'), target: ro, readOnly: true, file: false, recursive: true },
          // Nested under the read-only volume's target would need a mount point inside it: a writable one instead.
          { source: join(dir, 'data', 'inner'), target: `/run/secrets/${uniq}/data`, readOnly: false, file: false, recursive: false },
        ],
      },
    };
    const r = run(
      o,
      [
        'readlink /proc/self/ns/net',
        `stat -L -c %i /run/netns/${ns}`,
        'ls /sys/class/net | tr "\\n" " "; echo',
        'head -1 /etc/resolv.conf',
        `cat ${sa}/token; echo`,
        `cat ${tool}; echo`,
        `cat ${ro}/inner/x; echo`,
        `cat /run/secrets/${uniq}/data/x; echo`,
        `touch ${sa}/new 2>/dev/null && echo sa-writable || echo sa-ro`,
        `touch ${ro}/inner/new 2>/dev/null && echo ro-writable || echo ro-ro`,
        `touch /run/secrets/${uniq}/data/rw && echo data-rw || echo data-ro`,
      ].join('\n'),
    );
    assert.equal(r.code, 0, r.err);
    assert.equal(r.err, '', 'no warnings');
    const lines = r.out.trim().split('\n');
    assert.equal(lines[0], `net:[${netnsInode(ns)}]`, "the program runs in the pod's network namespace");
    assert.equal(lines[2]!.trim(), 'lo', "/sys shows the pod's namespace's links");
    assert.equal(lines[3], 'nameserver 10.99.0.10', "/etc/netns/<name>/resolv.conf over /etc/resolv.conf");
    assert.deepEqual(lines.slice(4), ['tok', 'tool-bytes', 'xx', 'xx', 'sa-ro', 'ro-ro', 'data-rw']);
    // The write through the writable nested mount reached its source; nothing was made on the machine.
    assert.ok(existsSync(join(dir, 'data', 'inner', 'rw')));
    for (const p of [sa, tool, ro, `/run/secrets/${uniq}`]) assert.equal(existsSync(p), false, `${p} was created on the machine`);
    const leaked = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(uniq) && !l.includes(`/run/netns/${ns}`));
    assert.deepEqual(leaked, [], "a mount leaked into the test's mount namespace");
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
    rmSync(etcNetns, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
});

test('hostNetwork with volumes: a mount namespace of its own in the node network namespace; a bidirectional source stays a peer of the machine', () => {
  const dir = mkdtempSync(join(tmpdir(), `${uniq}-`));
  try {
    mkdirSync(join(dir, 'vol'));
    mkdirSync(join(dir, 'scratch'));
    mkdirSync(join(dir, 'sub'));
    // The bidirectional source must be a mount (a peer group) of its own on the machine: a tmpfs the test makes shared.
    assert.equal(spawnSync('mount', ['-t', 'tmpfs', `${uniq}-bidi`, join(dir, 'vol')]).status, 0);
    try {
      assert.equal(spawnSync('mount', ['--make-shared', join(dir, 'vol')]).status, 0);
      const target = `/run/${uniq}-vol`;
      const r = run(
        { mountNs: 'unchanged', mounts: { scratch: join(dir, 'scratch'), bidirectional: [join(dir, 'vol')], list: [{ source: join(dir, 'vol'), target, readOnly: false, file: false, recursive: true }] } },
        `readlink /proc/self/ns/net; mkdir ${target}/m && mount -t tmpfs ${uniq}-inner ${target}/m && echo mounted`,
      );
      assert.equal(r.code, 0, r.err);
      const [netLine, mounted] = r.out.trim().split('\n');
      assert.equal(netLine, spawnSync('readlink', ['/proc/self/ns/net'], { encoding: 'utf8' }).stdout.trim(), "the node's network namespace");
      assert.equal(mounted, 'mounted');
      // What the container mounted under the bidirectional volume shows on the machine.
      assert.ok(readFileSync('/proc/self/mountinfo', 'utf8').includes(`${uniq}-inner`), 'the inner mount did not propagate to the machine');
      assert.equal(existsSync(target), false, `${target} was created on the machine`);
      spawnSync('umount', [join(dir, 'vol', 'm')]);
    } finally {
      spawnSync('umount', ['-R', join(dir, 'vol')]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('node cgroup: the program runs in it from its first instruction', { skip: labCgroupRoot() === undefined ? 'no cgroup v2 here' : false }, () => {
  const cg = join(labCgroupRoot()!, `${uniq}-node`);
  mkdirSync(cg, { recursive: true });
  try {
    const r = run({ hold: true, cgroup: cg }, 'cat /proc/self/cgroup');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, new RegExp(`^0::/clustermesh/${uniq}-node$`, 'm'));
  } finally {
    rmdirSync(cg);
  }
});

test('bad input: an unknown flag is a usage error; a missing source, netns or cgroup names what failed and runs nothing', () => {
  const dir = mkdtempSync(join(tmpdir(), `${uniq}-`));
  try {
    const marker = join(dir, 'ran');
    const u = spawnSync(PODSTART_BIN, ['--frobnicate', '--', 'true'], { encoding: 'utf8' });
    assert.equal(u.status, 2);
    assert.match(u.stderr, /unknown or incomplete option '--frobnicate'/);
    const cases: Array<[PodStart, RegExp]> = [
      [{ mountNs: 'slave', mounts: { scratch: dir, bidirectional: [], list: [{ source: join(dir, 'absent'), target: `/run/${uniq}`, readOnly: false, file: false, recursive: false }] } }, new RegExp(`mount ${join(dir, 'absent')} on .*: No such file or directory`)],
      [{ netns: `${uniq}-absent` }, new RegExp(`network namespace /run/netns/${uniq}-absent: No such file or directory`)],
      [{ cgroup: join(dir, 'no-cgroup') }, new RegExp(`join cgroup ${join(dir, 'no-cgroup')}: `)],
    ];
    for (const [o, why] of cases) {
      const r = run(o, `touch ${marker}`);
      assert.equal(r.code, 126, r.err);
      assert.match(r.err, why);
      assert.equal(existsSync(marker), false, 'the program ran after a failed setup');
    }
    const r = run({}, 'exit 0');
    assert.equal(r.code, 0);
    const e = spawnSync(PODSTART_BIN, ['--', join(dir, 'no-such-program')], { encoding: 'utf8' });
    assert.equal(e.status, 127);
    assert.match(e.stderr, /exec .*no-such-program: No such file or directory/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
