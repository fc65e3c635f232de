"""The pass-through endpoints through the official OpenAI SDK (httpx for rerank), against a fake OpenAI
upstream that records what it received: images, audio, moderations, rerank, files and batches, with
their usage rows, costs, limits, key allow-lists and errors."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import GATEWAY_KEY, LIMITED_KEY, PROVIDER_KEY, Running, ledger_rows, start_gateway
from tests.fakes.openai_media import PNG, SPEECH_PIECE, SPEECH_PIECES, make_app
from tests.servers import ServerThread

OPENAPI = Path("/work/shared/reference/openai-openapi.json")
ROW = ("SELECT endpoint, model, provider, upstream_model, status, cost_usd, prompt_tokens, completion_tokens, "
       "usage_estimated FROM usage_log WHERE request_id LIKE ?")


def config(media_url: str, db: Path) -> str:
    return f"""
[server]
max_body_mb = 1

[storage]
database_url = "sqlite:///{db}"
spill_dir = "{db.parent / 'spill'}"

[providers.media]
kind = "openai"
base_url = "{media_url}/v1"
api_key = "{PROVIDER_KEY}"

[providers.local]
kind = "echo"

[providers.claude]
kind = "anthropic"
base_url = "http://127.0.0.1:9"
api_key = "sk-ant-unused-key"

[files]
model = "files-store"

[[models]]
name = "dall-e"
targets = [{{ provider = "media", model = "dall-e-3", per_image = 0.04 }}]

[[models]]
name = "gpt-image"
targets = [{{ provider = "media", model = "gpt-image-1", input_per_mtok = 5.0, output_per_mtok = 40.0 }}]

[[models]]
name = "tts"
targets = [{{ provider = "media", model = "tts-1", per_character = 0.000015 }}]

[[models]]
name = "gated-tts"
targets = [{{ provider = "media", model = "gated-speech" }}]

[[models]]
name = "whisper"
targets = [{{ provider = "media", model = "whisper-1", per_second = 0.0001 }}]

[[models]]
name = "moderation"
targets = [{{ provider = "media", model = "omni-moderation-latest" }}]

[[models]]
name = "reranker"
targets = [{{ provider = "media", model = "bge-reranker-v2-m3", input_per_mtok = 0.02, output_per_mtok = 0.0 }}]

[[models]]
name = "files-store"
targets = [{{ provider = "media", model = "gpt-4o-mini" }}]

[[models]]
name = "images-once"
rpm = 1
targets = [{{ provider = "media", model = "dall-e-2", per_image = 0.02 }}]

[[models]]
name = "broken"
targets = [{{ provider = "media", model = "fail-400" }}]

[[models]]
name = "claude"
targets = [{{ provider = "claude", model = "claude-sonnet-4" }}]

