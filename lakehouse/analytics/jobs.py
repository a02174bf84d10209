"""The standard provincial analytics: each job reads `province.*` tables through Spark, aggregates,
suppresses small cells and writes one gold Delta table (overwritten on every run).

Jobs are plain functions of a session and the topology, so they run the same on `local[*]` and on
a standalone cluster. Only pseudonymised provincial data is read (`person_key`, no resident IDs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lakehouse.analytics.icd10 import TITLES, chapter_column
from lakehouse.analytics.privacy import SUPPRESSED, suppress
from lakehouse.analytics.session import GOLD_DB, PROVINCE_DB, Locations, register_table, spark_path
from lakehouse.errors import MedshareError
from lakehouse.topology import Topology

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

# Care levels from the bottom of the referral chain to the top.
LEVELS = ("township", "county", "city", "provincial")
READMISSION_DAYS = 30


class AnalyticsError(MedshareError):
    """A job cannot run: unknown name, or a provincial table it needs is not there."""


@dataclass(frozen=True)
class Job:
    name: str
    title: str
    needs: tuple[str, ...]  # provincial tables read
    keys: tuple[str, ...]  # the grouping columns of the gold table
    person_counts: tuple[str, ...]  # distinct-patient counts judged against k
    measures: tuple[str, ...]  # blanked on suppressed cells (includes the person counts)
    build: Callable[[SparkSession, Topology], DataFrame]


@dataclass(frozen=True)
class JobResult:
    job: str
    table: str
    rows: int
    suppressed: int
    seconds: float


def _month(column: str) -> Column:
    from pyspark.sql import functions as F

    return F.date_format(F.col(column), "yyyy-MM")


def hospitals(spark: SparkSession, topology: Topology) -> DataFrame:
    """The topology's hospitals as a small table: id, city, care level and its rank (1 = township)."""
    rows = [(h.id, h.city, h.level, LEVELS.index(h.level) + 1) for h in topology.hospitals]
    return spark.createDataFrame(
        rows, "hospital_id string, hospital_city string, level string, level_rank int"
    )


def disease_burden(spark: SparkSession, topology: Topology) -> DataFrame:
    """Diagnoses, encounters and patients by city, month and ICD-10 chapter.

    Two distinct counts in one aggregation make Spark copy every row once per count (Expand)
    and shuffle both copies; counting per encounter, then per patient, then per cell shuffles
    the rows once, clustered by (cell, patient) so the per-encounter and per-patient steps need
    no further exchange (only the small per-patient counts move again). An encounter is one
    patient's, so its diagnoses share one person_key."""
    from pyspark.sql import functions as F

    titles = spark.createDataFrame(list(TITLES.items()), "icd10_chapter string, chapter_title string")
    cell = ["city", "month", "icd10_chapter"]
    diagnoses = (
        spark.table(f"{PROVINCE_DB}.diagnoses")
        .withColumn("month", _month("diagnosed_at"))
        .withColumn("icd10_chapter", chapter_column(F.col("icd10_code")))
        .select(*cell, "person_key", "hospital_id", "encounter_id")
        .repartition(*cell, "person_key")
    )
    encounter = F.col("hospital_id").isNotNull() & F.col("encounter_id").isNotNull()
    per_encounter = diagnoses.groupBy(*cell, "person_key", "hospital_id", "encounter_id").agg(
        F.count(F.lit(1)).alias("n"), F.max(F.when(encounter, 1).otherwise(0)).alias("is_encounter")
    )
    per_patient = per_encounter.groupBy(*cell, "person_key").agg(
        F.sum("n").alias("n"), F.sum("is_encounter").alias("encounters")
    )
    return (
        per_patient.groupBy(*cell)
        .agg(
            F.sum("n").alias("diagnoses"),
            F.sum("encounters").alias("encounters"),
            F.count("person_key").alias("patients"),
        )
        .join(F.broadcast(titles), "icd10_chapter", "left")
    )


# The specialist centres' reports, linked to the request they answer by (hospital_id, teleconsult_id).
REPORTS = ("ecg_reports", "pathology_reports")


