// Playground: multi-turn streamed chat on server-side sessions (/v1/sessions), with a model selector,
// system prompt, temperature, max tokens and image attachments; past sessions to reopen.
import { ApiError, api, auth, go } from "/ui/app.js";
import { clear, el, money, ms, num } from "/ui/dom.js";

const SETTINGS = "gw.play.settings";

function loadSettings() {
  try { return JSON.parse(sessionStorage.getItem(SETTINGS)) || {}; } catch { return {}; }
}

function metaLine(meta) {
  if (!meta) return null;
  const usage = meta.usage;
  const parts = [];
  if (usage) parts.push(`${num(usage.prompt_tokens)} + ${num(usage.completion_tokens)} tokens`);
  if (meta.cost_usd !== undefined) parts.push(money(meta.cost_usd));
  if (meta.latency_ms !== undefined) parts.push(ms(meta.latency_ms));
  if (meta.provider) parts.push(`${meta.provider}${meta.upstream_model ? "/" + meta.upstream_model : ""}`);
  return el("div", { class: "meta" }, parts.join(" · "));
}

function contentNodes(content) {
  if (typeof content === "string") return [el("div", { class: "text" }, content)];
  if (!Array.isArray(content)) return [];
  return content.map((part) => {
    if (part.type === "text") return el("div", { class: "text" }, part.text);
    if (part.type === "image_url" && /^data:image\//.test(part.image_url?.url || "")) {
      return el("img", { src: part.image_url.url, alt: "attached image" });
    }
    return el("div", { class: "muted" }, `[${part.type}]`);
  });
}

function messageNode(m) {
  return el("div", { class: `msg ${m.role}` }, el("div", { class: "role" }, m.role),
    m.reasoning_content ? el("div", { class: "reasoning" }, m.reasoning_content) : null,
    contentNodes(m.content), metaLine(m.meta));
}

function keyPrompt(root) {
  const input = el("input", { id: "play-key", type: "password", size: 30, placeholder: "sk-…",
                              "aria-label": "Gateway key for the playground" });
  const form = el("form", { class: "card" }, el("h2", {}, "Which key should the playground use?"),
    el("p", { class: "muted" }, "Chats are made with a gateway key and billed to it. Create one on the Keys page " +
      "(Use in playground), or paste one here."),
    el("div", { class: "row" }, input, el("button", { class: "primary", type: "submit" }, "Use this key")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    auth.playKey = input.value.trim();
    go("playground");
  });
  root.append(form);
}

