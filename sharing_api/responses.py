"""JSON responses through orjson: datetimes, dates and large row lists without jsonable_encoder."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"errorCode": code, "message": message}, status=status, headers=headers)
