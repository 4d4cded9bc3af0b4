// One task: status, progress, outputs (image, video or audio by content type), the error with
// its failing node, details, and the event timeline: GET /events first, then live from /stream.

import * as api from "./api.js";
import { h, fill, FINAL, statusPill, duration, clock, bytes, progressBar, copyButton, errorBox } from "./dom.js";

export function mount(root, taskId, _ctx) {
  let alive = true;
  const aborter = new AbortController();
  let task = null;
  let lastSeq = 0;
  let firstAt = null;
  let queue = null;
  let refreshing = null;
  let preview = null; // the latest live preview frame (a data: URL), while the task runs

  const head = h("div.head");
  const msg = h("div");
  const progress = h("div.card.pad", { id: "progress" });
  const problem = h("div", { id: "task-error" });
  const outputs = h("div.outputs", { id: "outputs" });
  const details = h("dl.details");
  const timeline = h("tbody", { id: "timeline" });
  const live = h("span.live-tag", "");

  root.append(
    h("div.crumbs", h("a", { href: "#/tasks" }, "Tasks"), " / ", h("span.mono", taskId)),
    head, msg, progress, problem,
    h("div.cols",
      h("div.main",
        h("section", h("h2", "Outputs"), outputs),
        h("section", h("h2", "Timeline ", live),
          h("div.card", h("table.grid.timeline", h("thead", h("tr", ["#", "Time", "+", "Event", ""].map((t) => h("th", t)))), timeline)))),
      h("aside", h("section", h("h2", "Details"), h("div.card.pad", details)))),
  );

  async function refresh() {
    if (refreshing) return refreshing;
    refreshing = api.get(`/tasks/${encodeURIComponent(taskId)}`).then((t) => {
      if (alive) { task = t; render(); }
    }).catch((err) => { if (alive) fill(msg, errorBox(err)); }).finally(() => (refreshing = null));
    return refreshing;
  }

  function render() {
    const t = task;
    const canCancel = !FINAL.has(t.status);
    fill(head,
      statusPill(t.status), h("h1", t.workflow), h("span.mono.muted", t.task_id), copyButton(t.task_id),
      h("div.grow"),
      canCancel ? h("button.danger", { type: "button", id: "cancel", onclick: cancel }, "Cancel") : null,
      h("a.button", { href: `#/new/${encodeURIComponent(t.workflow)}` }, "New ", t.workflow));
    renderProgress(t);
    fill(problem, t.error ? h("div.banner.bad.error-box",
      h("div", h("strong", t.error.code || "error"), t.error.node_id ? h("span.node", " at node ", h("b.mono", t.error.node_id), t.error.node_type ? ` (${t.error.node_type})` : "") : null),
      h("div.msg", t.error.message || "")) : null);
    renderOutputs(t);
    renderDetails(t);
  }

  function renderProgress(t) {
    const p = t.progress;
    let label = t.status;
    if (t.status === "running") label = p && p.max ? `step ${p.value} of ${p.max}${p.node ? ` · node ${p.node}` : ""}` : "running";
    else if (t.status === "queued" || t.status === "dispatched") {
      const q = queue || t.queue;
      label = q && q.position ? `waiting · position ${q.position}${q.eta_s != null ? ` · about ${Math.round(q.eta_s)} s` : ""}` : t.status === "queued" ? "waiting for a free endpoint" : `in ComfyUI's queue on ${t.endpoint}`;
    } else if (t.status === "succeeded") label = `done · ${t.outputs.length} output(s)`;
    fill(progress, h("div.row", h("span.plabel", label), h("div.grow"), h("span.muted", duration(t.created_at, t.finished_at))), progressBar(t),
      preview && !FINAL.has(t.status) ? h("img.preview", { src: preview, alt: "live preview" }) : null);
  }

  function renderOutputs(t) {
    if (!t.outputs.length) {
      fill(outputs, h("div.empty.card.pad", FINAL.has(t.status) ? "This task has no outputs." : "Outputs appear here as they are stored."));
      return;
    }
    fill(outputs, t.outputs.map(media));
  }

  function renderDetails(t) {
    const rows = [
      ["Status", t.status], ["Workflow", t.workflow], ["Client task id", t.client_task_id],
      ["Tenant", t.tenant], ["Priority", t.priority], ["Attempt", t.attempt], ["Endpoint", t.endpoint],
      ["ComfyUI prompt", t.comfyui_task_id], ["Created", t.created_at && new Date(t.created_at).toLocaleString()],
      ["Finished", t.finished_at && new Date(t.finished_at).toLocaleString()], ["Webhook", t.callback_url ? `${t.webhook || "pending"} → ${t.callback_url}` : null],
    ];
    fill(details, rows.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [h("dt", k), h("dd", String(v))]));
  }

  function addEvent(e) {
    if (e.seq <= lastSeq) return;
    lastSeq = e.seq;
    if (!firstAt) firstAt = e.at;
    const raw = h("details", h("summary", "data"), h("pre", JSON.stringify(e.data, shorten, 2)));
    timeline.append(h(`tr.ev.t-${e.type.replace(/\./g, "-")}`, { dataset: { type: e.type } },
      h("td.num.muted", e.seq), h("td.mono.muted", clock(e.at)), h("td.num.muted", "+" + duration(firstAt, e.at)),
      h("td", h("span.etype", e.type), " ", h("span.esum", summary(e))), h("td.raw", raw)));
  }

  // The timeline so far, then the live stream (with ComfyUI's previews, when the service sends
  // them) until the task ends; a stream that closes early is followed again.
  async function follow() {
    try {
      const events = await api.get(`/tasks/${encodeURIComponent(taskId)}/events`);
      if (!alive) return;
      events.forEach(addEvent);
      while (alive && task && !FINAL.has(task.status)) {
        live.textContent = "live";
        await api.stream(`/tasks/${encodeURIComponent(taskId)}/stream?previews=true`, {
          after: lastSeq, signal: aborter.signal, onEvent,
        });
        await refresh();
        if (alive && !FINAL.has(task.status)) await new Promise((r) => setTimeout(r, 1000));
      }
    } catch (err) {
      if (alive) fill(msg, errorBox(err));
    } finally {
      live.textContent = "";
      if (alive) {
        await refresh();
        // What the stream did not bring (it failed, or ended before the page heard the end):
        // the rest of the timeline, from the log (events already shown are skipped).
        try {
          (await api.get(`/tasks/${encodeURIComponent(taskId)}/events`)).forEach((e) => alive && addEvent(e));
        } catch (err) {
          if (alive) fill(msg, errorBox(err));
        }
      }
    }
  }

  function onEvent(f) {
    if (f.event === "queue") { queue = f.data; if (task) renderProgress(task); return; }
    if (f.event === "preview") { showPreview(f.data); return; }
    if (!f.data || typeof f.data !== "object") return;
    addEvent(f.data);
    if (f.data.type === "task.progressed" && task) {
      task.status = "running";
      task.progress = { value: f.data.data.value, max: f.data.data.max, node: f.data.data.node };
      renderProgress(task);
    } else refresh();
  }

  function showPreview(p) {
    if (!p || !p.data || !task || FINAL.has(task.status)) return;
    preview = `data:${p.content_type || "image/jpeg"};base64,${p.data}`;
    renderProgress(task);
  }

  async function cancel(e) {
    e.target.disabled = true;
    try { task = await api.post(`/tasks/${encodeURIComponent(taskId)}/cancel`); render(); } catch (err) { fill(msg, errorBox(err)); }
  }

  refresh().then(follow);
  return () => { alive = false; aborter.abort(); };
}

