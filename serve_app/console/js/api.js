// The console's only door to the service: JSON calls and the event stream, with the user's key.
//
// The key lives in localStorage and goes out as `Authorization: Bearer <key>`. A 401 asks the
// user for a key (see `onUnauthorized`) and retries once it is given.

const KEY_STORE = "comfy-fleet.key";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let base = "/api/v1";
let askForKey = async () => false;
const listeners = new Set();

/** Read where the API is (ROUTE_PREFIX) from the console's config. */
export async function configure() {
  const r = await fetch("config.json", { cache: "no-store" });
  if (r.ok) base = (await r.json()).api.replace(/\/$/, "");
}

export const key = {
  get: () => localStorage.getItem(KEY_STORE) || "",
  set: (k) => (k ? localStorage.setItem(KEY_STORE, k) : localStorage.removeItem(KEY_STORE)),
};

/** `fn()` is awaited on a 401; it resolves true once a (new) key is stored. */
export function onUnauthorized(fn) { askForKey = fn; }

/** Connection status listeners: fn({ok, status}) after every call. */
export function onStatus(fn) { listeners.add(fn); }
function report(ok, status) { for (const fn of listeners) fn({ ok, status }); }

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const k = key.get();
  if (k) h.Authorization = `Bearer ${k}`;
  return h;
}

async function errorOf(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  const e = (body && body.error) || {};
  return new ApiError(r.status, e.code || `http_${r.status}`, e.message || `${r.status} ${r.statusText}`, e.details);
}

/** One API call; the answer's JSON, or an ApiError in the service's error shape. */
export async function call(method, path, body, { retry = true } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let r;
  try {
    r = await fetch(base + path, init);
  } catch (err) {
    report(false, 0);
    throw new ApiError(0, "unreachable", "the service does not answer");
  }
  report(r.status < 500 || r.status === 503, r.status);
  if (r.status === 401 && retry && (await askForKey())) return call(method, path, body, { retry: false });
  if (!r.ok) throw await errorOf(r);
  return r.status === 204 ? null : r.json();
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body ?? {});

/**
 * Follow a task's Server-Sent Events with fetch (EventSource cannot send a bearer header).
 * `onEvent({id, event, data})` per event; resumes with Last-Event-ID after a dropped connection
 * until the stream ends on its own (the task ended) or `signal` aborts.
 */
export async function stream(path, { after = 0, onEvent, signal }) {
  let last = after;
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (last) h["Last-Event-ID"] = String(last);
      const r = await fetch(base + path, { headers: h, signal });
      if (r.status === 401 && (await askForKey())) continue;
      if (!r.ok) throw await errorOf(r);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frame = parseFrame(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
          if (!frame) continue;
          if (frame.id) last = Number(frame.id);
          onEvent(frame);
        }
        attempt = 0;
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status && err.status < 500) throw err;
      await new Promise((res) => setTimeout(res, Math.min(500 * 2 ** attempt, 5000)));
    }
  }
}

function parseFrame(text) {
  const f = { id: null, event: "message", data: "" };
  let any = false;
  for (const line of text.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "data") f.data += (f.data ? "\n" : "") + value;
    else if (field === "id") f.id = value;
    else if (field === "event") f.event = value;
    any = true;
  }
  if (!any) return null;
  try { f.data = f.data ? JSON.parse(f.data) : null; } catch { /* keep the text */ }
  return f;
}
