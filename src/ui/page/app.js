// The page of `clustermesh ui` (served by src/ui/server.ts). Draws the mesh with
// cytoscape: clusters are compound nodes holding their nodes, which hold their
// pods; services sit in their cluster with dotted edges to their backends; flow
// edges come from the agents' flows (src/ui/view.ts); layout by fcose, which
// lays out compound nodes. Updates arrive as server-sent events (/api/events).
'use strict';

cytoscape.use(cytoscapeFcose);

const MAX_FLOWS = 200;
const graph = document.getElementById('graph');
const tip = document.getElementById('tip');
const live = document.getElementById('live');

const cy = cytoscape({
  container: graph,
  minZoom: 0.2,
  maxZoom: 3,
  style: [
    { selector: 'node', style: { label: 'data(label)', 'font-size': 11, 'text-valign': 'bottom', 'text-margin-y': 3, color: '#1f2328' } },
    { selector: 'node.cluster', style: { 'background-color': '#ddf4ff', 'background-opacity': 0.55, 'border-color': '#54aeff', 'border-width': 2, shape: 'round-rectangle', 'text-valign': 'top', 'text-halign': 'center', 'font-size': 15, 'font-weight': 'bold', 'text-margin-y': -4, padding: 18 } },
    { selector: 'node.cluster.notready', style: { 'border-color': '#cf222e', 'background-color': '#ffebe9' } },
    { selector: 'node.node', style: { 'background-color': '#ffffff', 'background-opacity': 0.8, 'border-color': '#8c959f', 'border-style': 'dashed', 'border-width': 1, shape: 'round-rectangle', 'text-valign': 'top', 'font-size': 11, 'text-margin-y': -2, padding: 10 } },
    { selector: 'node.node.unreachable', style: { 'border-color': '#cf222e', 'border-style': 'solid', 'border-width': 2 } },
    { selector: 'node.pod', style: { 'background-color': '#6639ba', width: 22, height: 22 } },
    { selector: 'node.service', style: { 'background-color': '#bf8700', shape: 'diamond', width: 24, height: 24 } },
    { selector: 'node.address', style: { 'background-color': '#8c959f', shape: 'square', width: 16, height: 16 } },
    // Flow edges arc a little, so that two of them between nodes on one line stay apart.
    { selector: 'edge', style: { 'curve-style': 'unbundled-bezier', 'control-point-distances': 25, 'control-point-weights': 0.5, width: 2, 'target-arrow-shape': 'triangle', 'arrow-scale': 0.9 } },
    { selector: 'edge.flow', style: { 'line-color': '#2f7d32', 'target-arrow-color': '#2f7d32', label: 'data(label)', 'font-size': 9, 'text-rotation': 'autorotate', 'text-background-color': '#fff', 'text-background-opacity': 0.8, 'text-background-padding': 1 } },
    { selector: 'edge.flow.cross', style: { 'line-style': 'dashed', 'line-color': '#1c6dd0', 'target-arrow-color': '#1c6dd0', width: 3 } },
    // Drops arc the other way: a drop and a forward between the same pods (or pods on one line) stay apart.
    { selector: 'edge.flow.dropped', style: { 'line-color': '#e03131', 'target-arrow-color': '#e03131', 'target-arrow-shape': 'tee', width: 3, color: '#cf222e', 'control-point-distances': -35 } },
    { selector: 'edge.backend', style: { 'line-color': '#8c959f', 'target-arrow-color': '#8c959f', 'line-style': 'dotted', width: 1.5 } },
    { selector: 'edge.mesh', style: { 'curve-style': 'straight', 'z-compound-depth': 'bottom', 'line-color': '#9a6700', 'target-arrow-shape': 'none', width: 7, opacity: 0.35, label: 'data(label)', 'font-size': 10, 'text-rotation': 'autorotate' } },
    { selector: 'edge.mesh.bad', style: { 'line-color': '#cf222e', opacity: 0.6 } },
    { selector: '.hover', style: { 'underlay-color': '#fff8c5', 'underlay-opacity': 0.9, 'underlay-padding': 4 } },
  ],
});

