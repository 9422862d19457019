"use strict";
// The refluxo dashboard. Everything a run holds may be written by an adversary: it reaches
// the page only as text (textContent, setAttribute on inert attributes), never as markup.
(function () {
  const STATUSES = ["active", "paused", "error", "completed", "failed"];
  const REFRESH_MS = 2000;
  const PAGE_SIZE = 20;
  const main = document.getElementById("main");
  let timer = null;
  let generation = 0;

  // --- helpers ----------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const options = { method, cache: "no-store", headers: { "X-Refluxo-UI": "1" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch("api" + path, options);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const message = data && data.error && data.error.message ? data.error.message : response.statusText;
      throw new ApiError(response.status, `HTTP ${response.status}: ${message}`);
    }
    return data;
  }

  function notice(text, ok) {
    const box = document.getElementById("notice");
    box.textContent = text || "";
    box.className = ok ? "ok" : "";
    box.hidden = !text;
  }

  function seg(value) { return encodeURIComponent(String(value)); }

  function runLink(id) { return "#/runs/" + seg(id); }

  function when(value) {
    if (value === undefined || value === null || value === "") return "";
    const date = typeof value === "number" ? new Date(value) : new Date(String(value));
    if (isNaN(date.getTime())) return String(value);
    return date.toLocaleString(undefined, {
      year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
      second: "2-digit", timeZoneName: "short",
    });
  }

  function isTimeKey(key) { return /(At|_at|timestamp|until|deadline|Time)$/i.test(key) && !/total/i.test(key); }

  function cell(key, value) {
    if (value === undefined || value === null) return "";
    if (typeof value === "number" && isTimeKey(key) && value > 1e11) return when(value);
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function status(value) {
    const text = String(value || "?");
    const known = STATUSES.includes(text) ? text : "other";
    return h("span", { class: `status status-${known}`, dataset: { status: text } }, text);
  }

  function pick(obj, ...keys) {
    for (const key of keys) if (obj && obj[key] !== undefined && obj[key] !== null) return obj[key];
    return undefined;
  }

  function parseJson(text, what) {
    if (!text.trim()) return undefined;
    try { return JSON.parse(text); } catch (e) { throw new Error(`${what} is not valid JSON: ${e.message}`); }
  }

  function every(ms, fn) {
    stop();
    const mine = generation;
    timer = setInterval(() => { if (mine === generation) fn(); }, ms);
  }

  function stop() { if (timer) clearInterval(timer); timer = null; }

  // --- workflows --------------------------------------------------------------------------

  const definitions = new Map();

  async function workflowNames() {
    const data = await api("GET", "/workflows");
    const list = Array.isArray(data) ? data : pick(data, "workflows", "items") || [];
    return list.map((w) => (typeof w === "string" ? w : String(pick(w, "name", "id"))));
  }

  async function definition(name) {
    if (!definitions.has(name)) {
      const data = await api("GET", "/workflows/" + seg(name));
      definitions.set(name, pick(data, "definition") || data);
    }
    return definitions.get(name);
  }

  async function workflowsPage(name) {
    main.replaceChildren(h("h1", {}, name ? `Workflow ${name}` : "Workflows"));
    const names = name ? [name] : await workflowNames();
    if (!names.length) main.appendChild(h("p", { class: "muted" }, "This deployment hosts no workflow."));
    for (const n of names) {
      const card = h("section", { class: "card", dataset: { workflow: n } },
        h("h2", {}, h("a", { href: "#/workflows/" + seg(n) }, n), " ",
          h("a", { class: "muted", href: "#/runs?workflow=" + seg(n) }, "runs")));
      main.appendChild(card);
      try {
        const def = await definition(n);
        card.appendChild(RefluxoGraph.render(def, {}));
        card.appendChild(h("p", { class: "muted" },
          `${(def.nodes || []).length} nodes, ${(def.edges || []).length} edges`));
      } catch (e) {
        card.appendChild(h("p", { class: "err" }, e.message));
      }
    }
  }

  // --- runs -------------------------------------------------------------------------------

  async function runsPage(params) {
    const workflow = params.get("workflow") || "";
    const wanted = params.get("status") || "";
    const size = /^[1-9][0-9]{0,2}$/.test(params.get("limit") || "") ? params.get("limit") : String(PAGE_SIZE);
    const cursors = [""];
    const workflowSelect = h("select", { id: "filter-workflow", name: "workflow" },
      h("option", { value: "" }, "any workflow"));
    const statusSelect = h("select", { id: "filter-status", name: "status" },
      h("option", { value: "" }, "any status"),
      STATUSES.map((s) => h("option", { value: s, selected: s === wanted }, s)));
    const auto = h("input", { type: "checkbox", id: "auto-refresh", checked: true });
    const apply = () => {
      const q = new URLSearchParams();
      if (workflowSelect.value) q.set("workflow", workflowSelect.value);
      if (statusSelect.value) q.set("status", statusSelect.value);
      if (size !== String(PAGE_SIZE)) q.set("limit", size);
      location.hash = "#/runs" + (q.toString() ? "?" + q : "");
    };
    workflowSelect.addEventListener("change", apply);
    statusSelect.addEventListener("change", apply);
    const body = h("tbody", {});
    const older = h("button", { class: "secondary", id: "older", type: "button" }, "Older \u2192");
    const newer = h("button", { class: "secondary", id: "newer", type: "button" }, "\u2190 Newer");
    const where = h("span", {});
    main.replaceChildren(
      h("h1", {}, "Runs"),
      h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
        h("label", { for: "filter-workflow" }, "Workflow"), workflowSelect,
        h("label", { for: "filter-status" }, "Status"), statusSelect,
        h("label", {}, auto, " auto-refresh")),
      h("div", { class: "card" },
        h("table", { id: "runs-table" },
          h("thead", {}, h("tr", {}, ["Run", "Workflow", "Status", "Node", "Version", "Updated", "Reason"]
            .map((t) => h("th", {}, t)))),
          body),
        h("div", { class: "pager" }, newer, older, where)));
    workflowNames().then((names) => {
      for (const n of names) workflowSelect.appendChild(h("option", { value: n, selected: n === workflow }, n));
      if (workflow && !names.includes(workflow)) {
        workflowSelect.appendChild(h("option", { value: workflow, selected: true }, workflow));
      }
    }).catch(() => {
      if (workflow) workflowSelect.appendChild(h("option", { value: workflow, selected: true }, workflow));
    });
    let next = null;
    const load = async () => {
      const q = new URLSearchParams({ limit: size });
      if (workflow) q.set("workflow", workflow);
      if (wanted) q.set("status", wanted);
      const cursor = cursors[cursors.length - 1];
      if (cursor) q.set("cursor", cursor);
      const data = await api("GET", "/runs?" + q);
      const runs = Array.isArray(data) ? data : pick(data, "runs", "items") || [];
      next = Array.isArray(data) ? null : pick(data, "nextCursor", "next_cursor", "cursor") || null;
      body.replaceChildren(...runs.map((r) => {
        const id = String(pick(r, "id", "runId", "workflowId"));
        return h("tr", { dataset: { run: id } },
          h("td", { class: "mono" }, h("a", { href: runLink(id) }, id)),
          h("td", {}, cell("", pick(r, "workflow", "workflowName"))),
          h("td", {}, status(r.status)),
          h("td", { class: "mono" }, cell("", pick(r, "currentNodeId", "currentNode", "current_node"))),
          h("td", {}, cell("", r.version)),
          h("td", {}, when(pick(r, "updatedAt", "updated_at", "updated"))),
          h("td", { class: "err" }, cell("", pick(r, "failedReason", "failed_reason"))));
      }));
      if (!runs.length) body.appendChild(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No runs.")));
      older.disabled = !next;
      newer.disabled = cursors.length < 2;
      where.textContent = `page ${cursors.length}`;
      notice("");
    };
    older.addEventListener("click", () => { if (next) { cursors.push(next); load().catch(fail); } });
    newer.addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); load().catch(fail); } });
    await load();
    every(REFRESH_MS, () => { if (auto.checked) load().catch(fail); });
  }

  // --- one run ----------------------------------------------------------------------------

  function marksOf(snapshot, def) {
    const rows = [];
    for (const [node, results] of Object.entries(snapshot.context || {})) {
      for (const r of Array.isArray(results) ? results : []) rows.push({ node, r });
    }
    rows.sort((a, b) => (a.r.timestamp || 0) - (b.r.timestamp || 0));
    const taken = new Set(), failed = new Set(), takenEdges = new Set();
    for (const { node, r } of rows) {
      if (r.error) failed.add(node); else { taken.add(node); failed.delete(node); }
    }
    const edges = Array.isArray(def.edges) ? def.edges : [];
    let previous = null;
    for (const { node } of rows) {
      if (previous !== null && previous !== node) {
        for (const e of edges) if (e.source === previous && e.target === node) takenEdges.add(String(e.id));
      }
      previous = node;
    }
    const done = snapshot.status === "completed";
    const current = done ? null : snapshot.currentNodeId;
    if (previous !== null && current && previous !== current) {
      for (const e of edges) if (e.source === previous && e.target === current) takenEdges.add(String(e.id));
    }
    return { taken, failed, takenEdges, current };
  }

  function waitText(wait) {
    if (!wait || typeof wait !== "object") return undefined;
    let text = wait.kind === "sleep" ? "sleeping" : "for " + (wait.event == null ? "an event" : String(wait.event));
    if (wait.until != null) text += " until " + when(wait.until);
    return text;
  }

  function facts(pairs) {
    return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
      .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function table(rows, id) {
    const keys = [];
    for (const row of rows) for (const key of Object.keys(row || {})) if (!keys.includes(key)) keys.push(key);
    return h("table", { id },
      h("thead", {}, h("tr", {}, keys.map((k) => h("th", {}, k)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, keys.map((k) => {
        const value = row ? row[k] : undefined;
        return h("td", { class: /^(error|failedReason)$/.test(k) && value ? "err" : "" }, cell(k, value));
      })))));
  }

  function short(value, size) {
    const text = value === undefined ? "" : JSON.stringify(value);
    return text.length > size ? text.slice(0, size - 1) + "\u2026" : text;
  }

  function duration(ms) {
    if (typeof ms !== "number") return undefined;
    return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  function linkRows(list) {
    return h("ul", {}, list.map((item) => h("li", {},
      item.run !== undefined ? h("a", { href: runLink(item.run) }, String(item.run)) : "",
      item.from !== undefined ? ` from ${item.from}` : "",
      item.at !== undefined ? ` at ${when(item.at)}` : "",
      item.by ? ` by ${item.by}` : "",
      item.reason ? ` (${item.reason})` : "",
      item.run === undefined ? " " + short(item, 200) : "")));
  }

  // data: what GET /runs/{id}/timeline answers (see refluxo.core.timeline.timeline).
  function timelineView(data, snapshot) {
    const box = h("div", { id: "timeline" });
    if (!data || !Array.isArray(data.steps)) {
      data = { steps: [] };
      for (const [node, results] of Object.entries(snapshot.context || {})) {
        for (const r of results || []) {
          data.steps.push({ node, attempt: r.attempt, at: r.timestamp, ok: !r.error, error: r.error, output: r.output });
        }
      }
      data.steps.sort((a, b) => (a.at || 0) - (b.at || 0));
    }
    const now = data.now || {};
    box.appendChild(facts([
      ["started", when(data.startedAt)],
      ["time in steps", duration(data.timeInSteps)],
      ["rerun of", data.rerunOf && data.rerunOf.run !== undefined
        ? h("span", {}, h("a", { href: runLink(data.rerunOf.run) }, String(data.rerunOf.run)),
          ` from ${data.rerunOf.from}`) : undefined],
      ["moved to", data.movedTo ? short(data.movedTo, 200) : undefined],
      ["moved from", data.movedFrom ? short(data.movedFrom, 200) : undefined],
    ]));
    box.appendChild(h("table", { id: "steps" },
      h("thead", {}, h("tr", {}, ["Time", "Node", "Attempt", "Result"].map((t) => h("th", {}, t)))),
      h("tbody", {}, data.steps.map((step) => h("tr", { dataset: { node: String(step.node) } },
        h("td", {}, when(step.at)),
        h("td", { class: "mono" }, String(step.node)),
        h("td", {}, cell("", step.attempt)),
        step.ok ? h("td", { class: "mono" }, short(step.output, 160))
          : h("td", { class: "err" }, String(step.error)))))));
    const waiting = waitText(now.wait);
    box.appendChild(h("h2", {}, "Now"));
    box.appendChild(facts([
      ["status", now.status === undefined ? undefined : status(now.status)],
      ["node", now.node == null ? undefined : String(now.node)],
      ["waiting", waiting],
      ["next retry", now.retry ? `${now.retry.node} attempt ${Number(now.retry.attempts) + 1} at ${when(now.retry.at)}` : undefined],
      ["failed", now.failedReason == null ? undefined : h("span", { class: "err" }, String(now.failedReason))],
      ["refused", now.refused ? h("span", { class: "err" }, short(now.refused, 400)) : undefined],
    ]));
    const events = data.events || {};
    if ((events.received || []).length || (events.consumed || []).length) {
      box.appendChild(h("h2", {}, "Events"));
      box.appendChild(facts([
        ["queued", (events.received || []).length ? short(events.received, 400) : undefined],
        ["consumed", (events.consumed || []).length ? short(events.consumed, 400) : undefined],
      ]));
    }
    if ((data.retries || []).length) {
      box.appendChild(h("h2", {}, "Retries"));
      box.appendChild(table(data.retries.map((r) => (r && typeof r === "object" ? r : { value: r }))));
    }
    if ((data.reruns || []).length) {
      box.appendChild(h("h2", {}, "Reruns"));
      box.appendChild(h("div", { id: "reruns" }, linkRows(data.reruns.filter((r) => r && typeof r === "object"))));
    }
    return box;
  }

  function actionForm(title, id, fields, button, onSubmit, danger) {
    const submit = h("button", { type: "submit", id, class: danger ? "danger" : "" }, button);
    const form = h("form", {}, h("fieldset", {}, h("legend", {}, title), fields, submit));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      submit.disabled = true;
      try { await onSubmit(); } catch (e) { notice(e.message); } finally { submit.disabled = submit.dataset.off === "1"; }
    });
    return form;
  }

  async function runPage(id) {
    const path = "/runs/" + seg(id);
    const head = h("div", {});
    const graph = h("div", { class: "card", id: "run-graph" });
    const timeline = h("div", { class: "card" });
    const raw = h("pre", { id: "snapshot", class: "mono" });
    const nodeSelect = h("select", { id: "rerun-node" });
    const eventName = h("input", { id: "event-name", placeholder: "name (optional)" });
    const eventPayload = h("textarea", { id: "event-payload", placeholder: "payload (JSON)" }, '{"approved": true}');
    const cancelReason = h("input", { id: "cancel-reason", placeholder: "reason (optional)" });
    const retryReason = h("input", { id: "retry-reason", placeholder: "reason (optional)" });
    const retryForce = h("input", { type: "checkbox", id: "retry-force" });
    const rerunInput = h("textarea", { id: "rerun-input", placeholder: "input (JSON, optional)" });
    const rerunId = h("input", { id: "rerun-id", placeholder: "new run id (optional)" });
    const done = async (what, answer) => {
      notice(`${what}: ${JSON.stringify(answer)}`, true);
      await load();
    };
    const actions = h("div", { class: "actions" },
      actionForm("Send an event", "send-event", [eventName, eventPayload], "Send", async () => {
        const body = { payload: parseJson(eventPayload.value, "the payload") ?? null };
        if (eventName.value.trim()) body.name = eventName.value.trim();
        await done("event sent", await api("POST", path + "/events", body));
      }),
      actionForm("Retry", "retry", [retryReason, h("label", {}, retryForce, " force (a cancelled run)")],
        "Retry", async () => {
          const body = {};
          if (retryReason.value.trim()) body.reason = retryReason.value.trim();
          if (retryForce.checked) body.force = true;
          await done("retried", await api("POST", path + "/retry", body));
        }),
      actionForm("Rerun from a node", "rerun", [nodeSelect, rerunInput, rerunId], "Rerun", async () => {
        const body = { from: nodeSelect.value };
        const input = parseJson(rerunInput.value, "the input");
        if (input !== undefined) body.input = input;
        if (rerunId.value.trim()) body.id = rerunId.value.trim();
        const answer = await api("POST", path + "/rerun", body);
        const newId = pick(answer, "id", "runId", "workflowId");
        notice(`rerun started: ${newId}`, true);
        if (newId !== undefined) location.hash = runLink(newId);
      }),
      actionForm("Cancel", "cancel", [cancelReason], "Cancel the run", async () => {
        const body = cancelReason.value.trim() ? { reason: cancelReason.value.trim() } : {};
        await done("cancelled", await api("POST", path + "/cancel", body));
      }, true));
    main.replaceChildren(head,
      h("div", { class: "grid" },
        h("div", {}, h("h2", {}, "Graph"), graph,
          h("div", { class: "legend" }, h("span", { class: "l-taken" }, "path taken"),
            h("span", { class: "l-current" }, "current node"), h("span", { class: "l-failed" }, "failed"))),
        h("div", {}, h("h2", {}, "Timeline"), timeline)),
      h("h2", {}, "Actions"), h("div", { class: "card" }, actions),
      h("h2", {}, "Snapshot"), h("div", { class: "card" }, raw));
    let shownNodes = "";
    const load = async () => {
      const snapshot = await api("GET", path);
      const name = snapshot.definition && snapshot.definition.name;
      const meta = snapshot.metadata || {};
      head.replaceChildren(
        h("h1", {}, "Run ", h("span", { class: "mono", id: "run-id" }, String(snapshot.workflowId ?? id)), " ",
          h("span", { id: "run-status" }, status(snapshot.status))),
        h("div", { class: "card" }, facts([
          ["workflow", name ? h("a", { href: "#/workflows/" + seg(name) }, String(name)) : undefined],
          ["current node", snapshot.currentNodeId == null ? undefined : String(snapshot.currentNodeId)],
          ["version", cell("", snapshot.version)],
          ["last step started", when(snapshot.lastStartedAt)],
          ["waiting", waitText(snapshot.wait)],
          ["failed reason", meta.failedReason == null ? undefined : cell("", meta.failedReason)],
        ])));
      if (snapshot.wait && snapshot.wait.event && !eventName.value) eventName.value = String(snapshot.wait.event);
      const finished = snapshot.status === "completed" || snapshot.status === "failed";
      const off = (selector, yes) => {
        const button = actions.querySelector(selector);
        button.dataset.off = yes ? "1" : "";
        button.disabled = yes;
      };
      off("#send-event", finished);
      off("#cancel", finished);
      off("#retry", snapshot.status !== "failed");
      raw.textContent = JSON.stringify(snapshot, null, 2);
      let def = null;
      if (name) {
        try { def = await definition(String(name)); } catch (e) { graph.replaceChildren(h("p", { class: "err" }, e.message)); }
      }
      if (def) {
        graph.replaceChildren(RefluxoGraph.render(def, marksOf(snapshot, def)));
        const ids = (def.nodes || []).map((n) => String(n.id));
        if (ids.join("\n") !== shownNodes) {
          shownNodes = ids.join("\n");
          nodeSelect.replaceChildren(...ids.map((n) => h("option", { value: n }, n)));
        }
      } else if (!name) {
        graph.replaceChildren(h("p", { class: "muted" }, "The snapshot names no workflow."));
      }
      let data = null;
      try { data = await api("GET", path + "/timeline"); } catch (e) { data = null; }
      timeline.replaceChildren(timelineView(data, snapshot));
      return snapshot;
    };
    await load();
    every(REFRESH_MS, () => load().catch(fail));
  }

  // --- routing ----------------------------------------------------------------------------

  function fail(error) { notice(error && error.message ? error.message : String(error)); }

  async function route() {
    generation += 1;
    stop();
    notice("");
    const hash = location.hash.replace(/^#/, "") || "/runs";
    const [path, query] = hash.split("?", 2);
    const parts = path.split("/").filter(Boolean).map((p) => {
      try { return decodeURIComponent(p); } catch (e) { return p; }
    });
    for (const link of document.querySelectorAll("header nav a")) {
      link.classList.toggle("active", link.id === "nav-" + (parts[0] || "runs"));
    }
    try {
      if (parts[0] === "workflows") await workflowsPage(parts[1]);
      else if (parts[0] === "runs" && parts.length > 1) await runPage(parts.slice(1).join("/"));
      else await runsPage(new URLSearchParams(query || ""));
    } catch (e) {
      fail(e);
    }
  }

  window.addEventListener("hashchange", route);
  fetch("info.json", { cache: "no-store" }).then((r) => r.json()).then((info) => {
    document.getElementById("target").textContent = String(info.target || "");
  }).catch(() => {});
  route();
})();
