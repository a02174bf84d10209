"""A patient's shared history across every city."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from sharing_api.catalog import HISTORY
from sharing_api.deps import AuditDep, CurrentHospital, ServicesDep, person_key_of
from sharing_api.errors import Unprocessable
from sharing_api.grants import Purpose
from sharing_api.history import HistoryQuery, patient_history
from sharing_api.models import EmergencyBody, HistoryResponse, error_responses
from sharing_api.responses import json_response

router = APIRouter(tags=["patients"])
_ERRORS = error_responses(400, 401, 403, 404, 409, 422, 429)


def _types(requested: list[str] | None) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(t for item in (requested or list(HISTORY)) for t in item.split(",") if t))
    unknown = [t for t in types if t not in HISTORY]
    if unknown or not types:
        raise Unprocessable(f"unknown entry type(s); known: {', '.join(HISTORY)}", code="invalid_type")
    return types


def _range(start: dt.date | None, end: dt.date | None) -> None:
    if start is not None and end is not None and end < start:
        raise Unprocessable("end is before start", code="invalid_range")


@router.get("/v1/patients/history", response_model=HistoryResponse, responses=_ERRORS)
async def history(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    purpose: Annotated[
        Purpose,
        Query(description="Why: treatment or operations (emergency: POST /v1/patients/emergency)"),
    ],
    resident_id: Annotated[
        str | None,
        Query(
            max_length=32,
            description="Hashed on arrival with the province key; prefer the X-Resident-Id header",
        ),
    ] = None,
    person_key: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$")] = None,
    x_resident_id: Annotated[
        str | None, Header(max_length=32, description="The resident ID, kept out of URLs")
    ] = None,
    type: Annotated[list[str] | None, Query(description=f"Entry types: {', '.join(HISTORY)}")] = None,  # noqa: A002
    start: Annotated[dt.date | None, Query(description="First day, inclusive")] = None,
    end: Annotated[dt.date | None, Query(description="Last day, inclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """Everything the caller may see of one patient, newest first, stamped with city and hospital."""
    audit.purpose = purpose
    if purpose == "emergency":
        raise Unprocessable(
            "an emergency lookup breaks the glass: POST /v1/patients/emergency with the reason in the body",
            code="break_glass_required",
        )
    if resident_id is not None and x_resident_id is not None:
        raise Unprocessable("give the resident ID once (query or header)", code="invalid_patient")
    key = person_key_of(s, resident_id=resident_id or x_resident_id, key=person_key)
    audit.person_key = key
    _range(start, end)
    query = HistoryQuery(
        person_key=key, purpose=purpose, types=_types(type), start=start, end=end, limit=limit, cursor=cursor
    )
    return json_response(patient_history(s, hospital, query, audit))


@router.post("/v1/patients/emergency", response_model=HistoryResponse, responses=_ERRORS)
async def emergency(
    s: ServicesDep, audit: AuditDep, hospital: CurrentHospital, body: EmergencyBody
) -> Response:
    """Break the glass: a patient's whole shared history in an emergency, whatever their opt-outs
    or care relationship — audited with the stated reason and flagged for review."""
    audit.purpose = "emergency"
    key = person_key_of(s, resident_id=body.resident_id, key=body.person_key)
    audit.person_key = key
    _range(body.start, body.end)
    query = HistoryQuery(
        person_key=key,
        purpose="emergency",
        types=_types(body.types),
        start=body.start,
        end=body.end,
        limit=body.limit,
        cursor=body.cursor,
        reason=body.reason,
    )
    return json_response(patient_history(s, hospital, query, audit))
