// The console's shell: sign-in (the key is kept in sessionStorage, for this tab only), the API helper
// every page uses, and the fragment router (#/page?query) that renders one page module at a time.
import { el, clear } from "/ui/dom.js";

const PAGES = [
  { path: "dashboard", title: "Usage", module: "/ui/pages/dashboard.js" },
  { path: "catalog", title: "Models", module: "/ui/pages/catalog.js" },
  { path: "keys", title: "Keys", module: "/ui/pages/keys.js", admin: true },
  { path: "requests", title: "Requests", module: "/ui/pages/requests.js" },
  { path: "audit", title: "Audit log", module: "/ui/pages/audit.js", admin: true },
  { path: "playground", title: "Playground", module: "/ui/pages/playground.js" },
];

export const auth = {
  get key() { return sessionStorage.getItem("gw.key"); },
  get role() { return sessionStorage.getItem("gw.role"); },
  get isAdmin() { return this.role === "admin"; },
  // The key the playground chats with: the signed-in gateway key, or one the admin chose.
  get playKey() { return this.isAdmin ? sessionStorage.getItem("gw.playkey") : this.key; },
  set playKey(value) { sessionStorage.setItem("gw.playkey", value); },
  signIn(key, role) { sessionStorage.setItem("gw.key", key); sessionStorage.setItem("gw.role", role); },
  signOut() { sessionStorage.clear(); },
};

export class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error ? body.error : {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
  }
}

// fetch with the signed-in key (or ``key``); JSON in and out, the API's error message on failure.
export async function api(path, { method = "GET", body, key, raw = false, headers = {} } = {}) {
  const init = { method, headers: { ...headers, authorization: `Bearer ${key || auth.key}` } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (raw && response.ok) return response;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function params() {
  const query = location.hash.split("?")[1] || "";
  return new URLSearchParams(query);
}

export function go(path, query) {
  const q = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== "" && v != null)) : null;
  const target = `#/${path}${q && q.toString() ? "?" + q : ""}`;
  if (location.hash === target) render(); else location.hash = target;
}

export function showError(root, error) {
  root.append(el("p", { class: "error", role: "alert" }, String(error && error.message || error)));
}

async function whoIs(key) {
  // The admin key answers /admin/keys; a gateway key is refused there (403, or 401 on a gateway without
  // an admin key) but lists its models.
  try {
    await api("/admin/keys", { key });
    return "admin";
  } catch (e) {
    if (e.status !== 403 && e.status !== 401) throw e;
  }
  await api("/v1/models", { key });
  return "key";
}

function signInPage(root) {
  const input = el("input", { type: "password", name: "key", autocomplete: "off", placeholder: "sk-…",
                              "aria-label": "Admin key or gateway key" });
  const message = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "card signin" },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "Use the admin key (everything) or a gateway key (its own usage and models). " +
      "It is kept for this browser tab only."),
    el("label", {}, "Key", input), el("p", {}, el("button", { class: "primary", type: "submit" }, "Sign in")),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    const key = input.value.trim();
    try {
      auth.signIn(key, await whoIs(key));
      go(location.hash.startsWith("#/") && !location.hash.startsWith("#/signin") ? location.hash.slice(2) : "dashboard");
      render();
    } catch (e) {
      message.textContent = e.status === 401 ? "That key was not accepted." : String(e.message || e);
    }
  });
  root.append(form);
  input.focus();
}

function renderNav(current) {
  const nav = document.getElementById("nav");
  clear(nav);
  document.getElementById("who").textContent = auth.key ? (auth.isAdmin ? "admin" : "gateway key") : "";
  document.getElementById("signout").hidden = !auth.key;
  if (!auth.key) return;
  for (const page of PAGES) {
    if (page.admin && !auth.isAdmin) continue;
    nav.append(el("a", { href: `#/${page.path}`, class: page.path === current ? "here" : "" }, page.title));
  }
}

let renderCount = 0;

export async function render() {
  const mine = ++renderCount;
  const root = document.getElementById("view");
  const [path] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  clear(root);
  if (!auth.key) {
    renderNav(null);
    signInPage(root);
    return;
  }
  const page = PAGES.find((p) => p.path === name && (!p.admin || auth.isAdmin)) || PAGES[0];
  renderNav(page.path);
  document.title = `${page.title} · LLM Gateway`;
  try {
    const module = await import(page.module);
    if (mine !== renderCount) return; // another navigation started meanwhile
    await module.render(root, rest.map(decodeURIComponent));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      auth.signOut();
      render();
      return;
    }
    showError(root, e);
  }
}

window.addEventListener("hashchange", render);
document.getElementById("signout").addEventListener("click", () => { auth.signOut(); location.hash = "#/"; render(); });
render();
