"""``/ui``: the console's static files, shipped inside the package (proxy/console/static), no network.

Every file is read once at first use and served with a strict Content-Security-Policy: scripts and
styles only from this origin, no inline code, no framing. The pages are a single-page app routed by
the URL's fragment, so every path under /ui that is not a file answers index.html.
"""

from __future__ import annotations

import functools
import mimetypes
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

STATIC = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
           "x-frame-options": "DENY", "cache-control": "no-cache"}
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}


@functools.cache
def asset(name: str) -> tuple[bytes, str] | None:
    """A file's bytes and type, if ``name`` is a file under static/ (nothing outside it)."""
    path = (STATIC / name).resolve()
    if STATIC not in path.parents or not path.is_file():
        return None
    kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.read_bytes(), kind


async def page(request: Request) -> Response:
    name = request.path_params.get("path") or "index.html"
    found = asset(name) or (asset("index.html") if "." not in name.rsplit("/", 1)[-1] else None)
    if found is None:
        return Response(b"not found", 404, headers=HEADERS, media_type="text/plain")
    body, kind = found
    return Response(body, headers=HEADERS, media_type=kind)


def routes() -> list[BaseRoute]:
    # "/ui/" arrives as "/ui" (the app strips a trailing slash), so "/ui" is the page itself; assets are
    # referred to by absolute paths.
    return [Route("/ui", page, methods=["GET"]), Route("/ui/{path:path}", page, methods=["GET"])]
