"""The Arrow shareable projection (publisher, verify) equals the Spark one, and drops what must not
leave the city."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from ingestion.shareable import shareable
from lakehouse.contracts import Contract, load_contracts
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.settings import Settings
from lakehouse.shareable import ARROW_TYPES, ShareableProjector, schema_fingerprint, shareable_schema

KEY = ProvinceKey(secret=b"shareable-test-key", version=3)
UTC = dt.UTC
BEIJING = dt.timezone(dt.timedelta(hours=8))
LINEAGE_VALUES = {"_source_file": "s3://zhengzhou-landing/f.csv", "_source_checksum": "ab12", "_run_id": "r1"}


@pytest.fixture(scope="module")
def contracts(settings: Settings) -> dict[str, Contract]:
    return load_contracts(settings.platform_dir)


@pytest.fixture
def shanghai_session(local_spark: SparkSession) -> Iterator[SparkSession]:
    """Spark in a zone other than UTC, so only instants (not wall-clock readings) can agree."""
    before = local_spark.conf.get("spark.sql.session.timeZone") or "UTC"
    local_spark.conf.set("spark.sql.session.timeZone", "Asia/Shanghai")
    try:
        yield local_spark
    finally:
        local_spark.conf.set("spark.sql.session.timeZone", before)


def _value(column: str, type_: str, i: int) -> Any:
    """Row i's value of a contract column: nulls, repeats and non-ASCII on purpose."""
    if type_ == "timestamp":
        base = dt.datetime(2023, 12, 31, 23, 59, 59, 999_999, tzinfo=BEIJING)
        return None if i % 5 == 4 else base + dt.timedelta(hours=7 * i, microseconds=i)
    if type_ == "date":
        return dt.date(2024, 2, 27) + dt.timedelta(days=i)
    if type_ == "int":
        return None if i % 3 == 2 else i * 1000
    if column == "resident_id":  # patients recur; one is unknown
        return None if i == 5 else f"41010219900101{i % 3:03d}X"
    if column == "study_instance_uid":
        return f"1.2.840.{10000 + i % 4}.{i}"
    if column == "hospital_id":
        return ["zz-c1", "zz-hpph"][i % 2]
    if column in ("department", "study_description"):
        return None if i % 4 == 3 else f"心内科 {i}"
    return f"{column}-{i}"


def _curated(contract: Contract, rows: int = 12) -> pa.Table:
    """A curated-shaped table: the contract's columns, then month and lineage."""
    columns = {
        c.name: pa.array([_value(c.name, c.type, i) for i in range(rows)], ARROW_TYPES[c.type])
        for c in contract.columns
    }
    columns["month"] = pa.array([f"2024-0{1 + i % 3}" for i in range(rows)], pa.string())
    columns.update({k: pa.array([v] * rows, pa.string()) for k, v in LINEAGE_VALUES.items()})
    return pa.table(columns)


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as Python values, timestamps as UTC instants, in a stable order."""

    def plain(v: Any) -> Any:
        if isinstance(v, dt.datetime):
            assert v.tzinfo is not None, "a timestamp without a zone is no instant"
            return v.astimezone(UTC)
        return v

    rows = [{k: plain(v) for k, v in r.items()} for r in table.to_pylist()]
    return sorted(rows, key=lambda r: repr(sorted(r.items())))


def _arrow(contract: Contract, table: pa.Table) -> pa.Table:
    projector = ShareableProjector(contract, KEY)
    batches = [projector.project(b) for b in table.to_batches(max_chunksize=5)]  # batch by batch
    return pa.Table.from_batches(batches, projector.schema)


@pytest.mark.parametrize("dataset", ["encounters", "imaging_studies"])
def test_arrow_projection_equals_spark(
    shanghai_session: SparkSession, contracts: dict[str, Contract], dataset: str
) -> None:
    contract = contracts[dataset]
    curated = _curated(contract)
    arrow = _arrow(contract, curated)
    spark = shareable(shanghai_session.createDataFrame(curated), contract, KEY).toArrow()

    assert spark.column_names == arrow.column_names
    assert arrow.num_rows == curated.num_rows
    assert _rows(arrow) == _rows(spark)
    # The comparison saw pseudonyms, not copies of the identifiers.
    ids = set(curated.column("resident_id").to_pylist()) - {None}
    assert ids.isdisjoint(arrow.column("person_key").to_pylist())
    assert arrow.column("key_version").to_pylist() == [3] * arrow.num_rows


@pytest.mark.parametrize("dataset", ["encounters", "imaging_studies"])
def test_direct_identifiers_and_checksums_never_leave(contracts: dict[str, Contract], dataset: str) -> None:
    contract = contracts[dataset]
    assert contract.direct_identifiers  # the test means something only if there are some
    out = _arrow(contract, _curated(contract)).schema.names
    for name in [*contract.direct_identifiers, "_source_checksum", "resident_id"]:
        assert name not in out
        assert name not in shareable_schema(contract).names
    assert set(ShareableProjector(contract, KEY).source_columns).isdisjoint(contract.direct_identifiers)
    assert {"person_key", "key_version", "month", "_source_file", "_run_id"} <= set(out)


def test_a_column_the_batch_lacks_comes_out_null(contracts: dict[str, Contract]) -> None:
    contract = contracts["encounters"]
    curated = _curated(contract).drop_columns(["department", "discharge_time"])
    out = _arrow(contract, curated)
    assert out.num_rows == curated.num_rows
    assert out.column("department").null_count == out.num_rows
    assert out.column("discharge_time").null_count == out.num_rows
    assert out.schema.field("discharge_time").type == pa.timestamp("us", tz="UTC")
    assert out.column("encounter_id").to_pylist() == curated.column("encounter_id").to_pylist()


def test_a_dataset_that_is_not_shareable_is_refused(
    local_spark: SparkSession, contracts: dict[str, Contract]
) -> None:
    private = contracts["encounters"].model_copy(update={"shareable": False})
    with pytest.raises(ValueError, match="not shareable"):
        ShareableProjector(private, KEY)
    with pytest.raises(ValueError, match="not shareable"):
        shareable_schema(private)
    with pytest.raises(ValueError, match="not shareable"):
        shareable(local_spark.createDataFrame(_curated(private, rows=1)), private, KEY)


def test_schema_fingerprint_follows_columns_not_metadata(contracts: dict[str, Contract]) -> None:
    schema = shareable_schema(contracts["encounters"])
    fingerprint = schema_fingerprint(schema)
    assert schema_fingerprint(shareable_schema(contracts["encounters"])) == fingerprint
    assert schema_fingerprint(schema.append(pa.field("ward", pa.string()))) != fingerprint
    assert schema_fingerprint(schema.set(1, schema.field(1).with_type(pa.large_string()))) != fingerprint
    assert schema_fingerprint(schema.with_metadata({"written_by": "spark"})) == fingerprint
    tagged = schema.set(0, schema.field(0).with_metadata({"comment": "x"}))
    assert schema_fingerprint(tagged) == fingerprint
