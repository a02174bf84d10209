"""Dataset queries: what a hospital may see of each federated dataset, and filtered, paged reads
of it. Scope is applied before anything else, so rows outside it never leave the server; patients
who opted out for this recipient and purpose are removed the same way; masks are applied last."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.shareable import PERSON_KEY
from lakehouse.topology import Hospital
from sharing_api.audit import AuditRecord
from sharing_api.care import care_keys
from sharing_api.catalog import HOSPITAL, DatasetView
from sharing_api.errors import Forbidden, NotFound, Unprocessable
from sharing_api.filters import Filter, expression
from sharing_api.grants import DATASET_PURPOSES, Grant, Purpose
from sharing_api.lakeview import Generation, utc_now
from sharing_api.order import Shuffle
from sharing_api.paging import encode_cursor, fingerprint, pinned_generation
from sharing_api.rows import records
from sharing_api.services import Services


@dataclass(frozen=True, kw_only=True)
class DatasetQuery:
    purpose: Purpose
    filters: tuple[Filter, ...] = ()
    columns: tuple[str, ...] | None = None
    limit: int = 100
    cursor: str | None = None


def visible_datasets(s: Services, hospital: Hospital, purpose: str | None) -> list[dict[str, Any]]:
    now = utc_now()
    out = []
    if purpose is not None and purpose not in DATASET_PURPOSES:
        return []
    for name, view in s.views.items():
        access = []
        for p in [purpose] if purpose else list(DATASET_PURPOSES):
            decision = s.grants.decide(hospital, name, p, now)
            if decision.grant is not None:
                g = decision.grant
                access.append(
                    {
                        "purpose": p,
                        "grant": g.id,
                        "scope": g.scope,
                        "careWindowDays": g.care_window_days if g.scope == "under_care" else None,
                        "validUntil": g.valid_until.isoformat() if g.valid_until else None,
                        "columns": [
                            {"name": f.name, "type": str(f.type), "access": g.columns.access(f.name)}
                            for f in view.schema
                            if g.columns.access(f.name) != "hidden"
                        ],
                    }
                )
        if access:
            out.append({"name": name, "description": view.description, "access": access})
    return out


def run_query(
    s: Services, hospital: Hospital, dataset: str, q: DatasetQuery, audit: AuditRecord
) -> dict[str, Any]:
    now = utc_now()
    audit.purpose = q.purpose
    if q.purpose not in DATASET_PURPOSES:
        raise Forbidden(
            f"purpose {q.purpose} is for one patient at a time, never a dataset: "
            "POST /v1/patients/emergency with the reason for breaking the glass",
            code="purpose_not_for_datasets",
        )
    view = s.views.get(dataset)
    if view is None:
        raise NotFound("no such federated dataset", code="dataset_not_found")
    audit.dataset = dataset  # a known name: the path could hold anything
    decision = s.grants.decide(hospital, dataset, q.purpose, now)
    grant = decision.grant
    if grant is None:
        raise Forbidden(decision.reason, code="no_grant")
    audit.grants = [grant.id]

    visible = [c for c in view.columns if grant.columns.access(c) != "hidden"]
    columns = list(q.columns) if q.columns else visible
    unknown = [c for c in columns if c not in visible]
    if unknown:
        # Not named: a hidden column and one that does not exist look the same.
        raise Unprocessable(
            f"{len(unknown)} selected column(s) not in {dataset} for you", code="unknown_column"
        )
    if len(set(columns)) != len(columns):
        raise Unprocessable("a column is selected twice", code="unknown_column")
    filterable = {c for c in view.columns if grant.columns.access(c) == "allowed"}
    masked = {c for c in view.columns if grant.columns.access(c) == "masked"}
    condition = expression(list(q.filters), view.schema, filterable, masked)

    digest = fingerprint(
        "query", hospital.id, dataset, q.purpose, [f.model_dump() for f in q.filters], columns
    )
    generation, offset = pinned_generation(s.lake, q.cursor, digest)
    scoped = _scope(s, generation, hospital, grant, view, q.purpose, now)
    if condition is not None:
        scoped = [t.filter(condition) for t in scoped]

    total = sum(t.num_rows for t in scoped)
    if grant.columns.access(PERSON_KEY) == "masked" and scoped:
        # The read model is sorted by the real person_key: a masked result is served in a keyed
        # shuffled order, or it would line up row for row with a clear-key result (docs/security.md).
        order = Shuffle(s.masker.order_key(grant.id, digest, str(generation.number)), total)
        rows = pa.concat_tables(scoped).take(pa.array(order.positions(offset, q.limit)))
    else:
        rows = _page(scoped, offset, q.limit) if scoped else view.schema.empty_table()
    rows = s.masker.apply(rows.select(columns), grant.columns, grant.id)
    audit.rows_returned = rows.num_rows
    audit.decision = "allow"
    more = offset + q.limit < total
    missing = [
        {"city": c, "state": state, "problem": problem}
        for state, parts in (("missing", generation.missing), ("stale", generation.stale))
        for (d, c), problem in sorted(parts.items())
        if d == dataset
    ]
    return {
        "dataset": dataset,
        "purpose": q.purpose,
        "grant": grant.id,
        "scope": grant.scope,
        "columns": [{"name": c, "access": grant.columns.access(c)} for c in columns],
        "total": total,
        "rows": records(rows),
        "nextCursor": encode_cursor(generation.number, offset + q.limit, digest) if more else None,
        "missing": missing,
    }


def _page(tables: list[pa.Table], offset: int, limit: int) -> pa.Table:
    """Rows offset … offset + limit of the tables one after the other."""
    page: list[pa.Table] = []
    skip, want = offset, limit
    for t in tables:
        if want == 0:
            break
        if skip >= t.num_rows:
            skip -= t.num_rows
            continue
        part = t.slice(skip, want)
        skip = 0
        want -= part.num_rows
        page.append(part)
    return pa.concat_tables(page) if page else tables[0].slice(0, 0)


def _scope(
    s: Services,
    generation: Generation,
    hospital: Hospital,
    grant: Grant,
    view: DatasetView,
    purpose: str,
    now: dt.datetime,
) -> list[pa.Table]:
    cities = [c.id for c in s.topology.cities]
    if grant.scope in ("own_city", "own_hospital"):
        cities = [hospital.city]
    tables = [seg.table for seg in generation.parts(view.name, tuple(cities))]
    if grant.scope == "own_hospital":
        tables = [t.filter(pc.equal(t[HOSPITAL], hospital.id)) for t in tables]
    elif grant.scope == "under_care":
        keys = care_keys(generation, hospital, grant.care_window_days, now)
        tables = [t.filter(pc.is_in(t[PERSON_KEY], value_set=keys)) for t in tables]
    opted_out = s.consents.opted_out(hospital.id, purpose)
    if opted_out:
        excluded = pa.array(sorted(opted_out), pa.string())
        tables = [t.filter(pc.invert(pc.is_in(t[PERSON_KEY], value_set=excluded))) for t in tables]
    return [t for t in tables if t.num_rows]
