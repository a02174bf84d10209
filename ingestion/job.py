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
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ingestion.link import WAITING_REASON, fhir_ids_of, link, registry_of
from ingestion.profiles import Profile, SourceProfiles, default_profile, parse_profiles
from ingestion.quality import failed_expectations, run_suite
from ingestion.read import FILE, SourceFile, StoreAccess, classify, plan, read_files
from ingestion.report import DatasetReport, RunReport
from ingestion.validate import SOURCE_TIME_ZONE, conform, typed_columns, validate
from lakehouse.contracts import Contract
from lakehouse.errors import MedshareError
from lakehouse.storage import s3a_uri, storage_errors
from lakehouse.topology import Topology

if TYPE_CHECKING:
    from minio import Minio
    from pyspark.sql import DataFrame, SparkSession

Progress = Callable[[str, int, int], None]  # (stage, done, total)

LEDGER = "_files"
FHIR_IDS = "_fhir_ids"
QUARANTINE_ROWS = "rows"
QUARANTINE_FILES = "files"
WAITING = "waiting"
RUNS_PREFIX = "_runs"
# Datasets whose rows others are linked to come first.
FIRST = ("patients", "encounters")
# Columns every bronze row carries beside the contract's (bronze keeps `_line` as text, as it
# always has).
BRONZE_META = (
    "_source",
    "_line",
    "_rule",
    "_error",
    "_raw",
    "_profile",
    "_checksum",
    "_fhir_id",
    "_link_patient",
    "_link_encounter",
    "_link_mrn",
)


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


@dataclass(frozen=True)
class _Known:
    """What the ledger says of a key: the content's checksum and (since ETags are kept) its ETag."""

    checksum: str
    etag: str | None


