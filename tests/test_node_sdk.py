"""The official OpenAI Node SDK, unmodified, through the gateway: chat and responses (streamed and not),
embeddings with the SDK's default base64 encoding (from an upstream that packs base64 and one that answers
floats anyway), models.list and an error. The SDK is installed with npm into the session's temporary
directory (its npm cache too); every answer it parsed is also checked against OpenAI's schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GATEWAY_KEY, Running, base_config, start_gateway
from tests.schemas import assert_valid, assert_valid_response_event

# 6.x: the newest major that still runs on Node 20 (7.x needs Node 22).
OPENAI_NODE = "openai@6.49.0"

SCRIPT = r"""
import OpenAI from "openai";

const [baseURL, apiKey, op, argsJson] = process.argv.slice(2);
const args = JSON.parse(argsJson);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20000 });
const out = {};
try {
  if (op === "chat") {
    out.result = await client.chat.completions.create(args);
  } else if (op === "chat_stream") {
    const stream = await client.chat.completions.create({ ...args, stream: true });
    out.result = [];
    for await (const chunk of stream) out.result.push(chunk);
  } else if (op === "responses") {
    const r = await client.responses.create(args);
    out.result = r;
    out.output_text = r.output_text;
  } else if (op === "responses_stream") {
    const stream = await client.responses.create({ ...args, stream: true });
    out.result = [];
    for await (const event of stream) out.result.push(event);
  } else if (op === "embeddings") {
    out.result = await client.embeddings.create(args);
  } else if (op === "models") {
    const ids = [];
    for await (const model of client.models.list()) ids.push(model);
    out.result = ids;
    out.one = await client.models.retrieve(args.id);
  } else {
    throw new Error("unknown op " + op);
  }
} catch (e) {
  out.error = { name: e.constructor.name, status: e.status ?? null, code: e.code ?? null,
                type: e.type ?? null, param: e.param ?? null, message: String(e.message) };
}
process.stdout.write(JSON.stringify(out));
"""


def _node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed for the Node SDK tests (CI=true: a skip would hide them)")
        pytest.skip("node or npm is not installed: the OpenAI Node SDK tests need them")
    return node


def install_sdk(tmp_path_factory: pytest.TempPathFactory, package: str, script: str) -> Path:
    """A temporary directory with ``package`` installed by npm (its cache there too) and ``script``
    beside it as call.mjs."""
    _node()
    where = tmp_path_factory.mktemp("node-sdk")
    (where / "package.json").write_text('{"name": "gateway-node-sdk-test", "private": true, "type": "module"}')
    env = {**os.environ, "npm_config_cache": str(where / "npm-cache"), "npm_config_update_notifier": "false"}
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--no-package-lock",
                           package], cwd=where, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"npm install {package} failed:\n{done.stdout}\n{done.stderr}"
    (where / "call.mjs").write_text(script)
    return where


@pytest.fixture(scope="module")
def node_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the OpenAI Node SDK installed and the test script beside it (once per module)."""
    return install_sdk(tmp_path_factory, OPENAI_NODE, SCRIPT)


