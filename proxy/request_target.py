"""Where a provider key may go: the check every upstream URL passes before anything is sent.

Adapters build URLs from client input (a glob alias forwards the model name, and Gemini and Azure put it
in the path), escaping it as one path segment. This is the second line: a URL that leaves the provider's
base URL, walks up with ``.``/``..`` segments (even percent-encoded ones, which some servers decode
before routing), has a query the adapter did not place, or holds bytes no URL may hold is refused.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from adapters.base import UpstreamError

# RFC 3986 path characters: unreserved, sub-delims, ":", "@", "/" and well-formed percent-escapes.
_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
# The only queries adapters write: name=value pairs of plain or escaped characters (alt=sse, api-version=...).
_PAIR = r"[A-Za-z0-9\-._~]+=(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})*"
_QUERY = re.compile(f"{_PAIR}(?:&{_PAIR})*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def refusal(url: str, base_url: str) -> str | None:
    """Why ``url`` must not be sent to the provider at ``base_url``; None when it may be."""
    if not url.startswith(base_url + "/"):
        return "it would leave the provider's base URL"
    path, has_query, query = url[len(base_url):].partition("?")
    if not _PATH.fullmatch(path):
        return "it holds characters a URL path cannot"
    if has_query and not _QUERY.fullmatch(query):
        return "it would change the URL's query"
    decoded = path
    for _ in range(3):  # a server may decode more than once: %252e%252e is .. after two
        decoded, before = unquote(decoded), decoded
        if decoded == before:
            break
    if _CONTROL.search(decoded):
        return "it holds control characters"
    if any(segment in (".", "..") for segment in re.split(r"[/\\]", decoded)):
        return "it would walk up the provider's URL path"
    return None


def invalid_model(provider: str, reason: str) -> UpstreamError:
    """The 400 for a model name that cannot go into provider's URL: never sent, so never billed."""
    return UpstreamError(400, f"The model name cannot be used in a request to upstream {provider}: {reason}.",
                         "status_4xx", "invalid_request_error", "invalid_model", "model")
