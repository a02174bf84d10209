"""The federated datasets a hospital may see, and typed queries over them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from sharing_api.deps import AuditDep, CurrentHospital, ServicesDep
from sharing_api.grants import Purpose
from sharing_api.models import DatasetInfo, QueryBody, QueryResponse, error_responses
from sharing_api.queries import DatasetQuery, run_query, visible_datasets
from sharing_api.responses import json_response

router = APIRouter(tags=["datasets"])
_ERRORS = error_responses(400, 401, 403, 404, 409, 422, 429)


@router.get("/v1/datasets", response_model=list[DatasetInfo], responses=_ERRORS)
def datasets(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    purpose: Annotated[Purpose | None, Query()] = None,
) -> Response:
    """The datasets the caller may query, per purpose, with scope and column access."""
    audit.purpose = purpose
    listed = visible_datasets(s, hospital, purpose)
    audit.grants = [a["grant"] for d in listed for a in d["access"]]
    audit.rows_returned = len(listed)
    audit.decision = "allow"
    return json_response(listed)


@router.post("/v1/datasets/{name}/query", response_model=QueryResponse, responses=_ERRORS)
def query(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    body: QueryBody,
    name: Annotated[str, Path(max_length=64)],
) -> Response:
    """Rows of one dataset inside the caller's scope, filtered, projected, masked and paged."""
    q = DatasetQuery(
        purpose=body.purpose,
        filters=tuple(body.filters),
        columns=tuple(body.columns) if body.columns is not None else None,
        limit=body.limit,
        cursor=body.cursor,
    )
    return json_response(run_query(s, hospital, name, q, audit))
