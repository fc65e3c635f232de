// Model catalog: every alias with prices, context window and capabilities; for the admin also routing,
// targets and live health (/admin/health). Searchable and sortable.
import { api, auth } from "/ui/app.js";
import { clear, el, ms, num, pct, table } from "/ui/dom.js";

const price = (v) => (v == null ? "–" : `$${v}`);

function badges(caps) {
  if (!caps) return el("span", { class: "muted" }, "unknown");
  return el("span", {}, Object.entries(caps).filter(([, on]) => on).map(([name]) => el("span", { class: "badge" }, name)));
}

function targets(row) {
  return el("div", {}, (row.targets || []).map((t) => el("div", {},
    el("span", { class: `badge ${t.circuit}` }, t.circuit), `${t.provider}/${t.model || "*"} (${t.kind}) `,
    el("span", { class: "muted" }, `p50 ${ms(t.p50_latency_ms)} · errors ${pct(t.error_rate)} · ${num(t.requests)} req`))));
}

export async function render(root) {
  root.append(el("h1", {}, "Models"));
  let rows;
  if (auth.isAdmin) {
    const health = await api("/admin/health");
    rows = health.data.map((a) => ({ id: a.alias, ...a }));
  } else {
    rows = (await api("/v1/models")).data;
  }
  const search = el("input", { type: "search", placeholder: "Search models, providers, capabilities",
                               "aria-label": "Search models", size: 32 });
  const holder = el("div");
  const columns = [
    { label: "Alias", value: (r) => r.id },
    { label: "Input $/M", value: (r) => r.pricing?.input_per_million, render: (r) => price(r.pricing?.input_per_million), num: true },
    { label: "Output $/M", value: (r) => r.pricing?.output_per_million, render: (r) => price(r.pricing?.output_per_million), num: true },
    { label: "Context", value: (r) => r.context_window, render: (r) => num(r.context_window), num: true },
    { label: "Capabilities", value: (r) => Object.keys(r.capabilities || {}).filter((k) => r.capabilities[k]).join(" "),
      render: (r) => badges(r.capabilities) },
  ];
  if (auth.isAdmin) {
    columns.push({ label: "Routing", value: (r) => r.strategy },
                  { label: "Targets and health", value: (r) => r.targets.length, render: targets });
  }
  const fill = () => {
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = rows.filter((r) => {
      const text = [r.id, r.strategy, ...(r.targets || []).map((t) => `${t.provider} ${t.model} ${t.kind}`),
                    ...Object.keys(r.capabilities || {}).filter((k) => r.capabilities[k])].join(" ").toLowerCase();
      return words.every((w) => text.includes(w));
    });
    clear(holder);
    holder.append(table(columns, shown, { caption: `${shown.length} of ${rows.length} models`, id: "catalog" }));
  };
  search.addEventListener("input", fill);
  root.append(el("div", { class: "row" }, search), holder);
  fill();
}