@pytest.fixture(scope="module")
def gw(fake_openai: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    extra = '[[models]]\nname = "floaty"\ntargets = [{ provider = "fake", model = "floats-always" }]\n'
    running = start_gateway(base_config(fake_openai.url, tmp_path_factory.mktemp("node") / "gw.db", extra))
    yield running
    running.server.stop()


def node_call(sdk: Path, gw: Running, op: str, args: dict[str, Any], key: str = GATEWAY_KEY) -> dict[str, Any]:
    done = subprocess.run([_node(), "call.mjs", gw.url + "/v1", key, op, json.dumps(args)], cwd=sdk,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


HI = [{"role": "user", "content": "tell me about Paris"}]


def test_chat_completions(node_sdk: Path, gw: Running) -> None:
    out = node_call(node_sdk, gw, "chat", {"model": "gpt-test", "messages": HI})
    assert "error" not in out, out
    reply = out["result"]
    assert reply["model"] == "gpt-test"
    assert reply["choices"][0]["message"]["content"] == "Hello tell me about Paris"
    assert reply["usage"]["prompt_tokens"] > 0
    assert_valid("CreateChatCompletionResponse", reply)


def test_chat_completions_stream(node_sdk: Path, gw: Running) -> None:
    out = node_call(node_sdk, gw, "chat_stream", {"model": "gpt-test", "messages": HI,
                                                  "stream_options": {"include_usage": True}})
    assert "error" not in out, out
    chunks = out["result"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello tell me about Paris"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    for chunk in chunks:
        assert chunk["model"] == "gpt-test"
        assert_valid("CreateChatCompletionStreamResponse", chunk)


@pytest.mark.parametrize("model", ["gpt-test", "echo"])
def test_responses(node_sdk: Path, gw: Running, model: str) -> None:
    out = node_call(node_sdk, gw, "responses", {"model": model, "input": "tell me about Paris",
                                                "instructions": "be brief"})
    assert "error" not in out, out
    assert out["output_text"] == ("Hello tell me about Paris" if model == "gpt-test" else "Echo: tell me about Paris")
    response = out["result"]
    assert response["status"] == "completed" and response["model"] == model
    assert response["usage"]["output_tokens"] > 0
    response.pop("output_text")  # the SDK's convenience field, not on the wire
    assert_valid("Response", response)


@pytest.mark.parametrize("model", ["gpt-test", "echo"])
def test_responses_stream(node_sdk: Path, gw: Running, model: str) -> None:
    out = node_call(node_sdk, gw, "responses_stream", {"model": model, "input": "tell me about Paris"})
    assert "error" not in out, out
    events = out["result"]
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == ("Hello tell me about Paris" if model == "gpt-test" else "Echo: tell me about Paris")
    assert events[-1]["response"]["usage"]["output_tokens"] > 0
    for event in events:
        assert_valid_response_event(event)


def upstream_floats(fake_openai: Running, model: str, inputs: list[str], dims: int) -> list[list[float]]:
    r = httpx.post(fake_openai.url + "/v1/embeddings", json={"model": model, "input": inputs, "dimensions": dims,
                                                             "encoding_format": "float"}, timeout=10)
    return [d["embedding"] for d in r.json()["data"]]


@pytest.mark.parametrize(("alias", "upstream"), [("a-ok", "ok"), ("floaty", "floats-always")])
def test_embeddings_default_base64(node_sdk: Path, gw: Running, fake_openai: Running, alias: str,
                                   upstream: str) -> None:
    """The Node SDK asks for base64 unless told otherwise and decodes it itself: the vectors it ends with
    are the upstream's floats, whether the upstream packed base64 or answered float arrays anyway."""
    inputs = ["hello world", "abc"]
    out = node_call(node_sdk, gw, "embeddings", {"model": alias, "input": inputs, "dimensions": 4})
    assert "error" not in out, out
    sent = [r for r in fake_openai.app.state.fake.requests if r["path"] == "/v1/embeddings"][-1]["body"]
    assert sent["encoding_format"] == "base64" and sent["model"] == upstream
    got = [d["embedding"] for d in sorted(out["result"]["data"], key=lambda d: d["index"])]
    expected = upstream_floats(fake_openai, upstream, inputs, 4)
    assert all(isinstance(x, float) for x in expected[0])
    assert got == [pytest.approx(v, rel=1e-6) for v in expected]
    assert out["result"]["model"] == alias and out["result"]["usage"]["prompt_tokens"] == 3
    assert_valid("CreateEmbeddingResponse", out["result"])


def test_models_list_and_retrieve(node_sdk: Path, gw: Running) -> None:
    out = node_call(node_sdk, gw, "models", {"id": "gpt-test"})
    assert "error" not in out, out
    ids = [m["id"] for m in out["result"]]
    assert {"gpt-test", "echo", "floaty"} <= set(ids)
    for model in out["result"]:
        assert_valid("Model", model)
    assert out["one"]["id"] == "gpt-test"
    assert_valid("Model", out["one"])


def test_errors_are_the_sdks_error_classes(node_sdk: Path, gw: Running) -> None:
    bad = node_call(node_sdk, gw, "chat", {"model": "gpt-test", "messages": HI}, key="sk-wrong")
    assert bad["error"]["name"] == "AuthenticationError" and bad["error"]["status"] == 401
    assert bad["error"]["code"] == "invalid_api_key"
    unknown = node_call(node_sdk, gw, "responses", {"model": "no-such-model", "input": "hi"})
    assert unknown["error"]["status"] == 404 and unknown["error"]["name"] == "NotFoundError"
    upstream = node_call(node_sdk, gw, "chat", {"model": "a-fail-400", "messages": HI})
    assert upstream["error"]["name"] == "BadRequestError" and upstream["error"]["status"] == 400
