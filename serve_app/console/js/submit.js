// A form per workflow, built from its params' JSON Schema (GET /workflows), that submits a task
// and opens its page, which follows it live. Image parameters are file pickers whose file is
// sent as a base64 data: URL (or an http(s) URL typed instead).

import * as api from "./api.js";
import { h, fill, errorBox } from "./dom.js";

export function mount(root, name, _ctx) {
  let alive = true;
  const list = h("nav.wf-list", { id: "workflows" });
  const pane = h("div.wf-pane");
  root.append(h("div.head", h("h1", "New task"), h("span.muted", "Pick a workflow, fill in its parameters, submit.")),
    h("div.split", list, pane));

  api.get("/workflows").then((wfs) => {
    if (!alive) return;
    wfs.sort((a, b) => a.name.localeCompare(b.name));
    const chosen = wfs.find((w) => w.name === name) || null;
    fill(list, wfs.map((w) => h(`a.wf${chosen && chosen.name === w.name ? ".on" : ""}`, { href: `#/new/${encodeURIComponent(w.name)}`, dataset: { workflow: w.name } },
      h("div.wf-name", w.name), h("div.wf-desc.muted", w.description || ""))));
    if (chosen) fill(pane, form(chosen));
    else fill(pane, h("div.card.pad.empty", name ? `No workflow named ${name}.` : "Choose a workflow on the left."));
  }).catch((err) => { if (alive) fill(pane, errorBox(err)); });

  return () => { alive = false; };
}

/** Whether a parameter's schema takes an image: an explicit mark, else the service's own
 * description of image values ("… a data: URL (data:image/…"). */
export function isImage(s) {
  if (typeof s.contentMediaType === "string" && s.contentMediaType.startsWith("image/")) return true;
  if (["image", "data-url", "binary"].includes(s.format)) return true;
  if (Object.entries(s).some(([k, v]) => k.startsWith("x-") && k.endsWith("type") && v === "image")) return true;
  return s.type === "string" && typeof s.description === "string" && s.description.includes("data:image/");
}

function isSeed(s) {
  return Array.isArray(s.oneOf) && s.oneOf.some((o) => o.const === "random");
}

function form(wf) {
  const schema = wf.params || {};
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const fields = Object.entries(props).map(([pname, s]) => field(pname, s, required.has(pname)));
  const msg = h("div");
  const clientId = h("input", { name: "client_task_id", placeholder: "optional, ≤128 chars", maxLength: 128 });
  const priority = h("input", { name: "priority", type: "number", step: 1, placeholder: "0" });
  const button = h("button.primary", { type: "submit", id: "submit" }, "Submit task");

  const el = h("form.card.pad.wf-form", { id: "task-form", dataset: { workflow: wf.name }, novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    fill(msg);
    for (const f of fields) f.setProblem("");
    const params = {};
    try {
      for (const f of fields) {
        const v = await f.value();
        if (v !== undefined) params[f.name] = v;
      }
    } catch (err) { fill(msg, errorBox(err)); return; }
    const body = { workflow: wf.name, params };
    if (clientId.value.trim()) body.client_task_id = clientId.value.trim();
    if (priority.value !== "") body.priority = Number(priority.value);
    button.disabled = true;
    button.textContent = "Submitting…";
    try {
      const task = await api.post("/tasks", body);
      location.hash = `#/tasks/${task.task_id}`;
    } catch (err) {
      for (const d of Array.isArray(err.details) ? err.details : []) {
        const name = d.param || (Array.isArray(d.loc) ? d.loc[d.loc.length - 1] : null);
        const f = fields.find((x) => x.name === name);
        if (f) f.setProblem(d.problem || "");
      }
      fill(msg, errorBox(err));
      button.disabled = false;
      button.textContent = "Submit task";
    }
  } },
    h("div.wf-title", h("h2", wf.name), wf.version ? h("span.mono.muted.small", { title: wf.version }, "v " + wf.version.slice(0, 8)) : null),
    wf.description ? h("p.muted", wf.description) : null,
    fields.length ? fields.map((f) => f.el) : h("p.muted", "This workflow takes no parameters."),
    h("details.advanced", h("summary", "Advanced"),
      h("label.field", h("span.lbl", "Client task id"), clientId, h("span.help", "The same id with the same body returns the existing task.")),
      h("label.field", h("span.lbl", "Priority"), priority, h("span.help", "Higher runs first."))),
    msg,
    h("div.row.end", button),
  );
  return el;
}

