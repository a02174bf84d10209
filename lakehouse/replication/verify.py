"""`medshare verify`: does the province hold exactly each city's shareable data?

The replicator's own bookkeeping (txn versions, offsets) says what it *meant* to apply; only the
data shows what the province *holds*. Per city, dataset and (hospital, month) partition both sides
are reduced to a row count and an order-independent checksum: the sum modulo 2^64 of a 64-bit hash
of each row's canonical text. A sum (unlike xor) changes when a row is duplicated; canonical text
(timestamps at microseconds in UTC, then every value as a string, nulls distinct from empty
strings) does not depend on which engine wrote the files or how they are split. Both sides stream
batch by batch, so memory stays bounded whatever the table's size.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse.contracts import Contract
from lakehouse.errors import ConfigError, MedshareError, StorageError
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import CITY, HOSPITAL, MONTH, ReplicationLayout
from lakehouse.settings import Settings
from lakehouse.shareable import ShareableProjector
from lakehouse.storage import PROVINCE_SITE, Credentials, delta_storage_options, site_credentials

SCAN_BATCH_ROWS = 65_536
# The partition key of rows whose hospital or month is null (a Delta partition value may be null).
NULL_KEY = "(null)"
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_LOW_32 = np.uint64(0xFFFF_FFFF)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

PartitionKey = tuple[str, str]


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
    site: str | None = None  # the provincial site, when the stack has more than one


@dataclass(frozen=True)
class Compared:
    """One (city, dataset) compared; partitions and rows are the city's."""

    city: str
    dataset: str
    partitions: int
    rows: int
    city_version: int | None
    province_version: int | None
    site: str | None = None


@dataclass
class VerifyReport:
    differences: list[Difference] = field(default_factory=list)
    compared: list[Compared] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> list[pa.Array]:
    """`batch`'s columns as `schema` names and types them; a missing column counts as all-null
    (a column the contract added after a table was written reads as nulls on either side)."""
    present = set(batch.schema.names)
    return [
        pc.cast(batch.column(f.name), f.type) if f.name in present else pa.nulls(batch.num_rows, f.type)
        for f in schema
    ]


def _canonical(column: pa.Array) -> npt.NDArray[np.object_]:
    """Text of each value that is the same whichever engine wrote it, as a numpy object array."""
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, _TIMESTAMP)
    text = pc.cast(column, pa.string())
    # A value becomes "v<text>" and a null "n": no value, not even "", can read like a null.
    marked = pc.fill_null(pc.binary_join_element_wise("v", text, ""), "n")
    return np.asarray(marked.to_numpy(zero_copy_only=False), dtype=object)


def _key(column: pa.Array) -> pa.Array:
    return pc.fill_null(pc.cast(column, pa.string()), NULL_KEY)


def digest_batches(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema
) -> dict[PartitionKey, PartitionDigest]:
    """Row count and order-independent checksum per (hospital_id, month), batch by batch."""
    if HOSPITAL not in schema.names or MONTH not in schema.names:
        raise ValueError(f"schema has no {HOSPITAL!r} or {MONTH!r} column to key partitions by")
    rows: dict[PartitionKey, int] = {}
    sums: dict[PartitionKey, int] = {}
    for batch in batches:
        if batch.num_rows == 0:
            continue
        columns = _conform(batch, schema)
        frame = pd.DataFrame({str(i): _canonical(c) for i, c in enumerate(columns)})
        hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
        # Summed as two 32-bit halves: neither half-sum can overflow uint64 within one batch, so
        # the result is exact without relying on how Arrow's aggregation treats overflow.
        halves = pa.table(
            {
                "hospital": _key(columns[schema.get_field_index(HOSPITAL)]),
                "month": _key(columns[schema.get_field_index(MONTH)]),
                "high": hashes >> np.uint64(32),
                "low": hashes & _LOW_32,
            }
        )
        grouped = halves.group_by(["hospital", "month"]).aggregate(
            [("high", "sum"), ("low", "sum"), ("low", "count")]
        )
        # One iteration per partition in the batch, not per row.
        for hospital, month, high, low, count in zip(
            grouped.column("hospital").to_pylist(),
            grouped.column("month").to_pylist(),
            grouped.column("high_sum").to_pylist(),
            grouped.column("low_sum").to_pylist(),
            grouped.column("low_count").to_pylist(),
            strict=True,
        ):
            k = (str(hospital), str(month))
            rows[k] = rows.get(k, 0) + int(count)
            sums[k] = (sums.get(k, 0) + (int(high) << 32) + int(low)) % 2**64
    return {k: PartitionDigest(rows[k], sums[k]) for k in rows}


def _message(exc: BaseException) -> str:
    # delta-rs colours its error chains for a terminal; a report or log wants plain text.
    return _ANSI.sub("", str(exc))


