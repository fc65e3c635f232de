"""The parse stage's checks of a request body against OpenAI's schemas (CreateChatCompletionRequest,
CreateCompletionRequest, CreateEmbeddingRequest): a parameter OpenAI would reject for its type or range
gets a 400 naming it here, instead of reaching a provider (or a gateway stage that assumes the type).

Only parameters OpenAI defines are checked, and only what OpenAI itself rejects; anything else passes
through untouched for providers with extensions of their own. ``null`` counts as not sent, as the
OpenAI SDKs send it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.errors import bad_request

MAX_MODEL_CHARS = 256  # longer than any provider's model id; the name goes into rows, headers and labels
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's maxItems for an embeddings input array

Check = Callable[[str, Any], None]


def _wrong(name: str, what: str) -> None:
    raise bad_request(f"Invalid type for '{name}': expected {what}.", param=name, code="invalid_type")


def _out_of_range(name: str, what: str) -> None:
    raise bad_request(f"Invalid value for '{name}': expected {what}.", param=name, code="invalid_value")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(low: float, high: float) -> Check:
    def check(name: str, value: Any) -> None:
        if not _is_number(value):
            _wrong(name, "a number")
        if not low <= value <= high:
            _out_of_range(name, f"a number from {low:g} to {high:g}")
    return check


def integer(low: int | None = None, high: int | None = None) -> Check:
    def check(name: str, value: Any) -> None:
        if not _is_int(value):
            _wrong(name, "an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"from {low} to {high}"
            _out_of_range(name, f"an integer {bounds}")
    return check


def of_type(kind: type | tuple[type, ...], what: str) -> Check:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, kind) or (bool not in _kinds(kind) and isinstance(value, bool)):
            _wrong(name, what)
    return check


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def array_of(kind: type, what: str, max_items: int | None = None) -> Check:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, list):
            _wrong(name, f"an array of {what}")
        for i, item in enumerate(value):
            if not isinstance(item, kind) or isinstance(item, bool) and kind is not bool:
                _wrong(f"{name}[{i}]", what)
        if max_items is not None and len(value) > max_items:
            _out_of_range(name, f"at most {max_items} items")
    return check


def stop(name: str, value: Any) -> None:
    if not isinstance(value, str):
        array_of(str, "strings")(name, value)


def string_or_object(name: str, value: Any) -> None:
    if not isinstance(value, str | dict):
        _wrong(name, "a string or an object")


def typed_objects(name: str, value: Any) -> None:
    """tools, functions: an array of objects (a tool's own fields are the provider's to judge)."""
    array_of(dict, "objects")(name, value)


BOOLEAN = of_type(bool, "a boolean")
STRING = of_type(str, "a string")
OBJECT = of_type(dict, "an object")

CHAT: dict[str, Check] = {
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "n": integer(1, 128),
    "max_tokens": integer(1),
    "max_completion_tokens": integer(1),
    "frequency_penalty": number(-2, 2),
    "presence_penalty": number(-2, 2),
    "logprobs": BOOLEAN,
    "top_logprobs": integer(0, 20),
    "seed": integer(),
    "stream": BOOLEAN,
    "stream_options": OBJECT,
    "stop": stop,
    "tools": typed_objects,
    "functions": typed_objects,
    "tool_choice": string_or_object,
    "function_call": string_or_object,
    "parallel_tool_calls": BOOLEAN,
    "logit_bias": OBJECT,
    "response_format": OBJECT,
    "user": STRING,
    "safety_identifier": STRING,
    "prompt_cache_key": STRING,
    "metadata": OBJECT,
    "store": BOOLEAN,
    "modalities": array_of(str, "strings"),
    "reasoning_effort": STRING,
    "verbosity": STRING,
    "service_tier": STRING,
    "audio": OBJECT,
    "prediction": OBJECT,
    "web_search_options": OBJECT,
}

COMPLETIONS: dict[str, Check] = {  # CreateCompletionRequest
    "best_of": integer(0, 20),
    "echo": BOOLEAN,
    "frequency_penalty": number(-2, 2),
    "presence_penalty": number(-2, 2),
    "logit_bias": OBJECT,
    "logprobs": integer(0, 5),
    "max_tokens": integer(0),
    "n": integer(1, 128),
    "seed": integer(),
    "stop": stop,
    "stream": BOOLEAN,
    "stream_options": OBJECT,
    "suffix": STRING,
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "user": STRING,
}

EMBEDDINGS: dict[str, Check] = {
    "dimensions": integer(1),
    "user": STRING,
}


def check_params(body: dict[str, Any], table: dict[str, Check]) -> None:
    for name, value in body.items():  # a body has a few keys, the table dozens: walk the body
        if value is not None:
            check = table.get(name)
            if check is not None:
                check(name, value)


def check_model(name: Any) -> str:
    """The model name, if it can be one: a non-empty printable string of at most MAX_MODEL_CHARS (it
    is written to usage rows, response headers and metric labels, where a control character breaks them)."""
    if name is None or name == "":
        raise bad_request("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(name, str):
        _wrong("model", "a string")
    if len(name) > MAX_MODEL_CHARS:
        _out_of_range("model", f"a model name of at most {MAX_MODEL_CHARS} characters")
    if not name.isprintable():
        _out_of_range("model", "a model name without control or other non-printable characters")
    return name


def check_forwarded_model(name: str) -> None:
    """A glob alias forwards the client's model name to its provider (and in x-gateway-upstream-model),
    where only ASCII travels in a header or URL: anything else is refused before the provider is called."""
    if not name.isascii():
        _out_of_range("model", "an ASCII model name for this alias (it is forwarded to the provider as is)")


def check_messages(messages: Any) -> None:
    if messages is None:
        raise bad_request("you must provide a messages parameter", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages", code="invalid_type")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]",
                              code="invalid_type")
        _check_content(f"messages[{i}].content", m.get("content"))
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            _wrong(f"messages[{i}].name", "a string")
        tool_calls = m.get("tool_calls")
        if tool_calls is not None:
            array_of(dict, "objects")(f"messages[{i}].tool_calls", tool_calls)


def _check_content(where: str, content: Any) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        _wrong(where, "a string or an array of content parts")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            _wrong(f"{where}[{j}]", "a content part: an object with a 'type'")
        if "text" in part and not isinstance(part["text"], str):
            _wrong(f"{where}[{j}].text", "a string")


def check_input(inputs: Any) -> None:
    """A string, or a non-empty array of strings, of token ids, or of arrays of token ids."""
    if inputs is None:
        raise bad_request("you must provide an input parameter", param="input", code="missing_required_parameter")
    if isinstance(inputs, str):
        return
    if not isinstance(inputs, list) or not inputs:
        raise bad_request("'input' must be a string or a non-empty array", param="input", code="invalid_type")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        _out_of_range("input", f"at most {MAX_EMBEDDING_INPUTS} items")
    first = inputs[0]
    if isinstance(first, str):
        array_of(str, "strings")("input", inputs)
    elif _is_int(first):
        _token_ids("input", inputs)
    elif isinstance(first, list):
        for i, item in enumerate(inputs):
            if not isinstance(item, list) or not item:
                _wrong(f"input[{i}]", "a non-empty array of token ids")
            _token_ids(f"input[{i}]", item)
    else:
        _wrong("input[0]", "a string, a token id or an array of token ids")


def check_prompt(prompt: Any) -> None:
    """A legacy completion's prompt: a string, strings, token ids or arrays of token ids (as ``input``)."""
    if prompt is None:
        raise bad_request("you must provide a prompt parameter", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list) or not prompt:
        raise bad_request("'prompt' must be a string or a non-empty array", param="prompt", code="invalid_type")
    first = prompt[0]
    if isinstance(first, str):
        array_of(str, "strings")("prompt", prompt)
    elif _is_int(first):
        _token_ids("prompt", prompt)
    elif isinstance(first, list):
        for i, item in enumerate(prompt):
            if not isinstance(item, list) or not item:
                _wrong(f"prompt[{i}]", "a non-empty array of token ids")
            _token_ids(f"prompt[{i}]", item)
    else:
        _wrong("prompt[0]", "a string, a token id or an array of token ids")


def _token_ids(name: str, items: list[Any]) -> None:
    for i, t in enumerate(items):
        if not _is_int(t) or t < 0:
            _wrong(f"{name}[{i}]", "a token id (a non-negative integer)")


def recordable_model(name: Any) -> str:
    """A model name as a usage row may carry it when the request was refused before its name was checked:
    non-printable characters replaced and the length bounded, so the row itself is never refused."""
    if not isinstance(name, str):
        return ""
    if len(name) <= MAX_MODEL_CHARS and name.isprintable():
        return name
    return "".join(c if c.isprintable() else "\ufffd" for c in name[:MAX_MODEL_CHARS])
