"use strict";
// A workflow's graph as SVG: a layered layout (longest path from the roots, back edges set
// aside, then a few barycenter sweeps to untangle each layer). Every label is set as text.
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 156, H = 46, GAP_X = 36, GAP_Y = 58, PAD = 18;

  function svg(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clip(text, size) {
    text = String(text);
    return text.length > size ? text.slice(0, size - 1) + "\u2026" : text;
  }

  function layout(nodes, edges) {
    const ids = nodes.map((n) => String(n.id));
    const known = new Set(ids);
    const out = new Map(ids.map((id) => [id, []]));
    for (const e of edges) {
      if (known.has(e.source) && known.has(e.target)) out.get(e.source).push(e);
    }
    // Depth-first from each node in definition order: an edge back to a node still on the
    // stack closes a cycle, and is drawn but not layered.
    const state = new Map(), back = new Set();
    for (const start of ids) {
      if (state.has(start)) continue;
      const stack = [[start, 0]];
      state.set(start, 1);
      while (stack.length) {
        const top = stack[stack.length - 1];
        const list = out.get(top[0]);
        if (top[1] >= list.length) { state.set(top[0], 2); stack.pop(); continue; }
        const e = list[top[1]++];
        if (state.get(e.target) === 1) back.add(e);
        else if (!state.has(e.target)) { state.set(e.target, 1); stack.push([e.target, 0]); }
      }
    }
    const forward = edges.filter((e) => known.has(e.source) && known.has(e.target) && !back.has(e));
    const indeg = new Map(ids.map((id) => [id, 0]));
    for (const e of forward) indeg.set(e.target, indeg.get(e.target) + 1);
    const layer = new Map(ids.map((id) => [id, 0]));
    const queue = ids.filter((id) => indeg.get(id) === 0);
    while (queue.length) {
      const id = queue.shift();
      for (const e of out.get(id)) {
        if (back.has(e)) continue;
        layer.set(e.target, Math.max(layer.get(e.target), layer.get(id) + 1));
        indeg.set(e.target, indeg.get(e.target) - 1);
        if (indeg.get(e.target) === 0) queue.push(e.target);
      }
    }
    const rows = [];
    for (const id of ids) (rows[layer.get(id)] = rows[layer.get(id)] || []).push(id);
    const pos = new Map();
    const index = () => rows.forEach((row) => row.forEach((id, i) => pos.set(id, i)));
    index();
    const sweep = (from, to, neighbours) => {
      for (let r = from; r !== to; r += Math.sign(to - from)) {
        const row = rows[r];
        if (!row) continue;
        const weight = new Map(row.map((id) => {
          const near = neighbours(id).map((n) => pos.get(n));
          return [id, near.length ? near.reduce((a, b) => a + b, 0) / near.length : pos.get(id)];
        }));
        row.sort((a, b) => weight.get(a) - weight.get(b));
        row.forEach((id, i) => pos.set(id, i));
      }
    };
    const parents = (id) => forward.filter((e) => e.target === id).map((e) => e.source);
    const children = (id) => forward.filter((e) => e.source === id).map((e) => e.target);
    for (let i = 0; i < 4; i++) {
      sweep(1, rows.length, parents);
      sweep(rows.length - 2, -1, children);
    }
    index();
    const widest = Math.max(1, ...rows.map((row) => (row ? row.length : 0)));
    const width = widest * W + (widest - 1) * GAP_X + 2 * PAD;
    const xy = new Map();
    rows.forEach((row, r) => {
      if (!row) return;
      const span = row.length * W + (row.length - 1) * GAP_X;
      const left = (width - span) / 2;
      row.forEach((id, i) => xy.set(id, { x: left + i * (W + GAP_X), y: PAD + r * (H + GAP_Y) }));
    });
    const height = rows.length * (H + GAP_Y) - GAP_Y + 2 * PAD;
    const right = rows.map((row) => (row ? Math.max(...row.map((id) => xy.get(id).x + W)) : 0));
    return { xy, back, layer, right, width: width + 60, height };
  }

  // definition: {nodes: [{id, type}], edges: [{id, source, target, sourceHandle?}]}
  // marks: {taken: Set of node ids, failed: Set, current: id, takenEdges: Set of edge ids}
  function render(definition, marks) {
    marks = marks || {};
    const taken = marks.taken || new Set(), failed = marks.failed || new Set();
    const takenEdges = marks.takenEdges || new Set();
    const nodes = Array.isArray(definition.nodes) ? definition.nodes : [];
    const edges = (Array.isArray(definition.edges) ? definition.edges : []).map((e) => ({
      id: String(e.id), source: String(e.source), target: String(e.target),
      handle: e.sourceHandle == null ? "" : String(e.sourceHandle),
    }));
    const { xy, back, layer, right, width, height } = layout(nodes, edges);
    const root = svg("svg", {
      class: "graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    });
    const defs = svg("defs");
    const marker = svg("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
      orient: "auto-start-reverse",
    });
    marker.appendChild(svg("path", { d: "M0,0 L10,5 L0,10 z" }));
    defs.appendChild(marker);
    root.appendChild(defs);
    for (const e of edges) {
      const a = xy.get(e.source), b = xy.get(e.target);
      if (!a || !b) continue;
      const group = svg("g", { class: "edge" + (takenEdges.has(e.id) ? " taken" : "") });
      group.dataset.edge = e.id;
      let d, lx, ly;
      if (back.has(e) || b.y <= a.y) {
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x + W, y2 = b.y + H / 2;
        const bend = Math.max(x1, x2) + 36;
        d = `M${x1},${y1} C${bend},${y1} ${bend},${y2} ${x2 + 2},${y2}`;
        lx = bend - 8; ly = (y1 + y2) / 2;
      } else if (layer.get(e.target) - layer.get(e.source) > 1) {
        // A long edge goes around the layers it skips, not through their nodes.
        const skipped = right.slice(layer.get(e.source) + 1, layer.get(e.target));
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x + W * 0.8, y2 = b.y - 2;
        const bend = Math.max(x1, ...skipped) + 28;
        d = `M${x1},${y1} C${bend},${y1} ${bend},${y1} ${bend},${(y1 + y2) / 2} S${x2},${y2 - 30} ${x2},${y2}`;
        lx = bend + 4; ly = (y1 + y2) / 2;
      } else {
        const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y - 2;
        const mid = (y1 + y2) / 2;
        d = `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}`;
        lx = (x1 + x2) / 2 + 4; ly = mid;
      }
      group.appendChild(svg("path", { d, "marker-end": "url(#arrow)" }));
      if (e.handle) group.appendChild(svg("text", { x: lx, y: ly }, clip(e.handle, 18)));
      root.appendChild(group);
    }
    for (const n of nodes) {
      const id = String(n.id), p = xy.get(id);
      const classes = ["node"];
      if (taken.has(id)) classes.push("taken");
      if (failed.has(id)) classes.push("failed");
      if (marks.current === id) classes.push("current");
      const group = svg("g", { class: classes.join(" "), transform: `translate(${p.x},${p.y})` });
      group.dataset.node = id;
      group.appendChild(svg("title", {}, `${id} (${n.type})`));
      group.appendChild(svg("rect", { width: W, height: H, rx: 6 }));
      group.appendChild(svg("text", { x: 10, y: 19 }, clip(id, 21)));
      group.appendChild(svg("text", { x: 10, y: 36, class: "type" }, clip(n.type, 24)));
      root.appendChild(group);
    }
    return root;
  }

  window.RefluxoGraph = { render, layout };
})();
