// The task list, newest first, refreshed every 1.5 s; filters by status and workflow live in
// the URL's query (#/tasks?status=failed&workflow=solid) so a filtered view can be shared.

import * as api from "./api.js";
import * as fleet from "./fleet.js";
import { h, fill, statusPill, shortId, ago, duration, progressBar, errorBox } from "./dom.js";

const POLL_MS = 1500;
const PAGE = 100;
const MAX_LIMIT = 500; // the API's largest page
const STATUSES = ["", "queued", "dispatched", "running", "succeeded", "failed", "cancelled"];

export function mount(root, _arg, ctx) {
  let alive = true;
  let timer = 0;
  const seen = new Set();
  let first = true;
  const filters = readFilters();
  let limit = PAGE;

  const strip = fleet.strip(ctx);
  const workflowSel = h("select", { id: "filter-workflow", onchange: () => setFilter("workflow", workflowSel.value) },
    h("option", { value: "" }, "all workflows"));
  const statusTabs = h("div.seg", { role: "tablist" }, STATUSES.map((s) =>
    h("button", { type: "button", class: s === filters.status ? "on" : "", dataset: { status: s || "all" }, onclick: () => setFilter("status", s) }, s || "all")));
  const search = h("input.search", { type: "search", id: "filter-client-id", placeholder: "client task id", value: filters.client_task_id,
    onchange: () => setFilter("client_task_id", search.value.trim()) });
  const more = h("button.ghost", { type: "button", id: "more", hidden: true, onclick: () => { limit = Math.min(MAX_LIMIT, limit + PAGE); clearTimeout(timer); tick(); } }, "Show more");
  const body = h("tbody", { id: "task-rows" });
  const msg = h("div");
  const foot = h("div.foot.muted");

  root.append(
    strip.el,
    h("div.head", h("h1", "Tasks"), h("div.grow"), statusTabs, workflowSel, search,
      h("a.button.primary", { href: "#/new" }, "New task")),
    msg,
    h("div.card", h("table.grid.tasks",
      h("thead", h("tr", ["Status", "Task", "Workflow", "Progress", "Endpoint", "Created", "Duration"].map((t) => h("th", t)))),
      body)),
    h("div.row", foot, h("div.grow"), more),
  );

  api.get("/workflows").then((wfs) => {
    if (!alive) return;
    for (const w of wfs) workflowSel.append(h("option", { value: w.name }, w.name));
    workflowSel.value = filters.workflow;
  }).catch(() => {});

  function setFilter(name, value) {
    filters[name] = value;
    limit = PAGE;
    const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState(null, "", `#/tasks${q.size ? "?" + q : ""}`);
    for (const b of statusTabs.children) b.classList.toggle("on", (b.dataset.status === "all" ? "" : b.dataset.status) === filters.status);
    first = true;
    clearTimeout(timer);
    tick();
  }

  async function tick() {
    if (document.hidden) { timer = setTimeout(tick, POLL_MS); return; } // no load from a hidden tab
    const q = new URLSearchParams({ limit: String(limit) });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    try {
      const page = await api.get(`/tasks?${q}`);
      if (!alive) return;
      fill(msg);
      render(page.tasks);
      more.hidden = !page.next_cursor || limit >= MAX_LIMIT;
      fill(foot, page.tasks.length ? `${page.tasks.length}${page.next_cursor ? "+" : ""} task(s) · updated ${new Date().toLocaleTimeString([], { hour12: false })}` : "");
    } catch (err) {
      if (alive) fill(msg, errorBox(err));
    }
    if (alive) timer = setTimeout(tick, POLL_MS);
  }

  function render(tasks) {
    const now = Date.now();
    const rows = tasks.map((t) => {
      const fresh = !first && !seen.has(t.task_id);
      seen.add(t.task_id);
      return row(t, now, fresh);
    });
    first = false;
    fill(body, rows.length ? rows : h("tr", h("td.empty", { colSpan: 7 }, filters.status || filters.workflow || filters.client_task_id ? "No tasks match these filters." : "No tasks yet. Submit one with New task.")));
  }

  tick();
  return () => { alive = false; clearTimeout(timer); strip.stop(); };
}

function readFilters() {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  return { status: q.get("status") || "", workflow: q.get("workflow") || "", client_task_id: q.get("client_task_id") || "" };
}

function row(t, now, fresh) {
  const href = `#/tasks/${t.task_id}`;
  return h(`tr.link${fresh ? ".fresh" : ""}`, { dataset: { taskId: t.task_id, status: t.status }, onclick: (e) => { if (!e.target.closest("a")) location.hash = href; } },
    h("td", statusPill(t.status)),
    h("td", h("a.mono", { href, title: t.task_id }, shortId(t.task_id)), t.client_task_id ? h("span.muted.small", " ", t.client_task_id) : null),
    h("td", t.workflow),
    h("td.prog", progressBar(t), h("span.muted.small", progressText(t))),
    h("td.mono.muted", t.endpoint || "—"),
    h("td.muted", { title: t.created_at }, ago(t.created_at, now)),
    h("td.num.muted", duration(t.created_at, t.finished_at)),
  );
}

function progressText(t) {
  const p = t.progress;
  if (t.status === "running" && p && p.max) return `${p.value}/${p.max}`;
  const q = t.queue;
  if (q && q.position) return `#${q.position}${q.eta_s != null ? ` · ~${Math.round(q.eta_s)} s` : ""}`;
  return "";
}
