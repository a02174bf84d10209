"""The shareable form of a curated city table: what may leave the city for the province.

- `resident_id` → `person_key` = HMAC-SHA256(province key, resident ID) + `key_version`: the
  province links a person across hospitals and cities without holding the ID (a plain hash of an
  18-digit ID is reversible by brute force; a keyed one is not without the key).
- `direct` identifiers (names, phone numbers, street addresses, local MRNs, accession numbers,
  referring physicians) are dropped: nothing downstream needs them.
- DICOM UIDs → `2.25.<HMAC-derived integer>`, the same in every city, so studies still join.
- Everything else the contract declares is kept: clinical content, codes, dates, the hospital and
  month partitions the province reads by, and lineage (`_source_file`, `_run_id`), which names no
  person. Columns the contract does not declare never leave: an unreviewed column could hold
  anything.

This module is the Arrow form the publisher and `verify` use; `ingestion.shareable` is the same
projection in Spark, and a test holds the two equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.contracts import Contract
from lakehouse.pseudonyms import ProvinceKey, person_key, pseudo_uid

PERSON_KEY = "person_key"
KEY_VERSION = "key_version"
MONTH = "month"
# Lineage of curated rows that may travel; `_source_checksum` (a checksum of one hospital's
# file) only the city needs.
LINEAGE = (MONTH, "_source_file", "_run_id")

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int32(),
    "long": pa.int64(),
    "double": pa.float64(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "bool": pa.bool_(),
}


def shareable_columns(contract: Contract) -> list[str]:
    """Names of the shareable form's columns, in order."""
    return list(shareable_schema(contract).names)


def shareable_schema(contract: Contract) -> pa.Schema:
    """The shareable form's Arrow schema: the same whatever engine wrote the curated table."""
    if not contract.shareable:
        raise ValueError(f"dataset {contract.name!r} is not shareable")
    fields: list[pa.Field] = []
    for c in contract.columns:
        if c.identifier == "resident_id":
            fields += [pa.field(PERSON_KEY, pa.string()), pa.field(KEY_VERSION, pa.int32())]
        elif c.identifier == "uid":
            fields.append(pa.field(c.name, pa.string()))
        elif c.identifier is None:
            fields.append(pa.field(c.name, ARROW_TYPES[c.type]))
    fields += [pa.field(n, pa.string()) for n in LINEAGE]
    return pa.schema(fields)


def schema_fingerprint(schema: pa.Schema) -> str:
    """A short stable digest of column names and types (not metadata), carried with each message."""
    text = ";".join(f"{f.name}:{f.type}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _map_distinct(values: pa.Array | pa.ChunkedArray, fn: Callable[[str], str]) -> pa.Array:
    """Apply `fn` once per distinct value (patients recur across rows), nulls stay null."""
    distinct = pc.unique(values)
    mapped = pa.array([None if v is None else fn(v) for v in distinct.to_pylist()], pa.string())
    return pc.take(mapped, pc.index_in(values, value_set=distinct))


class ShareableProjector:
    """Projects curated record batches onto the shareable form, batch by batch (bounded memory)."""

    def __init__(self, contract: Contract, key: ProvinceKey) -> None:
        self.contract = contract
        self.key = key
        self.schema = shareable_schema(contract)

    @property
    def source_columns(self) -> list[str]:
        """The curated columns the projection reads (direct identifiers are never even read)."""
        names = [c.name for c in self.contract.columns if c.identifier != "direct"]
        return names + list(LINEAGE)

    def project(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        present = set(batch.schema.names)

        def source(name: str, type_: pa.DataType) -> pa.Array:
            # A column the contract added after this table was written arrives as nulls.
            if name not in present:
                return pa.nulls(n, type_)
            return pc.cast(batch.column(name), type_)

        arrays: list[pa.Array] = []
        for c in self.contract.columns:
            if c.identifier == "resident_id":
                ids = source(c.name, pa.string())
                arrays.append(_map_distinct(ids, lambda v: person_key(self.key, v)))
                arrays.append(pa.array([self.key.version] * n, pa.int32()))
            elif c.identifier == "uid":
                arrays.append(_map_distinct(source(c.name, pa.string()), lambda v: pseudo_uid(self.key, v)))
            elif c.identifier is None:
                arrays.append(source(c.name, ARROW_TYPES[c.type]))
        arrays += [source(name, pa.string()) for name in LINEAGE]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)
