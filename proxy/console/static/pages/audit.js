// Audit log (admin): every admin action, newest first, filtered by action, target and principal.
import { api, go, params } from "/ui/app.js";
import { el, table, when } from "/ui/dom.js";

const ACTIONS = ["", "key.created", "key.updated", "key.revoked", "config.reloaded", "config.reload_failed", "cache.cleared"];

export async function render(root) {
  const p = params();
  const q = { action: p.get("action") || "", target: p.get("target") || "", principal: p.get("principal") || "" };
  root.append(el("h1", {}, "Audit log"));
  const form = el("form", { class: "filters" },
    el("label", {}, "Action", el("select", { name: "action" },
      ACTIONS.map((a) => el("option", { value: a, selected: q.action === a }, a || "any")))),
    el("label", {}, "Target", el("input", { name: "target", value: q.target, size: 14 })),
    el("label", {}, "Principal", el("input", { name: "principal", value: q.principal, size: 10 })),
    el("button", { type: "submit", class: "primary" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go("audit", Object.fromEntries(new FormData(form)));
  });
  root.append(form);
  const query = new URLSearchParams(Object.entries(q).filter(([, v]) => v));
  query.set("limit", "200");
  const entries = (await api(`/admin/audit?${query}`)).data;
  root.append(table([
    { label: "Time", value: (e) => e.created_at, render: (e) => when(e.created_at) },
    { label: "Principal", value: (e) => e.principal },
    { label: "Action", value: (e) => e.action },
    { label: "Target", value: (e) => e.target ?? "–" },
    { label: "Change", value: (e) => JSON.stringify(e.change) },
    { label: "Client", value: (e) => e.client ?? "–" },
  ], entries, { id: "audit" }));
}
