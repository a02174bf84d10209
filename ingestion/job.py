"""The city ingestion job: landing → bronze → curated + quarantine (+ waiting), with a run report.

The driver only lists the landing bucket and plans; the files are read on the executors
(`ingestion.read`), so the driver's memory does not grow with the files. Per dataset, the
records of every file go to bronze as received, are linked to their patient where they came
without one (`ingestion.link`), validated in one Spark pass, and end in exactly one place:
curated (last delivery wins per business key), quarantine (with the rule and the reason),
`waiting` (their patient is not known yet), or counted as a removed duplicate. The report proves
it per dataset: rows in + rows back from waiting = curated + quarantined + duplicates + waiting.

Idempotent by a ledger of landed files (bronze `_files`): a file already ingested with the same
ETag is skipped; the same key with new content is a hospital's correction, whose earlier rows are
deleted from curated before the new ones are merged. The ledger is written last, so a run that
dies is simply repeated.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ingestion.link import WAITING_REASON, fhir_ids_of, link, registry_of
from ingestion.profiles import Profile, SourceProfiles, default_profile, parse_profiles
from ingestion.quality import failed_expectations, run_suite
from ingestion.read import (
    LINK_META,
    RECORD_META,
    FileResults,
    SourceFile,
    StoreAccess,
    classify,
    plan,
    read_files,
)
from ingestion.report import DatasetReport, RunReport
from ingestion.validate import SOURCE_TIME_ZONE, conform, rule_names, typed_values, validate
from lakehouse.contracts import Contract
from lakehouse.errors import MedshareError
from lakehouse.storage import s3a_uri, storage_errors
from lakehouse.topology import Topology

if TYPE_CHECKING:
    from minio import Minio
    from pyspark.sql import Column, DataFrame, SparkSession

Progress = Callable[[str, int, int], None]  # (stage, done, total)

LEDGER = "_files"
FHIR_IDS = "_fhir_ids"
QUARANTINE_ROWS = "rows"
QUARANTINE_FILES = "files"
WAITING = "waiting"
RUNS_PREFIX = "_runs"
STATS_PROPERTY = "delta.dataSkippingStatsColumns"
# Datasets whose rows others are linked to come first.
FIRST = ("patients", "encounters")
# Columns every bronze row carries beside the contract's (bronze keeps `_line` as text, as it
# always has).
BRONZE_META = (*RECORD_META, *LINK_META)


# Datasets ingested side by side after `patients` (2 cores: a third keeps them busy through the
# driver-side gaps of the other two).
PARALLEL_DATASETS = 3


class IngestionError(MedshareError):
    """The run failed; its report says where."""


@dataclass(frozen=True, kw_only=True)
class IngestOptions:
    city: str
    # Where tables live inside each bucket: "" in production; tests use a private prefix.
    table_root: str = ""
    landing_prefix: str = ""
    run_id: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    )
    now: dt.datetime | None = None


@dataclass(frozen=True, kw_only=True)
class CityTables:
    bronze: str
    curated: str
    quarantine: str
    root: str

    def bronze_table(self, name: str) -> str:
        return s3a_uri(self.bronze, f"{self.root}{name}")

    def curated_table(self, name: str) -> str:
        return s3a_uri(self.curated, f"{self.root}{name}")

    def quarantine_table(self, name: str) -> str:
        return s3a_uri(self.quarantine, f"{self.root}{name}")


@dataclass(frozen=True, kw_only=True)
class _DatasetJob:
    """What every dataset of a run needs: the files, the media read once, corrections, profiles."""

    files: list[SourceFile]
    media: DataFrame | None
    corrected: set[str]
    profiles: Mapping[str, Profile]


@dataclass(frozen=True)
class _Known:
    """What the ledger says of a key: the content's checksum and (since ETags are kept) its ETag."""

    checksum: str
    etag: str | None


