"""Operators' endpoints: grants (the file in platform/ is rewritten, If-Match guards concurrent
edits), patients' opt-outs, the review queue of break-glass accesses, and credentials."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Response

from lakehouse.errors import TopologyError
from sharing_api.audit import AuditQuery, read_audit
from sharing_api.deps import AuditDep, CurrentOperator, ServicesDep, person_key_of
from sharing_api.errors import Forbidden, NotFound, Unprocessable
from sharing_api.grants import Grant
from sharing_api.models import ConsentBody, IssueBody, ReviewBody, error_responses
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


@router.get("/health", responses=_ERRORS)
def health(s: ServicesDep, operator: CurrentOperator) -> Response:
    """The instance's state in detail: parts missing or stale and why, the keeper, grants and
    shared-copy errors."""
    generation = s.lake.current
    keeper = s.keeper_status()
    return json_response(
        {
            "ready": s.lake.loaded.is_set(),
            "generation": generation.number,
            "parts": len(generation.segments),
            "missing": [f"{d}/{c}: {p}" for (d, c), p in generation.missing.items()],
            "stale": [f"{d}/{c}: {p}" for (d, c), p in generation.stale.items()],
            # The instance keeper's view (None: no keeper is running for this instance).
            "auditFlushed": None if keeper is None else keeper["audit"]["flushed"],
            "auditError": None if keeper is None else keeper["audit"]["error"],
            "keeperRunning": keeper is not None,
            "grantsError": s.grants.last_error,
            "sharedCopiesSynced": s.shares.sync.passes,
            "sharedCopiesError": s.shares.sync.last_error,
        }
    )


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
    s.grants.replace(grant_id, grant, if_match=if_match)
    # Named once it exists: a path is whatever the caller sent (a resident ID included).
    audit.detail = f"replace grant {grant_id}"
    s.shares.sync.wake()
    return _grants_response(s)


@router.delete("/grants/{grant_id}", responses=_ERRORS)
def remove_grant(
    s: ServicesDep, audit: AuditDep, operator: CurrentOperator, grant_id: GrantPath, if_match: IfMatch = None
) -> Response:
    """Remove a grant."""
    s.grants.remove(grant_id, if_match=if_match)
    audit.detail = f"remove grant {grant_id}"
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
    s.consents.withdraw(consent_id)
    audit.detail = f"withdraw {consent_id}"
    s.shares.sync.wake()
    return json_response({"withdrawn": consent_id})


def _accesses(s: ServicesDep) -> list[dict[str, object]]:
    """Every answered break-glass access, newest first, each with its id: `<journal>-<seq>`, unique
    whatever request id the caller sent."""
    table = read_audit(s.audit, AuditQuery(break_glass=True, decision="allow"))
    records = sorted(table.to_pylist(), key=lambda r: r["time"], reverse=True)
    return [{"access_id": f"{r['journal']}-{r['seq']}", **r} for r in records]


@router.get("/break-glass", responses=_ERRORS)
def break_glass_queue(
    s: ServicesDep,
    audit: AuditDep,
    operator: CurrentOperator,
    status: Annotated[Literal["pending", "reviewed", "all"], Query()] = "pending",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Break-glass accesses (every emergency lookup that was answered), newest first, with their
    review: the queue an operator works through."""
    records = _accesses(s)
    reviews = s.reviews.of([str(r["access_id"]) for r in records])
    items = []
    for r in records:
        review = reviews.get(str(r["access_id"]))
        if status == "all" or (status == "pending") == (review is None):
            fields = {k: r.get(k) for k in _QUEUE_FIELDS}
            items.append({**fields, "time": str(r["time"]), "review": review and review.__dict__})
    audit.rows_returned = min(len(items), limit)
    return json_response({"accesses": items[:limit], "total": len(items)})


_QUEUE_FIELDS = (
    "access_id",
    "request_id",
    "hospital_id",
    "principal",
    "token_id",
    "person_key",
    "dataset",
    "rows_returned",
    "break_glass_reason",
)


@router.post("/break-glass/{access_id}/review", status_code=201, responses=_ERRORS)
def review_break_glass(
    s: ServicesDep,
    audit: AuditDep,
    operator: CurrentOperator,
    access_id: Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}-[0-9]{1,19}$")],
    body: ReviewBody,
) -> Response:
    """Record whether a break-glass access was justified (once; the review is audited)."""
    found = next((r for r in _accesses(s) if r["access_id"] == access_id), None)
    if found is None:
        raise NotFound("no answered break-glass access with that id", code="access_not_found")
    review = s.reviews.record(access_id, outcome=body.outcome, note=body.note, reviewer=operator.subject)
    audit.detail = f"break-glass review of {access_id}: {review.outcome}"
    audit.person_key = str(found["person_key"])
    return json_response(review.__dict__, status=201)


@router.get("/credentials", responses=_ERRORS)
def credentials(s: ServicesDep, operator: CurrentOperator) -> Response:
    """Hospital and operator credentials (ids, subjects, expiry; never secrets)."""
    return json_response([c.__dict__ for c in s.identities.list()])


@router.post("/credentials", status_code=201, responses=_ERRORS)
def issue(s: ServicesDep, audit: AuditDep, operator: CurrentOperator, body: IssueBody) -> Response:
    """Issue an operator credential; its token is in this response only. Hospital credentials
    are not issued here: an operator who could mint one could read patient data as that hospital
    (they are issued on the API host with `medshare hospitals issue-token`, audited)."""
    if body.kind == "hospital":
        raise Forbidden(
            "hospital credentials are issued on the API host (`medshare hospitals issue-token`), "
            "never by an operator through the API",
            code="hospital_credential_refused",
        )
    issued = s.identities.issue(
        body.kind, body.subject, days=body.days, label=body.label, issued_by=operator.subject
    )
    audit.detail = f"issued credential {issued.token_id} for {issued.kind} {issued.subject}"
    return json_response(issued.__dict__, status=201, headers={"Cache-Control": "no-store"})


@router.post("/credentials/{token_id}/revoke", responses=_ERRORS)
def revoke(
    s: ServicesDep, audit: AuditDep, operator: CurrentOperator, token_id: Annotated[str, Path(max_length=32)]
) -> Response:
    """Revoke a credential and the access tokens obtained with it."""
    revoked = s.identities.revoke(token_id)
    audit.detail = f"revoked credential {token_id}"
    return json_response(revoked.__dict__)