class _Stages:
    """Seconds spent per stage of the run, summed over datasets (the run report's `stages`)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.into[name] = round(self.into.get(name, 0.0) + time.monotonic() - started, 2)


def _pinned(spark: SparkSession, uri: str) -> DataFrame:
    """The table as it is now, pinned to its current version. A cached frame read from a table
    this run then writes (the waiting rows, the patients registry) is recomputed after the write
    — Delta invalidates caches by path — and must see the same rows again, not the new ones."""
    from delta.tables import DeltaTable

    version = DeltaTable.forPath(spark, uri).history(1).select("version").first()[0]
    return spark.read.format("delta").option("versionAsOf", version).load(uri)


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
    def _read(self, files: list[SourceFile], contracts: Mapping[str, Contract]) -> DataFrame | None:
        if not files:
            return None
        parallelism = self.spark.sparkContext.defaultParallelism
        tasks = plan(files, parallelism=parallelism)
        df = read_files(
            self.spark, tasks, access=self.access, bucket=self.landing_bucket, contracts=contracts
        )
        df = df.persist()
        self._cached.append(df)
        return df

    # -- one dataset ----------------------------------------------------------------------------
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

    def _count_waiting(self) -> dict[str, int]:
        """Rows left waiting by earlier runs, per dataset (most datasets have none)."""
        uri = self.tables.quarantine_table(WAITING)
        if not _table_exists(self.spark, uri):
            return {}
        counts = self.spark.read.format("delta").load(uri).groupBy("dataset").count().collect()
        return {r["dataset"]: r["count"] for r in counts}

    def _links(self) -> tuple[DataFrame | None, DataFrame | None]:
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
        *,
        from_media: bool,
    ) -> DatasetReport | None:
        """Bronze, then link, validate and count in one pass over a cached frame; then waiting,
        quarantine and curated are written from it."""
        from pyspark.sql import functions as F

        started = time.monotonic()
        name = contract.name
        earlier = self._waiting(name)
        if records is None and earlier is None:
            return None
        report = DatasetReport(dataset=name)
        if records is not None:
            with self.stage("bronze"):
                self._bronze(name, contract, records)
        incoming = [] if records is None else [records.withColumn("first_run", F.lit(self.options.run_id))]
        if earlier is not None:
            incoming.append(earlier)
        rows = incoming[0] if len(incoming) == 1 else incoming[0].unionByName(incoming[1])
        if (from_media or earlier is not None) and name != "patients":
            registry, fhir = self._links()
            linked = link(rows, contract, registry=registry, fhir_ids=fhir)
        else:  # only FHIR and DICOM records come without their patient
            linked = rows.withColumn(WAITING_REASON, F.lit(None).cast("string"))
        checked = validate(
            conform(linked, contract, profiles),
            contract,
            city_hospitals=self.hospitals,
            all_hospitals=[h.id for h in self.topology.hospitals],
            now_local=self.now_local,
            profiles=profiles,
        ).cache()
        try:
            with self.stage("link, validate, count"):
                valid = self._count(checked, report)
            with self.stage("waiting"):
                waiting = checked.where(F.col(WAITING_REASON).isNotNull())
                self._store_waiting(contract, waiting, report.waiting, had_earlier=earlier is not None)
            settled = checked.where(F.col(WAITING_REASON).isNull())
            with self.stage("quarantine"):
                self._quarantine(contract, settled.where(F.size("_rules") > 0))
            self._curate(contract, settled.where(F.size("_rules") == 0), corrected, report, valid)
        finally:
            checked.unpersist()
        report.seconds = round(time.monotonic() - started, 2)
        return report

    def _count(self, checked: DataFrame, report: DatasetReport) -> int:
        """Everything the report balances, in one pass: new rows, rows back from waiting, rows
        still waiting, quarantined rows by their first rule. Returns the valid rows."""
        from pyspark.sql import functions as F

        counts = (
            checked.groupBy(
                (F.col("first_run") == self.options.run_id).alias("new"),
                F.col(WAITING_REASON).isNotNull().alias("waiting"),
                F.get(F.col("_rules"), 0).alias("rule"),
            )
            .count()
            .collect()
        )
        report.rows_in = sum(r["count"] for r in counts if r["new"])
        report.from_waiting = sum(r["count"] for r in counts if not r["new"])
        report.waiting = sum(r["count"] for r in counts if r["waiting"])
        report.quarantined = {}
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
        self, contract: Contract, good: DataFrame, corrected: set[str], report: DatasetReport, valid: int
    ) -> None:
        """Last delivered wins among rows with the same business key; the batch passes its quality
        suite before anything is committed."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        keys = [F.col(f"`{k}`") for k in contract.business_key]
        latest = Window.partitionBy(*keys).orderBy(F.col("_order").desc(), F.col("_line").desc())
        curated = (
            good.withColumn("_rank", F.row_number().over(latest))
            .where("_rank = 1")
            .select(
                *typed_columns(contract),
                F.col("_month").alias("month"),
                F.col("_source").alias("_source_file"),
                F.col("_checksum").alias("_source_checksum"),
                F.lit(self.options.run_id).alias("_run_id"),
            )
            .cache()
        )
        try:
            with self.stage("deduplicate"):
                report.curated = curated.count()
            report.duplicates = valid - report.curated
            if report.curated:
                with self.stage("quality suite"):
                    self._check_quality(contract, curated, report)
            with self.stage("commit curated"):
                self._commit_curated(contract, curated, corrected)
        finally:
            curated.unpersist()

    def _bronze(self, name: str, contract: Contract, records: DataFrame) -> None:
        from pyspark.sql import functions as F

        (
            records.withColumn("_line", F.col("_line").cast("string"))
            .drop("_order")
            .withColumn("_run_id", F.lit(self.options.run_id))
            .withColumn("_ingested_at", F.current_timestamp())
            .write.format("delta")
            .mode("append")
            .option("mergeSchema", "true")
            .save(self.tables.bronze_table(name))
        )
        if name in ("patients", "encounters"):
            self._new_fhir_ids.append(fhir_ids_of(records, name, contract.column_names))

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
                curated.repartition(contract.partition_by.hospital)
                .write.format("delta")
                .partitionBy(contract.partition_by.hospital, "month")
                .save(uri)
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
        self._new_fhir_ids: list[DataFrame] = []
        self._waiting_counts: dict[str, int] = {}
        try:
            self.progress("listing the landing bucket", 0, 1)
            with self.stage("plan (list the landing bucket, ledger)"):
                files, rejected_by_name, corrected = self._plan()
            self.progress("listing the landing bucket", 1, 1)
            self.report.files_corrected = len(corrected)
            self._waiting_counts = self._count_waiting()
            media = self._read(
                [f for f in files if f.dataset is None], self.contracts
            )  # FHIR and DICOM: several datasets per file
            names = sorted(
                self.contracts, key=lambda n: (n not in FIRST, FIRST.index(n) if n in FIRST else 0, n)
            )
            file_rows: list[dict[str, Any]] = []
            if media is not None:
                file_rows += self._file_rows(media)
            profiles = {p.name: p for p in (f.profile for f in files)} or {"default": default_profile()}
            for done, name in enumerate(names):
                self.progress("ingesting datasets", done, len(names))
                contract = self.contracts[name]
                tabular = self._read([f for f in files if f.dataset == name], {name: contract})
                if tabular is not None:
                    file_rows += self._file_rows(tabular)
                records = self._records(name, tabular, media)
                report = self._dataset(contract, records, corrected, profiles, from_media=media is not None)
                if report is not None:
                    report.replaced_files = sum(
                        1 for f in files if f.dataset in (name, None) and f.key in corrected
                    )
                    self.report.datasets[name] = report
                if tabular is not None:
                    tabular.unpersist()
            self.progress("ingesting datasets", len(names), len(names))
            with self.stage("ledger"):
                self._new_fhir_ids_commit()
                self._record_files(files, rejected_by_name, file_rows, corrected)
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

    def _file_rows(self, df: DataFrame) -> list[dict[str, Any]]:
        columns = [
            "_source",
            "_status",
            "_error",
            "_line",
            "_raw",
            "_encoding",
            "_records",
            "_sha256",
            "_size",
        ]
        return [r.asDict() for r in df.where(f"_dataset = '{FILE}'").select(*columns, "_profile").collect()]

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
        file_rows: list[dict[str, Any]],
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
        for row in file_rows:
            f = by_key[row["_source"]]
            if row["_status"] == "entry_rejected":
                entry_rejects.append(
                    {"key": f"{f.key}#{row['_line']}", "reason": row["_error"], "etag": f.etag}
                )
                continue
            if row["_status"] == "unchanged":
                self.report.files_unchanged += 1
            elif row["_status"] == "rejected":
                rejected.append({"key": f.key, "reason": row["_error"]})
            self.report.files.append(
                {
                    "key": f.key,
                    "status": row["_status"],
                    "encoding": row["_encoding"],
                    "profile": row["_profile"],
                    "records": row["_records"],
                    **({"not_read": json.loads(row["_raw"])} if row["_raw"] and row["_raw"] != "{}" else {}),
                }
            )
            entries.append(
                {
                    "key": f.key,
                    "checksum": row["_sha256"] or "",
                    "etag": f.etag,
                    "size": row["_size"] or f.size,
                    "dataset": f.dataset or "",
                    # A DICOMDIR is read as the media's index; an unchanged file of an older
                    # ledger is recorded again, now with its ETag.
                    "status": "rejected" if row["_status"] == "rejected" else "ingested",
                    "reason": row["_error"],
                    "new": row["_status"] != "unchanged" and f.key not in corrected,
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
