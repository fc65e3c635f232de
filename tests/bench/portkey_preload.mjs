// Loaded with `node --import` before Portkey's gateway (its build/start-server.js) by `make bench`.
//
// 1. Loopback only. start-server.js calls @hono/node-server's serve({fetch, port}) without a hostname, so
//    it listens on every interface, and it has no option for the host (only --port=N). A listen(port) with
//    no host is given 127.0.0.1 here.
// 2. Upstream answers with headers that can be changed. Portkey 1.15.2 with @hono/node-server 1.19 (what
//    `npm install` resolves its ^1.3.3 to) fails every stream and every embeddings call with
//    "TypeError: immutable": it wraps fetch()'s answer as new Response(body, answer), and hono's Response
//    keeps the answer's own Headers, which fetch made immutable; Portkey then appends its x-portkey-*
//    headers to them. (Non-stream chat works: its body is re-serialised into a fresh Response.) Each
//    fetch() answer is copied here into a Response with a fresh Headers: one small object per request.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args[1] === undefined || typeof args[1] === "function")) {
    args.splice(1, args[1] === undefined ? 1 : 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};

const nativeFetch = globalThis.fetch;
const NativeResponse = globalThis.Response; // taken before @hono/node-server replaces the global
globalThis.fetch = async (...args) => {
  const answer = await nativeFetch(...args);
  return new NativeResponse(answer.body, {
    status: answer.status,
    statusText: answer.statusText,
    headers: new Headers(answer.headers),
  });
};
