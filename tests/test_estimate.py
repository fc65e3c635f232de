"""The request estimate (proxy/pipeline/estimate.py): every part of a body counted, pure functions."""

from __future__ import annotations

import base64

import orjson

from proxy.client_request import ClientRequest
from proxy.pipeline.estimate import (
    AUDIO_BYTES_PER_TOKEN,
    FILE_ID_TOKENS,
    IMAGE_LOW_TOKENS,
    IMAGE_MAX_TOKENS,
    choices_of,
    estimate_prompt_tokens,
)
from proxy.pipeline.parse import parse
from tests.test_reservations import HI, tools


def test_text_is_four_characters_a_token_and_hi_stays_one():
    assert estimate_prompt_tokens({"messages": HI}) == 1
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": "x" * 400}]}) == 100
    parts = [{"type": "text", "text": "x" * 40}, {"type": "text", "text": "y" * 41}]
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": parts}]}) == 10 + 11


def test_non_ascii_text_is_a_token_a_character():
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": "你好世界" * 10}]}) == 40


def test_tools_and_schemas_count_by_their_json_size():
    big = tools(100)
    size = len(orjson.dumps(big))
    assert size > 20_000
    assert estimate_prompt_tokens({"messages": HI, "tools": big}) == 1 + (size + 3) // 4
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        f"field_{i}": {"type": "string"} for i in range(200)}}}}
    expected = (len(orjson.dumps(schema)) + 3) // 4
    assert estimate_prompt_tokens({"messages": HI, "response_format": schema}) == 1 + expected
    call = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                 "function": {"name": "f", "arguments": '{"city": "Paris"}' * 50}}]}
    assert estimate_prompt_tokens({"messages": [call]}) >= 50 * 17 // 4


def test_images_count_their_documented_cost_not_their_base64():
    data_url = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * 100_000).decode()
    high = {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                         {"type": "image_url", "image_url": {"url": data_url}}]}
    assert estimate_prompt_tokens({"messages": [high]}) == 3 + IMAGE_MAX_TOKENS
    assert IMAGE_MAX_TOKENS == 85 + 170 * 8  # a 2048x768 image in high detail
    low = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url, "detail": "low"}}]}
    assert estimate_prompt_tokens({"messages": [low]}) == IMAGE_LOW_TOKENS


def test_audio_and_files_count_by_decoded_size_or_a_ceiling():
    audio = base64.b64encode(b"\0" * 39_999).decode()  # no padding: 39,999 bytes
    msg = {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "mp3"}}]}
    assert estimate_prompt_tokens({"messages": [msg]}) == 40_000 // AUDIO_BYTES_PER_TOKEN
    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF" + b"\0" * 3995).decode()
    msg = {"role": "user", "content": [{"type": "file", "file": {"file_data": pdf, "filename": "a.pdf"}}]}
    assert estimate_prompt_tokens({"messages": [msg]}) == 1000
    msg = {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}
    assert estimate_prompt_tokens({"messages": [msg]}) == FILE_ID_TOKENS


def test_embeddings_input():
    assert estimate_prompt_tokens({"input": "x" * 8}) == 2
    assert estimate_prompt_tokens({"input": ["x" * 8, "y"]}) == 3
    assert estimate_prompt_tokens({"input": [[1, 2, 3], [4, 5]]}) == 5


def test_odd_shapes_never_raise():
    for body in ({"messages": "x"}, {"messages": [None, 3, {"content": 5}]}, {"messages": [{"content": [None, 1]}]},
                 {"tools": object()}, {"input": 3}, {"messages": [{"content": [{"type": "image_url"}]}]}):
        assert estimate_prompt_tokens(body) >= 0


def test_n_multiplies_the_completion_and_the_default_covers_a_missing_max_tokens():
    assert choices_of({"n": 50}) == 50 and choices_of({}) == 1 and choices_of({"n": True}) == 1
    request = parse("chat", {"model": "m", "messages": HI, "n": 50, "max_tokens": 10}, "r", "r")
    assert request.completion_allowance(4096) == 500
    request = parse("chat", {"model": "m", "messages": HI, "n": 2}, "r", "r")
    assert request.completion_allowance(4096) == 8192
    assert ClientRequest("embeddings", "m", {}, "r", "r").completion_allowance(4096) == 0