// ---- state ------------------------------------------------------------------

let topology = { clusters: [], nodes: [], pods: [], services: [] };
/** Browser time (ms) each flow edge was first drawn: what the test measures. */
const shownAt = new Map();
let layoutTimer = null;

function scheduleLayout() {
  if (layoutTimer) return;
  layoutTimer = setTimeout(() => {
    layoutTimer = null;
    // The remote-connection edges stay out of the layout: they join whole clusters and would pull them onto one another.
    cy.elements()
      .not('edge.mesh')
      .layout({ name: 'fcose', quality: 'proof', animate: false, randomize: true, nodeDimensionsIncludeLabels: true, idealEdgeLength: 90, nodeRepulsion: 9000, nestingFactor: 0.5, tilingPaddingVertical: 20, tilingPaddingHorizontal: 20, padding: 30 })
      .run();
    cy.fit(undefined, 30);
  }, 150);
}

/** Adds or updates an element; true when it was added. */
function upsert(group, data, classes) {
  const el = cy.getElementById(data.id);
  if (el.nonempty()) {
    const { id, parent, source, target, ...rest } = data;
    if (group === 'nodes' && (el.data('parent') ?? null) !== (parent ?? null)) el.move({ parent: parent ?? null });
    el.data(rest);
    el.classes(classes);
    return false;
  }
  cy.add({ group, data, classes });
  return true;
}

function ensureCluster(name) {
  if (cy.getElementById(`cluster:${name}`).nonempty()) return false;
  cy.add({ group: 'nodes', data: { id: `cluster:${name}`, label: name }, classes: 'cluster' });
  return true;
}

function ensureNode(key) {
  const cluster = key.split('/')[0];
  let added = ensureCluster(cluster);
  if (cy.getElementById(`node:${key}`).empty()) {
    cy.add({ group: 'nodes', data: { id: `node:${key}`, parent: `cluster:${cluster}`, label: key.slice(cluster.length + 1) }, classes: 'node' });
    added = true;
  }
  return added;
}

/** A flow's end that the topology does not have (yet): a pod under its node, or an address under its cluster (or alone). */
function ensureEnd(end) {
  if (cy.getElementById(end.id).nonempty()) return false;
  if (end.kind === 'pod' && end.node) {
    ensureNode(end.node);
    cy.add({ group: 'nodes', data: { id: end.id, parent: `node:${end.node}`, label: end.label, info: `pod ${end.label} in ${end.cluster}\n${end.ip}\n${end.labels}` }, classes: 'pod' });
  } else {
    if (end.cluster) ensureCluster(end.cluster);
    cy.add({ group: 'nodes', data: { id: end.id, parent: end.cluster ? `cluster:${end.cluster}` : undefined, label: end.label, info: `${end.ip}${end.labels ? `\n${end.labels}` : ''}` }, classes: 'address' });
  }
  return true;
}

