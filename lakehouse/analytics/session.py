"""The analysts' SparkSession: the platform's Spark set-up with every provincial table registered
by name (`province.encounters`, …) and every gold table written so far (`gold.disease_burden`, …).

It runs as the `analytics` storage identity: read-only on the provincial lakehouse, read-write on
the gold bucket only (see `infra.provision`), so submitted code cannot alter provincial data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lakehouse.analytics.settings import AnalyticsSettings
from lakehouse.contracts import load_contracts
from lakehouse.settings import Settings
from lakehouse.spark import build_spark_session
from lakehouse.storage import ANALYTICS_SITE, s3_uri, site_credentials
from lakehouse.topology import Topology, load_topology

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

PROVINCE_DB = "province"
GOLD_DB = "gold"


@dataclass(frozen=True)
class Locations:
    """Where the provincial tables are read from and the gold tables written to (s3:// URIs)."""

    tables_root: str
    gold_root: str

    @classmethod
    def of(cls, analytics: AnalyticsSettings, topology: Topology) -> Locations:
        buckets = topology.province.buckets
        return cls(
            tables_root=(analytics.tables_root or s3_uri(buckets.lakehouse)).rstrip("/"),
            gold_root=(analytics.gold_root or s3_uri(buckets.gold)).rstrip("/"),
        )

    def table(self, dataset: str) -> str:
        return f"{self.tables_root}/{dataset}"

    def gold(self, name: str) -> str:
        return f"{self.gold_root}/{name}"


def spark_path(uri: str) -> str:
    """Spark reads object storage through Hadoop's s3a filesystem."""
    return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri


def analyst_session(
    platform: Settings,
    analytics: AnalyticsSettings,
    *,
    master: str | None = None,
    app_name: str = "medshare-analytics",
) -> SparkSession:
    """A session with the province's tables registered; `master` overrides the settings'."""
    master = master or analytics.master or platform.spark_master
    extra = {
        # The in-memory catalog keeps the database folders here, not in the working directory.
        "spark.sql.warehouse.dir": str(platform.state_dir / "analytics" / "spark-warehouse"),
        "spark.executor.memory": analytics.executor_memory,
    }
    spark = build_spark_session(
        platform,
        site_credentials(platform, ANALYTICS_SITE),
        app_name=app_name,
        master=master,
        extra_conf=extra,
    )
    topology = load_topology(platform.platform_dir)
    register_tables(spark, platform, Locations.of(analytics, topology))
    return spark


def register_tables(spark: SparkSession, platform: Settings, where: Locations) -> dict[str, list[str]]:
    """Name every provincial table that exists (and every gold table); which were registered."""
    from lakehouse.analytics.jobs import JOBS

    datasets = sorted(n for n, c in load_contracts(platform.platform_dir).items() if c.shareable)
    registered = {
        PROVINCE_DB: _register(spark, PROVINCE_DB, {d: where.table(d) for d in datasets}),
        GOLD_DB: _register(spark, GOLD_DB, {j: where.gold(j) for j in JOBS}),
    }
    missing = sorted(set(datasets) - set(registered[PROVINCE_DB]))
    if missing:
        log.warning("provincial tables not written yet (not registered): %s", ", ".join(missing))
    return registered


def _register(spark: SparkSession, database: str, tables: dict[str, str]) -> list[str]:
    from delta.tables import DeltaTable

    done = []
    for name, uri in tables.items():
        if DeltaTable.isDeltaTable(spark, spark_path(uri)):
            register_table(spark, database, name, uri)
            done.append(name)
    return done


def register_table(spark: SparkSession, database: str, name: str, uri: str) -> None:
    """`database.name` for the Delta table at `uri` (the session's in-memory catalog)."""
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {database}.{name} USING DELTA LOCATION '{spark_path(uri)}'")
