"""The replication message format: headers round-trip and reject what is malformed; chunks stay
under the message limit and carry every row, in order."""

from __future__ import annotations

import base64
import random
from dataclasses import replace

import pyarrow as pa
import pytest

from lakehouse.replication.wire import (
    FULL,
    PARTITIONS,
    Chunker,
    Header,
    MalformedMessage,
    decode_chunk,
    decode_schema,
)

HEADER = Header(
    city="zhengzhou",
    dataset="encounters",
    version=7,
    prev=3,
    kind=PARTITIONS,
    schema="0123456789abcdef",
    chunk=0,
    last=False,
    committed_ms=1_717_000_000_123,
    partitions={"zz-c1": ["2024-01", "2023-12"], "zz-hpph": ["2024-02"]},
)
SCHEMA = pa.schema([("i", pa.int64()), ("payload", pa.string())])
LIMIT = 20_000


def _raw(header: Header, **changes: str | bytes | None) -> list[tuple[str, bytes | None]]:
    """The header's encoding with some values replaced (str → UTF-8) or removed (None)."""
    items: dict[str, bytes | None] = dict(header.encode())
    for name, value in changes.items():
        if value is None:
            items.pop(name, None)
        else:
            items[name] = value.encode() if isinstance(value, str) else value
    return list(items.items())


def _noise(rng: random.Random, n: int) -> str:
    # Random bytes in base64: ~6 bits per character, which zstd cannot squeeze much.
    return base64.b64encode(rng.randbytes(n * 3 // 4 + 1)).decode()[:n]


def _table(rows: int, seed: int = 5) -> pa.Table:
    rng = random.Random(seed)
    return pa.table(
        {"i": list(range(rows)), "payload": [_noise(rng, rng.randrange(50, 600)) for _ in range(rows)]},
        schema=SCHEMA,
    )


# -- headers -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        HEADER,
        replace(HEADER, chunk=4, last=True, partitions={}),
        replace(HEADER, kind=FULL, prev=-1, partitions={}),
        replace(HEADER, kind=FULL, chunk=2, last=True, partitions={}),
    ],
    ids=["partitions-0", "partitions-4", "full-0", "full-2"],
)
def test_header_round_trip(header: Header) -> None:
    encoded = header.encode()
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in encoded)
    assert Header.decode(encoded) == header


def test_partitions_travel_only_on_chunk_0_of_a_partitions_unit() -> None:
    assert "partitions" in dict(HEADER.encode())
    later = replace(HEADER, chunk=1)
    assert "partitions" not in dict(later.encode())
    assert Header.decode(later.encode()).partitions == {}
    full = replace(HEADER, kind=FULL)
    assert "partitions" not in dict(full.encode())
    assert Header.decode(full.encode()).partitions == {}


@pytest.mark.parametrize("name", ["city", "dataset", "version", "prev", "kind", "schema", "chunk", "last"])
def test_decode_rejects_a_missing_header(name: str) -> None:
    with pytest.raises(MalformedMessage, match=name):
        Header.decode(_raw(HEADER, **{name: None}))


@pytest.mark.parametrize("headers", [None, []])
def test_decode_rejects_no_headers(headers: list[tuple[str, bytes | None]] | None) -> None:
    with pytest.raises(MalformedMessage, match="missing"):
        Header.decode(headers)


@pytest.mark.parametrize(
    "changes",
    [
        {"city": b"zheng\xffzhou"},  # not UTF-8
        {"version": "7.0"},
        {"version": "seven"},
        {"version": "-1"},
        {"prev": ""},
        {"kind": "delta"},
        {"kind": "FULL"},
        {"chunk": "-1"},
        {"chunk": "x"},
        {"committed_ms": "now"},
        {"partitions": None},  # chunk 0 of a partitions unit must list them
        {"partitions": "not json"},
        {"partitions": '["zz-c1"]'},
        {"partitions": '{"zz-c1": "2024-01"}'},
        {"partitions": '{"zz-c1": [202401]}'},
        {"partitions": '{"zz-c1": null}'},
        {"partitions": '{"zz-c1": [["2024-01"]]}'},
        {"partitions": '{"zz-c1": []}'},  # an empty month list would make an invalid predicate
    ],
    ids=str,
)
def test_decode_rejects_bad_values(changes: dict[str, str | bytes | None]) -> None:
    with pytest.raises(MalformedMessage):
        Header.decode(_raw(HEADER, **changes))


def test_partitions_header_is_not_read_after_chunk_0() -> None:
    header = replace(HEADER, chunk=1)
    assert Header.decode(_raw(header, partitions="not json")).partitions == {}


# -- chunks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("first_rows", [8192, 16])  # first chunk: too big (halved) / too small (grown)
def test_chunks_stay_under_the_limit_and_carry_every_row_in_order(first_rows: int) -> None:
    table = _table(2000)
    # Uneven input batches, one of them empty, so chunks cut across batch boundaries.
    sizes = [1, 7, 0, 500, 1492]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    batches = [b for s, n in zip(starts, sizes, strict=True) for b in table.slice(s, n).to_batches()]
    assert sum(b.num_rows for b in batches) == 2000

    chunks = list(Chunker(SCHEMA, limit=LIMIT, first_rows=first_rows).chunks(batches))

    assert len(chunks) > 10  # ~700 KB of noise cannot fit in few 20 KB messages
    assert max(len(value) for value, _ in chunks) <= LIMIT
    assert min(n for _, n in chunks) > 0
    decoded = [decode_chunk(value) for value, _ in chunks]
    assert [sum(b.num_rows for b in d) for d in decoded] == [n for _, n in chunks]
    assert all(b.schema == SCHEMA for d in decoded for b in d)
    rows = pa.Table.from_batches([b for d in decoded for b in d], SCHEMA)
    assert rows.equals(table)


@pytest.mark.parametrize("empty_batches", [0, 2])
def test_no_rows_make_one_empty_chunk(empty_batches: int) -> None:
    batches = [pa.RecordBatch.from_pylist([], schema=SCHEMA)] * empty_batches
    chunks = list(Chunker(SCHEMA, limit=LIMIT).chunks(batches))
    assert len(chunks) == 1
    value, rows = chunks[0]
    assert rows == 0
    assert sum(b.num_rows for b in decode_chunk(value)) == 0
    assert decode_schema(value) == SCHEMA


@pytest.mark.parametrize("position", [0, 150, 299])
def test_a_row_over_the_limit_is_refused(position: int) -> None:
    rows = _table(300).to_pylist()
    rows[position]["payload"] = _noise(random.Random(9), 2 * LIMIT)  # ≥ 1.5 × LIMIT bytes compressed
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with pytest.raises(MalformedMessage, match="single row"):
        list(Chunker(SCHEMA, limit=LIMIT).chunks(table.to_batches()))


@pytest.mark.parametrize(
    "value",
    [None, b"", b"garbage", b"\xff\xff\xff\xff\x08\x00\x00\x00", random.Random(3).randbytes(300)],
    ids=["none", "empty", "text", "short-metadata", "random"],
)
def test_decode_chunk_rejects_what_is_not_an_arrow_stream(value: bytes | None) -> None:
    with pytest.raises(MalformedMessage):
        decode_chunk(value)


def test_decode_chunk_rejects_a_truncated_chunk() -> None:
    value, _ = next(Chunker(SCHEMA, limit=LIMIT).chunks(_table(10).to_batches()))
    with pytest.raises(MalformedMessage):
        decode_chunk(value[: len(value) // 2])
