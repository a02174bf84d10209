"""The audit trail, for operators: who accessed what, and who accessed this patient."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Query, Response

from sharing_api.audit import AuditQuery, read_audit
from sharing_api.deps import AuditDep, CurrentOperator, ServicesDep, person_key_of
from sharing_api.errors import BadRequest
from sharing_api.grants import Purpose
from sharing_api.models import AuditResponse, error_responses
from sharing_api.responses import json_response

router = APIRouter(tags=["audit"])
_ERRORS = error_responses(400, 401, 403, 422, 429)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


def _after(cursor: str) -> tuple[int, str, int]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return int(raw[0]), str(raw[1]), int(raw[2])
    except (ValueError, TypeError, LookupError, OverflowError) as exc:
        raise BadRequest("malformed cursor", code="invalid_cursor") from exc


@router.get("/v1/audit", response_model=AuditResponse, responses=_ERRORS)
def audit_trail(
    s: ServicesDep,
    audit: AuditDep,
    operator: CurrentOperator,
    person_key: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$")] = None,
    resident_id: Annotated[
        str | None, Query(max_length=32, description="Hashed; who accessed this patient")
    ] = None,
    hospital_id: Annotated[str | None, Query(max_length=64)] = None,
    principal: Annotated[str | None, Query(max_length=64)] = None,
    dataset: Annotated[str | None, Query(max_length=200)] = None,
    decision: Annotated[Literal["allow", "deny", "error"] | None, Query()] = None,
    flagged: Annotated[bool | None, Query(description="true: break-glass accesses")] = None,
    purpose: Annotated[Purpose | None, Query()] = None,
    since: Annotated[dt.datetime | None, Query()] = None,
    until: Annotated[dt.datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Audit records, newest first, filtered; include records not yet in the audit table."""
    key = None
    if person_key is not None or resident_id is not None:
        key = person_key_of(s, resident_id=resident_id, key=person_key)
    audit.person_key = key
    query = AuditQuery(
        person_key=key,
        hospital_id=hospital_id,
        principal=principal,
        dataset=dataset,
        decision=decision,
        flagged=flagged,
        purpose=purpose,
        since=_utc(since),
        until=_utc(until),
    )
    table = read_audit(s.audit, query)
    micros = pc.cast(table["time"], pa.int64()).to_pylist()
    rows = sorted(
        zip(
            micros,
            table["instance"].to_pylist(),
            table["seq"].to_pylist(),
            range(table.num_rows),
            strict=True,
        ),
        reverse=True,
    )
    if cursor is not None:
        last = _after(cursor)
        rows = [r for r in rows if r[:3] < last]
    page = rows[:limit]
    records = table.take(pa.array([r[3] for r in page], pa.int64())).to_pylist() if page else []
    audit.rows_returned = len(records)
    audit.decision = "allow"
    nxt = None
    if len(rows) > limit:
        nxt = base64.urlsafe_b64encode(json.dumps(list(page[-1][:3])).encode()).decode().rstrip("=")
    return json_response({"records": records, "nextCursor": nxt})
