"""Operators' endpoints: grants (the file in platform/ is rewritten, If-Match guards concurrent
edits), patients' opt-outs, and credentials."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response

from lakehouse.errors import TopologyError
from sharing_api.deps import AuditDep, CurrentOperator, ServicesDep, person_key_of
from sharing_api.errors import Unprocessable
from sharing_api.grants import Grant
from sharing_api.models import ConsentBody, IssueBody, error_responses
from sharing_api.responses import json_response

router = APIRouter(prefix="/v1/admin", tags=["admin"])
_ERRORS = error_responses(400, 401, 403, 404, 409, 422, 429)
GrantPath = Annotated[str, Path(max_length=64)]
IfMatch = Annotated[str | None, Header(max_length=64, description="The ETag read before editing")]


def _grants_response(s: ServicesDep, status: int = 200) -> Response:
    grants, etag = s.grants.current()
    body = {
        "version": etag,
        "file": str(s.grants.path),
        "reloadError": s.grants.last_error,
        "grants": [g.model_dump(mode="json", exclude_defaults=True) for g in grants.grants],
    }
    return json_response(body, status=status, headers={"ETag": f'"{etag}"'})


@router.get("/grants", responses=_ERRORS)
def list_grants(s: ServicesDep, operator: CurrentOperator) -> Response:
    """The grants in force, in decision order, with their version (ETag)."""
    return _grants_response(s)


@router.post("/grants", status_code=201, responses=_ERRORS)
def add_grant(
    s: ServicesDep, audit: AuditDep, operator: CurrentOperator, grant: Grant, if_match: IfMatch = None
) -> Response:
    """Append a grant (409 if its id exists, or if the grants changed since If-Match)."""
    audit.detail = f"add grant {grant.id}"
    s.grants.add(grant, if_match=if_match)
    s.shares.sync.wake()
    return _grants_response(s, 201)


@router.put("/grants/{grant_id}", responses=_ERRORS)
def replace_grant(
    s: ServicesDep,
    audit: AuditDep,
    operator: CurrentOperator,
    grant_id: GrantPath,
    grant: Grant,
    if_match: IfMatch = None,
) -> Response:
    """Replace a grant in place (its position, and so its precedence, is kept)."""
    audit.detail = f"replace grant {grant_id}"
    s.grants.replace(grant_id, grant, if_match=if_match)
    s.shares.sync.wake()
    return _grants_response(s)


@router.delete("/grants/{grant_id}", responses=_ERRORS)
def remove_grant(
    s: ServicesDep, audit: AuditDep, operator: CurrentOperator, grant_id: GrantPath, if_match: IfMatch = None
) -> Response:
    """Remove a grant."""
    audit.detail = f"remove grant {grant_id}"
    s.grants.remove(grant_id, if_match=if_match)
    s.shares.sync.wake()
    return _grants_response(s)


@router.get("/consents", responses=_ERRORS)
def list_consents(
    s: ServicesDep,
    audit: AuditDep,
    operator: CurrentOperator,
    resident_id: Annotated[str | None, Query(max_length=32)] = None,
    person_key: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$")] = None,
) -> Response:
    """A patient's opt-outs."""
    key = person_key_of(s, resident_id=resident_id, key=person_key)
    audit.person_key = key
    records = s.consents.of(key)
    audit.rows_returned = len(records)
    return json_response({"personKey": key, "optOuts": [r.__dict__ for r in records]})


@router.post("/consents", status_code=201, responses=_ERRORS)
def opt_out(s: ServicesDep, audit: AuditDep, operator: CurrentOperator, body: ConsentBody) -> Response:
    """Record a patient's opt-out (for every recipient and purpose, or one of each)."""
    key = person_key_of(s, resident_id=body.resident_id, key=body.person_key)
    audit.person_key = key
    if body.hospital_id is not None:
        try:
            s.topology.hospital(body.hospital_id)
        except TopologyError as exc:
            raise Unprocessable(str(exc), code="unknown_hospital") from exc
    record = s.consents.opt_out(
        key, hospital_id=body.hospital_id, purpose=body.purpose, note=body.note, created_by=operator.subject
    )
    audit.detail = f"opt-out {record.consent_id}"
    s.shares.sync.wake()  # the shared copies drop the patient on the next pass
    return json_response(record.__dict__, status=201)


@router.delete("/consents/{consent_id}", responses=_ERRORS)
def withdraw(
    s: ServicesDep,
    audit: AuditDep,
    operator: CurrentOperator,
    consent_id: Annotated[str, Path(max_length=32)],
) -> Response:
    """Withdraw an opt-out."""
    audit.detail = f"withdraw {consent_id}"
    s.consents.withdraw(consent_id)
    s.shares.sync.wake()
    return json_response({"withdrawn": consent_id})


@router.get("/credentials", responses=_ERRORS)
def credentials(s: ServicesDep, operator: CurrentOperator) -> Response:
    """Hospital and operator credentials (ids, subjects, expiry; never secrets)."""
    return json_response([c.__dict__ for c in s.identities.list()])


@router.post("/credentials", status_code=201, responses=_ERRORS)
def issue(s: ServicesDep, audit: AuditDep, operator: CurrentOperator, body: IssueBody) -> Response:
    """Issue a credential; its token is in this response only."""
    issued = s.identities.issue(body.kind, body.subject, days=body.days, label=body.label)
    audit.detail = f"issued credential {issued.token_id} for {issued.kind} {issued.subject}"
    return json_response(issued.__dict__, status=201, headers={"Cache-Control": "no-store"})


@router.post("/credentials/{token_id}/revoke", responses=_ERRORS)
def revoke(
    s: ServicesDep, audit: AuditDep, operator: CurrentOperator, token_id: Annotated[str, Path(max_length=32)]
) -> Response:
    """Revoke a credential and the access tokens obtained with it."""
    audit.detail = f"revoked credential {token_id}"
    return json_response(s.identities.revoke(token_id).__dict__)
