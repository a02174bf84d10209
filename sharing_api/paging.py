"""Opaque paging cursors: the read-model generation the first page came from (so every page of
one listing reads the same data version), the offset, and a digest of the request, so a cursor
cannot be replayed against a different query."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from sharing_api.errors import BadRequest, Conflict
from sharing_api.lakeview import Generation, LakeView


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:16]


def encode_cursor(generation: int, offset: int, digest: str) -> str:
    raw = json.dumps({"g": generation, "o": offset, "q": digest}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, digest: str) -> tuple[int, int]:
    """(generation, offset); 400 for a cursor that is not ours or belongs to another query."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        generation, offset, query = int(data["g"]), int(data["o"]), str(data["q"])
    except (ValueError, LookupError, TypeError, OverflowError) as exc:
        raise BadRequest("malformed cursor", code="invalid_cursor") from exc
    if query != digest or offset < 0 or generation < 0:
        raise BadRequest("this cursor belongs to a different query", code="invalid_cursor")
    return generation, offset


def pinned_generation(lake: LakeView, cursor: str | None, digest: str) -> tuple[Generation, int]:
    """The generation and offset a cursor points at (the current generation for a first page)."""
    if cursor is None:
        return lake.current, 0
    number, offset = decode_cursor(cursor, digest)
    generation = lake.generation(number)
    if generation is None:
        raise Conflict(
            "the data changed and this cursor's version is gone; start again", code="cursor_expired"
        )
    return generation, offset
