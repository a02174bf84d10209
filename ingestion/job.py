"""The city ingestion job: landing → bronze → curated + quarantine, with a run report.

Idempotent by a ledger of landed files (bronze `_files`): a file already ingested with the same
checksum is skipped; the same key with new content is a hospital's correction, whose earlier rows
are deleted from curated before the new ones are merged. The ledger is written last, so a run
that dies is simply repeated.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pyarrow as pa

from ingestion import landing
from ingestion.parse import (
    FileKind,
    FileReject,
    Parsed,
    classify,
    parse_dicom,
    parse_fhir,
    parse_tabular,
)
from ingestion.quality import failed_expectations, run_suite
from ingestion.report import DatasetReport, RunReport
from ingestion.validate import SOURCE_TIME_ZONE, typed_columns, validate
from lakehouse.contracts import Contract
from lakehouse.errors import MedshareError
from lakehouse.storage import s3a_uri, storage_errors
from lakehouse.topology import Topology

if TYPE_CHECKING:
    from minio import Minio
    from pyspark.sql import DataFrame, SparkSession

Progress = Callable[[str, int, int], None]  # (stage, done, total)

LEDGER = "_files"
QUARANTINE_ROWS = "rows"
QUARANTINE_FILES = "files"
RUNS_PREFIX = "_runs"


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


def _table_exists(spark: SparkSession, uri: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, uri))


def _ledger(spark: SparkSession, tables: CityTables) -> dict[str, str]:
    """key → checksum of the latest delivery, ingested or rejected: an unchanged file is not read
    again (a rejected one would only be rejected again)."""
    uri = tables.bronze_table(LEDGER)
    if not _table_exists(spark, uri):
        return {}
    rows = spark.read.format("delta").load(uri).orderBy("recorded_at").select("key", "checksum").collect()
    return {r["key"]: r["checksum"] for r in rows}


def _records_table(
    records: list[dict[str, str | None]],
    contract: Contract,
    checksums: dict[str, str],
    first_seq: int,
) -> pa.Table:
    names = [*contract.column_names, "_source", "_line", "_error", "_raw"]
    columns = {n: [r.get(n) for r in records] for n in names}
    columns["_checksum"] = [checksums.get(r.get("_source") or "", "") for r in records]
    table = pa.table({n: pa.array(v, pa.string()) for n, v in columns.items()})
    return table.append_column("_seq", pa.array(range(first_seq, first_seq + len(records)), pa.int64()))


class CityIngestion:
    def __init__(
        self,
        spark: SparkSession,
        client: Minio,
        topology: Topology,
        contracts: dict[str, Contract],
        options: IngestOptions,
        progress: Progress,
    ) -> None:
        city = topology.city(options.city)
        self.spark, self.client, self.topology, self.contracts = spark, client, topology, contracts
        self.options, self.progress = options, progress
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

    # -- files -------------------------------------------------------------------------------
    def _collect(self) -> tuple[Parsed, list[dict[str, object]], dict[str, str], set[str]]:
        ledger = _ledger(self.spark, self.tables)
        files = list(
            landing.list_landed(self.client, self.landing_bucket, prefix=self.options.landing_prefix)
        )
        self.report.files_seen = len(files)
        parsed, entries, checksums, corrected = Parsed(), [], {}, set()
        dicom: dict[str, list[tuple[str, bytes]]] = {}
        for done, landed in enumerate(files, start=1):
            key = landed.key[len(self.options.landing_prefix) :]
            content = landing.read_landed(self.client, self.landing_bucket, landed.key)
            checksum = hashlib.sha256(content).hexdigest()
            self.progress("reading files", done, len(files))
            if ledger.get(key) == checksum:
                self.report.files_unchanged += 1
                continue
            if key in ledger:
                corrected.add(key)
            checksums[key] = checksum
            kind = classify(key, contracts=self.contracts, hospitals=set(self.hospitals))
            entry: dict[str, object] = {"key": key, "checksum": checksum, "size": len(content)}
            if isinstance(kind, FileReject):
                parsed.rejects.append(kind)
            elif kind.kind == "dicom":
                dicom.setdefault(kind.hospital_id, []).append((key, content))
            else:
                parsed_file = self._parse(key, content, kind)
                parsed.rejects += parsed_file.rejects
                for dataset, records in parsed_file.records.items():
                    parsed.add(dataset, records)
                entry["dataset"] = kind.dataset
            entries.append(entry)
        for hospital_id, items in dicom.items():
            parsed_dicom = parse_dicom(items, hospital_id=hospital_id)
            parsed.rejects += parsed_dicom.rejects
            for dataset, records in parsed_dicom.records.items():
                parsed.add(dataset, records)
        return parsed, entries, checksums, corrected

    def _parse(self, key: str, content: bytes, kind: FileKind) -> Parsed:
        if kind.kind == "fhir":
            return parse_fhir(key, content)
        assert kind.dataset is not None
        return parse_tabular(key, content, kind, self.contracts[kind.dataset])

    # -- one dataset -------------------------------------------------------------------------
    def _dataset(
        self,
        contract: Contract,
        records: list[dict[str, str | None]],
        checksums: dict[str, str],
        corrected: set[str],
        first_seq: int,
    ) -> DatasetReport:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        started = time.monotonic()
        spark, run_id = self.spark, self.options.run_id
        report = DatasetReport(dataset=contract.name, rows_in=len(records))
        raw = (
            spark.createDataFrame(_records_table(records, contract, checksums, first_seq))
            .withColumn("_run_id", F.lit(run_id))
            .withColumn("_ingested_at", F.current_timestamp())
        )
        raw.drop("_seq").write.format("delta").mode("append").option("mergeSchema", "true").save(
            self.tables.bronze_table(contract.name)
        )

        checked = validate(
            raw,
            contract,
            city_hospitals=self.hospitals,
            all_hospitals=[h.id for h in self.topology.hospitals],
            now_local=self.now_local,
        ).cache()
        try:
            bad = checked.where(F.size("_rules") > 0)
            raw_json = F.coalesce(
                F.col("_raw"),
                F.to_json(F.struct(*[F.col(f"`{c}`") for c in contract.column_names])),
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
                    F.lit(run_id).alias("run_id"),
                    F.current_timestamp().alias("quarantined_at"),
                )
                .write.format("delta")
                .mode("append")
                .partitionBy("dataset")
                .save(self.tables.quarantine_table(QUARANTINE_ROWS))
            )
            # Counted by Spark, independently of the driver's rows_in: `balanced` then proves no
            # row was lost between the readers and the tables.
            counts = {
                r["rule"]: r["count"]
                for r in checked.groupBy(F.get(F.col("_rules"), 0).alias("rule")).count().collect()
            }
            valid = counts.pop(None, 0)
            report.quarantined = counts

            # Last delivered wins among rows with the same business key.
            keys = [F.col(f"`{k}`") for k in contract.business_key]
            latest = Window.partitionBy(*keys).orderBy(F.col("_seq").desc())
            good = (
                checked.where(F.size("_rules") == 0)
                .withColumn("_rank", F.row_number().over(latest))
                .where("_rank = 1")
            )
            curated = good.select(
                *typed_columns(contract),
                F.col("_month").alias("month"),
                F.col("_source").alias("_source_file"),
                F.col("_checksum").alias("_source_checksum"),
                F.lit(run_id).alias("_run_id"),
            )
            curated = curated.cache()
            report.curated = curated.count()
            report.duplicates = valid - report.curated
            if report.curated:
                self._check_quality(contract, curated, report)
            self._commit_curated(contract, curated, corrected)
            curated.unpersist()
        finally:
            checked.unpersist()
        report.replaced_files = len({r.get("_source") for r in records} & corrected)
        report.seconds = round(time.monotonic() - started, 2)
        return report

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

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> RunReport:
        started = time.monotonic()
        try:
            parsed, entries, checksums, corrected = self._collect()
            self.report.files_corrected = len(corrected)
            rejected = {r.key: r.reason for r in parsed.rejects}
            self.report.files_rejected = [{"key": k, "reason": v} for k, v in sorted(rejected.items())]
            self.report.files_new = len(entries) - len(corrected)
            seq = 0
            datasets = sorted(d for d, records in parsed.records.items() if records)
            for done, name in enumerate(datasets, start=1):
                records = parsed.records[name]
                self.progress(f"ingesting {name}", done - 1, len(datasets))
                self.report.datasets[name] = self._dataset(
                    self.contracts[name], records, checksums, corrected, seq
                )
                seq += len(records)
            self._record_files(entries, rejected)
            self.report.status = "succeeded"
        except MedshareError as exc:
            self.report.status, self.report.error = "failed", str(exc)
            raise
        finally:
            self.report.seconds = round(time.monotonic() - started, 2)
            self._store_report()
        return self.report

    def _record_files(self, entries: list[dict[str, object]], rejected: dict[str, str]) -> None:
        from pyspark.sql import functions as F

        if not entries:
            return
        rows = [
            {
                "key": str(e["key"]),
                "checksum": str(e["checksum"]),
                "size": int(str(e["size"])),
                "dataset": str(e.get("dataset") or ""),
                "status": "rejected" if e["key"] in rejected else "ingested",
                "reason": rejected.get(str(e["key"])),
                "run_id": self.options.run_id,
            }
            for e in entries
        ]
        schema = (
            "key string, checksum string, size long, dataset string, status string, reason string, "
            "run_id string"
        )
        files = self.spark.createDataFrame(rows, schema).withColumn("recorded_at", F.current_timestamp())
        if rejected:
            (
                files.where("status = 'rejected'")
                .select("key", "checksum", "reason", "run_id", "recorded_at")
                .write.format("delta")
                .mode("append")
                .save(self.tables.quarantine_table(QUARANTINE_FILES))
            )
        files.write.format("delta").mode("append").save(self.tables.bronze_table(LEDGER))

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
    client: Minio,
    topology: Topology,
    contracts: dict[str, Contract],
    options: IngestOptions,
    progress: Progress = lambda *_: None,
) -> RunReport:
    """Ingest everything new in the city's landing bucket; returns the stored report."""
    return CityIngestion(spark, client, topology, contracts, options, progress).run()
