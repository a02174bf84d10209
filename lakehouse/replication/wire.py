"""The replication message format, shared by the publisher and the replicator.

One *unit* = what the province must do to reflect (city, dataset) at one source Delta version:
replace the listed (hospital, month) partitions — or, for a `full` unit, everything of the city —
with the rows carried. Rows travel as Arrow IPC streams (zstd-compressed buffers), chunked so that
every message stays under the broker's limit; a unit is one Kafka transaction, so a reader sees
all of its chunks or none. Corrections and deletions need nothing special: a corrected partition
is replaced, a partition left empty is replaced by nothing.

Headers (all UTF-8 text): city, dataset, version (source Delta version), prev (version of the
previous unit, -1 for none), kind (`full` | `partitions`), schema (fingerprint of the Arrow
schema), chunk (0-based), last (`1` on the final chunk), committed_ms (the city commit time the
unit's lag is measured from) and, on chunk 0, partitions (JSON {hospital: [months]}).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from lakehouse.errors import MedshareError

FULL = "full"
PARTITIONS = "partitions"
# Below the broker's 1 MiB message.max.bytes, leaving room for headers and record overhead.
MAX_MESSAGE_BYTES = 900 * 1024
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


_REQUIRED = ("city", "dataset", "version", "prev", "kind", "schema", "chunk", "last", "committed_ms")


class MalformedMessage(MedshareError):
    """A message that cannot be decoded; it goes to the dead-letter table with this reason."""


@dataclass(frozen=True)
class Header:
    city: str
    dataset: str
    version: int
    prev: int
    kind: str
    schema: str
    chunk: int
    last: bool
    committed_ms: int
    partitions: dict[str, list[str]] = field(default_factory=dict)

    def encode(self) -> list[tuple[str, bytes]]:
        items = {
            "city": self.city,
            "dataset": self.dataset,
            "version": str(self.version),
            "prev": str(self.prev),
            "kind": self.kind,
            "schema": self.schema,
            "chunk": str(self.chunk),
            "last": "1" if self.last else "0",
            "committed_ms": str(self.committed_ms),
        }
        if self.chunk == 0 and self.kind == PARTITIONS:
            items["partitions"] = json.dumps(self.partitions, separators=(",", ":"), sort_keys=True)
        return [(k, v.encode()) for k, v in items.items()]

    @classmethod
    def decode(cls, headers: Iterable[tuple[str, bytes | None]] | None) -> Header:
        try:
            raw = {k: (v or b"").decode("utf-8") for k, v in headers or ()}
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"a header is not UTF-8: {exc}") from exc
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise MalformedMessage(f"missing header(s): {', '.join(missing)}")
        if raw["kind"] not in (FULL, PARTITIONS):
            raise MalformedMessage(f"unknown kind {raw['kind']!r}")
        try:
            chunk = int(raw["chunk"])
            version = int(raw["version"])
            header = cls(
                city=raw["city"],
                dataset=raw["dataset"],
                version=version,
                prev=int(raw["prev"]),
                kind=raw["kind"],
                schema=raw["schema"],
                chunk=chunk,
                last=raw["last"] == "1",
                committed_ms=int(raw["committed_ms"]),
                partitions=(
                    _partitions(raw.get("partitions")) if chunk == 0 and raw["kind"] == PARTITIONS else {}
                ),
            )
        except ValueError as exc:
            raise MalformedMessage(f"bad header value: {exc}") from exc
        if version < 0 or chunk < 0:
            raise MalformedMessage(f"negative version or chunk: {version}, {chunk}")
        return header


def _partitions(text: str | None) -> dict[str, list[str]]:
    if text is None:
        raise ValueError("chunk 0 of a partitions unit has no partitions header")
    value = json.loads(text)
    if not isinstance(value, dict) or not all(
        isinstance(h, str) and isinstance(ms, list) and ms and all(isinstance(m, str) for m in ms)
        for h, ms in value.items()
    ):
        raise ValueError("partitions header is not {hospital: [months, ...]}")
    return value


def encode_table(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        for batch in table.to_batches():
            if batch.num_rows:
                writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def decode_chunk(value: bytes | None) -> list[pa.RecordBatch]:
    if not value:
        raise MalformedMessage("empty message value")
    try:
        reader = pa.ipc.open_stream(value)
        return list(reader)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise MalformedMessage(f"value is not an Arrow IPC stream: {exc}") from exc


def decode_schema(value: bytes) -> pa.Schema:
    try:
        return pa.ipc.open_stream(value).schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise MalformedMessage(f"value is not an Arrow IPC stream: {exc}") from exc


class Chunker:
    """Turns a stream of record batches into message values of at most `limit` bytes.

    Rows per chunk adapt to the observed compressed size; a slice that still comes out too large
    is halved until it fits, so one wide row is the only thing that can fail (then it says so).
    """

    def __init__(self, schema: pa.Schema, limit: int = MAX_MESSAGE_BYTES, first_rows: int = 8192) -> None:
        self.schema = schema
        self.limit = limit
        self.rows = first_rows

    def chunks(self, batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[bytes, int]]:
        """(value, rows) per chunk; at least one (an empty stream) so every unit has a message."""
        pending = self.schema.empty_table()
        emitted = False
        for batch in batches:
            if batch.num_rows == 0:
                continue
            # Concatenating and slicing tables copies no data.
            pending = pa.concat_tables([pending, pa.Table.from_batches([batch], self.schema)])
            while pending.num_rows >= self.rows:
                head, pending = pending.slice(0, self.rows), pending.slice(self.rows)
                yield from self._fit(head)
                emitted = True
        if pending.num_rows or not emitted:
            yield from self._fit(pending)

    def _fit(self, table: pa.Table) -> Iterator[tuple[bytes, int]]:
        value = encode_table(table)
        if len(value) <= self.limit:
            # Aim the next chunk at ~80% of the limit from this one's bytes per row.
            per_row = max(len(value) / max(table.num_rows, 1), 1.0)
            if table.num_rows:
                self.rows = max(1, int(self.limit * 0.8 / per_row))
            yield value, table.num_rows
            return
        if table.num_rows <= 1:
            raise MalformedMessage(
                f"a single row encodes to {len(value)} bytes, over the {self.limit}-byte message limit"
            )
        half = table.num_rows // 2
        self.rows = max(1, half)
        yield from self._fit(table.slice(0, half))
        yield from self._fit(table.slice(half))
