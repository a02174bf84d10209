"""Every error leaves as `{errorCode, message}` with its status; nothing echoes request values
(a validation error on a resident ID must not send the ID back into logs or proxies)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from sharing_api.audit import AuditRecord
from sharing_api.errors import ApiError
from sharing_api.responses import error_response

log = logging.getLogger(__name__)
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}


def _note(request: Request, code: str, message: str) -> None:
    record: AuditRecord | None = request.scope.get("medshare.audit")
    if record is not None:
        record.error_code = code
        if record.detail is None:
            record.detail = message[:500]


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    _note(request, exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    message = "; ".join(problems) or "invalid request"
    _note(request, "invalid_request", message)
    return error_response(422, "invalid_request", message)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail) if exc.status_code != 404 else "no such endpoint"
    _note(request, code, message)
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
