"""Benchmark of city ingestion at a real volume, against a plain Spark write of the same files.

One city's share of a province export of `--province-rows` rows (all datasets, the mixed dialects
— GB18030 and BOM CSV with line breaks in fields, Chinese headers, xlsx, JSON Lines, FHIR bundles
and Bulk NDJSON, DICOM — with defects on) is generated, landed and ingested end to end (land →
bronze → curated + quarantine + waiting + quality suite + report), on the running stack
(`make up`). Side by side, in the same run and on the same files, the baseline: Spark's own CSV and
JSON readers writing each dataset's tabular files straight to Delta — no validation, no
quarantine, no report (Spark cannot read the workbooks, FHIR or DICOM: their rows are not in it).

    PYTHONPATH=. ~/.cache/medshare/venv/bin/python benchmarks/ingest.py --province-rows 10000000 --repeats 2

Recorded per run: rows, seconds and rows/s of both, their ratio, the job's seconds per stage,
peak RSS of the driver (Python), of the JVM (driver and executors: local mode) and of the Python
workers. Each run uses a fresh private prefix, so runs never mix; it is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.machine import machine
from benchmarks.memory import memory
from ingestion.generate import GenerateOptions, generate
from ingestion.job import IngestOptions, run_ingestion
from ingestion.landing import land
from ingestion.profiles import load_profiles
from ingestion.read import store_access
from lakehouse.contracts import load_contracts
from lakehouse.settings import get_settings
from lakehouse.spark import build_spark_session
from lakehouse.storage import remove_prefix, s3_client, s3a_uri, site_credentials
from lakehouse.topology import load_topology

CITY = "zhengzhou"


def rows_per_patient(topology, contracts) -> float:
    """Rows the generator writes per patient (all datasets), from a small calibration run."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate(
            topology, contracts, Path(tmp), GenerateOptions(seed=3, patients=2_000, cities=(CITY,))
        )
    return sum(manifest.rows_written(CITY, d) for d in contracts) / 2_000


def baseline(spark, manifest, contracts, bucket: str, prefix: str, out_root: str) -> tuple[int, float]:
    """Spark's own readers, each dataset's tabular files (grouped by how Spark must be told to
    read them) appended to a Delta table: rows written and seconds."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for key, info in manifest.files.items():
        if not key.startswith(f"{CITY}/"):
            continue
        fmt = str(info["format"])
        if fmt == "xlsx":
            continue
        landing_key = key.removeprefix(f"{CITY}/")
        sep = ";" if info.get("profile") == "lis-semicolon" else ","
        groups.setdefault((str(info["dataset"]), fmt, sep), []).append(s3a_uri(bucket, prefix + landing_key))
    # Spark 4 reads only a few charsets unless told to use Java's (GB18030 is not among them).
    spark.conf.set("spark.sql.legacy.javaCharsets", "true")
    started = time.perf_counter()
    rows = 0
    for (dataset, fmt, sep), paths in sorted(groups.items()):
        if fmt == "jsonl":
            df = spark.read.json(paths)
        else:
            reader = spark.read.option("header", True).option("multiLine", True).option("sep", sep)
            if fmt == "csv-gb18030":
                reader = reader.option("encoding", "GB18030")
            df = reader.csv(paths)
        df = df.toDF(*[f"c{i}" for i in range(len(df.columns))])  # headers differ between dialects
        table = s3a_uri(
            f"{CITY}-curated", f"{out_root}baseline/{dataset}/{fmt}{'-semicolon' if sep == ';' else ''}"
        )
        df.write.format("delta").mode("append").save(table)
        rows += spark.read.format("delta").load(table).count()
    return rows, time.perf_counter() - started


def run_once(args, spark, settings, topology, contracts, profiles, patients: int) -> dict[str, object]:
    root = f"bench/{uuid.uuid4().hex[:8]}/"
    creds = site_credentials(settings, CITY)
    client = s3_client(settings, creds)
    city = topology.city(CITY)
    buckets = [city.buckets.landing, city.buckets.bronze, city.buckets.curated, city.buckets.quarantine]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            started = time.perf_counter()
            manifest = generate(
                topology, contracts, out, GenerateOptions(seed=5, patients=patients, cities=(CITY,))
            )
            generate_s = time.perf_counter() - started
            rows = sum(manifest.rows_written(CITY, d) for d in contracts)
            size = sum(p.stat().st_size for p in (out / CITY).rglob("*") if p.is_file())
            started = time.perf_counter()
            land(client, city.buckets.landing, out / CITY, prefix=root)
            land_s = time.perf_counter() - started
        order = ["ours", "baseline"] if args.ours_first else ["baseline", "ours"]
        result: dict[str, object] = {"patients": patients, "rows": rows, "bytes": size}
        for which in order:
            if which == "ours":
                started = time.perf_counter()
                report = run_ingestion(
                    spark,
                    store_access(settings, creds),
                    topology,
                    contracts,
                    IngestOptions(city=CITY, table_root=root, landing_prefix=root),
                    profiles=profiles,
                )
                ingest_s = time.perf_counter() - started
                result.update(
                    ingest_s=round(ingest_s, 1),
                    ingest_rows_per_s=round(rows / ingest_s),
                    balanced=all(d.balanced for d in report.datasets.values()),
                    rows_in=sum(d.rows_in for d in report.datasets.values()),
                    stages=report.stages,
                    encodings=sorted({str(f["encoding"]) for f in report.files}),
                )
            else:
                base_rows, base_s = baseline(spark, manifest, contracts, city.buckets.landing, root, root)
                result.update(
                    baseline_rows=base_rows,
                    baseline_s=round(base_s, 1),
                    baseline_rows_per_s=round(base_rows / base_s),
                )
        result["ratio_to_baseline"] = round(
            float(result["ingest_rows_per_s"]) / float(result["baseline_rows_per_s"]),
            2,  # type: ignore[arg-type]
        )
        result.update(generate_s=round(generate_s, 1), land_s=round(land_s, 1), memory=memory())
        return result
    finally:
        remove_prefix(client, buckets, root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--province-rows", type=int, default=10_000_000, help="rows of the whole province's export"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs (each with fresh data); medians reported"
    )
    parser.add_argument("--ours-first", action="store_true", help="run the job before the baseline")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.json"))
    args = parser.parse_args()
    settings = get_settings()
    topology = load_topology(settings.platform_dir)
    contracts = load_contracts(settings.platform_dir)
    profiles = load_profiles(settings.platform_dir, topology, contracts)
    city_rows = args.province_rows / len(topology.cities)
    patients = max(200, round(city_rows / rows_per_patient(topology, contracts)))
    spark = build_spark_session(settings, site_credentials(settings, CITY), app_name="medshare-bench-ingest")
    runs = []
    for _ in range(args.repeats):
        result = run_once(args, spark, settings, topology, contracts, profiles, patients)
        print(json.dumps(result, indent=1), flush=True)
        runs.append(result)
    spark.stop()
    record = {
        "machine": machine(),
        "province_rows": args.province_rows,
        "cities": len(topology.cities),
        "runs": runs,
        "median_ingest_rows_per_s": statistics.median(float(r["ingest_rows_per_s"]) for r in runs),  # type: ignore[arg-type]
        "median_ratio_to_baseline": statistics.median(float(r["ratio_to_baseline"]) for r in runs),  # type: ignore[arg-type]
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
