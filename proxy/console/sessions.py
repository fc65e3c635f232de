"""Server-side conversations: the ``sessions``, ``session_messages`` and ``session_images`` tables.

A session belongs to the key that created it (its name; ``""`` on a gateway without auth). Messages
are stored as the chat messages they were; an image sent as a ``data:`` URL is stored once in
``session_images`` under its sha256 and referenced from the message as ``gateway-image:<sha256>``,
then given back as the same data URL when history is loaded (to a client or to the model).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from proxy.console.db import ConsoleDB
from proxy.keystore import now_iso

IMAGE_REF = "gateway-image:"
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.S)
MAX_PAGE = 200


@dataclass(slots=True)
class Session:
    id: str
    key_name: str
    title: str | None
    metadata: dict[str, Any]
    created_at: str
    updated_at: str

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "session", "title": self.title, "metadata": self.metadata,
                "created_at": self.created_at, "updated_at": self.updated_at}


def _session(r: tuple[Any, ...]) -> Session:
    return Session(r[0], r[1], r[2], orjson.loads(r[3]), r[4], r[5])


class SessionStore:
    def __init__(self, db: ConsoleDB) -> None:
        self.db = db

    async def create(self, owner: str, title: str | None, metadata: dict[str, Any]) -> Session:
        stamp = now_iso()
        session = Session("sess_" + secrets.token_hex(12), owner, title, metadata, stamp, stamp)
        await self.db.run("INSERT INTO sessions (id, key_name, title, metadata, created_at, updated_at) "
                          "VALUES (?, ?, ?, ?, ?, ?)", session.id, owner, title, orjson.dumps(metadata).decode(),
                          stamp, stamp)
        return session

    async def get(self, session_id: str, owner: str | None) -> Session | None:
        """The session, if ``owner`` (None: anyone, the admin key) may see it."""
        rows = await self.db.fetch("SELECT id, key_name, title, metadata, created_at, updated_at FROM sessions "
                                   "WHERE id = ?", session_id)
        if not rows or (owner is not None and rows[0][1] != owner):
            return None
        return _session(rows[0])

    async def list(self, owner: str | None, limit: int, before: str | None) -> list[Session]:
        """Most recently used first; ``before`` an updated_at to page from."""
        where, args = [], []
        if owner is not None:
            where.append("key_name = ?")
            args.append(owner)
        if before:
            where.append("updated_at < ?")
            args.append(before)
        sql = ("SELECT id, key_name, title, metadata, created_at, updated_at FROM sessions"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY updated_at DESC, id LIMIT ?")
        return [_session(r) for r in await self.db.fetch(sql, *args, limit)]

    async def delete(self, session_id: str) -> None:
        await self.db.batch([("DELETE FROM session_messages WHERE session_id = ?", (session_id,)),
                             ("DELETE FROM sessions WHERE id = ?", (session_id,))])

    async def messages(self, session_id: str, limit: int | None = None, before: int | None = None
                       ) -> list[dict[str, Any]]:
        """The latest ``limit`` messages before message id ``before``, oldest first, images as data URLs."""
        sql = "SELECT id, created_at, role, message, meta FROM session_messages WHERE session_id = ?"
        args: list[Any] = [session_id]
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = list(reversed(await self.db.fetch(sql, *args)))
        out = [{"id": int(r[0]), "created_at": r[1], "role": r[2], "message": orjson.loads(r[3]),
                "meta": orjson.loads(r[4]) if r[4] else None} for r in rows]
        await self._inline_images([m["message"] for m in out])
        return out

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        """Every message, as chat messages to send to a model."""
        return [m["message"] for m in await self.messages(session_id)]

    async def append(self, session_id: str, messages: list[tuple[dict[str, Any], dict[str, Any] | None]],
                     title: str | None = None) -> None:
        """Messages (with their meta) in one transaction; the session's updated_at moves."""
        stamp = now_iso()
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for message, meta in messages:
            stored, images = _extract_images(message)
            for sha, media_type, data in images:
                statements.append(("INSERT INTO session_images (sha256, media_type, data, created_at) "
                                   "VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING", (sha, media_type, data,
                                                                                          stamp)))
            statements.append(("INSERT INTO session_messages (session_id, created_at, role, message, meta) "
                               "VALUES (?, ?, ?, ?, ?)", (session_id, stamp, str(message.get("role")),
                                                          orjson.dumps(stored).decode(),
                                                          orjson.dumps(meta).decode() if meta else None)))
        statements.append(("UPDATE sessions SET updated_at = ?, title = COALESCE(title, ?) WHERE id = ?",
                           (stamp, title, session_id)))
        await self.db.batch(statements)

    async def prune(self, retention_days: int) -> int:
        """Sessions unused for ``retention_days`` go, with their messages and the images nothing else uses."""
        cutoff = (datetime.now(UTC) - timedelta(days=retention_days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        counts = await self.db.batch([
            ("DELETE FROM session_messages WHERE session_id IN (SELECT id FROM sessions WHERE updated_at < ?)",
             (cutoff,)),
            ("DELETE FROM sessions WHERE updated_at < ?", (cutoff,)),
        ])
        await self.sweep_images()
        return counts[1]

    async def sweep_images(self) -> None:
        """Images no stored message refers to any more."""
        rows = await self.db.fetch("SELECT sha256 FROM session_images")
        if not rows:
            return
        used: set[str] = set()
        for (text,) in await self.db.fetch(f"SELECT message FROM session_messages WHERE message LIKE "
                                           f"'%{IMAGE_REF}%'"):
            used.update(re.findall(IMAGE_REF + r"([0-9a-f]{64})", text))
        gone = [(sha,) for (sha,) in rows if sha not in used]
        if gone:
            await self.db.batch([("DELETE FROM session_images WHERE sha256 = ?", g) for g in gone])

    async def _inline_images(self, messages: list[dict[str, Any]]) -> None:
        refs = {part["image_url"]["url"][len(IMAGE_REF):] for m in messages for part in _image_parts(m)
                if part["image_url"]["url"].startswith(IMAGE_REF)}
        if not refs:
            return
        marks = ", ".join("?" for _ in refs)
        rows = await self.db.fetch(f"SELECT sha256, media_type, data FROM session_images WHERE sha256 IN ({marks})",
                                   *sorted(refs))
        urls = {sha: f"data:{media_type};base64,{data}" for sha, media_type, data in rows}
        for m in messages:
            for part in _image_parts(m):
                url = part["image_url"]["url"]
                if url.startswith(IMAGE_REF) and url[len(IMAGE_REF):] in urls:
                    part["image_url"]["url"] = urls[url[len(IMAGE_REF):]]


def _image_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"
            and isinstance(p.get("image_url"), dict) and isinstance(p["image_url"].get("url"), str)]


def _extract_images(message: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The message with each data-URL image replaced by its reference, and the images to store."""
    parts = _image_parts(message)
    if not parts:
        return message, []
    images = []
    content = []
    for part in message["content"]:
        if part in parts:
            match = _DATA_URL.fullmatch(part["image_url"]["url"])
            if match:
                data = re.sub(r"\s+", "", match.group(2))
                try:
                    raw = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    content.append(part)
                    continue
                sha = hashlib.sha256(raw).hexdigest()
                images.append((sha, match.group(1), data))
                part = {**part, "image_url": {**part["image_url"], "url": IMAGE_REF + sha}}
        content.append(part)
    return {**message, "content": content}, images
