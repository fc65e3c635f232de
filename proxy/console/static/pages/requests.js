// Request log: recent usage rows with filters, and one row in detail (#/requests/<id>).
import { api, auth, go, params } from "/ui/app.js";
import { el, money, ms, num, table, when } from "/ui/dom.js";

async function detail(root, id) {
  const row = await api(`/admin/requests/${encodeURIComponent(id)}`);
  const back = el("a", { href: "#/requests" }, "← all requests");
  root.append(back, el("h1", {}, `Request ${row.request_id}`),
    el("div", { class: "card" }, el("dl", { class: "detail" }, Object.entries(row).filter(([k]) => k !== "object")
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, k === "cost_usd" ? money(v) : v == null ? "–" : String(v))]))),
    el("p", { class: "muted" }, "The ledger keeps no prompt text. A request made in the playground shows its " +
      "conversation there."));
}

export async function render(root, rest) {
  if (rest[0]) return detail(root, rest[0]);
  const p = params();
  const q = { key: p.get("key") || "", model: p.get("model") || "", status: p.get("status") || "",
              start: p.get("start") || "" };
  root.append(el("h1", {}, "Requests"));
  const input = (name, label, attrs = {}) => el("label", {}, label, el("input", { name, value: q[name], size: 12, ...attrs }));
  const form = el("form", { class: "filters" },
    auth.isAdmin ? input("key", "Key") : null, input("model", "Model"),
    input("status", "Status (e.g. 200, error)", { size: 8 }), input("start", "Since (ISO)", { size: 20 }),
    el("button", { type: "submit", class: "primary" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go("requests", Object.fromEntries(new FormData(form)));
  });
  root.append(form);
  const query = new URLSearchParams(Object.entries(q).filter(([, v]) => v));
  query.set("limit", "200");
  const rows = (await api(`/admin/requests?${query}`)).data;
  root.append(table([
    { label: "Time", value: (r) => r.created_at, render: (r) => when(r.created_at) },
    { label: "Key", value: (r) => r.key_name ?? "–" },
    { label: "Model", value: (r) => r.model },
    { label: "Provider", value: (r) => r.provider ?? "–" },
    { label: "Status", value: (r) => r.status, num: true },
    { label: "Tokens", value: (r) => r.prompt_tokens + r.completion_tokens,
      render: (r) => `${num(r.prompt_tokens)} + ${num(r.completion_tokens)}`, num: true },
    { label: "Cost", value: (r) => r.cost_usd, render: (r) => money(r.cost_usd), num: true },
    { label: "Latency", value: (r) => r.latency_ms, render: (r) => ms(r.latency_ms), num: true },
  ], rows, { id: "requests", onRow: (r) => go(`requests/${encodeURIComponent(r.request_id)}`) }));
}