[[models]]
name = "echo"
targets = [{{ provider = "local", model = "echo-1" }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"

[[keys]]
name = "limited"
key = "{LIMITED_KEY}"
models = ["dall-e"]
"""


@pytest.fixture(scope="module")
def media() -> Iterator[Running]:
    app = make_app()
    server = ServerThread(app).start()
    yield Running(server, app)
    server.stop()


@pytest.fixture(scope="module")
def gw(media: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    db = tmp_path_factory.mktemp("passthrough") / "gw.db"
    running = start_gateway(config(media.url, db))
    running.db = db  # type: ignore[attr-defined]
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def schemas() -> Any:
    doc = json.loads(OPENAPI.read_text())
    registry = Registry().with_resource("urn:openai", Resource.from_contents(doc, default_specification=DRAFT202012))

    def check(name: str, data: Any) -> None:
        Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{name}"}, registry=registry).validate(data)

    return check


def row(gw: Running, rid: str) -> tuple:
    rows = ledger_rows(gw.db, ROW, (rid + ".%",))  # type: ignore[attr-defined]
    assert len(rows) == 1, rows
    return rows[0]


def state(media: Running) -> Any:
    return media.app.state.media


def rid_headers(rid: str) -> dict[str, str]:
    return {"x-request-id": rid}


# images ---------------------------------------------------------------------------------------------


def test_images_generate_rewrites_the_model_sends_the_provider_key_and_prices_per_image(gw, media, schemas):
    raw = gw.client().images.with_raw_response.generate(model="dall-e", prompt="a red fox", n=2,
                                                        extra_headers=rid_headers("img-gen-1"))
    images = raw.parse()
    assert [d.b64_json for d in images.data] == [PNG, PNG]
    schemas("ImagesResponse", json.loads(raw.content))
    got = state(media).last("/v1/images/generations")
    assert got["body"] == {"model": "dall-e-3", "prompt": "a red fox", "n": 2}
    assert got["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert raw.headers["x-gateway-provider"] == "media" and raw.headers["x-gateway-upstream-model"] == "dall-e-3"
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(0.08)
    endpoint, model, provider, upstream, status, cost, *_ = row(gw, "img-gen-1")
    assert (endpoint, model, provider, upstream, status) == ("images.generations", "dall-e", "media", "dall-e-3", 200)
    assert cost == pytest.approx(0.08)


def test_images_that_report_tokens_are_priced_by_token(gw):
    gw.client().images.generate(model="gpt-image", prompt="a fox", extra_headers=rid_headers("img-tok-1"))
    *_, cost, prompt, completion, estimated = row(gw, "img-tok-1")
    assert (prompt, completion, estimated) == (50, 4160, 0)
    assert cost == pytest.approx((50 * 5.0 + 4160 * 40.0) / 1e6)


def test_images_edit_streams_the_whole_multipart_upstream(gw, media, schemas):
    picture = os.urandom(300_000)
    images = gw.client().images.edit(model="dall-e", image=("fox.png", picture, "image/png"), prompt="add a hat",
                                     n=3, extra_headers=rid_headers("img-edit-1"))
    assert len(images.data) == 3
    got = state(media).last("/v1/images/edits")
    assert got["fields"]["model"] == "dall-e-3" and got["fields"]["prompt"] == "add a hat"
    assert got["files"]["image"]["sha256"] == hashlib.sha256(picture).hexdigest()
    assert got["files"]["image"]["filename"] == "fox.png"
    assert got["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    endpoint, model, *_, status, cost, _, _, _ = row(gw, "img-edit-1")
    assert (endpoint, model, status) == ("images.edits", "dall-e", 200)
    assert cost == pytest.approx(0.12)


def test_upstream_errors_pass_through_without_the_provider_key(gw):
    with pytest.raises(openai.BadRequestError) as err:
        gw.client().images.generate(model="broken", prompt="x", extra_headers=rid_headers("img-fail-1"))
    assert "failure 400" in err.value.message and PROVIDER_KEY not in err.value.response.text
    assert row(gw, "img-fail-1")[4] == 400


# audio ----------------------------------------------------------------------------------------------


def test_speech_is_binary_and_priced_per_character(gw, media):
    text = "The quick brown fox jumps over the lazy dog."
    with gw.client().audio.speech.with_streaming_response.create(
            model="tts", voice="alloy", input=text, extra_headers=rid_headers("speech-1")) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        audio = response.read()
    assert audio == SPEECH_PIECE * SPEECH_PIECES
    assert state(media).last("/v1/audio/speech")["body"]["model"] == "tts-1"
    assert gw.client().audio.speech.create(model="tts", voice="alloy", input="hi").content == audio
    endpoint, model, *_, status, cost, _, _, _ = row(gw, "speech-1")
    assert (endpoint, model, status) == ("audio.speech", "tts", 200)
    assert cost == pytest.approx(len(text) * 0.000015)


def test_speech_reaches_the_client_as_it_comes(gw, media):
    fake = state(media)
    fake.gate.clear()
    fake.speech_sent = 0
    try:
        with httpx.stream("POST", gw.url + "/v1/audio/speech", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                          json={"model": "gated-tts", "voice": "alloy", "input": "hi"}, timeout=10) as r:
            assert r.status_code == 200
            pieces = r.iter_bytes()
            first = next(pieces)
            assert first and fake.speech_sent == 1  # the upstream holds the rest until the gate opens
            fake.gate.set()
            rest = b"".join(pieces)
        assert first + rest == SPEECH_PIECE * SPEECH_PIECES
    finally:
        fake.gate.set()


def test_transcription_upload_larger_than_max_body_is_streamed_whole(gw, media, schemas):
    audio = os.urandom(3 * 1024 * 1024)  # three times [server] max_body_mb
    raw = gw.client().audio.transcriptions.with_raw_response.create(
        model="whisper", file=("talk.wav", audio, "audio/wav"), extra_headers=rid_headers("transcribe-1"))
    assert raw.parse().text == f"heard {len(audio)} bytes"
    schemas("CreateTranscriptionResponseJson", json.loads(raw.content))
    got = state(media).last("/v1/audio/transcriptions")
    assert got["fields"]["model"] == "whisper-1"
    assert got["files"]["file"]["sha256"] == hashlib.sha256(audio).hexdigest()
    endpoint, model, *_, status, cost, _, _, _ = row(gw, "transcribe-1")
    assert (endpoint, model, status) == ("audio.transcriptions", "whisper", 200)
    assert cost == pytest.approx(9 * 0.0001)  # the upstream's usage: 9 seconds


def test_translation_verbose_json_and_text_answers(gw, media):
    client = gw.client()
    verbose = client.audio.translations.create(model="whisper", file=("a.mp3", b"ID3" + bytes(5000)),
                                               response_format="verbose_json", extra_headers=rid_headers("tr-1"))
    assert verbose.text == "heard 5003 bytes"
    assert state(media).last("/v1/audio/translations")["fields"]["response_format"] == "verbose_json"
    assert row(gw, "tr-1")[5] == pytest.approx(12.5 * 0.0001)  # verbose_json's duration
    text = client.audio.transcriptions.create(model="whisper", file=("a.mp3", b"ID3" + bytes(10)),
                                              response_format="text")
    assert text.strip() == "heard 13 bytes"


def test_chunked_upload_without_content_length_reaches_the_upstream_whole(gw, media):
    boundary = "gw-test-boundary"
    audio = os.urandom(200_000)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'.encode(),
             f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n'
             f'Content-Type: audio/wav\r\n\r\n'.encode(), audio, f"\r\n--{boundary}--\r\n".encode()]

    def pieces() -> Iterator[bytes]:
        yield from parts

    r = httpx.post(gw.url + "/v1/audio/transcriptions", content=pieces(), timeout=10,
                   headers={"authorization": f"Bearer {GATEWAY_KEY}",
                            "content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200, r.text
    got = state(media).last("/v1/audio/transcriptions")
    assert got["files"]["file"]["sha256"] == hashlib.sha256(audio).hexdigest()
    assert got["fields"]["model"] == "whisper-1"


def test_multipart_with_the_model_after_a_file_past_max_body_is_a_400_naming_model(gw):
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'.encode()
            + bytes(2 * 1024 * 1024)
            + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--{boundary}--\r\n'
            .encode())
    r = httpx.post(gw.url + "/v1/audio/transcriptions", content=body, timeout=10,
                   headers={"authorization": f"Bearer {GATEWAY_KEY}",
                            "content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_multipart_without_a_model_field_is_a_400(gw):
    with pytest.raises(openai.BadRequestError) as err:
        gw.client().audio.transcriptions.create(model="", file=("a.wav", b"RIFF"))
    assert err.value.body["param"] == "model"


# moderations and rerank -----------------------------------------------------------------------------


def test_moderations_answer_with_the_alias(gw, media, schemas):
    raw = gw.client().moderations.with_raw_response.create(model="moderation", input=["hello", "world"],
                                                           extra_headers=rid_headers("mod-1"))
    result = raw.parse()
    assert result.model == "moderation" and len(result.results) == 2
    schemas("CreateModerationResponse", json.loads(raw.content))
    assert state(media).last("/v1/moderations")["body"]["model"] == "omni-moderation-latest"
    endpoint, model, provider, upstream, status, cost, prompt, _, estimated = row(gw, "mod-1")
    assert (endpoint, model, upstream, status, prompt, estimated) == ("moderations", "moderation",
                                                                      "omni-moderation-latest", 200, 4, 1)


def test_rerank_as_vllm_serves_it(gw, media):
    r = httpx.post(gw.url + "/v1/rerank", timeout=10,
                   headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-request-id": "rerank-1"},
                   json={"model": "reranker", "query": "capital of France",
                         "documents": ["Paris is the capital of France.", "Berlin is in Germany."], "top_n": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == "reranker" and [x["index"] for x in data["results"]] == [0, 1]
    assert state(media).last("/v1/rerank")["body"]["model"] == "bge-reranker-v2-m3"
    endpoint, model, *_, status, cost, prompt, _, estimated = row(gw, "rerank-1")
    assert (endpoint, model, status, prompt, estimated) == ("rerank", "reranker", 200, 37, 0)
    assert cost == pytest.approx(37 * 0.02 / 1e6)


# files and batches ----------------------------------------------------------------------------------


def test_files_create_retrieve_list_content_delete(gw, media, schemas):
    client = gw.client()
    lines = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n' * 50
    created = client.files.with_raw_response.create(file=("batch.jsonl", lines), purpose="batch",
                                                    extra_headers=rid_headers("file-create-1"))
    obj = created.parse()
    schemas("OpenAIFile", json.loads(created.content))
    assert obj.bytes == len(lines) and obj.purpose == "batch"
    assert state(media).last("/v1/files")["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert client.files.retrieve(obj.id).filename == "batch.jsonl"
    listed = client.files.with_raw_response.list()
    schemas("ListFilesResponse", json.loads(listed.content))
    assert obj.id in [f.id for f in listed.parse().data]
    assert client.files.content(obj.id).content == lines
    deleted = client.files.delete(obj.id)
    assert deleted.deleted and deleted.id == obj.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(obj.id)
    endpoint, model, provider, *_ = row(gw, "file-create-1")
    assert (endpoint, model, provider) == ("files", "files-store", "media")


def test_batches_create_retrieve_list_cancel(gw, schemas):
    client = gw.client()
    source = client.files.create(file=("in.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    raw = client.batches.with_raw_response.create(input_file_id=source.id, endpoint="/v1/chat/completions",
                                                  completion_window="24h", metadata={"team": "a"},
                                                  extra_headers=rid_headers("batch-1"))
    batch = raw.parse()
    schemas("Batch", json.loads(raw.content))
    assert batch.input_file_id == source.id and batch.status == "validating"
    assert client.batches.retrieve(batch.id).id == batch.id
    listed = client.batches.with_raw_response.list(limit=5)
    schemas("ListBatchesResponse", json.loads(listed.content))
    assert batch.id in [b.id for b in listed.parse().data]
    assert client.batches.cancel(batch.id).status == "cancelling"
    assert row(gw, "batch-1")[:2] == ("batches", "files-store")


def test_bad_ids_are_a_400_naming_the_parameter(gw):
    r = httpx.get(gw.url + "/v1/files/file%20x", headers={"authorization": f"Bearer {GATEWAY_KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file_id"


# who may call what ----------------------------------------------------------------------------------


def test_non_openai_kind_targets_get_a_400_naming_endpoint_and_model(gw):
    with pytest.raises(openai.BadRequestError) as err:
        gw.client().images.generate(model="claude", prompt="x", extra_headers=rid_headers("img-claude-1"))
    assert "/v1/images/generations" in err.value.message and "`claude`" in err.value.message
    assert row(gw, "img-claude-1")[4] == 400


def test_the_key_allow_list_applies(gw):
    limited = gw.client(LIMITED_KEY)
    with pytest.raises(openai.PermissionDeniedError):
        limited.audio.transcriptions.create(model="whisper", file=("a.wav", b"RIFF"))
    with pytest.raises(openai.PermissionDeniedError):  # files go to files-store, which it may not use
        limited.files.list()
    assert limited.images.generate(model="dall-e", prompt="ok").data


def test_a_model_rpm_limit_applies(gw):
    client = gw.client()
    client.images.generate(model="images-once", prompt="one")
    with pytest.raises(openai.RateLimitError) as err:
        client.images.generate(model="images-once", prompt="two", extra_headers=rid_headers("img-429"))
    assert err.value.response.headers.get("retry-after")
    assert row(gw, "img-429")[4] == 429


def test_requests_are_counted_in_metrics_by_endpoint(gw):
    gw.client().moderations.create(model="moderation", input="count me")
    text = httpx.get(gw.url + "/metrics").text
    assert 'gateway_requests_total{endpoint="moderations",model="moderation",provider="media",status="200"}' in text


# echo -----------------------------------------------------------------------------------------------


def test_echo_answers_moderations_rerank_and_images(gw, schemas):
    client = gw.client()
    assert client.moderations.create(model="echo", input="hi").results[0].flagged is False
    raw = client.images.with_raw_response.generate(model="echo", prompt="a cat", n=2)
    schemas("ImagesResponse", json.loads(raw.content))
    assert len(raw.parse().data) == 2
    r = httpx.post(gw.url + "/v1/rerank", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                   json={"model": "echo", "query": "red fox", "documents": ["a blue whale", "the red fox"]})
    assert r.status_code == 200 and r.json()["results"][0]["index"] == 1
    with pytest.raises(openai.BadRequestError) as err:  # echo has no audio
        client.audio.speech.create(model="echo", voice="alloy", input="hi")
    assert "audio/speech" in err.value.message
