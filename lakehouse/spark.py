"""The Spark session factory: Delta Lake + s3a on the configured endpoint, jars from the cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lakehouse.errors import ConfigError
from lakehouse.settings import Settings
from lakehouse.storage import Credentials, endpoint_of

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LOG_CONFIG = Path(__file__).resolve().parent / "spark-log4j2.properties"


def spark_jars(settings: Settings) -> list[Path]:
    """The Delta and s3a jars resolved by `medshare setup`; never downloaded at session start."""
    jars = sorted(settings.spark_jars_dir.glob("*.jar"))
    if not any(j.name.startswith("delta-spark_") for j in jars):
        raise ConfigError(
            f"Spark's Delta/s3a jars are missing from {settings.spark_jars_dir}: run `make setup`"
        )
    return jars


def spark_conf(settings: Settings, credentials: Credentials, *, master: str | None = None) -> dict[str, str]:
    """Every configuration the session needs, as plain strings (also handy for spark-submit)."""
    endpoint = endpoint_of(settings, credentials)
    return {
        "spark.master": master or settings.spark_master,
        "spark.jars": ",".join(str(j) for j in spark_jars(settings)),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        # Sized for a small machine: the default 200 makes hundreds of tiny tasks and files.
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.ui.enabled": "false",
        # Loopback: the driver must not pick the machine's external interface.
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG_CONFIG}",
        "spark.sql.debug.maxToStringFields": "200",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        # Keep new tables at a protocol delta-rs reads and writes too.
        "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": settings.s3_region,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https://")).lower(),
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        ),
        "spark.hadoop.fs.s3a.access.key": credentials.access_key,
        "spark.hadoop.fs.s3a.secret.key": credentials.secret_key.get_secret_value(),
        # AWS SDK >= 2.30 sends new checksum headers some S3-compatible stores reject.
        "spark.hadoop.fs.s3a.checksum.generation": "false",
        "spark.hadoop.fs.s3a.change.detection.mode": "none",
    }


def build_spark_session(
    settings: Settings,
    credentials: Credentials,
    *,
    app_name: str = "medshare",
    master: str | None = None,
    extra_conf: dict[str, str] | None = None,
) -> SparkSession:
    """A session for one site's credentials. Spark keeps one active session per process:
    a later call with other credentials (or another master) stops the earlier session first."""
    from pyspark.sql import SparkSession

    conf = {**spark_conf(settings, credentials, master=master), **(extra_conf or {})}
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers (UDFs, some GX metrics) must run the driver's interpreter and packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:
        same = all(
            active.conf.get(k, None) == v
            for k, v in conf.items()
            if k.startswith("spark.hadoop") or k == "spark.master"
        )
        if same:
            return active
        active.stop()
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
