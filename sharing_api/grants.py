"""Grants: which hospitals may read which federated dataset, for which purposes, which rows and
columns, and when. Declared in platform/grants.yaml; the file is re-read when it changes, and the
admin endpoints edit it, so a change applies without a restart.

Decisions take the *first* active grant, in file order, whose recipient, dataset and purpose
match (as a firewall reads its rules): a specific grant placed before a general one narrows or
widens it for its recipients, and every decision names exactly one grant.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from lakehouse.errors import ConfigError
from lakehouse.identity import holds_resident_id
from lakehouse.topology import CareLevel, Hospital, Topology
from sharing_api import operations
from sharing_api.catalog import DatasetView
from sharing_api.db import Database
from sharing_api.errors import Conflict, NotFound, Unprocessable

log = logging.getLogger(__name__)


Purpose = Literal["treatment", "emergency", "research", "public_health", "operations"]
PURPOSES: tuple[Purpose, ...] = ("treatment", "emergency", "research", "public_health", "operations")
# Where each purpose may be used (docs/security.md). A named patient's history is for their care
# (treatment; emergency, always as break-glass) and for a hospital's own records (operations);
# research and public health never look up a named patient: their masked tokens would be tied back
# to the person. Dataset queries are the bulk reads; an emergency is one patient, never a dataset.
HISTORY_PURPOSES: tuple[Purpose, ...] = ("treatment", "emergency", "operations")
DATASET_PURPOSES: tuple[Purpose, ...] = ("treatment", "research", "public_health", "operations")
Scope = Literal["own_hospital", "own_city", "all_cities", "under_care"]
ColumnAccess = Literal["allowed", "masked", "hidden"]


def _no_resident_id(text: str) -> str:
    if holds_resident_id(text):
        raise ValueError("free text must not hold a resident ID")
    return text


# Free text that is stored and shown (notes, labels, reasons, descriptions): never a resident ID.
FreeText = Annotated[str, AfterValidator(_no_resident_id)]


GrantId = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$"), AfterValidator(_no_resident_id)
]

HEADER = (
    "# Grants of the sharing API: recipient × datasets × purposes × row scope × column policy ×\n"
    "# validity. The first active grant that matches a request decides it. Edited by hand or through\n"
    "# the API's admin endpoints (which rewrite this file); changes apply without a restart.\n"
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Recipient(_Frozen):
    """Hospitals, or a group: the hospitals of some cities and/or some care levels. A hospital
    matches when it satisfies every field given."""

    hospitals: tuple[str, ...] | None = None
    cities: tuple[str, ...] | None = None
    levels: tuple[CareLevel, ...] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Recipient:
        if not (self.hospitals or self.cities or self.levels):
            raise ValueError("a recipient names hospitals, cities or levels")
        return self

    def matches(self, hospital: Hospital) -> bool:
        return (
            (self.hospitals is None or hospital.id in self.hospitals)
            and (self.cities is None or hospital.city in self.cities)
            and (self.levels is None or hospital.level in self.levels)
        )


class ColumnPolicy(_Frozen):
    """Columns not listed are allowed. Masked columns arrive masked; hidden ones not at all."""

    masked: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()

    def access(self, column: str) -> ColumnAccess:
        if column in self.hidden:
            return "hidden"
        return "masked" if column in self.masked else "allowed"


class Grant(_Frozen):
    id: GrantId
    description: FreeText = ""
    recipient: Recipient
    datasets: tuple[str, ...] = Field(min_length=1)
    purposes: tuple[Purpose, ...] = Field(min_length=1)
    scope: Scope
    # under_care: an encounter, referral or teleconsultation with the hospital in this many days.
    care_window_days: int = Field(default=365, ge=1, le=36500)
    columns: ColumnPolicy = ColumnPolicy()
    valid_from: dt.datetime | None = None
    valid_until: dt.datetime | None = None

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        # A date or a naive time in the file means UTC.
        return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value

    @model_validator(mode="after")
    def _window(self) -> Grant:
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        overlap = set(self.columns.masked) & set(self.columns.hidden)
        if overlap:
            raise ValueError(f"{len(overlap)} column(s) both masked and hidden")
        return self

    def active(self, now: dt.datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= now) and (
            self.valid_until is None or now < self.valid_until
        )

    def applies(self, hospital: Hospital, dataset: str, purpose: str, now: dt.datetime) -> bool:
        return (
            dataset in self.datasets
            and purpose in self.purposes
            and self.active(now)
            and self.recipient.matches(hospital)
        )


class GrantFile(_Frozen):
    grants: tuple[Grant, ...] = ()


@dataclass(frozen=True)
class Decision:
    """The outcome for one hospital × dataset × purpose: the grant that allows it, or why not."""

    dataset: str
    purpose: str
    grant: Grant | None
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.grant is not None


def check_grants(grants: GrantFile, topology: Topology, views: dict[str, DatasetView]) -> list[str]:
    """Problems with names that exist nowhere (a typo would silently grant nothing). Each names its
    place in the file (`grants[3].recipient.hospitals[1]`), never the value: what an operator sent
    through the API is not echoed back (it could be anything, a resident ID included)."""
    problems: list[str] = []
    seen: set[str] = set()
    hospitals = {h.id for h in topology.hospitals}
    cities = {c.id for c in topology.cities}
    for n, g in enumerate(grants.grants):
        where = f"grants[{n}]"
        if g.id in seen:
            problems.append(f"{where}.id: the id of an earlier grant")
        seen.add(g.id)
        problems += [
            f"{where}.recipient.hospitals[{i}]: not a hospital of the topology"
            for i, h in enumerate(g.recipient.hospitals or ())
            if h not in hospitals
        ]
        problems += [
            f"{where}.recipient.cities[{i}]: not a city of the topology"
            for i, c in enumerate(g.recipient.cities or ())
            if c not in cities
        ]
        problems += [
            f"{where}.datasets[{i}]: not a shareable dataset"
            for i, d in enumerate(g.datasets)
            if d not in views
        ]
        columns = {c for d in g.datasets if d in views for c in views[d].columns}
        for kind, names in (("masked", g.columns.masked), ("hidden", g.columns.hidden)):
            problems += [
                f"{where}.columns.{kind}[{i}]: a column of none of its datasets"
                for i, c in enumerate(names)
                if c not in columns
            ]
    return problems


def parse_grants(text: str, *, source: str, topology: Topology, views: dict[str, DatasetView]) -> GrantFile:
    try:
        data = yaml.safe_load(text) or {}
        grants = GrantFile.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        text = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"{source}: {text}") from exc
    problems = check_grants(grants, topology, views)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return grants


def dump_grants(grants: GrantFile) -> str:
    data = grants.model_dump(mode="json", exclude_defaults=True)
    return HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)


class GrantBook:
    """The grants in force, re-read when the file changes.

    The file is checked (one stat) before every decision by default: an edit made through another
    worker of the instance, or by hand, decides the very next request."""

    def __init__(
        self,
        path: Path,
        topology: Topology,
        views: dict[str, DatasetView],
        *,
        check_seconds: float = 0.0,
        db: Database | None = None,
    ):
        self.path = path
        # Where an edit is recorded for the other site (sharing_api/operations.py); None: nowhere.
        self.db = db
        self.topology = topology
        self.views = views
        self.check_seconds = check_seconds
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stat: tuple[int, int] | None = None
        self._checked = 0.0
        if not path.exists():
            raise ConfigError(f"grants file {path} does not exist")
        self._grants, self._etag = self._read()

    def _read(self) -> tuple[GrantFile, str]:
        st = self.path.stat()
        text = self.path.read_text(encoding="utf-8")
        grants = parse_grants(text, source=str(self.path), topology=self.topology, views=self.views)
        self._stat = (st.st_mtime_ns, st.st_size)
        return grants, sha256(text.encode()).hexdigest()[:16]

    def current(self) -> tuple[GrantFile, str]:
        """The grants and their version tag (for admin If-Match)."""
        now = time.monotonic()
        if now - self._checked >= self.check_seconds:
            self._checked = now
            with self._lock:
                try:
                    st = self.path.stat()
                    if (st.st_mtime_ns, st.st_size) != self._stat:
                        self._grants, self._etag = self._read()
                        self.last_error = None
                        log.info("grants reloaded from %s (version %s)", self.path, self._etag)
                except (OSError, ConfigError) as exc:
                    # Keep deciding with the last good grants; operators see the error in /v1/admin/grants.
                    if str(exc) != self.last_error:
                        log.error("grants file not reloaded, keeping the previous grants: %s", exc)
                    self.last_error = str(exc)
        return self._grants, self._etag

    def decide(self, hospital: Hospital, dataset: str, purpose: str, now: dt.datetime) -> Decision:
        grants, _ = self.current()
        for grant in grants.grants:
            if grant.applies(hospital, dataset, purpose, now):
                return Decision(dataset, purpose, grant)
        return Decision(
            dataset, purpose, None, f"no active grant gives {hospital.id} {dataset} for {purpose}"
        )

    # -- admin edits ---------------------------------------------------------------------------------
    def _write(self, grants: GrantFile, if_match: str | None) -> str:
        with self._lock:
            # Re-read under the lock: the check is against what is on disk, not a cached copy.
            _, etag = self._read()
            if if_match is not None and if_match.strip('"') != etag:
                raise Conflict(
                    f"the grants changed since version {if_match} (now {etag}); read them again",
                    code="grants_changed",
                )
            text = dump_grants(grants)
            try:
                parse_grants(text, source="the new grants", topology=self.topology, views=self.views)
            except ConfigError as exc:
                raise Unprocessable(str(exc), code="invalid_grant") from exc
            seq = None
            if self.db is not None:
                # Recorded before the file is written: a crash in between still ships the edit,
                # and applying it here again writes the file.
                conn = self.db.connect()
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    seq = self.db.record(conn, *operations.grants_change(text))
            operations.write_grants(self.path, text)
            self._grants, self._etag = self._read()
            self._checked = time.monotonic()
        if seq is not None and self.db is not None:
            self.db.settle(seq)
        return self._etag

    def add(self, grant: Grant, *, if_match: str | None = None) -> str:
        grants, _ = self.current()
        if any(g.id == grant.id for g in grants.grants):
            raise Conflict("a grant with this id exists; replace it with PUT", code="grant_exists")
        return self._write(GrantFile(grants=(*grants.grants, grant)), if_match)

    def replace(self, grant_id: str, grant: Grant, *, if_match: str | None = None) -> str:
        grants, _ = self.current()
        if grant.id != grant_id:
            raise Unprocessable("the body's grant id differs from the path's")
        if not any(g.id == grant_id for g in grants.grants):
            raise NotFound("no grant with that id", code="grant_not_found")
        updated = tuple(grant if g.id == grant_id else g for g in grants.grants)
        return self._write(GrantFile(grants=updated), if_match)

    def remove(self, grant_id: str, *, if_match: str | None = None) -> str:
        grants, _ = self.current()
        if not any(g.id == grant_id for g in grants.grants):
            raise NotFound("no grant with that id", code="grant_not_found")
        return self._write(GrantFile(grants=tuple(g for g in grants.grants if g.id != grant_id)), if_match)
