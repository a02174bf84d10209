"""A patient's shared history: every city's encounters, diagnoses, labs, medications, imaging
studies, teleconsultations, ECGs and pathology reports as one timeline (IHE XCA / FHIR
$everything in spirit), decided per dataset by the caller's grants, the patient's consent and the
purpose, and paged.

Purposes (docs/security.md): `treatment` (scope under_care, usually), `operations` (the
hospital's own rows) and `emergency`, which is always break-glass — a stated reason, sent in the
request body, audited and flagged for review; it overrides the patient-level denials (a consent
opt-out, "not under this hospital's care") but never creates access where no emergency grant
exists. Research and public health never look up a named patient.

What a caller can learn without access is kept to its decision: the care relationship is checked
before the consent, and the consent only when there are records to withhold (a hospital that
does not treat the patient, or has none of their records, cannot tell whether they opted out);
a patient without records the caller may see is an empty timeline, not a 404.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.shareable import PERSON_KEY
from lakehouse.topology import Hospital
from sharing_api.audit import AuditRecord
from sharing_api.care import under_care
from sharing_api.catalog import CITY, HISTORY, HOSPITAL
from sharing_api.errors import Forbidden, Unprocessable
from sharing_api.grants import HISTORY_PURPOSES, Decision, Grant, Purpose
from sharing_api.lakeview import probe_of, utc_now
from sharing_api.paging import encode_cursor, fingerprint, pinned_generation
from sharing_api.rows import EPOCH_DAY, python_columns
from sharing_api.services import Services

_MIN = -(2**62)


@dataclass(frozen=True, kw_only=True)
class HistoryQuery:
    person_key: str
    purpose: Purpose
    types: tuple[str, ...] = HISTORY
    start: dt.date | None = None
    end: dt.date | None = None
    limit: int = 50
    cursor: str | None = None
    reason: str | None = None  # break-glass: required for, and only for, emergency


def reason_problem(reason: str | None, minimum: int) -> str | None:
    """Why a break-glass reason is not one (too short, or a few characters repeated), or None."""
    text = " ".join((reason or "").split())
    if len(text.replace(" ", "")) < minimum:
        return f"state the reason for breaking the glass in at least {minimum} characters"
    if len(set(text.replace(" ", ""))) < 4:
        return "state a real reason for breaking the glass"
    return None


def patient_history(s: Services, hospital: Hospital, q: HistoryQuery, audit: AuditRecord) -> dict[str, Any]:
    now = utc_now()
    pk = q.person_key
    audit.person_key = pk
    audit.purpose = q.purpose
    if q.purpose not in HISTORY_PURPOSES:
        raise Forbidden(
            f"purpose {q.purpose} never looks up a named patient: query the dataset or read its share",
            code="purpose_not_per_patient",
        )
    break_glass = q.purpose == "emergency"
    if break_glass:
        problem = reason_problem(q.reason, s.api.break_glass_min_reason)
        if problem is not None:
            raise Unprocessable(problem, code="reason_required")
        audit.break_glass = True
        audit.break_glass_reason = " ".join((q.reason or "").split())
        audit.flagged = True

    decisions: dict[str, Decision] = {t: s.grants.decide(hospital, t, q.purpose, now) for t in q.types}
    allowed = {t: d.grant for t, d in decisions.items() if d.grant is not None}
    if not allowed:
        raise Forbidden(
            f"no active grant gives {hospital.id} any of {', '.join(q.types)} for purpose {q.purpose}",
            code="no_grant",
        )

    # The care relationship first: without it, the consent is none of the caller's business.
    overrode: list[str] = []
    care: dict[int, bool] = {}
    withheld: dict[str, str] = {}
    digest = fingerprint("history", hospital.id, pk, q.purpose, q.types, q.start, q.end)
    generation, offset = pinned_generation(s.lake, q.cursor, digest)
    readable: dict[str, Grant] = {}
    for dataset, grant in allowed.items():
        if grant.scope == "under_care":
            days = grant.care_window_days
            if days not in care:
                care[days] = under_care(generation, pk, hospital, days, now)
            if not care[days]:
                if not break_glass:
                    withheld[dataset] = f"the patient has not been under {hospital.id}'s care in {days} days"
                    continue
                overrode.append(f"{dataset}: not under care")
        readable[dataset] = grant
    if not readable:
        raise Forbidden(next(iter(withheld.values())), code="not_under_care")

    probe = probe_of(pk)
    tables: list[tuple[str, Grant, pa.Table]] = []
    for dataset, grant in readable.items():
        cities: tuple[str, ...] = tuple(c.id for c in s.topology.cities)
        if grant.scope in ("own_city", "own_hospital"):
            cities = (hospital.city,)
        for segment in generation.parts(dataset, cities):
            rows = segment.rows_of(probe)
            if rows is not None and grant.scope == "own_hospital":
                rows = rows.filter(pc.equal(rows[HOSPITAL], hospital.id))
            if rows is not None and rows.num_rows:
                tables.append((dataset, grant, rows))
    served = readable

    # Only a caller who would see records learns of an opt-out: one with nothing to see gets the
    # same empty timeline whether the patient opted out or not.
    opt_out = s.consents.denying(pk, hospital.id, q.purpose) if tables else None
    if opt_out is not None:
        if not break_glass:
            audit.detail = f"consent {opt_out.consent_id}"
            raise Forbidden("the patient has opted out of sharing this with you", code="consent_denied")
        overrode.append(f"consent opt-out {opt_out.consent_id}")

    entries = _entries(s, tables)
    if q.start is not None or q.end is not None:
        day = 86_400_000_000
        lo = (q.start.toordinal() - EPOCH_DAY) * day if q.start else None
        # The day after `end`; none after the last day of the calendar.
        hi = (q.end.toordinal() - EPOCH_DAY + 1) * day if q.end and q.end < dt.date.max else None
        entries = [e for e in entries if (lo is None or e[0] >= lo) and (hi is None or e[0] < hi)]
    entries.sort(key=lambda e: (e[0], e[1]["type"]), reverse=True)

    missing = [
        {"type": d, "city": c, "state": state, "problem": problem}
        for state, parts in (("missing", generation.missing), ("stale", generation.stale))
        for (d, c), problem in sorted(parts.items())
        if d in served
    ]
    audit.grants = [g.id for g in served.values()]
    audit.dataset = ",".join(served)
    audit.decision = "allow"
    if overrode:
        audit.detail = "break-glass overrode: " + "; ".join(overrode)

    page = [e[1] for e in entries[offset : offset + q.limit]]
    audit.rows_returned = len(page)
    more = offset + q.limit < len(entries)
    return {
        "personKey": pk,
        "purpose": q.purpose,
        "total": len(entries),
        "entries": page,
        "nextCursor": encode_cursor(generation.number, offset + q.limit, digest) if more else None,
        "datasets": [
            {
                "type": t,
                "decision": "allowed" if t in served else ("withheld" if t in withheld else "denied"),
                "grant": served[t].id if t in served else None,
                "scope": served[t].scope if t in served else None,
                "reason": withheld.get(t) or (None if t in served else decisions[t].reason),
            }
            for t in q.types
        ],
        "missing": missing,
        "breakGlass": {
            "used": break_glass,
            "reason": audit.break_glass_reason if break_glass else None,
            "overrode": overrode,
        },
    }


def _entries(s: Services, tables: list[tuple[str, Grant, pa.Table]]) -> list[tuple[int, dict[str, Any]]]:
    names = {h.id: h.name for h in s.topology.hospitals}
    out: list[tuple[int, dict[str, Any]]] = []
    for dataset, grant, rows in tables:
        time_column = s.views[dataset].time_column
        values, instants = python_columns(s.masker.apply(rows, grant.columns, grant.id))
        columns = list(values)
        # A hidden time column still orders the timeline, by its month.
        order = instants.get(time_column) or [None] * rows.num_rows
        for when, row in zip(order, zip(*values.values(), strict=True), strict=True):
            record = dict(zip(columns, row, strict=True))
            record.pop(PERSON_KEY, None)  # the caller knows whose history this is
            city = record.pop(CITY, None)
            hospital_id = record.get(HOSPITAL)
            out.append(
                (
                    _MIN if when is None else when,
                    {
                        "type": dataset,
                        "time": record.get(time_column),
                        "city": city,
                        "hospitalId": hospital_id,
                        "hospitalName": names.get(hospital_id) if isinstance(hospital_id, str) else None,
                        "grant": grant.id,
                        "record": record,
                    },
                )
            )
    return out
