import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parse } from 'yaml';
import { podTargets, SD_PATHS } from './prometheus-sd.ts';
import { prometheusConfig } from './prometheus.ts';

const pod = (o: { phase?: string; ip?: string; node?: string; port?: { name: string; containerPort: number } }) => ({
  spec: { nodeName: o.node, containers: [{ ports: [{ name: 'api', containerPort: 4247 }] }, { ports: o.port ? [o.port] : [] }] },
  status: { phase: o.phase, podIP: o.ip },
});

test('podTargets: running pods with an address and a port named metrics, at that port; agents also labelled with their node', () => {
  const pods = [
    pod({ phase: 'Running', ip: '10.1.0.1', node: 'node1', port: { name: 'metrics', containerPort: 9962 } }),
    pod({ phase: 'Pending', ip: '10.1.0.2', node: 'node2', port: { name: 'metrics', containerPort: 9962 } }),
    pod({ phase: 'Running', node: 'node3', port: { name: 'metrics', containerPort: 9962 } }),
    pod({ phase: 'Running', ip: '10.1.0.4', node: 'node4' }),
  ];
  assert.deepEqual(podTargets('c1', 'clustermesh-agent', pods), [{ targets: ['10.1.0.1:9962'], labels: { cluster: 'c1', node: 'node1' } }]);
  assert.deepEqual(podTargets('c2', 'clustermesh-apiserver', [pod({ phase: 'Running', ip: '10.2.0.1', node: 'node1', port: { name: 'metrics', containerPort: 9963 } })]), [
    { targets: ['10.2.0.1:9963'], labels: { cluster: 'c2' } },
  ]);
});

test('prometheusConfig: fixed targets for a lab of processes, HTTP service discovery every scrape interval for an installed one', () => {
  type Job = { job_name: string; static_configs?: unknown[]; http_sd_configs?: Array<{ url: string; refresh_interval: string }> };
  const fixed = parse(prometheusConfig({ agents: [{ cluster: 'c1', node: 'n1', address: '10.1.0.1:9962' }], apiservers: [{ cluster: 'c1', address: '10.1.0.250:9963' }] })) as { scrape_configs: Job[] };
  assert.deepEqual(fixed.scrape_configs[0], { job_name: 'clustermesh-agent', static_configs: [{ targets: ['10.1.0.1:9962'], labels: { cluster: 'c1', node: 'n1' } }] });
  const sd = parse(prometheusConfig({ sd: 'http://127.0.0.1:9091' })) as { scrape_configs: Job[] };
  assert.deepEqual(
    sd.scrape_configs.map((j) => [j.job_name, j.http_sd_configs]),
    [
      ['clustermesh-agent', [{ url: `http://127.0.0.1:9091${SD_PATHS.agents}`, refresh_interval: '5s' }]],
      ['clustermesh-apiserver', [{ url: `http://127.0.0.1:9091${SD_PATHS.apiservers}`, refresh_interval: '5s' }]],
    ],
  );
});
