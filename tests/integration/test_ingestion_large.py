"""One 2 GB CSV export ingests with bounded memory: the file is streamed by an executor, never read
whole by the driver. The job runs in a process of its own (its own JVM, with a 1 GB heap), so its
peak memory is its own; the test reads the peak RSS of the driver's Python process, of the JVM
(driver and executors, local mode) and of the Python workers that parsed the file."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lakehouse.identity import make_resident_id
from lakehouse.settings import Settings
from lakehouse.storage import remove_prefix, s3_client, site_credentials

pytestmark = pytest.mark.slow

CITY = "zhengzhou"
SIZE = 2 * 1024**3
GIB = 1024**3

# Run in a process of its own: the job, then the peak RSS of everything it started. It runs from a
# file: under `python -c` pyspark takes the nameless __main__ for its doctests and exits 0 early.
JOB = r"""
import json, os, resource, sys
from pathlib import Path
from ingestion.job import IngestOptions, run_ingestion
from ingestion.profiles import load_profiles
from ingestion.read import store_access
from lakehouse.contracts import load_contracts
from lakehouse.settings import get_settings
from lakehouse.spark import build_spark_session
from lakehouse.storage import site_credentials
from lakehouse.topology import load_topology
from benchmarks.memory import memory

root = sys.argv[1]
settings = get_settings()
topology, contracts = load_topology(settings.platform_dir), load_contracts(settings.platform_dir)
creds = site_credentials(settings, "zhengzhou")
spark = build_spark_session(settings, creds, app_name="medshare-test-large",
                            extra_conf={"spark.driver.memory": "1g"})
report = run_ingestion(spark, store_access(settings, creds), topology, contracts,
                       IngestOptions(city="zhengzhou", table_root=root, landing_prefix=root),
                       profiles=load_profiles(settings.platform_dir, topology, contracts))
ds = report.datasets["lab_results"]
print(json.dumps({"status": report.status, "rows_in": ds.rows_in, "curated": ds.curated,
                  "quarantined": ds.quarantined, "balanced": ds.balanced, **memory()}))
"""


def write_export(path: Path) -> int:
    """A lab results export of just over 2 GB (narrative report text in value_text, as
    laboratory systems write it); returns its records."""
    rid = make_resident_id(
        region="410102", birth_date=__import__("datetime").date(1980, 1, 1), sequence=7, sex="M"
    )
    narrative = "镜下可见红细胞形态正常，白细胞分类计数未见明显异常，血小板聚集良好。" * 12
    columns = [
        "hospital_id",
        "lab_result_id",
        "encounter_id",
        "resident_id",
        "loinc_code",
        "value_num",
        "value_text",
        "unit",
        "reference_low",
        "reference_high",
        "abnormal_flag",
        "collected_at",
    ]
    records = 0
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        while out.tell() < SIZE:
            for _ in range(10_000):
                writer.writerow(
                    [
                        "zz-c1",
                        f"L{records:09d}",
                        f"E{records // 4:09d}",
                        rid,
                        "718-7",
                        "135",
                        narrative,
                        "g/L",
                        "120",
                        "160",
                        "N",
                        "2025-06-03 07:00:00",
                    ]
                )
                records += 1
    return records


def test_a_2_gb_csv_ingests_with_bounded_memory(stack: Settings, tmp_path: Path) -> None:
    root = f"tests/large-{uuid.uuid4().hex[:8]}/"
    export = tmp_path / "lab_results.csv"
    records = write_export(export)
    assert export.stat().st_size >= SIZE
    client = s3_client(stack, site_credentials(stack, CITY))
    try:
        client.fput_object(
            f"{CITY}-landing",
            f"{root}zz-c1/lab_results/lab_results.csv",
            str(export),
            part_size=64 * 1024 * 1024,
        )
        export.unlink()
        script = tmp_path / "job.py"
        script.write_text(JOB)
        repo = Path(__file__).resolve().parents[2]
        done = subprocess.run(
            [sys.executable, str(script), root],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=repo,
            env={**os.environ, "PYTHONPATH": str(repo)},
        )
    finally:  # 2 GB of landing and the tables made of it: not left for the rest of the run
        remove_prefix(client, [f"{CITY}-{b}" for b in ("landing", "bronze", "curated", "quarantine")], root)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "succeeded" and result["balanced"]
    assert result["rows_in"] == records and result["curated"] == records, result
    # The driver never held the file; the JVM and each worker stayed within their bounds.
    assert result["driver_python_peak_gib"] < 2, result
    assert result["jvm_peak_gib"] < 2, result
    assert 0 < result["python_worker_peak_gib"] < 1, result
    print(json.dumps(result))
