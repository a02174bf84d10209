"""The Delta Sharing protocol endpoints (`/delta-sharing/…`), for the official clients (pandas,
Spark, BI connectors). Lists are single-line JSON; table reads are NDJSON with the
`Delta-Table-Version` header. Every request is audited like the JSON API's; a read also records
the version and the ids of the files whose URLs it signed."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from sharing_api import protocol
from sharing_api.audit import AuditRecord
from sharing_api.deps import AuditDep, CurrentHospital, ServicesDep
from sharing_api.errors import BadRequest
from sharing_api.models import error_responses
from sharing_api.responses import json_response

router = APIRouter(prefix="/delta-sharing", tags=["delta sharing"])
_ERRORS = error_responses(400, 401, 403, 404, 422, 429)
Name = Annotated[str, Path(max_length=128)]
MaxResults = Annotated[int | None, Query(alias="maxResults", ge=1, le=10_000)]
PageToken = Annotated[str | None, Query(alias="pageToken", max_length=64)]


class QueryRequest(BaseModel):
    """The protocol's query body. Hints only ever narrow what the caller's scope allows."""

    model_config = ConfigDict(extra="ignore")

    predicateHints: list[str] | None = None
    jsonPredicateHints: str | None = Field(default=None, max_length=100_000)
    limitHint: int | None = Field(default=None, ge=0)
    version: int | None = Field(default=None, ge=0)
    timestamp: str | None = Field(default=None, max_length=64)
    startingVersion: int | None = Field(default=None, ge=0)
    endingVersion: int | None = Field(default=None, ge=0)


def _ndjson(listing: protocol.Listing, audit: AuditRecord) -> Response:
    audit.rows_returned = listing.rows
    audit.decision = "allow"
    audit.detail = f"version={listing.version} files={len(listing.file_ids)}: " + ",".join(listing.file_ids)
    body = b"\n".join(orjson.dumps(line) for line in listing.lines) + b"\n"
    return Response(
        body, media_type="application/x-ndjson", headers={"Delta-Table-Version": str(listing.version)}
    )


def _listed(audit: AuditRecord, data: dict[str, Any]) -> Response:
    audit.rows_returned = len(data.get("items", ()))
    audit.decision = "allow"
    return json_response(data)


@router.get("/shares", responses=_ERRORS)
def list_shares(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    max_results: MaxResults = None,
    token: PageToken = None,
) -> Response:
    """The shares (purposes) the caller has at least one table in."""
    items = [{"name": name, "id": name} for name in protocol.shares(s, hospital)]
    return _listed(audit, protocol.page(items, max_results, token))


@router.get("/shares/{share}", responses=_ERRORS)
def get_share(s: ServicesDep, audit: AuditDep, hospital: CurrentHospital, share: Name) -> Response:
    protocol.share_tables(s, hospital, share)
    audit.purpose = share
    audit.decision = "allow"
    return json_response({"share": {"name": share, "id": share}})


@router.get("/shares/{share}/schemas", responses=_ERRORS)
def list_schemas(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    share: Name,
    max_results: MaxResults = None,
    token: PageToken = None,
) -> Response:
    protocol.share_tables(s, hospital, share)
    audit.purpose = share
    return _listed(audit, protocol.page([{"name": protocol.SCHEMA, "share": share}], max_results, token))


def _table_items(tables: list[protocol.SharedTable]) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "schema": protocol.SCHEMA,
            "share": t.share,
            "shareId": t.share,
            "id": f"{t.grant.id}.{t.name}",
        }
        for t in tables
    ]


@router.get("/shares/{share}/schemas/{schema}/tables", responses=_ERRORS)
def list_tables(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    share: Name,
    schema: Name,
    max_results: MaxResults = None,
    token: PageToken = None,
) -> Response:
    tables = protocol.schema_tables(s, hospital, share, schema)
    audit.purpose = share
    audit.grants = [t.grant.id for t in tables]
    return _listed(audit, protocol.page(_table_items(tables), max_results, token))


@router.get("/shares/{share}/all-tables", responses=_ERRORS)
def list_all_tables(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    share: Name,
    max_results: MaxResults = None,
    token: PageToken = None,
) -> Response:
    tables = protocol.share_tables(s, hospital, share)
    audit.purpose = share
    audit.grants = [t.grant.id for t in tables]
    return _listed(audit, protocol.page(_table_items(tables), max_results, token))


TablePath = "/shares/{share}/schemas/{schema}/tables/{table}"


@router.get(TablePath + "/version", responses=_ERRORS)
def table_version(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    share: Name,
    schema: Name,
    table: Name,
    starting_timestamp: Annotated[str | None, Query(alias="startingTimestamp", max_length=64)] = None,
) -> Response:
    t = protocol.resolve(s, hospital, share, schema, table, audit)
    if starting_timestamp is None:
        version = protocol.current_version(s, t)
    else:
        version = protocol.version_at(s, t, starting_timestamp, at_or_after=True)
    audit.decision = "allow"
    audit.detail = f"version={version}"
    return Response(status_code=200, headers={"Delta-Table-Version": str(version)})


@router.get(TablePath + "/metadata", responses=_ERRORS)
def table_metadata(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    share: Name,
    schema: Name,
    table: Name,
    version: Annotated[int | None, Query(ge=0)] = None,
    timestamp: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    t = protocol.resolve(s, hospital, share, schema, table, audit)
    if timestamp is not None:
        version = protocol.version_at(s, t, timestamp, at_or_after=False)
    return _ndjson(protocol.metadata(s, t, version), audit)


@router.post(TablePath + "/query", responses=_ERRORS)
def table_query(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    share: Name,
    schema: Name,
    table: Name,
    body: QueryRequest | None = None,
) -> Response:
    """The files of the table (at a version or timestamp) inside the caller's scope, signed."""
    t = protocol.resolve(s, hospital, share, schema, table, audit)
    body = body or QueryRequest()
    if body.startingVersion is not None or body.endingVersion is not None:
        raise BadRequest("changes between versions are read through /changes", code="unsupported_query")
    if body.version is not None and body.timestamp is not None:
        raise BadRequest("give version or timestamp, not both", code="invalid_version_range")
    version = body.version
    if body.timestamp is not None:
        version = protocol.version_at(s, t, body.timestamp, at_or_after=False)
    return _ndjson(protocol.query(s, hospital, t, version, body.limitHint), audit)


