"""The audit middleware: every API request gets exactly one audit record, made durable before
the first byte of its response leaves. A pure ASGI middleware (not BaseHTTPMiddleware): it sees
the response's status line, holds it until the journal has the record, and adds X-Request-ID.

Our own one-line access log replaces uvicorn's, which would print query strings (resident IDs).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sharing_api.audit import AuditRecord
from sharing_api.journal import AuditUnavailable, Journal

log = logging.getLogger("medshare.api.access")
AUDITED = ("/v1/", "/oauth/", "/delta-sharing/")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # An unmatched path is not recorded as sent: it could carry anything, an ID included.
    return str(path) if path else "(no route)"


class AuditMiddleware:
    def __init__(self, app: ASGIApp, journal: Journal):
        self.app = app
        self.journal = journal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(AUDITED):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        client = scope.get("client")
        record = AuditRecord(
            request_id=request_id,
            method=scope["method"],
            route="",
            client_address=client[0] if client else "",
        )
        scope["medshare.audit"] = record
        state: dict[str, Any] = {"started": False, "replaced": False}

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                record.route = _route_of(scope)
                try:
                    await self.journal.append(record.finish(message["status"]))
                except AuditUnavailable as exc:
                    # No record, no answer: fail closed.
                    log.error("audit journal unavailable, refusing request %s: %s", request_id, exc)
                    state["replaced"] = True
                    await _send_unavailable(send, request_id)
                    return
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                _log(record)
            elif state["replaced"]:
                return
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if not state["started"]:
                record.route = _route_of(scope)
                record.error_code = "internal_error"
                try:
                    await self.journal.append(record.finish(500))
                except AuditUnavailable:
                    log.error("audit journal unavailable for failed request %s", request_id)
                _log(record)
            raise


async def _send_unavailable(send: Send, request_id: str) -> None:
    body = orjson.dumps(
        {"errorCode": "audit_unavailable", "message": "the audit trail cannot record this request"}
    )
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _log(record: AuditRecord) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s %s %d %s %s/%s %.1fms id=%s",
            record.method,
            record.route,
            record.status,
            record.decision,
            record.principal_kind or "-",
            record.principal or "-",
            record.finish_ms,
            record.request_id,
        )
