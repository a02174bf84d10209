"""Delta Sharing profile files: what a hospital's tools need to reach its shares (the endpoint
and a bearer credential of its own). The file holds a secret: written owner-only, never logged."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from sharing_api.identities import IssuedToken


def profile_document(endpoint: str, issued: IssuedToken) -> dict[str, Any]:
    expires = dt.datetime.fromtimestamp(issued.expires_at, dt.UTC)
    return {
        "shareCredentialsVersion": 1,
        "endpoint": endpoint,
        "bearerToken": issued.token,
        "expirationTime": expires.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    }


def write_profile(path: Path, document: dict[str, Any]) -> None:
    """Create the file with mode 0600 before anything is written to it (no readable window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2)
        out.write("\n")
    os.replace(tmp, path)
