"""`medshare verify`: does the province hold exactly each city's shareable data?

Per city, dataset and (hospital, month) partition both sides are reduced to a row count and an
order-independent checksum: the sum modulo 2^64 of a 64-bit hash of each row's canonical text.
A sum (unlike xor) changes when a row is duplicated; a hash of canonical text (timestamps at
microseconds in UTC, then everything as strings, nulls distinct from empty strings) does not
depend on which engine wrote the file. Both sides stream batch by batch: memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from lakehouse.contracts import Contract
from lakehouse.errors import StorageError
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import CITY, HOSPITAL, MONTH, ReplicationLayout
from lakehouse.settings import Settings
from lakehouse.shareable import ShareableProjector
from lakehouse.storage import PROVINCE_SITE, delta_storage_options, site_credentials

SCAN_BATCH_ROWS = 65_536
# Marks a null so that it never hashes like any string value.
_NULL = "\x00<null>"


@dataclass(frozen=True)
class PartitionDigest:
    rows: int
    checksum: int


@dataclass(frozen=True)
class Difference:
    city: str
    dataset: str
    hospital: str | None
    month: str | None
    city_rows: int
    province_rows: int
    problem: str


@dataclass(frozen=True)
class Compared:
    city: str
    dataset: str
    partitions: int
    rows: int
    city_version: int | None
    province_version: int | None


@dataclass
class VerifyReport:
    differences: list[Difference] = field(default_factory=list)
    compared: list[Compared] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _canonical(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("us", tz="UTC"))
    text = pc.cast(column, pa.string())
    return pc.fill_null(text, _NULL)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """`batch` with exactly `schema`'s columns, in order; a missing column counts as all-null."""
    arrays = []
    for f in schema:
        if f.name in batch.schema.names:
            arrays.append(batch.column(f.name))
        else:
            arrays.append(pa.nulls(batch.num_rows, f.type))
    return pa.Table.from_arrays(
        arrays, schema=pa.schema([pa.field(f.name, a.type) for f, a in zip(schema, arrays, strict=True)])
    )


def digest_batches(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema
) -> dict[tuple[str, str], PartitionDigest]:
    """Row count and order-independent checksum per (hospital_id, month)."""
    counts: dict[tuple[str, str], int] = {}
    sums: dict[tuple[str, str], int] = {}
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = _conform(batch, schema)
        frame = pd.DataFrame(
            {f.name: _canonical(table.column(f.name)).to_numpy(zero_copy_only=False) for f in schema}
        )
        hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
        keys = pd.DataFrame(
            {
                "h": table.column(HOSPITAL).to_numpy(zero_copy_only=False),
                "m": table.column(MONTH).to_numpy(zero_copy_only=False),
                "x": hashes,
            }
        )
        for (hospital, month), group in keys.groupby(["h", "m"], sort=False, dropna=False):
            k = (str(hospital), str(month))
            counts[k] = counts.get(k, 0) + len(group)
            # uint64 addition wraps around: the sum modulo 2^64.
            with np.errstate(over="ignore"):
                partial = int(group["x"].to_numpy(dtype=np.uint64).sum(dtype=np.uint64))
            sums[k] = (sums.get(k, 0) + partial) % 2**64
    return {k: PartitionDigest(counts[k], sums[k]) for k in counts}


def _open(uri: str, options: dict[str, str]) -> DeltaTable | None:
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"open {uri}: {exc}") from exc


def _scan(
    table: DeltaTable, columns: Sequence[str], expression: pads.Expression | None = None
) -> Iterable[pa.RecordBatch]:
    dataset = table.to_pyarrow_dataset()
    present = [c for c in columns if c in dataset.schema.names]
    # Always consumed to the end: an abandoned scan over delta-rs crashes the interpreter at exit.
    yield from dataset.to_batches(columns=present, filter=expression, batch_size=SCAN_BATCH_ROWS)


def verify(
    settings: Settings,
    layout: ReplicationLayout,
    contracts: Mapping[str, Contract],
    key: ProvinceKey,
    *,
    cities: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] = lambda *_: None,
) -> VerifyReport:
    report = VerifyReport()
    city_ids = (
        [layout.topology.city(c).id for c in cities] if cities else [c.id for c in layout.topology.cities]
    )
    chosen = {n: c for n, c in sorted(contracts.items()) if c.shareable and (not datasets or n in datasets)}
    province_options = delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE))
    total = len(chosen) * len(city_ids)
    done = 0
    for name, contract in chosen.items():
        projector = ShareableProjector(contract, key)
        province = _open(layout.province_table(name).uri, province_options)
        for city in city_ids:
            progress(f"{city}/{name}", done, total)
            done += 1
            source = _open(
                layout.city_table(city, name).uri,
                delta_storage_options(settings, site_credentials(settings, city)),
            )
            try:
                ours = (
                    digest_batches(
                        (projector.project(b) for b in _scan(source, projector.source_columns)),
                        projector.schema,
                    )
                    if source is not None
                    else {}
                )
                theirs = (
                    digest_batches(
                        _scan(province, projector.schema.names, pads.field(CITY) == city), projector.schema
                    )
                    if province is not None
                    else {}
                )
            except OSError as exc:
                raise StorageError(f"read {city}/{name}: {exc}") from exc
            if source is None and not theirs:
                continue
            report.compared.append(
                Compared(
                    city=city,
                    dataset=name,
                    partitions=len(ours),
                    rows=sum(d.rows for d in ours.values()),
                    city_version=None if source is None else int(source.version()),
                    province_version=None
                    if province is None
                    else province.transaction_version(layout.app_id(city, name)),
                )
            )
            for hospital, month in sorted(set(ours) | set(theirs)):
                a, b = ours.get((hospital, month)), theirs.get((hospital, month))
                if a == b:
                    continue
                if a is None or b is None:
                    problem = "only in the province" if a is None else "missing in the province"
                elif a.rows != b.rows:
                    problem = "row counts differ"
                else:
                    problem = "rows differ"
                report.differences.append(
                    Difference(city, name, hospital, month, a.rows if a else 0, b.rows if b else 0, problem)
                )
    progress("done", total, total)
    return report
