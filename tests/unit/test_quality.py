"""The Great Expectations suite catches what row rules cannot: batch-level breaks."""

from pathlib import Path

from pyspark.sql import SparkSession

from ingestion.quality import failed_expectations, run_suite
from lakehouse.contracts import load_contracts

REPO = Path(__file__).resolve().parents[2]


def test_suite_fails_on_duplicate_business_keys_and_names_the_expectation(local_spark: SparkSession) -> None:
    contract = load_contracts(REPO / "platform")["teleconsultations"]
    columns = [*contract.column_names, "month"]
    good = {c: "x" for c in columns} | {
        "hospital_id": "zz-c1",
        "teleconsult_id": "T1",
        "specialist_centre": "ecg",
        "outcome": "answered",
        "month": "2026-01",
    }
    rows = [good, good | {"teleconsult_id": "T2"}]
    ok = run_suite(local_spark.createDataFrame(rows), contract, run_id="ok")
    assert ok["success"] is True and failed_expectations(ok) == []

    broken = run_suite(
        local_spark.createDataFrame([*rows, good | {"outcome": "lost"}]), contract, run_id="bad"
    )
    assert broken["success"] is False
    failed = " ".join(failed_expectations(broken))
    assert "expect_compound_columns_to_be_unique" in failed
    assert "expect_column_values_to_be_in_set" in failed and "outcome" in failed
