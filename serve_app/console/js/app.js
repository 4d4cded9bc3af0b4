// The console's shell: hash routes, the key dialog, the connection light.
//
// Routes: #/tasks (default), #/tasks/<id>, #/fleet, #/new, #/new/<workflow>.
// Each view's `mount(root, route, ctx)` returns a function that stops its timers and streams.

import * as api from "./api.js";
import * as fleet from "./fleet.js";
import * as tasks from "./tasks.js";
import * as task from "./task.js";
import * as submit from "./submit.js";

const view = document.getElementById("view");
const ctx = {
  // null until known; false when the key may not read the fleet (a tenant key: 403).
  fleetAllowed: null,
  setFleetAllowed(ok) {
    if (ctx.fleetAllowed === ok) return;
    ctx.fleetAllowed = ok;
    document.getElementById("nav-fleet").hidden = !ok;
    document.body.classList.toggle("no-fleet", !ok);
    if (!ok && location.hash.startsWith("#/fleet")) location.hash = "#/tasks";
  },
};
let stop = () => {};

function route() {
  const path = location.hash.replace(/^#\/?/, "").split("?")[0] || "tasks";
  const parts = path.split("/").map(decodeURIComponent);
  const [name, arg] = parts;
  if (name === "fleet" && ctx.fleetAllowed === false) {
    location.replace("#/tasks");
    return;
  }
  stop();
  view.replaceChildren();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
  const mod = { tasks: arg ? task : tasks, fleet, new: submit }[name] || tasks;
  document.title = `${name === "tasks" && arg ? "Task " + arg.slice(0, 8) : name[0].toUpperCase() + name.slice(1)} · comfy-fleet`;
  stop = mod.mount(view, arg, ctx) || (() => {});
}

// --- the key --------------------------------------------------------------------------------

const dialog = document.getElementById("key-dialog");
const keyButton = document.getElementById("key-button");
let pending = null;

function askForKey(message) {
  if (pending) return pending;
  const err = document.getElementById("key-error");
  err.hidden = !message;
  err.textContent = message || "";
  const input = document.getElementById("key-input");
  input.value = "";
  pending = new Promise((resolve) => {
    dialog.onclose = () => {
      pending = null;
      const k = dialog.returnValue === "ok" ? input.value.trim() : "";
      if (k) {
        api.key.set(k);
        keyButton.hidden = false;
        ctx.fleetAllowed = null;
        resolve(true);
        route();
      } else resolve(false);
    };
  });
  if (!dialog.open) dialog.showModal();
  input.focus();
  return pending;
}

document.getElementById("key-form").addEventListener("submit", () => (dialog.returnValue = "ok"));
document.getElementById("key-forget").addEventListener("click", () => {
  api.key.set("");
  keyButton.hidden = true;
  dialog.close("forget");
  route();
});
keyButton.addEventListener("click", () => askForKey());

api.onUnauthorized(() => askForKey(api.key.get() ? "That key was refused." : ""));

// --- the connection light ---------------------------------------------------------------------

const conn = document.getElementById("conn");
api.onStatus(({ ok, status }) => {
  conn.className = `conn ${ok ? "ok" : "bad"}`;
  conn.textContent = ok ? "live" : status ? `API ${status}` : "offline";
});

async function start() {
  await api.configure();
  keyButton.hidden = !api.key.get();
  window.addEventListener("hashchange", route);
  route();
}

start();
