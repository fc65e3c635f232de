// Keys (admin): list with spend against budget, create (the secret shown once), edit, revoke.
import { api, auth, go, showError } from "/ui/app.js";
import { clear, el, money, table, when } from "/ui/dom.js";

const LIMITS = ["rpm", "tpm", "max_parallel"];

function periodStart(period) {
  const now = new Date();
  if (period === "day") return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()));
  if (period === "total") return new Date(Date.UTC(2000, 0, 1));
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
}

// What the form says, as the admin API takes it (empty fields: null, or left out when creating).
function settingsOf(form, creating) {
  const data = new FormData(form);
  const out = {};
  const models = String(data.get("models") || "").split(",").map((m) => m.trim()).filter(Boolean);
  if (models.length || !creating) out.models = models.length ? models : ["*"];
  for (const name of [...LIMITS, "budget_usd"]) {
    const text = String(data.get(name) || "").trim();
    if (text) out[name] = Number(text);
    else if (!creating) out[name] = null;
  }
  const expires = String(data.get("expires_at") || "").trim();
  if (expires) out.expires_at = expires;
  else if (!creating) out.expires_at = null;
  if (creating) out.name = String(data.get("name") || "").trim();
  return out;
}

function keyForm(key, submitLabel) {
  const input = (name, label, value, attrs = {}) => el("label", {}, label, el("input", { name, value: value ?? "", ...attrs }));
  return el("form", { class: "filters", id: key ? "edit-key" : "new-key" },
    key ? null : input("name", "Name", "", { required: true, size: 14 }),
    input("models", "Models (comma-separated)", key ? (key.models || []).join(", ") : "", { size: 18 }),
    ...LIMITS.map((n) => input(n, n, key?.[n], { type: "number", min: 1, size: 6 })),
    input("budget_usd", "Budget USD", key?.budget_usd, { type: "number", min: 0, step: "any", size: 8 }),
    input("expires_at", "Expires (ISO)", key?.expires_at, { size: 20, placeholder: "2030-01-01T00:00:00Z" }),
    el("button", { type: "submit", class: "primary" }, submitLabel));
}

export async function render(root) {
  root.append(el("h1", {}, "Keys"));
  const created = el("div");
  const createForm = keyForm(null, "Create key");
  const message = el("div");
  createForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(message);
    clear(created);
    try {
      const key = await api("/admin/keys", { method: "POST", body: settingsOf(createForm, true) });
      const copy = el("button", { type: "button" }, "Copy");
      copy.addEventListener("click", async () => {
        try { await navigator.clipboard.writeText(key.key); copy.textContent = "Copied"; } catch { copy.textContent = "Select and copy"; }
      });
      const use = el("button", { type: "button" }, "Use in playground");
      use.addEventListener("click", () => { auth.playKey = key.key; go("playground"); });
      created.append(el("div", { class: "card", id: "new-secret" },
        el("p", {}, "The key ", el("strong", {}, key.name), " was created. Its secret is shown this once:"),
        el("p", { class: "secret" }, key.key), el("p", { class: "row" }, copy, use)));
      await list();
    } catch (e) { showError(message, e); }
  });
  root.append(el("div", { class: "card" }, el("h2", {}, "New key"), createForm, message), created);
  const holder = el("div");
  root.append(el("h2", {}, "All keys"), holder);

  async function list() {
    const [keys, spend] = await Promise.all([
      api("/admin/keys"),
      api(`/v1/usage?group_by=key&start=${periodStart("month").toISOString()}`),
    ]);
    const spent = Object.fromEntries(spend.data.map((r) => [r.group, r.cost_usd || 0]));
    const editor = el("div");
    clear(holder);
    holder.append(editor, table([
      { label: "Name", value: (k) => k.name },
      { label: "Source", value: (k) => k.source },
      { label: "Models", value: (k) => (k.models || []).join(", ") },
      { label: "Limits", value: (k) => LIMITS.filter((n) => k[n]).map((n) => `${n} ${k[n]}`).join(", ") || "–" },
      { label: "Spend / budget (month)", value: (k) => spent[k.name] || 0,
        render: (k) => `${money(spent[k.name] || 0)} / ${k.budget_usd == null ? "no budget" : money(k.budget_usd)}` },
      { label: "Expires", value: (k) => k.expires_at || "", render: (k) => (k.expires_at ? when(k.expires_at) : "never") },
      { label: "State", value: (k) => (k.revoked_at ? "revoked" : "active"),
        render: (k) => (k.revoked_at ? el("span", { class: "badge open" }, "revoked") : el("span", { class: "badge closed" }, "active")) },
      { label: "", value: () => "", render: (k) => (k.source !== "db" || k.revoked_at ? "" : actions(k, editor)) },
    ], keys.data, { id: "keys" }));
  }

  function actions(key, editor) {
    const edit = el("button", { type: "button" }, "Edit");
    const revoke = el("button", { type: "button", class: "danger" }, "Revoke");
    edit.addEventListener("click", () => {
      clear(editor);
      const form = keyForm(key, "Save");
      const note = el("div");
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        try {
          const changes = settingsOf(form, false);
          for (const name of Object.keys(changes)) {  // only what changed: the audit log says what was done
            if (JSON.stringify(changes[name]) === JSON.stringify(key[name] ?? null)) delete changes[name];
          }
          await api(`/admin/keys/${encodeURIComponent(key.name)}`, { method: "PATCH", body: changes });
          await list();
        } catch (e) { showError(note, e); }
      });
      editor.append(el("div", { class: "card" }, el("h2", {}, `Edit ${key.name}`), form, note));
    });
    revoke.addEventListener("click", async () => {
      if (revoke.dataset.armed !== "yes") {  // a second click confirms: no modal dialogs
        revoke.dataset.armed = "yes";
        revoke.textContent = "Confirm revoke";
        return;
      }
      await api(`/admin/keys/${encodeURIComponent(key.name)}`, { method: "DELETE" });
      await list();
    });
    return el("span", { class: "row" }, edit, revoke);
  }

  await list();
}