@router.get(TablePath + "/changes", responses=_ERRORS)
def table_changes(
    s: ServicesDep,
    audit: AuditDep,
    hospital: CurrentHospital,
    share: Name,
    schema: Name,
    table: Name,
    starting_version: Annotated[int | None, Query(alias="startingVersion", ge=0)] = None,
    starting_timestamp: Annotated[str | None, Query(alias="startingTimestamp", max_length=64)] = None,
    ending_version: Annotated[int | None, Query(alias="endingVersion", ge=0)] = None,
    ending_timestamp: Annotated[str | None, Query(alias="endingTimestamp", max_length=64)] = None,
) -> Response:
    """Files added and removed by each version in the range, inside the caller's scope, signed."""
    t = protocol.resolve(s, hospital, share, schema, table, audit)
    if (starting_version is None) == (starting_timestamp is None):
        raise BadRequest(
            "give exactly one of startingVersion and startingTimestamp", code="invalid_version_range"
        )
    if ending_version is not None and ending_timestamp is not None:
        raise BadRequest(
            "give at most one of endingVersion and endingTimestamp", code="invalid_version_range"
        )
    start = starting_version
    if starting_timestamp is not None:
        start = protocol.version_at(s, t, starting_timestamp, at_or_after=True)
    end = ending_version
    if ending_timestamp is not None:
        end = protocol.version_at(s, t, ending_timestamp, at_or_after=False)
    assert start is not None
    return _ndjson(protocol.changes(s, hospital, t, start, end), audit)
