"""Benchmark of city ingestion: generator throughput and the Spark job's wall time per row, at
two sizes measured side by side in one run, on the running stack (`make up`).

    ~/.cache/medshare/venv/bin/python benchmarks/ingest.py --patients 2000 10000

Each size uses a fresh private prefix (landing keys and tables), so runs never mix.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import uuid
from pathlib import Path

from ingestion.generate import GenerateOptions, generate
from ingestion.job import IngestOptions, run_ingestion
from ingestion.landing import land
from lakehouse.contracts import load_contracts
from lakehouse.settings import get_settings
from lakehouse.spark import build_spark_session
from lakehouse.storage import s3_client, site_credentials
from lakehouse.topology import load_topology

CITY = "zhengzhou"


def measure(patients: int, spark, settings, topology, contracts) -> dict[str, object]:
    root = f"bench/{uuid.uuid4().hex[:8]}/"
    client = s3_client(settings, site_credentials(settings, CITY))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        started = time.perf_counter()
        manifest = generate(
            topology, contracts, out, GenerateOptions(seed=5, patients=patients, cities=(CITY,))
        )
        generate_s = time.perf_counter() - started
        rows = sum(manifest.rows_written(CITY, d) for d in contracts)
        started = time.perf_counter()
        land(client, topology.city(CITY).buckets.landing, out / CITY, prefix=root)
        land_s = time.perf_counter() - started
    started = time.perf_counter()
    report = run_ingestion(
        spark,
        client,
        topology,
        contracts,
        IngestOptions(city=CITY, table_root=root, landing_prefix=root),
    )
    ingest_s = time.perf_counter() - started
    return {
        "patients": patients,
        "rows": rows,
        "generate_s": round(generate_s, 2),
        "generate_rows_per_s": round(rows / generate_s),
        "land_s": round(land_s, 2),
        "ingest_s": round(ingest_s, 2),
        "ingest_rows_per_s": round(rows / ingest_s),
        "ingest_us_per_row": round(ingest_s / rows * 1e6, 1),
        "balanced": all(d.balanced for d in report.datasets.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, nargs="+", default=[2_000, 10_000])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.json"))
    args = parser.parse_args()
    settings = get_settings()
    topology = load_topology(settings.platform_dir)
    contracts = load_contracts(settings.platform_dir)
    spark = build_spark_session(settings, site_credentials(settings, CITY), app_name="medshare-bench-ingest")
    # Warm the JVM once so the first size does not pay for class loading alone.
    measure(200, spark, settings, topology, contracts)
    results = [measure(p, spark, settings, topology, contracts) for p in args.patients]
    spark.stop()
    record = {
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": results,
    }
    if len(results) >= 2:
        record["per_row_cost_ratio_largest_vs_smallest"] = round(
            results[-1]["ingest_us_per_row"] / results[0]["ingest_us_per_row"], 2
        )  # type: ignore[operator]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
