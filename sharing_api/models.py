"""Request and response bodies as they appear in the OpenAPI schema."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sharing_api.filters import Filter
from sharing_api.grants import FreeText, Purpose


class ErrorBody(BaseModel):
    errorCode: str
    message: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an endpoint can answer with."""
    return {code: {"model": ErrorBody} for code in codes}


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class Me(BaseModel):
    kind: str
    subject: str
    tokenId: str
    hospital: dict[str, Any] | None


class TimelineEntry(BaseModel):
    type: str
    time: str | None
    city: str | None
    hospitalId: str | None
    hospitalName: str | None
    grant: str
    record: dict[str, Any]


class DatasetDecision(BaseModel):
    type: str
    decision: Literal["allowed", "denied", "withheld"]
    grant: str | None
    scope: str | None
    reason: str | None


class MissingPart(BaseModel):
    type: str | None = None
    city: str
    state: Literal["missing", "stale"]
    problem: str


class BreakGlass(BaseModel):
    used: bool
    reason: str | None
    overrode: list[str]


class HistoryResponse(BaseModel):
    personKey: str
    purpose: str
    total: int
    entries: list[TimelineEntry]
    nextCursor: str | None
    datasets: list[DatasetDecision]
    missing: list[MissingPart]
    breakGlass: BreakGlass


class EmergencyBody(BaseModel):
    """A break-glass lookup: the patient, and why the glass is broken (audited, reviewed)."""

    model_config = ConfigDict(extra="forbid")

    resident_id: str | None = Field(default=None, max_length=32, description="Hashed on arrival")
    person_key: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    reason: FreeText = Field(max_length=500, description="Why the glass is broken; at least 10 characters")
    types: list[str] | None = Field(default=None, max_length=20)
    start: dt.date | None = None
    end: dt.date | None = None
    limit: int = Field(default=50, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=500)


class ColumnAccessModel(BaseModel):
    name: str
    type: str | None = None
    access: Literal["allowed", "masked", "hidden"]


class DatasetAccess(BaseModel):
    purpose: str
    grant: str
    scope: str
    careWindowDays: int | None
    validUntil: str | None
    columns: list[ColumnAccessModel]


class DatasetInfo(BaseModel):
    name: str
    description: str
    access: list[DatasetAccess]


class QueryBody(BaseModel):
    """A typed query: filters are (column, op, value) triples, never SQL."""

    model_config = ConfigDict(extra="forbid")

    purpose: Purpose
    filters: list[Filter] = Field(default_factory=list, max_length=50)
    columns: list[str] | None = Field(default=None, max_length=200)
    limit: int = Field(default=100, ge=1, le=10_000)
    cursor: str | None = Field(default=None, max_length=500)


class QueryResponse(BaseModel):
    dataset: str
    purpose: str
    grant: str
    scope: str
    columns: list[ColumnAccessModel]
    total: int
    rows: list[dict[str, Any]]
    nextCursor: str | None
    missing: list[MissingPart]


class AuditResponse(BaseModel):
    records: list[dict[str, Any]]
    nextCursor: str | None


class ConsentBody(BaseModel):
    """A patient's opt-out: for every recipient and purpose unless narrowed."""

    model_config = ConfigDict(extra="forbid")

    resident_id: str | None = Field(default=None, max_length=32)
    person_key: str | None = Field(default=None, max_length=64)
    hospital_id: str | None = Field(default=None, max_length=64)
    purpose: Purpose | None = None
    note: FreeText = Field(default="", max_length=500)


class ReviewBody(BaseModel):
    """An operator's verdict on one break-glass access."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["justified", "unjustified"]
    note: FreeText = Field(default="", max_length=1000)


class IssueBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["hospital", "operator"]
    subject: str = Field(min_length=1, max_length=64)
    days: float = Field(default=90, gt=0, le=3650)
    label: FreeText = Field(default="", max_length=200)
