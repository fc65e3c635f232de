"""A request's token estimate, made once by the parse stage: what its tpm and budget reservations count.

No tokenizer runs on the request path, so every part of the body is counted by a rule with a stated
error instead, in one walk of the parts that reach the model:

- text (message contents, names, tool calls and their arguments, embeddings input, completion prompts): ASCII at
  ``CHARS_PER_TOKEN`` characters a token, rounded up per string; other text at one token a character
  (CJK and most non-Latin scripts take about one token a character or less);
- JSON the provider renders into the prompt (``tools``, ``functions``, ``tool_choice``,
  ``response_format``, ``prediction``): its serialized size in bytes over ``CHARS_PER_TOKEN``;
- images: OpenAI's documented cost, ``IMAGE_LOW_TOKENS`` in low detail, else ``IMAGE_MAX_TOKENS``
  (the most tiles any image gets in high detail: the gateway does not decode images to learn their
  size); a base64 data URL is never counted as text;
- audio: ``AUDIO_BYTES_PER_TOKEN`` bytes of decoded audio a token (10 tokens a second at 32 kbit/s);
- files: a ``file_data`` part at its decoded size over ``CHARS_PER_TOKEN``, a ``file_id`` (size
  unknown here) at ``FILE_ID_TOKENS``;
- the completion: ``max_tokens`` (or the target's ``default_max_tokens``) times ``n``.

The error bound: media, files and the completion are ceilings; text and JSON are short of the real
count only where they run denser than four characters a token (code and JSON schemas at about three:
up to a third more than reserved), plus the chat format's 3 or 4 tokens per message, which are not
counted.
"""

from __future__ import annotations

from typing import Any

import orjson

CHARS_PER_TOKEN = 4  # OpenAI's tokenizers average about four characters of English a token
IMAGE_LOW_TOKENS = 85  # OpenAI: an image in low detail
IMAGE_TILE_TOKENS = 170  # OpenAI: each 512 px tile of an image in high detail, on top of the 85
IMAGE_MAX_TOKENS = IMAGE_LOW_TOKENS + 8 * IMAGE_TILE_TOKENS  # 2048x768 in high detail: 8 tiles, the most any size gets
AUDIO_BYTES_PER_TOKEN = 400  # 10 audio tokens a second at 32 kbit/s: denser formats are counted high
FILE_ID_TOKENS = 8192  # an uploaded file referred to by id: its size is unknown to the gateway
JSON_FIELDS = ("tools", "functions", "tool_choice", "response_format", "prediction")


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens a request will be billed, estimated as the module docstring states."""
    tokens = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                tokens += _message(message)
    inputs = body.get("input")
    if inputs is not None:
        tokens += _input(inputs)
    prompt = body.get("prompt")  # legacy completions: the same shapes as embeddings input
    if prompt is not None:
        tokens += _input(prompt)
    for name in JSON_FIELDS:
        value = body.get(name)
        if value is not None:
            tokens += _json(value)
    return tokens


def choices_of(body: dict[str, Any]) -> int:
    """``n``, the completions asked for: each is billed its own completion tokens."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def text_tokens(text: str) -> int:
    if text.isascii():
        return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
    return len(text)


def _message(message: dict[str, Any]) -> int:
    tokens = 0
    content = message.get("content")
    if isinstance(content, str):
        tokens += text_tokens(content)
    elif isinstance(content, list):
        for part in content:
            tokens += _part(part)
    name = message.get("name")
    if isinstance(name, str):
        tokens += text_tokens(name)
    for field in ("tool_calls", "function_call", "audio"):
        value = message.get(field)
        if value is not None:
            tokens += _json(value)
    return tokens


def _part(part: Any) -> int:
    """One content part: text, an image, audio or a file; any other kind by its JSON size."""
    if isinstance(part, str):
        return text_tokens(part)
    if not isinstance(part, dict):
        return 0
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        return text_tokens(text) if isinstance(text, str) else 0
    if kind == "image_url":
        return _image(part.get("image_url"))
    if kind == "input_audio":
        audio = part.get("input_audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        return -(-_decoded_size(data) // AUDIO_BYTES_PER_TOKEN) if isinstance(data, str) else 0
    if kind == "file":
        return _file(part.get("file"))
    return _json(part)


def _image(image: Any) -> int:
    detail = image.get("detail") if isinstance(image, dict) else None
    return IMAGE_LOW_TOKENS if detail == "low" else IMAGE_MAX_TOKENS


def _file(file: Any) -> int:
    if not isinstance(file, dict):
        return 0
    data = file.get("file_data")
    if isinstance(data, str):
        return -(-_decoded_size(data) // CHARS_PER_TOKEN)
    return FILE_ID_TOKENS if file.get("file_id") else 0


def _decoded_size(data: str) -> int:
    """Bytes a base64 payload (or data URL) decodes to, without decoding it."""
    comma = data.find(",", 0, 256) if data.startswith("data:") else -1
    return (len(data) - comma - 1) * 3 // 4


def _input(inputs: Any) -> int:
    """Embeddings input: a string, strings, token ids, or lists of token ids."""
    if isinstance(inputs, str):
        return text_tokens(inputs)
    if not isinstance(inputs, list):
        return 0
    tokens = 0
    for item in inputs:
        if isinstance(item, str):
            tokens += text_tokens(item)
        elif isinstance(item, list):
            tokens += len(item)
        else:
            tokens += 1
    return tokens


def _json(value: Any) -> int:
    try:
        size = len(orjson.dumps(value))
    except TypeError:  # not JSON-serializable here (parse validated the body): count nothing, never fail
        return 0
    return (size + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