export async function render(root, rest) {
  root.append(el("h1", {}, "Playground"));
  const key = auth.playKey;
  if (!key) return keyPrompt(root);
  const sessionId = rest[0] || null;
  const call = (path, opts = {}) => api(path, { ...opts, key });
  let models;
  let sessions;
  try {
    [models, sessions] = await Promise.all([call("/v1/models"), call("/v1/sessions?limit=50")]);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401 && auth.isAdmin) {
      root.append(el("p", { class: "error", role: "alert" }, `The playground key was refused: ${e.message}`));
      return keyPrompt(root);
    }
    throw e;
  }
  const saved = loadSettings();
  const chatModels = models.data.filter((m) => !m.capabilities || m.capabilities.streaming !== false);
  const modelSelect = el("select", { id: "model", name: "model" },
    chatModels.map((m) => el("option", { value: m.id, selected: saved.model === m.id }, m.id)));
  const system = el("textarea", { id: "system", rows: 2, placeholder: "You are a helpful assistant." });
  system.value = saved.system || "";
  const temperature = el("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: saved.temperature ?? "" });
  const maxTokens = el("input", { id: "max-tokens", type: "number", min: 1, value: saved.max_tokens ?? "" });
  const save = () => sessionStorage.setItem(SETTINGS, JSON.stringify({
    model: modelSelect.value, system: system.value, temperature: temperature.value, max_tokens: maxTokens.value }));
  for (const input of [modelSelect, system, temperature, maxTokens]) input.addEventListener("change", save);

  const list = el("ul", { id: "sessions" }, sessions.data.map((s) => el("li", {},
    el("a", { href: `#/playground/${encodeURIComponent(s.id)}`, class: s.id === sessionId ? "here" : "" },
      s.title || s.id))));
  const fresh = el("button", { type: "button", id: "new-chat" }, "New chat");
  fresh.addEventListener("click", () => go("playground"));
  const messages = el("div", { class: "messages", id: "messages", "aria-live": "polite" });
  const older = el("div");
  const prompt = el("textarea", { id: "prompt", rows: 3, placeholder: "Send a message", "aria-label": "Message" });
  const attach = el("input", { id: "attach", type: "file", accept: "image/*", multiple: true, "aria-label": "Attach images" });
  const pending = el("div", { class: "row" });
  const send = el("button", { id: "send", type: "submit", class: "primary" }, "Send");
  const status = el("p", { class: "error", role: "alert" });
  const composer = el("form", { class: "composer card" }, prompt, el("div", { class: "row" }, attach, send), pending, status);
  let images = [];
  attach.addEventListener("change", async () => {
    images = await Promise.all([...attach.files].map((file) => new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    })));
    clear(pending);
    pending.append(...images.map((url) => el("img", { src: url, alt: "to attach", class: "thumb" })));
  });

  root.append(el("div", { class: "play" },
    el("aside", {}, fresh, el("h2", {}, "Past sessions"), list),
    el("section", {},
      el("div", { class: "card settings" }, el("label", {}, "Model", modelSelect), el("label", {}, "Temperature", temperature),
        el("label", {}, "Max tokens", maxTokens), el("label", {}, "System prompt", system)),
      older, messages, composer)));

  async function loadPage(before) {
    const page = await call(`/v1/sessions/${encodeURIComponent(sessionId)}?limit=20${before ? `&before=${before}` : ""}`);
    const nodes = page.messages.map(messageNode);
    messages.prepend(...nodes);
    clear(older);
    if (page.has_more) {
      const more = el("button", { type: "button", id: "older" }, "Load older messages");
      more.addEventListener("click", () => loadPage(page.first_id));
      older.append(more);
    }
  }
  if (sessionId) await loadPage(null);

  composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text && !images.length) return;
    status.textContent = "";
    send.disabled = true;
    try {
      let id = sessionId;
      if (!id) id = (await call("/v1/sessions", { method: "POST", body: {} })).id;
      const content = images.length
        ? [{ type: "text", text }, ...images.map((url) => ({ type: "image_url", image_url: { url } }))] : text;
      messages.append(messageNode({ role: "user", content }));
      prompt.value = "";
      images = [];
      attach.value = "";
      clear(pending);
      await stream(id, content);
      if (!sessionId) go(`playground/${encodeURIComponent(id)}`);
    } catch (e) {
      status.textContent = String(e.message || e);
    } finally {
      send.disabled = false;
    }
  });

  async function stream(id, content) {
    const body = { model: modelSelect.value, stream: true, stream_options: { include_usage: true }, session_id: id,
                   messages: [...(system.value.trim() ? [{ role: "system", content: system.value }] : []),
                              { role: "user", content }] };
    if (temperature.value !== "") body.temperature = Number(temperature.value);
    if (maxTokens.value !== "") body.max_tokens = Number(maxTokens.value);
    const started = performance.now();
    const response = await fetch("/v1/chat/completions", { method: "POST", body: JSON.stringify(body),
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" } });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try { message = (await response.json()).error.message; } catch { /* not JSON */ }
      throw new Error(message);
    }
    const requestId = response.headers.get("x-request-id");
    const reasoning = el("div", { class: "reasoning", hidden: true });
    const answer = el("div", { class: "text" });
    const meta = el("div", { class: "meta" }, "streaming…");
    const node = el("div", { class: "msg assistant streaming" }, el("div", { class: "role" }, "assistant"), reasoning, answer, meta);
    messages.append(node);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let usage = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message || "the stream failed");
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices?.[0]?.delta || {};
          const thought = delta.reasoning_content ?? delta.reasoning;
          if (typeof thought === "string" && thought) { reasoning.hidden = false; reasoning.append(thought); }
          if (typeof delta.content === "string") answer.append(delta.content);
        }
      }
    }
    node.classList.remove("streaming");
    meta.textContent = usage ? `${num(usage.prompt_tokens)} + ${num(usage.completion_tokens)} tokens · ` +
      `${ms(performance.now() - started)}` : ms(performance.now() - started);
    // The stored turn has the cost and the provider: read it back once the gateway has kept it.
    for (let i = 0; i < 20; i++) {
      const page = await call(`/v1/sessions/${encodeURIComponent(id)}?limit=1`);
      const last = page.messages[page.messages.length - 1];
      if (last && last.role === "assistant" && last.meta && last.meta.request_id === requestId) {
        meta.replaceWith(metaLine(last.meta));
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 150));
    }
  }
}
