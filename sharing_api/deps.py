"""Named FastAPI dependencies: the services, the request's audit record, and who is calling."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lakehouse.identity import resident_id_problem
from lakehouse.pseudonyms import person_key
from lakehouse.topology import Hospital
from sharing_api.audit import AuditRecord
from sharing_api.errors import Forbidden, RateLimited, Unauthorized, Unprocessable
from sharing_api.identities import Principal
from sharing_api.services import Services

_bearer = HTTPBearer(
    auto_error=False,
    description="A credential from `medshare hospitals issue-token`, "
    "or an access token from POST /oauth/token.",
)
_PERSON_KEY = re.compile(r"^[0-9a-f]{64}$")


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_audit(request: Request) -> AuditRecord:
    record: AuditRecord = request.scope["medshare.audit"]
    return record


ServicesDep = Annotated[Services, Depends(get_services)]
AuditDep = Annotated[AuditRecord, Depends(get_audit)]


def _throttle(s: Services, key: str) -> None:
    wait = s.limiter.take(key)
    if wait > 0:
        raise RateLimited(wait)


def refuse_guessing(s: Services, audit: AuditRecord) -> None:
    """An address over its limit of failed logins gets no further verification until it cools."""
    wait = s.login_failures.wait(f"addr:{audit.client_address}")
    if wait > 0:
        raise RateLimited(wait)


def count_failed_login(s: Services, audit: AuditRecord) -> None:
    s.login_failures.take(f"addr:{audit.client_address}")


async def authenticate(
    s: ServicesDep,
    audit: AuditDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    refuse_guessing(s, audit)
    if credentials is None:
        count_failed_login(s, audit)
        raise Unauthorized("send a bearer token: Authorization: Bearer <token>", code="token_missing")
    token = credentials.credentials
    # Only the id part of a well-formed token is ever recorded, never the secret.
    if token.startswith("mst_") and "." in token:
        audit.token_id = token[4:].split(".", 1)[0][:16]
    try:
        principal = s.identities.authenticate(token)
    except Unauthorized:
        count_failed_login(s, audit)
        raise
    audit.principal_kind = principal.kind
    audit.principal = principal.subject
    audit.token_id = principal.token_id
    audit.hospital_id = principal.hospital_id
    _throttle(s, principal.credential_id)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


async def hospital_caller(principal: CurrentPrincipal) -> Hospital:
    if principal.hospital is None:
        raise Forbidden("patient data is for hospitals; operators manage and audit", code="hospital_only")
    return principal.hospital


async def operator_caller(principal: CurrentPrincipal) -> Principal:
    if principal.kind != "operator":
        raise Forbidden("this endpoint is for platform operators", code="operator_only")
    return principal


CurrentHospital = Annotated[Hospital, Depends(hospital_caller)]
CurrentOperator = Annotated[Principal, Depends(operator_caller)]


def person_key_of(s: Services, *, resident_id: str | None, key: str | None) -> str:
    """The person_key to look up: given, or HMAC of the resident ID (which goes no further)."""
    if (resident_id is None) == (key is None):
        raise Unprocessable("give exactly one of resident_id and person_key", code="invalid_patient")
    if resident_id is not None:
        problem = resident_id_problem(resident_id.strip(), today=date.today())
        if problem is not None:
            # The reason names the rule broken, never the ID itself.
            raise Unprocessable(
                f"not a valid resident ID: {problem.split(':')[0]}", code="invalid_resident_id"
            )
        return person_key(s.key, resident_id.strip())
    assert key is not None
    if not _PERSON_KEY.fullmatch(key):
        raise Unprocessable("person_key is 64 lower-case hex characters", code="invalid_person_key")
    return key
