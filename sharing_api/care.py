"""Whether a patient is under a hospital's care: an encounter at or referred from it, or a
teleconsultation it requested or answered, within a window of days (the `under_care` row scope)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.shareable import PERSON_KEY
from lakehouse.topology import Hospital
from sharing_api.catalog import HOSPITAL
from sharing_api.lakeview import Generation, probe_of

# dataset → (the column that dates it, the columns naming a hospital involved)
EVIDENCE = (
    ("encounters", "admit_time", (HOSPITAL, "referred_from_hospital_id")),
    ("teleconsultations", "requested_at", (HOSPITAL, "consulting_hospital_id")),
)


def _involved(
    t: pa.Table, hospital: Hospital, time_column: str, hospital_columns: tuple[str, ...], cutoff: dt.datetime
) -> pa.ChunkedArray:
    at = None
    for column in hospital_columns:
        cond = pc.equal(t[column], hospital.id)
        at = cond if at is None else pc.or_kleene(at, cond)
    recent = pc.greater_equal(t[time_column], pa.scalar(cutoff, t.schema.field(time_column).type))
    return pc.fill_null(pc.and_kleene(at, recent), False)


def under_care(
    generation: Generation, person_key: str, hospital: Hospital, window_days: int, now: dt.datetime
) -> bool:
    cutoff = now - dt.timedelta(days=window_days)
    probe = probe_of(person_key)
    for dataset, time_column, hospital_columns in EVIDENCE:
        for segment in generation.segments.values():
            if segment.dataset == dataset:
                rows = segment.rows_of(probe)
                if (
                    rows is not None
                    and pc.any(_involved(rows, hospital, time_column, hospital_columns, cutoff)).as_py()
                ):
                    return True
    return False


def care_keys(generation: Generation, hospital: Hospital, window_days: int, now: dt.datetime) -> pa.Array:
    """Every person_key under the hospital's care in the window."""
    cutoff = now - dt.timedelta(days=window_days)
    found: list[pa.Array] = []
    for dataset, time_column, hospital_columns in EVIDENCE:
        for segment in generation.segments.values():
            t = segment.table
            if segment.dataset == dataset and t.num_rows:
                mask = _involved(t, hospital, time_column, hospital_columns, cutoff)
                found.append(pc.unique(t[PERSON_KEY].filter(mask)))
    return pc.unique(pa.chunked_array(found, pa.string())) if found else pa.array([], pa.string())
