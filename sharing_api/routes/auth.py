"""OAuth2 client credentials, and who am I."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Form, Header, Response

from sharing_api.deps import AuditDep, CurrentPrincipal, ServicesDep, count_failed_login, refuse_guessing
from sharing_api.errors import BadRequest, Unauthorized
from sharing_api.models import ErrorBody, Me, TokenResponse
from sharing_api.responses import json_response

router = APIRouter(tags=["identity"])


def _basic(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        client_id, _, secret = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("malformed Basic credentials", code="invalid_client") from exc
    return client_id, secret


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 429: {"model": ErrorBody}},
)
async def token(
    s: ServicesDep,
    audit: AuditDep,
    grant_type: Annotated[str, Form(max_length=64)],
    client_id: Annotated[str | None, Form(max_length=64)] = None,
    client_secret: Annotated[str | None, Form(max_length=128)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """OAuth2 client-credentials grant: a credential's id and secret buy a short-lived access token."""
    if grant_type != "client_credentials":
        raise BadRequest("only grant_type=client_credentials is supported", code="unsupported_grant_type")
    basic = _basic(authorization)
    if basic is not None:
        client_id, client_secret = basic
    if not client_id or not client_secret:
        raise Unauthorized("client_id and client_secret are required", code="invalid_client")
    audit.token_id = client_id[:16]
    refuse_guessing(s, audit)
    try:
        issued = s.identities.access_token(client_id, client_secret, minutes=s.api.access_token_minutes)
    except Unauthorized:
        count_failed_login(s, audit)
        raise
    audit.principal = issued.subject
    audit.detail = f"issued access token {issued.token_id}"
    return json_response(
        {"access_token": issued.token, "token_type": "Bearer", "expires_in": s.api.access_token_minutes * 60},
        headers={"Cache-Control": "no-store"},
    )


@router.get("/v1/me", response_model=Me, responses={401: {"model": ErrorBody}})
async def me(principal: CurrentPrincipal) -> Response:
    """The caller as the API sees it."""
    hospital = principal.hospital
    return json_response(
        {
            "kind": principal.kind,
            "subject": principal.subject,
            "tokenId": principal.token_id,
            "hospital": hospital.model_dump(mode="json") if hospital else None,
        }
    )