class _Stages:
    """Seconds spent per stage of the run, summed over datasets (the run report's `stages`)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self.into[name] = round(self.into.get(name, 0.0) + time.monotonic() - started, 2)


def _count_expressions(contract: Contract) -> list[Column]:
    """Aggregates that count rows in, waiting, valid, and quarantined by each first rule."""
    from pyspark.sql import functions as F

    first, waiting = F.get(F.col("_rules"), 0), F.col(WAITING_REASON).isNotNull()
    return [
        F.count(F.lit(1)).alias("rows"),
        F.count_if(waiting).alias("waiting"),
        F.count_if(~waiting & first.isNull()).alias("valid"),
        *[F.count_if(~waiting & (first == rule)).alias(f"rule:{rule}") for rule in rule_names(contract)],
    ]


def _pinned(spark: SparkSession, uri: str) -> DataFrame:
    """The table as it is now, pinned to its current version. A cached frame read from a table
    this run then writes (the waiting rows, the patients registry) is recomputed after the write
    — Delta invalidates caches by path — and must see the same rows again, not the new ones."""
    from delta.tables import DeltaTable

    latest = DeltaTable.forPath(spark, uri).history(1).select("version").first()
    assert latest is not None, uri  # a Delta table has at least one commit
    return spark.read.format("delta").option("versionAsOf", latest[0]).load(uri)


def _table_exists(spark: SparkSession, uri: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, uri))


class CityIngestion:
    def __init__(
        self,
        spark: SparkSession,
        access: StoreAccess,
        topology: Topology,
        contracts: dict[str, Contract],
        options: IngestOptions,
        progress: Progress,
        profiles: SourceProfiles,
    ) -> None:
        city = topology.city(options.city)
        self.spark, self.topology, self.contracts = spark, topology, contracts
        self.options, self.progress, self.profiles = options, progress, profiles
        self.access = access
        self.client: Minio = access.client()
        self.city = city
        self.landing_bucket = city.buckets.landing
        self.tables = CityTables(
            bronze=city.buckets.bronze,
            curated=city.buckets.curated,
            quarantine=city.buckets.quarantine,
            root=options.table_root,
        )
        self.hospitals = [h.id for h in topology.hospitals_of(city.id)]
        now = options.now or dt.datetime.now(dt.UTC)
        self.now_local = now.astimezone(ZoneInfo(SOURCE_TIME_ZONE)).replace(tzinfo=None)
        self.report = RunReport(city=city.id, run_id=options.run_id, started_at=now.isoformat())
        self.stage = _Stages(self.report.stages)
        self._cached: list[DataFrame] = []
        self._new_fhir_ids: list[DataFrame] = []
        self._waiting_counts: dict[str, int] = {}
        self._links: tuple[DataFrame | None, DataFrame | None] | None = None
        # Tables every dataset writes to (quarantine rows, waiting) are written one at a time: the
        # first write creates them, and Delta would refuse a second creation under way.
        self._shared = threading.Lock()
        # Great Expectations keeps process-wide state; its suites run one at a time.
        self._gx = threading.Lock()

    # -- planning (driver: a listing, no file content) ----------------------------------------
    def _ledger(self) -> dict[str, _Known]:
        """key → the latest delivery recorded, ingested or rejected: an unchanged file is not
        read again (a rejected one would only be rejected again)."""
        uri = self.tables.bronze_table(LEDGER)
        if not _table_exists(self.spark, uri):
            return {}
        table = self.spark.read.format("delta").load(uri)
        etag = "etag" if "etag" in table.columns else "CAST(NULL AS STRING) AS etag"
        rows = table.orderBy("recorded_at").selectExpr("key", "checksum", etag).collect()
        return {r["key"]: _Known(r["checksum"], r["etag"]) for r in rows}

    def _plan(self) -> tuple[list[SourceFile], list[dict[str, Any]], set[str]]:
        """The files to read, the files rejected by their name alone, and the keys that are
        corrections of earlier deliveries."""
        ledger = self._ledger()
        prefix = self.options.landing_prefix
        with storage_errors(f"list {self.landing_bucket}"):
            listing = [
                o
                for o in self.client.list_objects(self.landing_bucket, prefix=prefix or None, recursive=True)
                if o.object_name and not o.is_dir
            ]
        # Delivery order: what was landed later wins among rows with the same business key.
        listing.sort(key=lambda o: (o.last_modified or dt.datetime.min.replace(tzinfo=dt.UTC), o.object_name))
        self.report.files_seen = len(listing)
        files, rejected, corrected = [], [], set()
        hospitals = set(self.hospitals)
        for order, obj in enumerate(listing):
            key = str(obj.object_name)[len(prefix) :]
            etag = (obj.etag or "").strip('"')
            known = ledger.get(key)
            if known is not None and known.etag == etag:
                self.report.files_unchanged += 1
                continue
            if known is not None and known.etag is not None:
                corrected.add(key)
            kind = classify(key, datasets=self.contracts, hospitals=hospitals)
            if isinstance(kind, str):
                rejected.append({"key": key, "reason": kind, "etag": etag, "size": obj.size or 0})
                continue
            hospital_id, file_kind, dataset = kind
            files.append(
                SourceFile(
                    key=key,
                    object_name=str(obj.object_name),
                    size=obj.size or 0,
                    etag=etag,
                    order=order,
                    kind=file_kind,
                    hospital_id=hospital_id,
                    dataset=dataset,
                    profile=self.profiles.for_file(hospital_id, dataset),
                    # Recorded by an older version (a checksum, no ETag): read only if changed.
                    known_sha256=known.checksum if known is not None and known.etag is None else None,
                )
            )
        return files, rejected, corrected

    # -- reading (executors) --------------------------------------------------------------------
    def _read(
        self, files: list[SourceFile], contracts: Mapping[str, Contract]
    ) -> tuple[DataFrame, FileResults] | None:
        if not files:
            return None
        parallelism = self.spark.sparkContext.defaultParallelism
        tasks = plan(files, parallelism=parallelism)
        return read_files(
            self.spark, tasks, access=self.access, bucket=self.landing_bucket, contracts=contracts
        )

    def _records(self, name: str, tabular: DataFrame | None, media: DataFrame | None) -> DataFrame | None:
        contract = self.contracts[name]
        columns = [*contract.column_names, *BRONZE_META, "_order"]
        parts = [
            df.where(f"_dataset = '{name}'").select(*columns) for df in (tabular, media) if df is not None
        ]
        if not parts:
            return None
        out = parts[0]
        for more in parts[1:]:
            out = out.unionByName(more)
        return out

    def _waiting(self, name: str) -> DataFrame | None:
        """Rows of `name` left waiting by earlier runs, in the shape of new records."""
        from pyspark.sql import functions as F

        uri = self.tables.quarantine_table(WAITING)
        if not self._waiting_counts.get(name):
            return None
        contract = self.contracts[name]
        schema = ", ".join(f"`{c}` string" for c in contract.column_names)
        rows = _pinned(self.spark, uri).where(F.col("dataset") == name)
        return rows.select(
            F.from_json("record", schema).alias("r"), *BRONZE_META, "_order", "first_run"
        ).select("r.*", *BRONZE_META, "_order", "first_run")

    @staticmethod
    def _needs_links(name: str, media: DataFrame | None, had_earlier: bool) -> bool:
        """Whether any row may lack its patient or encounter: rows back from waiting, or FHIR and
        DICOM records saying how to find them (one look at the cached media records; extracts
        always name the resident)."""
        from pyspark.sql import functions as F

        if had_earlier:
            return True
        if media is None:
            return False
        linked = (
            F.col("_link_patient").isNotNull()
            | F.col("_link_encounter").isNotNull()
            | F.col("_link_mrn").isNotNull()
        )
        return not media.where((F.col("_dataset") == name) & linked).isEmpty()

    def _count_waiting(self) -> dict[str, int]:
        """Rows left waiting by earlier runs, per dataset (most datasets have none)."""
        uri = self.tables.quarantine_table(WAITING)
        if not _table_exists(self.spark, uri):
            return {}
        counts = self.spark.read.format("delta").load(uri).groupBy("dataset").count().collect()
        return {r["dataset"]: r["count"] for r in counts}

    def _link_sources(self) -> tuple[DataFrame | None, DataFrame | None]:
        """The patients registry and the FHIR ids, pinned once for the run (after `patients`)."""
        registry = fhir = None
        patients = self.tables.curated_table("patients")
        if _table_exists(self.spark, patients):
            registry = registry_of(_pinned(self.spark, patients))
        ids = self.tables.bronze_table(FHIR_IDS)
        columns = ["hospital_id", "resource_type", "fhir_id", "patient_mrn", "resident_id", "encounter_id"]
        parts = [_pinned(self.spark, ids).select(*columns)] if _table_exists(self.spark, ids) else []
        parts += self._new_fhir_ids
        if parts:
            fhir = parts[0]
            for more in parts[1:]:
                fhir = fhir.unionByName(more)
        return registry, fhir

    def _dataset(
        self,
        contract: Contract,
        records: DataFrame | None,
        corrected: set[str],
        profiles: Mapping[str, Profile],
        media: DataFrame | None,
    ) -> DatasetReport | None:
        """The run's records stream once through link and validation into bronze (as received,
        annotated with what validation found); counts, waiting, quarantine and curated are then
        read back from this run's bronze files. Rows back from waiting join them there."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        started = time.monotonic()
        name = contract.name
        earlier = self._waiting(name)
        if records is None and earlier is None:
            return None
        report = DatasetReport(dataset=name)
        links = self._links if self._needs_links(name, media, earlier is not None) else None
        parts, valid = [], 0
        if records is not None:
            with self.stage("read, link, validate, bronze"):
                annotated = self._annotated(records, contract, profiles, links)
                # Counted on the way into bronze (an observation: no second pass over the rows).
                counts = Observation(f"counts-{name}-{uuid.uuid4().hex[:6]}")
                self._bronze(contract, annotated.observe(counts, *_count_expressions(contract)))
            valid = self._counted(counts.get, report, new=True)
            parts.append(self._this_run(contract))
        waited = None
        if earlier is not None:
            waited = self._annotated(earlier, contract, profiles, links)
            waited = waited.withColumn("_new", F.lit(False)).cache()
            parts.append(waited)
        rows = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
        try:
            if valid < 0:  # a first rule the observation did not name: count them all exactly
                report.rows_in = report.waiting = report.from_waiting = 0
                report.quarantined = {}
                with self.stage("count"):
                    valid = self._count(rows, report)
            elif waited is not None:
                with self.stage("count"):
                    valid += self._count(waited, report)
            with self.stage("waiting"), self._shared:
                waiting = rows.where(F.col(WAITING_REASON).isNotNull())
                self._store_waiting(contract, waiting, report.waiting, had_earlier=earlier is not None)
            settled = rows.where(F.col(WAITING_REASON).isNull())
            if report.quarantined_total:
                with self.stage("quarantine"), self._shared:
                    self._quarantine(contract, settled.where(F.size("_rules") > 0))
            if valid:
                self._curate(
                    contract, settled.where(F.size("_rules") == 0), corrected, report, valid, profiles
                )
        finally:
            if waited is not None:
                waited.unpersist()
        report.seconds = round(time.monotonic() - started, 2)
        return report

    def _annotated(
        self,
        rows: DataFrame,
        contract: Contract,
        profiles: Mapping[str, Profile],
        links: tuple[DataFrame | None, DataFrame | None] | None,
    ) -> DataFrame:
        """Records as received (after linking) with what validation found: `_rules`, `_reason`,
        `_month`, and `_waiting` for a record whose patient is not known yet."""
        from pyspark.sql import functions as F

        if links is not None:
            registry, fhir = links
            linked = link(rows, contract, registry=registry, fhir_ids=fhir)
        else:  # only FHIR and DICOM records come without their patient
            linked = rows.withColumn(WAITING_REASON, F.lit(None).cast("string"))
        # Bronze keeps values as written (男, not M): validation sees them spelled the contract's way.
        spelled = [c for c in contract.column_names if any(p.values.get(c) for p in profiles.values())]
        kept = linked.withColumns({f"__raw_{c}": F.col(f"`{c}`") for c in spelled})
        checked = validate(
            conform(kept, contract, profiles),
            contract,
            city_hospitals=self.hospitals,
            all_hospitals=[h.id for h in self.topology.hospitals],
            now_local=self.now_local,
            profiles=profiles,
        )
        extra = [c for c in ("first_run", "_new") if c in rows.columns]
        return checked.select(
            *[F.col(f"`__raw_{c}`" if c in spelled else f"`{c}`").alias(c) for c in contract.column_names],
            *BRONZE_META,
            "_order",
            *extra,
            "_rules",
            "_reason",
            "_month",
            WAITING_REASON,
        )

    def _this_run(self, contract: Contract) -> DataFrame:
        """This run's rows of the dataset, read back from bronze (Delta skips the files of other
        runs by their `_run_id` statistics)."""
        from pyspark.sql import functions as F

        rows = self.spark.read.format("delta").load(self.tables.bronze_table(contract.name))
        return rows.where(F.col("_run_id") == self.options.run_id).select(
            *[F.col(f"`{c}`") for c in contract.column_names],
            *[F.col(c).cast("long") if c == "_line" else F.col(c) for c in BRONZE_META],
            "_order",
            F.lit(self.options.run_id).alias("first_run"),
            "_rules",
            "_reason",
            "_month",
            WAITING_REASON,
            F.lit(True).alias("_new"),
        )

    @staticmethod
    def _counted(metrics: Mapping[str, Any], report: DatasetReport, *, new: bool) -> int:
        """The observed counts into the report; returns the valid rows, or -1 when some row broke
        a rule the observation did not name (then they are counted in a pass of their own)."""
        rules = {k.removeprefix("rule:"): int(v) for k, v in metrics.items() if k.startswith("rule:") and v}
        total, waiting, valid = int(metrics["rows"]), int(metrics["waiting"]), int(metrics["valid"])
        if total != waiting + valid + sum(rules.values()):
            return -1
        if new:
            report.rows_in += total
        else:
            report.from_waiting += total
        report.waiting += waiting
        for rule, n in rules.items():
            report.quarantined[rule] = report.quarantined.get(rule, 0) + n
        return valid

    def _count(self, checked: DataFrame, report: DatasetReport) -> int:
        """Everything the report balances, in one pass: new rows, rows back from waiting, rows
        still waiting, quarantined rows by their first rule. Adds to the report; returns the
        valid rows."""
        from pyspark.sql import functions as F

        counts = (
            checked.groupBy(
                F.col("_new").alias("new"),
                F.col(WAITING_REASON).isNotNull().alias("waiting"),
                F.get(F.col("_rules"), 0).alias("rule"),
            )
            .count()
            .collect()
        )
        report.rows_in += sum(r["count"] for r in counts if r["new"])
        report.from_waiting += sum(r["count"] for r in counts if not r["new"])
        report.waiting += sum(r["count"] for r in counts if r["waiting"])
        for r in counts:
            if not r["waiting"] and r["rule"] is not None:
                report.quarantined[r["rule"]] = report.quarantined.get(r["rule"], 0) + r["count"]
        return sum(r["count"] for r in counts if not r["waiting"] and r["rule"] is None)

    def _quarantine(self, contract: Contract, bad: DataFrame) -> None:
        from pyspark.sql import functions as F

        raw_json = F.coalesce(
            F.col("_raw"), F.to_json(F.struct(*[F.col(f"`{c}`") for c in contract.column_names]))
        )
        (
            bad.select(
                F.lit(contract.name).alias("dataset"),
                F.col(f"`{contract.partition_by.hospital}`").alias("hospital_id"),
                F.col("_source").alias("source_file"),
                F.col("_line").cast("int").alias("line"),
                F.col("_rules")[0].alias("rule"),
                F.col("_rules").alias("rules"),
                F.col("_reason").alias("reason"),
                raw_json.alias("raw"),
                F.col("_checksum").alias("file_checksum"),
                F.lit(self.options.run_id).alias("run_id"),
                F.current_timestamp().alias("quarantined_at"),
            )
            .write.format("delta")
            .mode("append")
            .partitionBy("dataset")
            .save(self.tables.quarantine_table(QUARANTINE_ROWS))
        )

    def _curate(
        self,
        contract: Contract,
        good: DataFrame,
        corrected: set[str],
        report: DatasetReport,
        valid: int,
        profiles: Mapping[str, Profile],
    ) -> None:
        """Last delivered wins among rows with the same business key; the batch passes its quality
        suite before anything is committed."""
        from pyspark.sql import functions as F

        # One hash aggregation per business key (no sort): the row of the latest delivery. The
        # rows are first gathered by hospital, which both the aggregation (its keys start with the
        # hospital) and the partitioned write can use: one shuffle instead of two.
        hospital = contract.partition_by.hospital
        projected = (
            conform(good, contract, profiles)
            .repartition(F.col(f"`{hospital}`"))
            .select(
                *typed_values(contract, profiles),
                F.col("_month").alias("month"),
                F.col("_source").alias("_source_file"),
                F.col("_checksum").alias("_source_checksum"),
                "_order",
                "_line",
            )
        )
        values = [c for c in projected.columns if c not in ("_order", "_line")]
        latest = F.max_by(F.struct(*[F.col(f"`{c}`") for c in values]), F.struct("_order", "_line"))
        curated = (
            projected.groupBy(*[F.col(f"`{k}`") for k in contract.business_key])
            .agg(latest.alias("_latest"))
            .select("_latest.*")
            .withColumn("_run_id", F.lit(self.options.run_id))
            .cache()
        )
        try:
            with self.stage("deduplicate"):
                report.curated = curated.count()
            report.duplicates = valid - report.curated
            if report.curated:
                with self.stage("quality suite"), self._gx:
                    self._check_quality(contract, curated, report)
            with self.stage("commit curated"):
                self._commit_curated(contract, curated, corrected)
        finally:
            curated.unpersist()

    def _bronze(self, contract: Contract, annotated: DataFrame) -> None:
        from pyspark.sql import functions as F

        uri = self.tables.bronze_table(contract.name)
        existed = _table_exists(self.spark, uri)
        if existed:
            self._run_id_stats_only(uri)
        (
            annotated.select(
                *[F.col(f"`{c}`") for c in contract.column_names],
                # Early in the schema: Delta keeps statistics of the first 32 columns, and the
                # read-back of this run skips other runs' files by them.
                F.lit(self.options.run_id).alias("_run_id"),
                *[F.col(c).cast("string") if c == "_line" else F.col(c) for c in BRONZE_META],
                "_order",
                "_rules",
                "_reason",
                "_month",
                WAITING_REASON,
                F.current_timestamp().alias("_ingested_at"),
            )
            .write.format("delta")
            .mode("append")
            .option("mergeSchema", "true")
            .save(uri)
        )
        if not existed:
            self._run_id_stats_only(uri)

    def _run_id_stats_only(self, uri: str) -> None:
        """Statistics of `_run_id` only: it is what the read-back of a run filters on, and
        statistics of every text column (raw records, reasons) cost as much as the write."""
        properties = self.spark.sql(f"SHOW TBLPROPERTIES delta.`{uri}`").collect()
        if not any(r["key"] == STATS_PROPERTY for r in properties):
            self.spark.sql(f"ALTER TABLE delta.`{uri}` SET TBLPROPERTIES ('{STATS_PROPERTY}' = '_run_id')")

    def _store_waiting(
        self, contract: Contract, waiting: DataFrame, count: int, *, had_earlier: bool
    ) -> None:
        """The dataset's waiting rows become exactly these `count` rows (earlier ones linked now
        are gone)."""
        from pyspark.sql import functions as F

        uri = self.tables.quarantine_table(WAITING)
        rows = waiting.select(
            F.lit(contract.name).alias("dataset"),
            F.to_json(F.struct(*[F.col(f"`{c}`") for c in contract.column_names])).alias("record"),
            *BRONZE_META,
            "_order",
            "first_run",
            F.col(WAITING_REASON).alias("reason"),
            F.current_timestamp().alias("checked_at"),
        )
        if not had_earlier and not count:
            return
        if not _table_exists(self.spark, uri):
            rows.write.format("delta").partitionBy("dataset").save(uri)
            return
        (
            rows.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", f"dataset = '{contract.name}'")
            .save(uri)
        )

    def _check_quality(self, contract: Contract, curated: DataFrame, report: DatasetReport) -> None:
        result = run_suite(curated, contract, run_id=self.options.run_id)
        key = f"{self.options.table_root}{RUNS_PREFIX}/{self.options.run_id}/quality/{contract.name}.json"
        self._put_json(key, json.dumps(result, indent=1, default=str))
        report.quality_passed = bool(result.get("success"))
        if not report.quality_passed:
            raise IngestionError(
                f"{contract.name}: the curated batch fails its quality suite, nothing was committed: "
                + "; ".join(failed_expectations(result))
                + f" (result: s3://{self.tables.bronze}/{key})"
            )

    def _commit_curated(self, contract: Contract, curated: DataFrame, corrected: set[str]) -> None:
        from delta.tables import DeltaTable

        uri = self.tables.curated_table(contract.name)
        if not _table_exists(self.spark, uri):
            (
                # Gathered by hospital already (see _curate): a task writes whole hospitals, one file
                # per (hospital, month).
                curated.write.format("delta").partitionBy(contract.partition_by.hospital, "month").save(uri)
            )
            return
        table = DeltaTable.forPath(self.spark, uri)
        if corrected:
            # A hospital's corrected delivery replaces everything its earlier version brought.
            from pyspark.sql import functions as F

            table.delete(F.col("_source_file").isin(*sorted(corrected)))
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in contract.business_key)
        (
            table.alias("t")
            .merge(curated.alias("s"), condition)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> RunReport:
        started = time.monotonic()
        try:
            self.progress("listing the landing bucket", 0, 1)
            with self.stage("plan (list the landing bucket, ledger)"):
                files, rejected_by_name, corrected = self._plan()
                self._waiting_counts = self._count_waiting()
            self.progress("listing the landing bucket", 1, 1)
            self.report.files_corrected = len(corrected)
            # FHIR and DICOM files hold several datasets each: read once, with every column, and
            # kept (they are few) for every dataset to take its records from.
            media, file_results = None, []
            read = self._read([f for f in files if f.dataset is None], self.contracts)
            if read is not None:
                media = read[0].persist()
                self._cached.append(media)
                with self.stage("read files (executors)"):
                    media.count()
                file_results = read[1].collect()
                self._new_fhir_ids = [
                    fhir_ids_of(media.where(f"_dataset = '{n}'"), n, self.contracts[n].column_names)
                    for n in ("patients", "encounters")
                ]
            profiles = {p.name: p for p in (f.profile for f in files)} or {"default": default_profile()}
            job = _DatasetJob(files=files, media=media, corrected=corrected, profiles=profiles)
            # Patients first: other datasets link to them. Then the rest side by side — each is a
            # chain of Spark jobs with driver-side gaps (planning, commits, the quality suite)
            # that the others' tasks fill.
            rest = sorted(n for n in self.contracts if n != "patients")
            total = len(rest) + int("patients" in self.contracts)
            self.progress("ingesting datasets", 0, total)
            done = 0
            if "patients" in self.contracts:
                file_results += self._ingest("patients", job)
                done += 1
                self.progress("ingesting datasets", done, total)
            self._links = self._link_sources() if media is not None or self._waiting_counts else None
            with ThreadPoolExecutor(max_workers=PARALLEL_DATASETS, thread_name_prefix="dataset") as pool:
                futures = [pool.submit(self._ingest, name, job) for name in rest]
                try:
                    for future in as_completed(futures):
                        file_results += future.result()
                        done += 1
                        self.progress("ingesting datasets", done, total)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
            self.report.datasets = {n: self.report.datasets[n] for n in sorted(self.report.datasets)}
            with self.stage("ledger"):
                self._new_fhir_ids_commit()
                self._record_files(files, rejected_by_name, file_results, corrected)
            self.report.status = "succeeded"
        except MedshareError as exc:
            self.report.status, self.report.error = "failed", str(exc)
            raise
        finally:
            for df in self._cached:
                df.unpersist()
            self.report.seconds = round(time.monotonic() - started, 2)
            self._store_report()
        return self.report

    def _ingest(self, name: str, job: _DatasetJob) -> list[dict[str, object]]:
        """One dataset, start to end; returns what happened to each of its extracts."""
        contract = self.contracts[name]
        read = self._read([f for f in job.files if f.dataset == name], {name: contract})
        records = self._records(name, None if read is None else read[0], job.media)
        report = self._dataset(contract, records, job.corrected, job.profiles, job.media)
        if report is not None:
            report.replaced_files = sum(
                1 for f in job.files if f.dataset in (name, None) and f.key in job.corrected
            )
            self.report.datasets[name] = report
        return [] if read is None else read[1].collect()

    def _new_fhir_ids_commit(self) -> None:
        from pyspark.sql import functions as F

        for part in self._new_fhir_ids:
            (
                part.withColumn("run_id", F.lit(self.options.run_id))
                .write.format("delta")
                .mode("append")
                .save(self.tables.bronze_table(FHIR_IDS))
            )

    def _record_files(
        self,
        files: list[SourceFile],
        rejected_by_name: list[dict[str, Any]],
        results: list[dict[str, object]],
        corrected: set[str],
    ) -> None:
        from pyspark.sql import functions as F

        by_key = {f.key: f for f in files}
        entries: list[dict[str, Any]] = []
        rejected: list[dict[str, str]] = []
        entry_rejects: list[dict[str, Any]] = []
        for r in rejected_by_name:
            rejected.append({"key": r["key"], "reason": r["reason"]})
            entries.append({**r, "checksum": "", "dataset": "", "status": "rejected"})
        for result in sorted(results, key=lambda r: (str(r["key"]), int(str(r.get("line", 0))))):
            f = by_key[str(result["key"])]
            status, error = str(result["status"]), result.get("error")
            if status == "entry_rejected":
                entry_rejects.append({"key": f"{f.key}#{result['line']}", "reason": error, "etag": f.etag})
                continue
            if status == "unchanged":
                self.report.files_unchanged += 1
            elif status == "rejected":
                rejected.append({"key": f.key, "reason": str(error)})
            self.report.files.append(
                {
                    k: result[k]
                    for k in ("key", "status", "format", "encoding", "profile", "records", "not_read")
                    if result.get(k) is not None
                }
            )
            entries.append(
                {
                    "key": f.key,
                    "checksum": result.get("sha256") or "",
                    "etag": f.etag,
                    "size": result.get("size") or f.size,
                    "dataset": f.dataset or "",
                    # A DICOMDIR is read as the media's index; an unchanged file of an older
                    # ledger is recorded again, now with its ETag.
                    "status": "rejected" if status == "rejected" else "ingested",
                    "reason": error,
                    "new": status != "unchanged" and f.key not in corrected,
                }
            )
        self.report.files_rejected = sorted(rejected, key=lambda r: r["key"])
        self.report.files_new = sum(1 for e in entries if e.get("new", True))
        if not entries and not entry_rejects:
            return
        schema = (
            "key string, checksum string, etag string, size long, dataset string, status string, "
            "reason string, run_id string"
        )
        rows = [
            {
                "key": str(e["key"]),
                "checksum": str(e["checksum"]),
                "etag": str(e["etag"]),
                "size": int(e["size"]),
                "dataset": str(e["dataset"]),
                "status": str(e["status"]),
                "reason": e.get("reason"),
                "run_id": self.options.run_id,
            }
            for e in entries
        ]
        ledger = self.spark.createDataFrame(rows, schema).withColumn("recorded_at", F.current_timestamp())
        quarantined = [
            {"key": r["key"], "checksum": r["etag"], "reason": r["reason"], "run_id": self.options.run_id}
            for r in (*[e for e in rows if e["status"] == "rejected"], *entry_rejects)
        ]
        if quarantined:
            (
                self.spark.createDataFrame(
                    quarantined, "key string, checksum string, reason string, run_id string"
                )
                .withColumn("recorded_at", F.current_timestamp())
                .write.format("delta")
                .mode("append")
                .save(self.tables.quarantine_table(QUARANTINE_FILES))
            )
        (
            ledger.write.format("delta")
            .mode("append")
            .option("mergeSchema", "true")
            .save(self.tables.bronze_table(LEDGER))
        )

    def _store_report(self) -> None:
        self._put_json(report_key(self.options), self.report.to_json())

    def _put_json(self, key: str, text: str) -> None:
        body = text.encode()
        with storage_errors(f"store {key} in {self.tables.bronze}"):
            self.client.put_object(
                self.tables.bronze, key, io.BytesIO(body), len(body), content_type="application/json"
            )


def report_key(options: IngestOptions) -> str:
    """Where a run's report is stored in the city's bronze bucket."""
    return f"{options.table_root}{RUNS_PREFIX}/{options.run_id}.json"


def run_ingestion(
    spark: SparkSession,
    access: StoreAccess,
    topology: Topology,
    contracts: dict[str, Contract],
    options: IngestOptions,
    progress: Progress = lambda *_: None,
    *,
    profiles: SourceProfiles | None = None,
) -> RunReport:
    """Ingest everything new in the city's landing bucket; returns the stored report.
    `profiles`: how the hospitals write their exports (default: everything by the default profile)."""
    if profiles is None:
        profiles = parse_profiles({}, path=Path("(no sources.yaml)"), topology=topology, contracts=contracts)
    return CityIngestion(spark, access, topology, contracts, options, progress, profiles).run()
