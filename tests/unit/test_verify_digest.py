"""`digest_batches`, the heart of `medshare verify`: equal digests must mean the same multiset of
rows per (hospital, month) whatever the row order, batch split or writing engine's types, and any
change a replication bug could make (a lost, duplicated or altered row) must show."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa

from lakehouse.replication.verify import NULL_KEY, PartitionDigest, digest_batches

SCHEMA = pa.schema(
    [
        pa.field("hospital_id", pa.string()),
        pa.field("visit_id", pa.string()),
        pa.field("admit_time", pa.timestamp("us", tz="UTC")),
        pa.field("cost", pa.float64()),
        pa.field("note", pa.string()),
        pa.field("month", pa.string()),
    ]
)
T0 = dt.datetime(2025, 1, 5, 8, 30, 15, 123456, tzinfo=dt.UTC)


def _rows(n: int = 60) -> list[dict[str, object]]:
    return [
        {
            "hospital_id": f"h{i % 3}",
            "visit_id": f"V{i}",
            "admit_time": T0 + dt.timedelta(days=31 * (i % 2), minutes=i),
            "cost": None if i % 7 == 0 else i * 1.5,
            "note": None if i % 5 == 0 else f"note {i}",
            "month": "2025-01" if i % 2 == 0 else "2025-02",
        }
        for i in range(n)
    ]


def _batches(rows: list[dict[str, object]], size: int, schema: pa.Schema = SCHEMA) -> list[pa.RecordBatch]:
    return [pa.RecordBatch.from_pylist(rows[i : i + size], schema=schema) for i in range(0, len(rows), size)]


def _digest(rows: list[dict[str, object]], size: int = 16) -> dict[tuple[str, str], PartitionDigest]:
    return digest_batches(_batches(rows, size), SCHEMA)


def test_order_and_batch_split_do_not_matter() -> None:
    rows = _rows()
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    expected = _digest(rows, size=len(rows))
    assert _digest(shuffled, size=7) == expected
    assert _digest(shuffled, size=1) == expected
    # An iterator (how verify streams a scan) and empty batches change nothing either.
    empty = pa.RecordBatch.from_pylist([], schema=SCHEMA)
    assert digest_batches(iter([empty, *_batches(rows, 11), empty]), SCHEMA) == expected


def test_a_duplicated_row_changes_count_and_checksum() -> None:
    rows = _rows()
    before = _digest(rows)
    after = _digest([*rows, rows[4]])
    k = (str(rows[4]["hospital_id"]), str(rows[4]["month"]))
    assert after[k].rows == before[k].rows + 1
    assert after[k].checksum != before[k].checksum
    # A row duplicated twice must not cancel out, as it would under xor.
    assert _digest([*rows, rows[4], rows[4]])[k].checksum != before[k].checksum
    assert {p: d for p, d in after.items() if p != k} == {p: d for p, d in before.items() if p != k}


def test_one_changed_value_changes_the_checksum_only() -> None:
    rows = _rows()
    before = _digest(rows)
    changed = [dict(r) for r in rows]
    changed[9]["cost"] = 13.6  # was 13.5
    after = _digest(changed)
    k = (str(rows[9]["hospital_id"]), str(rows[9]["month"]))
    assert after[k].rows == before[k].rows
    assert after[k].checksum != before[k].checksum
    assert {p: d for p, d in after.items() if p != k} == {p: d for p, d in before.items() if p != k}


def test_values_swapped_between_columns_change_the_checksum() -> None:
    rows = _rows()
    swapped = [dict(r) for r in rows]
    swapped[1]["note"], swapped[1]["visit_id"] = rows[1]["visit_id"], rows[1]["note"]
    assert _digest(swapped) != _digest(rows)


def test_null_and_empty_string_differ() -> None:
    rows = _rows()
    with_null = [dict(r) for r in rows]
    with_empty = [dict(r) for r in rows]
    with_null[1]["note"], with_empty[1]["note"] = None, ""
    assert _digest(with_null) != _digest(with_empty)
    # Nor does a null read like the text of a marker someone might pick for it.
    with_text = [dict(r) for r in rows]
    with_text[1]["note"] = "None"
    assert _digest(with_null) != _digest(with_text)


def test_timestamp_unit_and_zone_do_not_matter() -> None:
    rows = _rows()
    micro = _batches(rows, 16)
    nano_schema = SCHEMA.set(SCHEMA.get_field_index("admit_time"), pa.field("admit_time", pa.timestamp("ns")))
    nano = [b.cast(nano_schema) for b in micro]
    assert nano[0].schema.field("admit_time").type == pa.timestamp("ns")
    assert digest_batches(nano, SCHEMA) == digest_batches(micro, SCHEMA)
    # The same instant in another zone is the same value.
    zoned_schema = SCHEMA.set(
        SCHEMA.get_field_index("admit_time"), pa.field("admit_time", pa.timestamp("ms", tz="Asia/Shanghai"))
    )
    truncated = [dict(r, admit_time=T0.replace(microsecond=123000)) for r in rows]
    zoned = [b.cast(zoned_schema) for b in _batches(truncated, 16)]
    assert digest_batches(zoned, SCHEMA) == _digest(truncated)


def test_a_missing_column_counts_as_all_null() -> None:
    rows = [dict(r, note=None) for r in _rows()]
    without = pa.schema([f for f in SCHEMA if f.name != "note"])
    missing = [
        pa.RecordBatch.from_pylist(
            [{k: v for k, v in r.items() if k != "note"} for r in rows[i : i + 16]], without
        )
        for i in range(0, len(rows), 16)
    ]
    assert digest_batches(missing, SCHEMA) == _digest(rows)
    # Extra columns and another column order are ignored: only the schema's columns count.
    reordered = pa.schema([pa.field("extra", pa.int64()), *reversed(list(SCHEMA))])
    extra = [dict(r, extra=i) for i, r in enumerate(rows)]
    assert digest_batches(_batches(extra, 16, reordered), SCHEMA) == _digest(rows)


def test_keys_are_per_hospital_and_month() -> None:
    rows = _rows()
    digests = _digest(rows)
    assert set(digests) == {(f"h{h}", m) for h in range(3) for m in ("2025-01", "2025-02")}
    for (hospital, month), d in digests.items():
        assert d.rows == sum(1 for r in rows if r["hospital_id"] == hospital and r["month"] == month)
    assert sum(d.rows for d in digests.values()) == len(rows)
    # A row moved to another partition changes both partitions.
    moved = [dict(r) for r in rows]
    moved[0]["hospital_id"] = "h1"
    after = _digest(moved)
    assert after[("h0", "2025-01")].rows == digests[("h0", "2025-01")].rows - 1
    assert after[("h1", "2025-01")].rows == digests[("h1", "2025-01")].rows + 1
    # A null partition value is a key of its own, not dropped.
    orphan = [*rows, dict(rows[0], hospital_id=None)]
    assert _digest(orphan)[(NULL_KEY, "2025-01")].rows == 1


def test_checksum_fits_in_64_bits() -> None:
    for d in _digest(_rows(2000), size=300).values():
        assert 0 <= d.checksum < 2**64
