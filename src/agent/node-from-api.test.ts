import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { KubeApiError } from '../sources/kubernetes/http.ts';
import { nodeAddressing, waitForNode } from './node-from-api.ts';

// No keep-alive around the waits: the wait itself must hold the process (an agent waiting for its Node
// at start has nothing else running; with unref'd timers it exited with code 13 in the lab).

const node = (spec: Record<string, unknown>, addresses: Array<{ type: string; address: string }> = []) => ({ kind: 'Node', metadata: { name: 'n1' }, spec, status: { addresses } });

test('nodeAddressing: the first IPv4 of spec.podCIDRs (spec.podCIDR as fallback) and the first IPv4 InternalIP', () => {
  assert.deepEqual(nodeAddressing(node({ podCIDRs: ['fd00::/64', '10.244.1.0/24'], podCIDR: 'fd00::/64' }, [{ type: 'Hostname', address: 'n1' }, { type: 'InternalIP', address: 'fd00::1' }, { type: 'InternalIP', address: '10.0.0.5' }])), { podCIDR: '10.244.1.0/24', internalIP: '10.0.0.5' });
  assert.deepEqual(nodeAddressing(node({ podCIDR: '10.244.2.0/24' })), { podCIDR: '10.244.2.0/24', internalIP: undefined });
  assert.deepEqual(nodeAddressing(node({})), { podCIDR: undefined, internalIP: undefined });
  assert.deepEqual(nodeAddressing(null), { podCIDR: undefined, internalIP: undefined });
});

test('waitForNode waits for the Node and its pod CIDR, logging what it waits for', async () => {
  const answers: Array<unknown> = [new KubeApiError(404, 'NotFound', 'nodes "n1" not found'), node({}), node({ podCIDRs: ['10.244.3.0/24'] }, [{ type: 'InternalIP', address: '10.0.0.3' }])];
  const lines: string[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l).msg as string) });
  const paths: string[] = [];
  const got = await (waitForNode(
    {
      request: async (_m, path) => {
        paths.push(path);
        const a = answers.shift();
        if (a instanceof Error) throw a;
        return a as Record<string, unknown>;
      },
    },
    { nodeName: 'n1', need: { podCIDR: true, internalIP: true }, timeoutMs: 60_000, intervalMs: 1, log },
  ));
  assert.deepEqual(got, { podCIDR: '10.244.3.0/24', internalIP: '10.0.0.3' });
  assert.deepEqual(paths, ['/api/v1/nodes/n1', '/api/v1/nodes/n1', '/api/v1/nodes/n1']);
  assert.match(lines[0]!, /^waiting for Node n1 to have a pod CIDR \(spec\.podCIDRs\) and an InternalIP \(status\.addresses\): it does not exist yet/);
  assert.match(lines[1]!, /it has no IPv4 pod CIDR in spec\.podCIDRs and no IPv4 InternalIP/);
});

test('waitForNode fails after the timeout naming the node and what it lacks', async () => {
  await assert.rejects(
    (waitForNode({ request: async () => node({}, [{ type: 'InternalIP', address: '10.0.0.3' }]) }, { nodeName: 'worker-7', need: { podCIDR: true, internalIP: false }, timeoutMs: 30, intervalMs: 5, log: pino({ level: 'silent' }) })),
    /^Error: Node worker-7 did not have a pod CIDR \(spec\.podCIDRs\) within 0 s \(nodeWaitTimeoutSeconds\): it has no IPv4 pod CIDR in spec\.podCIDRs/,
  );
});
