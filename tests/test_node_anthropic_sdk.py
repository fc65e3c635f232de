"""The official Anthropic TypeScript SDK (the one Claude Code and most Node agents use), unmodified,
through the gateway's /v1/messages: create and stream on a passed-through Anthropic target, a translated
OpenAI-kind one and echo, tool use assembled by the SDK from streamed input_json deltas, count_tokens,
and errors as the SDK's own error classes. Installed with npm into the session's temporary directory."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_KEY, Running, start_gateway
from tests.fakes.anthropic_server import make_app as make_fake_anthropic
from tests.fakes.gemini_server import make_app as make_fake_gemini
from tests.servers import ServerThread
from tests.test_messages import ANTHROPIC_KEY, GEMINI_KEY, HI, WEATHER, assert_event_grammar, config
from tests.test_node_sdk import _node, install_sdk

ANTHROPIC_NODE = "@anthropic-ai/sdk@1.17.0"

SCRIPT = r"""
import Anthropic from "@anthropic-ai/sdk";

const [baseURL, apiKey, op, argsJson] = process.argv.slice(2);
const args = JSON.parse(argsJson);
const client = new Anthropic({ baseURL, apiKey, maxRetries: 0, timeout: 20000 });
const out = {};
try {
  if (op === "create") {
    out.result = await client.messages.create(args);
  } else if (op === "stream") {
    const stream = client.messages.stream(args);
    out.events = [];
    out.text = "";
    stream.on("text", (delta) => { out.text += delta; });
    for await (const event of stream) out.events.push(event);
    out.result = await stream.finalMessage();
  } else if (op === "count") {
    out.result = await client.messages.countTokens(args);
  } else {
    throw new Error("unknown op " + op);
  }
} catch (e) {
  out.error = { name: e.constructor.name, status: e.status ?? null, body: e.error ?? null,
                message: String(e.message) };
}
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def node_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the Anthropic SDK installed and the test script beside it (once per module)."""
    return install_sdk(tmp_path_factory, ANTHROPIC_NODE, SCRIPT)


@pytest.fixture(scope="module")
def gw(fake_openai: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    claude_app, gemini_app = make_fake_anthropic(ANTHROPIC_KEY), make_fake_gemini(GEMINI_KEY)
    claude, gemini = ServerThread(claude_app).start(), ServerThread(gemini_app).start()
    db = tmp_path_factory.mktemp("node-messages") / "gw.db"
    running = start_gateway(config(claude.url, fake_openai.url, gemini.url, db))
    running.claude = Running(claude, claude_app)  # type: ignore[attr-defined]
    yield running
    running.server.stop()
    claude.stop()
    gemini.stop()


def call(sdk: Path, gw: Running, op: str, args: dict[str, Any], key: str = GATEWAY_KEY) -> dict[str, Any]:
    # The SDK appends /v1/messages to the base URL itself.
    done = subprocess.run([_node(), "call.mjs", gw.url, key, op, json.dumps(args)], cwd=sdk,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(("alias", "text"), [("claude", "Hello tell me about Paris"),
                                             ("gpt", "Hello tell me about Paris"),
                                             ("echo", "Echo: tell me about Paris")])
def test_create_and_stream(node_sdk: Path, gw: Running, alias: str, text: str) -> None:
    args = {"model": alias, "max_tokens": 200, "messages": HI}
    created = call(node_sdk, gw, "create", args)
    assert "error" not in created, created
    message = created["result"]
    assert message["type"] == "message" and message["model"] == alias and message["stop_reason"] == "end_turn"
    assert [b["type"] for b in message["content"]] == ["text"] and message["content"][0]["text"] == text
    assert message["usage"]["input_tokens"] > 0 and message["usage"]["output_tokens"] > 0

    streamed = call(node_sdk, gw, "stream", args)
    assert "error" not in streamed, streamed
    assert streamed["text"] == text  # the SDK's text events, joined
    final = streamed["result"]  # the message the SDK assembled from the events
    assert final["content"] == message["content"] and final["stop_reason"] == "end_turn"
    assert final["usage"]["output_tokens"] == message["usage"]["output_tokens"]
    assert final["usage"]["input_tokens"] == message["usage"]["input_tokens"]
    assert_event_grammar([(event["type"], event) for event in streamed["events"]])


@pytest.mark.parametrize("op", ["create", "stream"])
def test_tool_use_on_a_translated_target(node_sdk: Path, gw: Running, op: str) -> None:
    """The SDK parses a tool call's input from the whole block, or, streamed, from the partial JSON
    of its input_json_delta events."""
    out = call(node_sdk, gw, op, {"model": "gpt-tools", "max_tokens": 100, "messages": HI, "tools": [WEATHER],
                                  "tool_choice": {"type": "tool", "name": "get_weather"}})
    assert "error" not in out, out
    message = out["result"]
    assert message["stop_reason"] == "tool_use"
    use = next(b for b in message["content"] if b["type"] == "tool_use")
    assert use["name"] == "get_weather" and isinstance(use["input"], dict) and use["input"]
    assert use["id"]


def test_count_tokens(node_sdk: Path, gw: Running) -> None:
    out = call(node_sdk, gw, "count", {"model": "claude", "system": "be brief", "messages": HI})
    assert out.get("result") == {"input_tokens": 4 + 2 + 3}, out  # the fake Anthropic API's own count
    sent = gw.claude.app.state.fake.requests[-1]  # type: ignore[attr-defined]
    assert sent["path"] == "/v1/messages/count_tokens" and sent["headers"]["x-api-key"] == ANTHROPIC_KEY


@pytest.mark.parametrize(("key", "model", "name", "status", "error_type"), [
    ("sk-wrong", "echo", "AuthenticationError", 401, "authentication_error"),
    (GATEWAY_KEY, "no-such-model", "NotFoundError", 404, "not_found_error"),
    (GATEWAY_KEY, "gpt-500", "InternalServerError", 502, "api_error"),
    (GATEWAY_KEY, "claude-400", "BadRequestError", 400, "invalid_request_error"),
])
def test_errors_are_the_sdks_own(node_sdk: Path, gw: Running, key: str, model: str, name: str, status: int,
                                 error_type: str) -> None:
    out = call(node_sdk, gw, "create", {"model": model, "max_tokens": 10, "messages": HI}, key=key)
    error = out.get("error")
    assert error is not None, out
    assert error["name"] == name and error["status"] == status
    assert error["body"]["type"] == "error" and error["body"]["error"]["type"] == error_type
    assert PROVIDER_KEY not in json.dumps(out) and ANTHROPIC_KEY not in json.dumps(out)


def test_a_missing_parameter_is_named(node_sdk: Path, gw: Running) -> None:
    out = call(node_sdk, gw, "create", {"model": "echo", "messages": HI})  # no max_tokens
    error = out.get("error")
    assert error is not None and error["name"] == "BadRequestError" and error["status"] == 400, out
    assert error["body"]["error"]["message"].startswith("max_tokens:")