def _open(uri: str, options: dict[str, str]) -> DeltaTable | None:
    """The table's latest version; None when there is no table (yet) at `uri`."""
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        raise StorageError(f"open {uri}: {_message(exc)}") from exc


def _scan(
    table: DeltaTable, columns: Sequence[str], expression: pads.Expression | None = None
) -> Iterator[pa.RecordBatch]:
    dataset = table.to_pyarrow_dataset()
    present = [c for c in columns if c in dataset.schema.names]
    # Consumed to the end by digest_batches: an abandoned scan over delta-rs has crashed the
    # interpreter at exit (`dataset.head()` does so), so nothing here stops early.
    yield from dataset.to_batches(columns=present, filter=expression, batch_size=SCAN_BATCH_ROWS)


def _digest(
    uri: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema
) -> dict[PartitionKey, PartitionDigest]:
    try:
        return digest_batches(batches, schema)
    except (DeltaError, OSError) as exc:
        raise StorageError(f"read {uri}: {_message(exc)}") from exc
    except pa.ArrowException as exc:
        # A value that does not fit the shareable schema: neither side can be compared as is.
        raise MedshareError(f"compare {uri}: {_message(exc)}") from exc


def _differences(
    city: str,
    dataset: str,
    ours: Mapping[PartitionKey, PartitionDigest],
    theirs: Mapping[PartitionKey, PartitionDigest],
    site: str | None = None,
) -> list[Difference]:
    found = []
    for hospital, month in sorted(set(ours) | set(theirs)):
        a, b = ours.get((hospital, month)), theirs.get((hospital, month))
        if a == b:
            continue
        if a is None:
            problem = "only in the province"
        elif b is None:
            problem = "missing in the province"
        elif a.rows != b.rows:
            problem = "row counts differ"
        else:
            problem = "rows differ"
        city_rows, province_rows = (a.rows if a else 0), (b.rows if b else 0)
        found.append(Difference(city, dataset, hospital, month, city_rows, province_rows, problem, site))
    return found


def verify(
    settings: Settings,
    layout: ReplicationLayout,
    contracts: Mapping[str, Contract],
    key: ProvinceKey,
    *,
    cities: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] = lambda *_: None,
    sites: Sequence[Settings] | None = None,
) -> VerifyReport:
    """Compare each city's curated tables, projected to the shareable form, with the province's
    rows for that city — in each provincial site of `sites` (default: the settings' own). A city
    table is read once whatever the number of sites, and two sites that both match it hold the
    same rows. Every difference is reported; nothing stops at the first."""
    shareable = {n: c for n, c in sorted(contracts.items()) if c.shareable}
    if datasets:
        # A misspelt --dataset would otherwise compare nothing and report "no difference".
        unknown = sorted(set(datasets) - set(shareable))
        if unknown:
            raise ConfigError(f"not shareable datasets: {', '.join(unknown)} (known: {', '.join(shareable)})")
        shareable = {n: c for n, c in shareable.items() if n in datasets}
    city_ids = (
        [layout.topology.city(c).id for c in cities] if cities else [c.id for c in layout.topology.cities]
    )
    credentials: dict[str, Credentials] = {c: site_credentials(settings, c) for c in city_ids}
    named = len(sites or ()) > 1
    provinces = {
        (s.site_id if named else None): delta_storage_options(s, site_credentials(s, PROVINCE_SITE))
        for s in (sites or [settings])
    }

    report = VerifyReport()
    total, done = len(shareable) * len(city_ids), 0
    for name, contract in shareable.items():
        projector = ShareableProjector(contract, key)
        province_uri = layout.province_table(name).uri
        opened = {site: _open(province_uri, options) for site, options in provinces.items()}
        for city in city_ids:
            progress(f"{city}/{name}", done, total)
            done += 1
            city_uri = layout.city_table(city, name).uri
            source = _open(city_uri, delta_storage_options(settings, credentials[city]))
            ours = (
                {}
                if source is None
                else _digest(
                    city_uri,
                    (projector.project(b) for b in _scan(source, projector.source_columns)),
                    projector.schema,
                )
            )
            for site, province in opened.items():
                theirs = (
                    {}
                    if province is None
                    else _digest(
                        province_uri,
                        _scan(province, projector.schema.names, pads.field(CITY) == city),
                        projector.schema,
                    )
                )
                if source is None and not theirs:
                    continue  # This city never had the dataset: nothing to compare.
                report.compared.append(
                    Compared(
                        city=city,
                        dataset=name,
                        partitions=len(ours),
                        rows=sum(d.rows for d in ours.values()),
                        city_version=None if source is None else source.version(),
                        province_version=None
                        if province is None
                        else province.transaction_version(layout.app_id(city, name)),
                        site=site,
                    )
                )
                report.differences += _differences(city, name, ours, theirs, site)
    progress("done", total, total)
    return report
