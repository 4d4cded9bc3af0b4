// Small DOM and formatting helpers shared by the views.

/** h("div.a.b", {attrs, on*: handler}, children…): an element. Text children are escaped. */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  if (attrs !== null && attrs !== undefined && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className += (el.className ? " " : "") + v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replace the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const FINAL = new Set(["succeeded", "failed", "cancelled"]);

export function statusPill(status) {
  return h(`span.pill.s-${status}`, { title: status }, status);
}

export function shortId(id) { return id ? id.slice(0, 8) : "—"; }

export function ago(iso, now = Date.now()) {
  if (!iso) return "—";
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return new Date(iso).toLocaleDateString();
}

export function duration(fromIso, toIso) {
  if (!fromIso) return "—";
  const ms = (toIso ? Date.parse(toIso) : Date.now()) - Date.parse(fromIso);
  if (ms < 0) return "—";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60000);
  return `${m}m ${Math.floor((ms % 60000) / 1000)}s`;
}

export function clock(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1048576).toFixed(1)} MB`;
}

/** A progress bar; `progress` is the task's {value, max, node} or null. */
export function progressBar(task) {
  const p = task.progress;
  let frac = 0;
  if (task.status === "succeeded") frac = 1;
  else if (p && p.max) frac = Math.min(1, p.value / p.max);
  const el = h(`div.progress.s-${task.status}`, { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(frac * 100) },
    h("div.fill"));
  el.firstChild.style.width = `${(frac * 100).toFixed(1)}%`; // CSSOM: allowed by the page's CSP
  if (task.status === "running" && !(p && p.max)) el.classList.add("indeterminate");
  return el;
}

export function copyButton(text, label = "copy") {
  return h("button.ghost.tiny", {
    type: "button", title: `Copy ${text}`,
    onclick: async (e) => {
      e.stopPropagation();
      try { await navigator.clipboard.writeText(text); e.target.textContent = "copied"; } catch { e.target.textContent = "—"; }
      setTimeout(() => (e.target.textContent = label), 1200);
    },
  }, label);
}

export function errorBox(err) {
  return h("div.banner.bad", h("strong", err.code || "error"), " ", err.message || String(err));
}