def teleconsultation_load(spark: SparkSession, topology: Topology) -> DataFrame:
    """Requests per specialist centre, requesting care level and month: how many were answered,
    in what time, and how many have their ECG or pathology report in the province."""
    from pyspark.sql import functions as F

    minutes = (F.unix_timestamp("answered_at") - F.unix_timestamp("requested_at")) / 60.0
    requesters = hospitals(spark, topology).select("hospital_id", F.col("level").alias("requesting_level"))
    reported = None
    for name in REPORTS:
        links = spark.table(f"{PROVINCE_DB}.{name}").where(F.col("teleconsult_id").isNotNull())
        links = links.select("hospital_id", "teleconsult_id")
        reported = links if reported is None else reported.unionByName(links)
    assert reported is not None
    reported = reported.distinct().withColumn("has_report", F.lit(1))
    return (
        spark.table(f"{PROVINCE_DB}.teleconsultations")
        .join(reported, ["hospital_id", "teleconsult_id"], "left")
        .join(F.broadcast(requesters), "hospital_id", "left")
        .withColumn("requesting_level", F.coalesce("requesting_level", F.lit("unknown")))
        .withColumn("month", _month("requested_at"))
        .withColumn("turnaround", F.when(F.col("answered_at").isNotNull(), minutes))
        .groupBy("specialist_centre", "requesting_level", "month")
        .agg(
            F.count(F.lit(1)).alias("requests"),
            F.count("answered_at").alias("answered"),
            F.count("has_report").alias("reports"),
            F.countDistinct("person_key").alias("patients"),
            # Exact percentiles (linear interpolation) over answered requests; null if none.
            F.percentile("turnaround", F.lit(0.5)).alias("turnaround_median_min"),
            F.percentile("turnaround", F.lit(0.9)).alias("turnaround_p90_min"),
        )
    )


def imaging_use(spark: SparkSession, topology: Topology) -> DataFrame:
    from pyspark.sql import functions as F

    return (
        spark.table(f"{PROVINCE_DB}.imaging_studies")
        .withColumn("month", _month("study_date"))
        .groupBy("city", "modality", "month")
        .agg(
            F.count(F.lit(1)).alias("studies"),
            F.countDistinct("person_key").alias("patients"),
            F.sum(F.coalesce(F.col("number_of_series").cast("long"), F.lit(0))).alias("series"),
        )
    )