function applyTopology(t) {
  topology = t;
  let changed = false;
  const want = new Set();
  for (const c of t.clusters) {
    const id = `cluster:${c.name}`;
    want.add(id);
    changed = upsert('nodes', { id, label: `${c.name}${c.id !== null ? ` (id ${c.id})` : ''}`, info: c.ready ? `${c.name}: ready` : `${c.name}: not ready\n${c.notReady.join('\n')}` }, c.ready ? 'cluster' : 'cluster notready') || changed;
  }
  for (const n of t.nodes) {
    changed = ensureCluster(n.cluster) || changed;
    want.add(`cluster:${n.cluster}`);
    const id = `node:${n.key}`;
    want.add(id);
    const info = `node ${n.key}: ${!n.reachable ? `agent unreachable (${n.error})` : n.ready ? 'agent ready' : 'agent not ready'}${n.streamError ? `\nflows: ${n.streamError}` : ''}`;
    changed = upsert('nodes', { id, parent: `cluster:${n.cluster}`, label: n.name, info }, n.reachable ? 'node' : 'node unreachable') || changed;
  }
  for (const p of t.pods) {
    want.add(p.id);
    const info = `pod ${p.namespace}/${p.name} on ${p.node}\n${p.ip}, identity ${p.identity ?? 'pending'}\n${p.labels}`;
    changed = upsert('nodes', { id: p.id, parent: `node:${p.node}`, label: p.name, info }, 'pod') || changed;
  }
  for (const s of t.services) {
    want.add(s.id);
    const info = `service ${s.namespace}/${s.name}${s.global ? ' (global)' : ''}\n${s.frontends.join('\n')}\nbackends: ${s.backends.join(', ') || 'none'}`;
    changed = upsert('nodes', { id: s.id, parent: `cluster:${s.cluster}`, label: `${s.name}${s.global ? ' (global)' : ''}`, info }, 'service') || changed;
    for (const b of s.backends) {
      if (cy.getElementById(b).empty()) continue;
      const id = `backend:${s.id}>${b}`;
      want.add(id);
      changed = upsert('edges', { id, source: s.id, target: b }, 'backend') || changed;
    }
  }
  // One edge per pair of clusters: the connection state of each direction.
  for (const c of t.clusters) {
    for (const r of c.remotes) {
      if (!t.clusters.some((x) => x.name === r.name)) continue;
      const [a, b] = [c.name, r.name].sort();
      const id = `mesh:${a}<>${b}`;
      want.add(id);
      const other = t.clusters.find((x) => x.name === r.name).remotes.find((x) => x.name === c.name);
      const ok = r.ready === r.nodes && (!other || other.ready === other.nodes);
      changed = upsert('edges', { id, source: `cluster:${a}`, target: `cluster:${b}`, label: ok ? 'connected' : 'not connected' }, ok ? 'mesh' : 'mesh bad') || changed;
    }
  }
  // Gone from the topology (pods deleted, services removed); flow ends stay while an edge uses them.
  cy.elements('node.pod, node.service, node.node, edge.backend, edge.mesh').forEach((el) => {
    if (want.has(el.id())) return;
    if (el.isNode() && el.connectedEdges('.flow').nonempty()) return;
    if (el.isNode() && el.children().nonempty()) return;
    el.remove();
    changed = true;
  });
  if (changed) scheduleLayout();
  renderRemotes();
}

function edgeLabel(e) {
  return e.verdict === 'DROPPED' ? `${e.reason} ×${e.count}` : `×${e.count}`;
}

function edgeInfo(e) {
  const lines = [`${e.verdict} ${e.reason}: ${e.description}`];
  if (e.policy) lines.push(e.policy);
  lines.push(`${e.source.kind === 'pod' ? `${e.source.cluster}:${e.source.label}` : e.source.ip} -> ${e.target.kind === 'pod' ? `${e.target.cluster}:${e.target.label}` : e.target.ip}${e.crossCluster ? ' (across clusters)' : ''}`);
  lines.push(`${e.count} flow event${e.count === 1 ? '' : 's'}, ${e.ports.join(', ')}; last ${e.last}`);
  if (e.services.length) lines.push(`via service ${e.services.join(', ')}`);
  return lines.join('\n');
}

function applyEdges(edges) {
  let added = false;
  for (const e of edges) {
    added = ensureEnd(e.source) || added;
    added = ensureEnd(e.target) || added;
    const data = { id: e.id, source: e.source.id, target: e.target.id, label: edgeLabel(e), verdict: e.verdict, reason: e.reason, crossCluster: e.crossCluster, count: e.count, first: e.first, last: e.last, info: edgeInfo(e) };
    const classes = ['flow', e.verdict === 'DROPPED' ? 'dropped' : 'forwarded', e.crossCluster ? 'cross' : ''].join(' ');
    if (upsert('edges', data, classes)) shownAt.set(e.id, Date.now());
  }
  if (added) scheduleLayout();
}

