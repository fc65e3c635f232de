// Usage dashboard: totals, charts over time and a breakdown, from /v1/usage (period and filters in the URL).
import { api, auth, go, params } from "/ui/app.js";
import { lineChart } from "/ui/chart.js";
import { download, el, money, ms, num, pct, table } from "/ui/dom.js";

const PERIODS = { "24h": 24, "7d": 24 * 7, "30d": 24 * 30 };

function bucketTime(bucket) {
  return Date.parse(bucket.length === 10 ? `${bucket}T00:00:00Z` : bucket) / 1000;
}

// Every bucket start in the period (epoch seconds), so a chart spans the whole period, gaps as zeros.
function bucketStarts(q, end) {
  const step = q.bucket === "day" ? 86400 : 3600;
  const last = Math.floor(end.getTime() / 1000 / step) * step;
  const first = Math.floor((end.getTime() / 1000 - PERIODS[q.period] * 3600) / step) * step;
  const out = [];
  for (let t = first; t <= last; t += step) out.push(t);
  return out;
}

function usageQuery(q, end, extra) {
  const start = new Date(end.getTime() - PERIODS[q.period] * 3600 * 1000);
  const out = new URLSearchParams({ start: start.toISOString(), end: end.toISOString(), ...extra });
  for (const name of ["model", "provider", "key"]) if (q[name]) out.set(name, q[name]);
  return out;
}

function stat(label, value) {
  return el("div", { class: "card stat" }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
}

export async function render(root) {
  const p = params();
  const q = { period: PERIODS[p.get("period")] ? p.get("period") : "24h", bucket: p.get("bucket") === "day" ? "day" : "hour",
              by: ["model", "provider", "key", "end_user"].includes(p.get("by")) ? p.get("by") : "model",
              model: p.get("model") || "", provider: p.get("provider") || "", key: p.get("key") || "" };
  const now = new Date();
  root.append(el("h1", {}, "Usage"));
  const field = (name, label, options) => el("label", {}, label, options
    ? el("select", { name }, options.map((o) => el("option", { value: o, selected: q[name] === o }, o)))
    : el("input", { name, value: q[name], size: 12 }));
  const form = el("form", { class: "filters" },
    field("period", "Period", Object.keys(PERIODS)), field("bucket", "Bucket", ["hour", "day"]),
    field("by", "Break down by", auth.isAdmin ? ["model", "provider", "key", "end_user"] : ["model", "provider", "end_user"]),
    field("model", "Model"), field("provider", "Provider"), auth.isAdmin ? field("key", "Key") : null,
    el("button", { type: "submit", class: "primary" }, "Apply"),
    el("button", { type: "button", id: "csv" }, "Export CSV"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go("dashboard", Object.fromEntries(new FormData(form)));
  });
  root.append(form);
  form.querySelector("#csv").addEventListener("click", async () => {
    const response = await api(`/v1/usage?${usageQuery(q, now, { group_by: q.by, bucket: q.bucket, format: "csv" })}`,
                               { raw: true });
    download(`usage-${q.period}-${q.bucket}-${q.by}.csv`, await response.blob());
  });

  const [overTime, split, breakdown] = await Promise.all([
    api(`/v1/usage?${usageQuery(q, now, { group_by: q.bucket })}`),
    api(`/v1/usage?${usageQuery(q, now, { group_by: q.by, bucket: q.bucket })}`),
    api(`/v1/usage?${usageQuery(q, now, { group_by: q.by })}`),
  ]);
  const t = overTime.total;
  root.append(el("div", { class: "cards" },
    stat("Requests", num(t.requests)), stat("Tokens", num(t.prompt_tokens + t.completion_tokens)),
    stat("Cost", money(t.cost_usd)), stat("Cache hit rate", pct(t.cache_hit_rate)),
    stat("Error rate", pct(t.requests ? t.errors / t.requests : null)),
    stat("p50 / p95 latency", `${ms(t.p50_latency_ms)} / ${ms(t.p95_latency_ms)}`)));

  const times = bucketStarts(q, now);
  const index = new Map(times.map((t, i) => [t, i]));
  const column = (rows, field, pick = () => true, empty = 0) => {
    const out = times.map(() => empty);
    for (const r of rows) {
      const i = index.get(bucketTime(r.bucket ?? r.group));
      if (i !== undefined && pick(r)) out[i] = r[field] ?? empty;
    }
    return out;
  };
  const rows = overTime.data;
  const rate = (r) => (r.requests ? r.errors / r.requests : 0);
  const groups = [...new Set(split.data.map((r) => r.group ?? "–"))].slice(0, 8);
  const bySplit = (field) => groups.map((g) => ({ label: g, values: column(split.data, field, (r) => (r.group ?? "–") === g) }));
  root.append(el("div", { class: "charts" },
    lineChart(`Requests by ${q.by}`, times, bySplit("requests")),
    lineChart(`Cost by ${q.by} (USD)`, times, bySplit("cost_usd"), (v) => `$${v}`),
    lineChart("Tokens", times, [{ label: "prompt", values: column(rows, "prompt_tokens") },
                                { label: "completion", values: column(rows, "completion_tokens") }]),
    lineChart("Latency (ms)", times, [{ label: "p50", values: column(rows, "p50_latency_ms", undefined, null) },
                                      { label: "p95", values: column(rows, "p95_latency_ms", undefined, null) }]),
    lineChart("Error and cache hit rate", times, [
      { label: "errors", values: column(rows.map((r) => ({ ...r, error_rate: rate(r) })), "error_rate") },
      { label: "cache hits", values: column(rows, "cache_hit_rate") }], (v) => `${Math.round(v * 100)}%`, [0, 1])));

  root.append(el("h2", {}, `By ${q.by}`), table([
    { label: q.by, value: (r) => r.group ?? "–" },
    { label: "Requests", value: (r) => r.requests, render: (r) => num(r.requests), num: true },
    { label: "Errors", value: (r) => r.errors, render: (r) => num(r.errors), num: true },
    { label: "Prompt tokens", value: (r) => r.prompt_tokens, render: (r) => num(r.prompt_tokens), num: true },
    { label: "Completion tokens", value: (r) => r.completion_tokens, render: (r) => num(r.completion_tokens), num: true },
    { label: "Cost", value: (r) => r.cost_usd, render: (r) => money(r.cost_usd), num: true },
    { label: "p50", value: (r) => r.p50_latency_ms, render: (r) => ms(r.p50_latency_ms), num: true },
    { label: "p95", value: (r) => r.p95_latency_ms, render: (r) => ms(r.p95_latency_ms), num: true },
    { label: "Cache hits", value: (r) => r.cache_hit_rate, render: (r) => pct(r.cache_hit_rate), num: true },
  ], breakdown.data, { id: "breakdown" }));
}