/** One parameter's input: {name, el, value() -> Promise<value | undefined>, setProblem(text)}. */
function field(name, s, required) {
  const problem = h("span.problem");
  const help = s.description ? h("span.help", s.description) : null;
  const label = h("span.lbl", name, required ? h("span.req", " *") : null);
  let input;
  let value;

  if (isImage(s)) {
    const preview = h("img.thumb", { hidden: true, alt: "" });
    const file = h("input", { type: "file", accept: "image/*", name, dataset: { param: name } });
    const url = h("input", { type: "url", placeholder: "or an http(s) URL", name: `${name}__url` });
    file.addEventListener("change", () => {
      const f = file.files[0];
      preview.hidden = !f;
      if (f) preview.src = URL.createObjectURL(f);
    });
    input = h("div.image-input", file, url, preview);
    value = async () => {
      const f = file.files[0];
      if (f) return readDataUrl(f);
      if (url.value.trim()) return url.value.trim();
      if (required) throw new Error(`${name}: choose an image`);
      return undefined;
    };
  } else if (isSeed(s)) {
    const n = h("input", { type: "number", step: 1, min: 0, name, placeholder: "random", dataset: { param: name } });
    if (typeof s.default === "number") n.value = String(s.default);
    input = h("div.row", n, h("button.ghost.tiny", { type: "button", title: "a random seed", onclick: () => (n.value = String(Math.floor(Math.random() * 2 ** 32))) }, "🎲"),
      h("button.ghost.tiny", { type: "button", onclick: () => (n.value = "") }, "random"));
    value = async () => (n.value === "" ? (required ? "random" : undefined) : Number(n.value));
  } else if (Array.isArray(s.enum)) {
    input = h("select", { name, dataset: { param: name } },
      required ? null : h("option", { value: "" }, s.default !== undefined ? `default (${s.default})` : "workflow's own"),
      s.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))));
    if (required && s.default !== undefined) input.value = JSON.stringify(s.default);
    value = async () => (input.value === "" ? undefined : JSON.parse(input.value));
  } else if (s.type === "boolean") {
    input = h("input", { type: "checkbox", name, dataset: { param: name } });
    input.checked = s.default === true;
    value = async () => input.checked;
  } else if (s.type === "integer" || s.type === "number") {
    input = h("input", { type: "number", name, step: s.type === "integer" ? 1 : "any", min: s.minimum, max: s.maximum, dataset: { param: name } });
    if (s.default !== undefined) input.value = String(s.default);
    value = async () => {
      if (input.value === "") {
        if (required) throw new Error(`${name}: a number is needed`);
        return undefined;
      }
      return Number(input.value);
    };
  } else {
    const long = (s.maxLength || 0) > 200 || /text|prompt/i.test(name);
    input = h(long ? "textarea" : "input", { name, maxLength: s.maxLength, rows: long ? 3 : undefined, dataset: { param: name } });
    if (s.default !== undefined) input.value = String(s.default);
    value = async () => (input.value === "" && !required ? undefined : input.value);
  }
  if (s.type === "integer" && s.minimum !== undefined && s.maximum !== undefined && !isSeed(s)) {
    label.append(h("span.range.muted", ` ${s.minimum}–${s.maximum}`));
  }
  const el = h("div.field", { dataset: { field: name } }, h("label", label), input, help, problem);
  return { name, el, value, setProblem: (t) => { problem.textContent = t; el.classList.toggle("invalid", !!t); } };
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error(`could not read ${file.name}`));
    r.readAsDataURL(file);
  });
}
