// The mesh's etcd roles against a real etcd: what each user may do, and that a
// Cilium agent's client with the `remote` user can read what it reads.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { rejectsKind, withClients } from '../kvstore/testing.ts';
import type { KvError } from '../kvstore/types.ts';
import { withMeshEtcd as withEtcd } from './etcd.ts';
import { clusterConfigKey, heartbeatKey, identitiesPrefix, identityKey, ipKey, nodeKey, nodesPrefix, nodesClusterPrefix, servicesClusterPrefix, storePrefix, syncedKey, syncedPrefix } from './keys.ts';

test('mesh roles: apiserver, agent and remote', async () => {
  await withEtcd({ name: 'acl' }, async (server) => {
    await withClients(server, ['apiserver', 'agent', 'remote'], async (api, agent, remote) => {
      // apiserver: readwrite cilium/ and the store.
      await api.put(nodeKey('c1', 'n1'), 'node');
      await api.put(heartbeatKey, 'hb');
      await api.put(`${storePrefix}pods/default/p`, 'pod');
      await rejectsKind(api.put('elsewhere/x', '1'), 'permission');
      // agent: readwrite store + identities, read the rest of cilium/.
      await agent.put(`${storePrefix}pods/default/q`, 'pod');
      assert.equal(await agent.createOnly(identityKey(70000), 'l'), true);
      assert.equal((await agent.get(nodeKey('c1', 'n1')))?.value, 'node');
      await rejectsKind(agent.put(nodeKey('c1', 'n1'), 'x'), 'permission');
      // remote: read only the exported prefixes, nothing else.
      assert.equal((await remote.get(nodeKey('c1', 'n1')))?.value, 'node');
      assert.equal((await remote.get(heartbeatKey))?.value, 'hb');
      assert.equal((await remote.list(nodesPrefix)).pairs.length, 1);
      assert.equal((await remote.list(identitiesPrefix)).pairs.length, 1);
      // The allocator's private keys under cilium/state/ are not exported.
      await api.put('cilium/state/identities/v1/value/k8s:app=x;', '70000');
      await rejectsKind(remote.get('cilium/state/identities/v1/value/k8s:app=x;'), 'permission');
      await rejectsKind(remote.list('cilium/state/'), 'permission');
      await rejectsKind(remote.put(nodeKey('c1', 'n1'), 'x'), 'permission');
      await rejectsKind(remote.put(heartbeatKey, 'x'), 'permission');
      await rejectsKind(remote.delete(nodeKey('c1', 'n1')), 'permission');
      await rejectsKind(remote.createOnly(identityKey(70001), 'l'), 'permission');
      await rejectsKind(remote.get(`${storePrefix}pods/default/p`), 'permission');
      await rejectsKind(remote.list(storePrefix), 'permission');
      await rejectsKind(remote.list('cilium/'), 'permission'); // wider than granted
      await rejectsKind(remote.list('cilium/state/identities/v1/'), 'permission');
      await rejectsKind(remote.get(`${storePrefix}x`), 'permission');
      const watchErr = await new Promise<KvError>((resolve) => remote.watch(storePrefix, '1', () => undefined, resolve));
      assert.equal(watchErr.kind, 'permission');
      // A valid certificate whose CN is no etcd user is denied, too.
      await server.clientCert('stranger');
      await withClients(server, ['stranger'], async (stranger) => {
        await rejectsKind(stranger.get(nodeKey('c1', 'n1')), 'permission');
      });
    });
  });
});

test('remote role: the ranges a Cilium agent reads (bare heartbeat and identity prefixes) are granted', async () => {
  await withEtcd({ name: 'acl-cilium' }, async (server) => {
    await withClients(server, ['apiserver', 'remote'], async (api, remote) => {
      await api.put(heartbeatKey, '2026-01-01T00:00:00Z');
      await api.put(identityKey(70000), 'k8s:app=a;');
      await api.put(clusterConfigKey('c1'), '{}');
      await api.put(nodeKey('c1', 'n1'), '{}');
      await api.put(ipKey('10.1.2.3'), '{}');
      await api.put(`${servicesClusterPrefix('c1')}default/s`, '{}');
      await api.put(syncedKey('c1', 'nodes'), 'now');
      // Cilium lists `cilium/.heartbeat` as a prefix (a range over the bare name).
      assert.deepEqual((await remote.list(heartbeatKey)).pairs.map((p) => p.key), [heartbeatKey]);
      // ... and lists/watches the identities as `cilium/state/identities/v1/id`, without '/'.
      const bareIds = identitiesPrefix.slice(0, -1);
      assert.equal((await remote.list(bareIds)).pairs.length, 1);
      const got = new Promise<string>((resolve, reject) => {
        remote.watch(bareIds, '1', (ev) => resolve(ev.key), reject);
      });
      assert.equal(await got, identityKey(70000));
      // The rest, with the trailing '/' Cilium's watch store appends.
      for (const prefix of [nodesClusterPrefix('c1'), 'cilium/state/ip/v1/default/', servicesClusterPrefix('c1'), `${syncedPrefix}c1/`]) {
        assert.equal((await remote.list(prefix)).pairs.length, 1, prefix);
      }
      assert.equal((await remote.get(clusterConfigKey('c1')))?.value, '{}');
      // The allocator's private keys stay private.
      await api.put('cilium/state/identities/v1/value/k8s:app=a;', '70000');
      await api.put('cilium/state/identities/v1/refs/70000/node1', 'x');
      await rejectsKind(remote.list('cilium/state/identities/v1/value/'), 'permission');
      await rejectsKind(remote.list('cilium/state/identities/v1/refs/'), 'permission');
      await rejectsKind(remote.list('cilium/state/identities/'), 'permission');
      assert.equal((await remote.list(nodesPrefix)).pairs.length, 1);
    });
  });
});
