"""The pass-through endpoints: what each takes, where it is routed and what its answer is."""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.errors import bad_request

# Upstream ids (file-abc, batch_abc) go into the upstream URL's path: one segment of plain characters.
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


@dataclass(frozen=True, slots=True)
class Spec:
    name: str  # the usage row's endpoint and the metrics' endpoint label
    path: str  # the route under /v1, with {id} for an upstream id
    method: str
    body: str  # "json" | "multipart" | "none"
    routed_by: str  # "model": the request's model field; "files": [files] model
    raw: bool = False  # the answer's bytes are relayed as they come (audio, file content), never parsed
    kinds: tuple[str, ...] = ("openai", "azure")  # provider kinds that serve it (echo: see ECHO_ANSWERS)
    id_param: str = ""  # the name a bad {id} is reported under

    def upstream_path(self, ident: str | None) -> str:
        """The path under the provider's base URL (no leading slash)."""
        path = self.path.lstrip("/")
        if ident is None:
            return path
        if not _ID.fullmatch(ident):
            raise bad_request(f"'{self.id_param}' must be an id of letters, digits, '_', '-', '.' or ':'",
                              param=self.id_param, code="invalid_value")
        return path.replace("{id}", ident)


ENDPOINTS = (
    Spec("images.generations", "/images/generations", "POST", "json", "model"),
    Spec("images.edits", "/images/edits", "POST", "multipart", "model"),
    Spec("images.variations", "/images/variations", "POST", "multipart", "model", kinds=("openai",)),
    Spec("audio.speech", "/audio/speech", "POST", "json", "model", raw=True),
    Spec("audio.transcriptions", "/audio/transcriptions", "POST", "multipart", "model"),
    Spec("audio.translations", "/audio/translations", "POST", "multipart", "model"),
    Spec("moderations", "/moderations", "POST", "json", "model", kinds=("openai",)),
    Spec("rerank", "/rerank", "POST", "json", "model", kinds=("openai",)),
    Spec("files", "/files", "POST", "multipart", "files"),
    Spec("files", "/files", "GET", "none", "files"),
    Spec("files", "/files/{id}", "GET", "none", "files", id_param="file_id"),
    Spec("files", "/files/{id}", "DELETE", "none", "files", id_param="file_id"),
    Spec("files", "/files/{id}/content", "GET", "none", "files", raw=True, id_param="file_id"),
    Spec("batches", "/batches", "POST", "json", "files"),
    Spec("batches", "/batches", "GET", "none", "files"),
    Spec("batches", "/batches/{id}", "GET", "none", "files", id_param="batch_id"),
    Spec("batches", "/batches/{id}/cancel", "POST", "none", "files", id_param="batch_id"),
)

# What the in-process echo provider answers (proxy.echo), so `make run` users can try them.
ECHO_ANSWERS = ("images.generations", "moderations", "rerank")