// ---- side panel ---------------------------------------------------------------

function el(tag, attrs, ...children) {
  const x = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) x.setAttribute(k, v);
  for (const c of children) x.append(c);
  return x;
}

function renderRemotes() {
  const box = document.getElementById('remotes');
  box.replaceChildren();
  for (const c of topology.clusters) {
    const div = el('div', { class: 'cluster' }, el('b', {}, `${c.name}${c.id !== null ? ` (id ${c.id})` : ''} `), el('span', { class: c.ready ? 'ok' : 'bad' }, c.ready ? 'ready' : 'not ready'));
    if (c.remotes.length === 0) div.append(el('span', { class: 'remote' }, ' — no remote clusters configured'));
    for (const r of c.remotes) {
      const ok = r.ready === r.nodes && r.nodes > 0;
      const row = el('div', { class: 'remote', 'data-remote': `${c.name}>${r.name}` }, `→ ${r.name}: `, el('span', { class: ok ? 'ok' : 'bad' }, ok ? 'connected' : 'not connected'), ` (ready on ${r.ready}/${r.nodes} nodes, reconnections ${r.reconnections})`);
      if (r.lastError) row.append(el('span', { class: 'err' }, `last error: ${r.lastError}`));
      div.append(row);
    }
    for (const n of topology.nodes.filter((x) => x.cluster === c.name && (!x.reachable || x.streamError))) {
      div.append(el('span', { class: 'note' }, `${n.key}: ${!n.reachable ? `agent unreachable (${n.error})` : `flows: ${n.streamError}`}`));
    }
    box.append(div);
  }
  const pods = topology.pods.length;
  document.getElementById('summary').textContent = `${topology.clusters.length} clusters, ${topology.nodes.length} nodes, ${pods} pods, ${topology.services.length} services`;
}

function addFlows(flows) {
  const list = document.getElementById('flows');
  for (const f of flows) {
    const li = el('li', { class: f.verdict, 'data-edge': f.edge }, el('time', { datetime: f.time }, f.time.slice(11, 23)), f.text);
    list.prepend(li);
  }
  while (list.children.length > MAX_FLOWS) list.lastChild.remove();
}

// ---- hover ----------------------------------------------------------------------

cy.on('mouseover', 'node, edge', (ev) => {
  const info = ev.target.data('info');
  if (!info) return;
  ev.target.addClass('hover');
  tip.textContent = info;
  if (ev.target.hasClass('dropped')) tip.classList.add('drop');
  else tip.classList.remove('drop');
  // Beside the pointer, on the side of the graph with more room.
  const r = graph.getBoundingClientRect();
  const { x, y } = ev.renderedPosition;
  tip.hidden = false;
  const left = x > r.width / 2 ? x - 12 - tip.offsetWidth : x + 12;
  const top = y > r.height / 2 ? y - 12 - tip.offsetHeight : y + 12;
  tip.style.left = `${r.left + Math.max(0, left)}px`;
  tip.style.top = `${r.top + Math.max(0, top)}px`;
});
cy.on('mouseout', 'node, edge', (ev) => {
  ev.target.removeClass('hover');
  tip.hidden = true;
});

// ---- the event stream -------------------------------------------------------------

const events = new EventSource('/api/events');
let opened = false;
events.onopen = () => {
  // A new stream starts with the whole state again, the latest flows included.
  if (opened) document.getElementById('flows').replaceChildren();
  opened = true;
  live.textContent = 'live';
  live.className = 'up';
};
events.onerror = () => {
  live.textContent = 'reconnecting';
  live.className = 'down';
};
events.addEventListener('topology', (m) => applyTopology(JSON.parse(m.data)));
events.addEventListener('edges', (m) => applyEdges(JSON.parse(m.data)));
events.addEventListener('flows', (m) => addFlows(JSON.parse(m.data)));

// For tests and the console: the graph, and when each flow edge was first drawn.
window.meshView = { cy, shownAt };