/** One output shown by its content type: image, video or audio; else a download link. */
export function media(o) {
  const type = o.content_type || "";
  let view;
  if (!o.url) view = h("div.nourl.muted", o.fallback_path ? `kept on the service at ${o.fallback_path}` : "not stored");
  else if (type.startsWith("image/")) view = h("a", { href: o.url, target: "_blank", rel: "noopener" }, h("img", { src: o.url, alt: o.filename, loading: "lazy" }));
  else if (type.startsWith("video/")) view = h("video", { src: o.url, controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
  else if (type.startsWith("audio/")) view = h("audio", { src: o.url, controls: true });
  else view = h("a.file", { href: o.url, target: "_blank", rel: "noopener" }, "open file");
  return h("figure.output", { dataset: { contentType: type } }, h("div.frame", view),
    h("figcaption", h("span.mono", { title: o.filename }, o.filename), h("span.muted", `${type} · ${bytes(o.size)}`),
      o.url ? h("a.small", { href: o.url, download: o.filename }, "download") : null));
}

function shorten(_k, v) {
  return typeof v === "string" && v.length > 200 ? `${v.slice(0, 120)}… (${v.length} chars)` : v;
}

function compact(obj) {
  return Object.entries(obj || {}).map(([k, v]) => {
    let s = typeof v === "string" ? v : JSON.stringify(v);
    if (s && s.length > 48) s = s.slice(0, 40) + "…";
    return `${k}=${s}`;
  }).join("  ");
}

function summary(e) {
  const d = e.data || {};
  switch (e.type) {
    case "task.submitted": return compact(d.params);
    case "task.dispatched": return `→ ${d.endpoint} · attempt ${d.attempt}`;
    case "task.started": return "ComfyUI began executing";
    case "task.progressed": return `${d.value}/${d.max}${d.node ? ` · node ${d.node}` : ""}`;
    case "task.output_stored": return `${d.filename} · ${d.content_type} · ${bytes(d.size)}`;
    case "task.failed": return `${d.code}: ${d.message}${d.node_id ? ` (node ${d.node_id}${d.node_type ? " " + d.node_type : ""})` : ""}`;
    case "task.requeued": return `${d.endpoint}: ${d.reason}`;
    case "task.succeeded": case "task.cancel_requested": return "";
    default: return compact(d);
  }
}