def readmissions(spark: SparkSession, topology: Topology) -> DataFrame:
    """30-day readmissions by the hospital of the first stay, counted anywhere in the province.

    Index stays: inpatient encounters with a discharge time at least 30 days before the latest
    inpatient admission in the data (later ones cannot be followed for 30 days yet). A stay is
    followed by a readmission when the same patient is admitted as an inpatient (any hospital)
    after the discharge and no more than 30 days after it.

    Each patient's admissions and discharges are put on one time line (one shuffle by
    person_key, no self-join): walking it backwards, the earliest admission seen so far when a
    discharge is reached is the first one after it. At equal times a discharge is walked before
    an admission, so an admission at the very instant of a discharge does not count as after it.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    inpatient = (
        spark.table(f"{PROVINCE_DB}.encounters")
        .where(F.col("encounter_type") == "inpatient")
        .select("hospital_id", "encounter_id", "person_key", "admit_time", "discharge_time")
    )
    horizon = inpatient.agg(F.max("admit_time").alias("latest"))
    window = F.expr(f"INTERVAL {READMISSION_DAYS} DAYS")
    admissions = inpatient.where(F.col("person_key").isNotNull() & F.col("admit_time").isNotNull()).select(
        F.lit(None).cast("string").alias("hospital_id"),
        F.lit(None).cast("string").alias("encounter_id"),
        "person_key",
        F.col("admit_time").alias("at"),
        F.lit(0).alias("is_discharge"),
    )
    discharges = inpatient.where(F.col("discharge_time").isNotNull()).select(
        "hospital_id",
        "encounter_id",
        "person_key",
        F.col("discharge_time").alias("at"),
        F.lit(1).alias("is_discharge"),
    )
    backwards = (
        Window.partitionBy("person_key")
        .orderBy(F.col("at").desc(), F.col("is_discharge").desc())
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    next_admission = F.min(F.when(F.col("is_discharge") == 0, F.col("at"))).over(backwards)
    stays = (
        admissions.unionByName(discharges)
        .withColumn("next_admission", next_admission)
        .where(F.col("is_discharge") == 1)
        .crossJoin(F.broadcast(horizon))
        .where(F.col("at") <= F.col("latest") - window)
        .withColumn(
            "readmitted",
            F.col("person_key").isNotNull()
            & F.coalesce(F.col("next_admission") <= F.col("at") + window, F.lit(False)),
        )
    )
    # Per patient first, then per hospital: one distinct count each, no Expand of the rows.
    per_patient = stays.groupBy("hospital_id", "person_key").agg(
        F.count(F.lit(1)).alias("stays"),
        F.sum(F.col("readmitted").cast("long")).alias("readmissions"),
        F.max(F.col("readmitted").cast("int")).alias("readmitted"),
    )
    return (
        per_patient.groupBy("hospital_id")
        .agg(
            F.sum("stays").alias("index_stays"),
            F.count("person_key").alias("patients"),
            F.sum("readmissions").alias("readmissions"),
            F.coalesce(F.sum(F.when(F.col("person_key").isNotNull(), F.col("readmitted"))), F.lit(0))
            .cast("long")
            .alias("readmitted_patients"),
        )
        .withColumn("readmission_rate", F.round(F.col("readmissions") / F.col("index_stays"), 4))
        .join(
            F.broadcast(hospitals(spark, topology).drop("level_rank")).withColumnRenamed(
                "hospital_city", "city"
            ),
            "hospital_id",
            "left",
        )
    )


def referral_flows(spark: SparkSession, topology: Topology) -> DataFrame:
    """Encounters that name the hospital referring the patient, by care level from → to."""
    from pyspark.sql import functions as F

    levels = hospitals(spark, topology)
    source = levels.select(
        F.col("hospital_id").alias("referred_from_hospital_id"),
        F.col("level").alias("from_level"),
        F.col("level_rank").alias("from_rank"),
    )
    target = levels.select(
        "hospital_id", F.col("level").alias("to_level"), F.col("level_rank").alias("to_rank")
    )
    direction = (
        F.when(F.col("from_rank").isNull() | F.col("to_rank").isNull(), F.lit("unknown"))
        .when(F.col("to_rank") > F.col("from_rank"), F.lit("up"))
        .when(F.col("to_rank") < F.col("from_rank"), F.lit("down"))
        .otherwise(F.lit("same level"))
    )
    return (
        spark.table(f"{PROVINCE_DB}.encounters")
        .where(F.col("referred_from_hospital_id").isNotNull())
        .join(F.broadcast(source), "referred_from_hospital_id", "left")
        .join(F.broadcast(target), "hospital_id", "left")
        .withColumn("direction", direction)
        .withColumn("from_level", F.coalesce("from_level", F.lit("unknown")))
        .withColumn("to_level", F.coalesce("to_level", F.lit("unknown")))
        .withColumn("month", _month("admit_time"))
        .groupBy("month", "from_level", "to_level", "direction")
        .agg(F.count(F.lit(1)).alias("referrals"), F.countDistinct("person_key").alias("patients"))
    )


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            "disease_burden",
            "Disease burden by city, month and ICD-10 chapter",
            ("diagnoses",),
            ("city", "month", "icd10_chapter"),
            ("patients",),
            ("diagnoses", "encounters", "patients"),
            disease_burden,
        ),
        Job(
            "teleconsultation_load",
            "Teleconsultation load and turnaround by specialist centre and requesting care level",
            ("teleconsultations", *REPORTS),
            ("specialist_centre", "requesting_level", "month"),
            ("patients",),
            ("requests", "answered", "reports", "patients", "turnaround_median_min", "turnaround_p90_min"),
            teleconsultation_load,
        ),
        Job(
            "imaging_use",
            "Imaging use by modality and city",
            ("imaging_studies",),
            ("city", "modality", "month"),
            ("patients",),
            ("studies", "patients", "series"),
            imaging_use,
        ),
        Job(
            "readmissions_30d",
            "30-day readmissions by hospital",
            ("encounters",),
            ("hospital_id",),
            ("patients", "readmitted_patients"),
            ("index_stays", "patients", "readmissions", "readmitted_patients", "readmission_rate"),
            readmissions,
        ),
        Job(
            "referral_flows",
            "Referral flows between care levels",
            ("encounters",),
            ("month", "from_level", "to_level", "direction"),
            ("patients",),
            ("referrals", "patients"),
            referral_flows,
        ),
    )
}


def job_named(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        raise AnalyticsError(f"no standard job {name!r}; the jobs are: {', '.join(JOBS)}") from None


def run_job(spark: SparkSession, topology: Topology, where: Locations, name: str, *, k: int) -> JobResult:
    """Run one standard job and overwrite its gold table; what it wrote."""
    from pyspark.sql import functions as F

    job = job_named(name)
    present = {t.name for t in spark.catalog.listTables(PROVINCE_DB)}
    absent = [t for t in job.needs if t not in present]
    if absent:
        raise AnalyticsError(
            f"job {name} needs provincial table(s) {', '.join(absent)}, not found under "
            f"{where.tables_root}: replicate them first (`medshare replicate`)"
        )
    started = time.perf_counter()
    result = suppress(job.build(spark, topology), person_counts=job.person_counts, measures=job.measures, k=k)
    path = spark_path(where.gold(name))
    metadata = {"job": name, "k": k, "tables_root": where.tables_root, "written_at": time.time()}
    # Gold tables are small: one file each keeps readers (the report, delta-rs) fast.
    (
        result.orderBy(*job.keys)
        .coalesce(1)
        .write.format("delta")
        .mode("overwrite")
        .option("overwriteSchema", "true")
        .option("userMetadata", json.dumps(metadata))
        .save(path)
    )
    register_table(spark, GOLD_DB, name, where.gold(name))
    written = spark.read.format("delta").load(path)
    counts = written.agg(F.count(F.lit(1)), F.sum(F.col(SUPPRESSED).cast("long"))).first()
    assert counts is not None
    return JobResult(
        job=name,
        table=where.gold(name),
        rows=int(counts[0]),
        suppressed=int(counts[1] or 0),
        seconds=round(time.perf_counter() - started, 2),
    )
