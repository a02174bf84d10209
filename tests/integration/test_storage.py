"""Spark (s3a) and delta-rs on the real MinIO: each reads what the other wrote; sites are fenced."""

from __future__ import annotations

import datetime as dt
import io

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from minio.error import S3Error

from lakehouse.settings import Settings
from lakehouse.storage import (
    delta_storage_options,
    s3_client,
    s3_uri,
    s3a_uri,
    site_credentials,
)
from lakehouse.topology import Topology

ROWS = [
    (i, f"zz-c{i % 3}", dt.date(2026, 1 + i % 4, 1 + i % 28), f"ICD{i % 7:02d}", i * 1.5) for i in range(240)
]


def test_spark_writes_partitioned_delta_and_delta_rs_reads_the_same_rows(
    spark, stack: Settings, unique: str
) -> None:
    df = spark.createDataFrame(
        ROWS, "id long, hospital_id string, visit_date date, code string, cost double"
    ).withColumn("month", spark_month("visit_date"))
    path = f"tests/spark-to-rs/{unique}"
    df.write.format("delta").partitionBy("hospital_id", "month").save(s3a_uri("zhengzhou-curated", path))

    creds = site_credentials(stack, "zhengzhou")
    table = DeltaTable(s3_uri("zhengzhou-curated", path), storage_options=delta_storage_options(stack, creds))
    assert table.metadata().partition_columns == ["hospital_id", "month"]
    got = table.to_pyarrow_table().to_pylist()
    expected = {(r[0], r[1], r[2], r[3], r[4], r[2].strftime("%Y-%m")) for r in ROWS}
    assert {
        (g["id"], g["hospital_id"], g["visit_date"], g["code"], g["cost"], g["month"]) for g in got
    } == expected
    assert len(got) == len(ROWS)
    # Partition pruning works from delta-rs: one hospital's rows alone.
    one = table.to_pyarrow_table(filters=[("hospital_id", "=", "zz-c1")])
    assert one.num_rows == sum(1 for r in ROWS if r[1] == "zz-c1")


def spark_month(column: str):
    from pyspark.sql import functions as F

    return F.date_format(F.col(column), "yyyy-MM")


def test_delta_rs_writes_and_spark_reads(spark, stack: Settings, unique: str) -> None:
    creds = site_credentials(stack, "zhengzhou")
    path = f"tests/rs-to-spark/{unique}"
    data = pa.table(
        {
            "id": pa.array(range(500), pa.int64()),
            "hospital_id": pa.array([f"zz-h{i % 5}" for i in range(500)]),
            "value": pa.array([i / 3 for i in range(500)]),
        }
    )
    opts = delta_storage_options(stack, creds)
    write_deltalake(
        s3_uri("zhengzhou-curated", path), data, partition_by=["hospital_id"], storage_options=opts
    )
    write_deltalake(s3_uri("zhengzhou-curated", path), data.slice(0, 10), mode="append", storage_options=opts)

    read = spark.read.format("delta").load(s3a_uri("zhengzhou-curated", path))
    assert read.count() == 510
    rows = {(r["id"], r["hospital_id"], r["value"]) for r in read.collect()}
    assert rows == {(i, f"zz-h{i % 5}", i / 3) for i in range(500)}
    history = spark.sql(f"DESCRIBE HISTORY delta.`{s3a_uri('zhengzhou-curated', path)}`").count()
    assert history == 2


def test_city_credentials_are_denied_on_another_citys_bucket(
    stack: Settings, topology: Topology, unique: str
) -> None:
    luoyang = s3_client(stack, site_credentials(stack, "luoyang"))
    zhengzhou = s3_client(stack, site_credentials(stack, "zhengzhou"))
    key = f"tests/fence/{unique}.txt"
    zhengzhou.put_object("zhengzhou-landing", key, io.BytesIO(b"hello"), 5)
    # Its own bucket works...
    luoyang.put_object("luoyang-landing", key, io.BytesIO(b"hello"), 5)
    # ...every bucket of another city, and the province's, is refused.
    foreign = [
        *topology.city("zhengzhou").buckets.model_dump().values(),
        topology.province.buckets.lakehouse,
    ]
    for bucket in foreign:
        with pytest.raises(S3Error) as err:
            luoyang.put_object(bucket, key, io.BytesIO(b"x"), 1)
        assert err.value.code == "AccessDenied"
    with pytest.raises(S3Error) as err:
        luoyang.get_object("zhengzhou-landing", key)
    assert err.value.code == "AccessDenied"
    # delta-rs with the wrong site's credentials fails too (no silent empty read).
    with pytest.raises(Exception, match=r"(?i)denied|403|forbidden"):
        write_deltalake(
            s3_uri("zhengzhou-curated", f"tests/fence/{unique}"),
            pa.table({"a": [1]}),
            storage_options=delta_storage_options(stack, site_credentials(stack, "luoyang")),
        )


def test_wrong_secret_is_rejected(stack: Settings) -> None:
    from pydantic import SecretStr

    from lakehouse.storage import Credentials

    forged = s3_client(
        stack, Credentials(access_key="medshare-zhengzhou", secret_key=SecretStr("guess-guess"))
    )
    with pytest.raises(S3Error) as err:
        forged.list_objects("zhengzhou-landing").__next__()
    assert err.value.code == "SignatureDoesNotMatch"
