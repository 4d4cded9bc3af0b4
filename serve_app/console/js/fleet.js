// The fleet: every ComfyUI endpoint with its state, queue, in-flight tasks and labels.
// A key that may not read the fleet (403, a tenant key) hides it instead of failing.

import * as api from "./api.js";
import { h, fill, ago, errorBox } from "./dom.js";

const POLL_MS = 2000;
/** How many of the newest tasks the per-endpoint counts look at. */
const RECENT = 200;

/** GET /endpoints, or null when this key may not see the fleet. */
export async function load(ctx) {
  try {
    const eps = await api.get("/endpoints");
    ctx.setFleetAllowed(true);
    return eps;
  } catch (err) {
    if (err.status === 403) {
      ctx.setFleetAllowed(false);
      return null;
    }
    throw err;
  }
}

export function mount(root, _arg, ctx) {
  let alive = true;
  let timer = 0;
  const summary = h("div.stats");
  const body = h("tbody");
  const msg = h("div");
  root.append(
    h("div.head", h("h1", "Fleet"), h("span.muted", "ComfyUI endpoints, refreshed every 2 s")),
    msg, summary,
    h("div.card", h("table.grid.fleet",
      h("thead", h("tr", ["Endpoint", "State", "Queue", "In flight", `Succeeded (last ${RECENT})`, `Failed (last ${RECENT})`, "Labels", "Last seen"].map((t) => h("th", t)))),
      body)),
  );

  async function tick() {
    if (document.hidden) { timer = setTimeout(tick, POLL_MS); return; } // no load from a hidden tab
    try {
      const [eps, recent] = await Promise.all([load(ctx), api.get(`/tasks?limit=${RECENT}`).then((p) => p.tasks).catch(() => [])]);
      if (!alive) return;
      if (eps === null) {
        fill(msg, h("div.banner", "This key does not give access to the fleet."));
        return;
      }
      fill(msg);
      const by = tally(recent);
      renderSummary(summary, eps, recent);
      fill(body, eps.length ? eps.map((e) => row(e, by[e.endpoint] || {})) : h("tr", h("td.empty", { colSpan: 8 }, "No endpoints.")));
    } catch (err) {
      if (alive) fill(msg, errorBox(err));
    }
    if (alive) timer = setTimeout(tick, POLL_MS);
  }
  tick();
  return () => { alive = false; clearTimeout(timer); };
}

/** Counts of the recent tasks by endpoint and status. */
function tally(tasks) {
  const by = {};
  for (const t of tasks) {
    if (!t.endpoint) continue;
    const c = (by[t.endpoint] ||= {});
    c[t.status] = (c[t.status] || 0) + 1;
  }
  return by;
}

function renderSummary(el, eps, recent) {
  const connected = eps.filter((e) => e.state === "connected").length;
  const queue = eps.reduce((n, e) => n + (e.queue_remaining || 0), 0);
  const inflight = eps.reduce((n, e) => n + (e.inflight || 0), 0);
  const waiting = recent.filter((t) => t.status === "queued").length;
  const ended = recent.filter((t) => t.status === "succeeded" || t.status === "failed");
  const ok = ended.filter((t) => t.status === "succeeded").length;
  fill(el,
    stat("Endpoints", `${connected}/${eps.length}`, "connected", connected === eps.length && eps.length ? "ok" : "warn"),
    stat("In flight", inflight, "tasks on ComfyUI"),
    stat("ComfyUI queue", queue, "prompts remaining"),
    stat("Waiting", waiting, `queued, of the last ${RECENT}`),
    stat("Succeeded", ended.length ? `${Math.round((100 * ok) / ended.length)}%` : "—", `of ${ended.length} ended (last ${RECENT})`, ended.length && ok < ended.length ? "warn" : ended.length ? "ok" : ""),
  );
}

function stat(label, value, sub, tone = "") {
  return h(`div.stat${tone ? "." + tone : ""}`, h("div.label", label), h("div.value", String(value)), h("div.sub", sub));
}

function row(e, recent) {
  return h("tr", { dataset: { endpoint: e.endpoint } },
    h("td.mono", e.endpoint),
    h("td", h(`span.state.st-${e.state}`, e.state)),
    h("td.num", e.queue_remaining ?? 0),
    h("td.num", e.inflight ?? 0),
    h("td.num", recent.succeeded || 0),
    h(`td.num${recent.failed ? ".bad" : ""}`, recent.failed || 0),
    h("td", (e.labels || []).length ? e.labels.map((l) => h("span.tag", l)) : h("span.muted", "—")),
    h("td.muted", e.last_seen ? ago(typeof e.last_seen === "number" ? new Date(e.last_seen * 1000).toISOString() : e.last_seen) : "—"),
  );
}

/** A one-line fleet summary for the top of the task list (hidden for tenant keys). */
export function strip(ctx) {
  const el = h("div.strip");
  let alive = true;
  let timer = 0;
  async function tick() {
    if (document.hidden) { timer = setTimeout(tick, POLL_MS); return; }
    try {
      const eps = await load(ctx);
      if (!alive) return;
      if (eps === null) { el.hidden = true; return; }
      fill(el, h("a.strip-title", { href: "#/fleet" }, "Fleet"), eps.map((e) =>
        h("a.chip", { href: "#/fleet", title: `${e.endpoint}: ${e.state}, queue ${e.queue_remaining ?? 0}, in flight ${e.inflight ?? 0}` },
          h(`span.dot.st-${e.state}`), h("span.mono", e.endpoint),
          h("span.muted", ` ${e.inflight ?? 0} running · ${e.queue_remaining ?? 0} queued`))));
    } catch { /* the list shows the connection state */ }
    if (alive) timer = setTimeout(tick, POLL_MS);
  }
  tick();
  return { el, stop: () => { alive = false; clearTimeout(timer); } };
}
