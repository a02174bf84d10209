"""The standard analytics jobs against an independent pandas computation on the same data, the
small-cell suppression, and the analysts' entry points (`spark-sql -e`, `analytics submit`).

The expected values come from the Arrow tables the synthetic builder wrote (not from the Delta
tables Spark read), with their own ICD-10 chapter map, care levels from the topology and the
suppression rule written out here again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from lakehouse.settings import Settings
from lakehouse.storage import ANALYTICS_SITE, delta_storage_options, site_credentials
from lakehouse.topology import Topology
from tests.integration.conftest import AnalyticsRun

K = 5
# WHO ICD-10 chapters of the codes the synthetic builder uses, looked up by hand.
CHAPTER = {
    "I10": "IX",
    "E11.9": "IV",
    "J18.9": "X",
    "I63.9": "IX",
    "C34.9": "II",
    "K29.7": "XI",
    "N18.3": "XIV",
    "J44.1": "X",
    "I25.1": "IX",
    "M54.5": "XIII",
}
RANK = {"township": 1, "county": 2, "city": 3, "provincial": 4}


def frame(run: AnalyticsRun, dataset: str) -> pd.DataFrame:
    return run.province.tables[dataset].to_pandas()


def month(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True).dt.strftime("%Y-%m")


def gold(stack: Settings, run: AnalyticsRun, job: str) -> pd.DataFrame:
    options = delta_storage_options(stack, site_credentials(stack, ANALYTICS_SITE))
    return DeltaTable(f"{run.gold_root}/{job}", storage_options=options).to_pandas()


def suppressed(expected: pd.DataFrame, person_counts: list[str]) -> pd.Series:
    return expected[person_counts].apply(lambda c: (c >= 1) & (c < K)).any(axis=1)


def check(
    got: pd.DataFrame, expected: pd.DataFrame, keys: list[str], person_counts: list[str], measures: list[str]
) -> None:
    """Same cells; suppressed exactly where a patient count is 1..k-1, blank there; equal elsewhere."""
    expected = expected.assign(suppressed=suppressed(expected, person_counts))
    assert len(got) == len(expected), (len(got), len(expected))
    both = got.merge(expected, on=keys, how="outer", suffixes=("", "_want"), indicator=True)
    assert (both["_merge"] == "both").all(), both[both["_merge"] != "both"][keys].head()
    assert (both["suppressed"].astype(bool) == both["suppressed_want"]).all()
    hidden = both[both["suppressed_want"]]
    shown = both[~both["suppressed_want"]]
    # The data is built so that both kinds of cell exist: a test of suppression that sees none is void.
    assert len(hidden) and len(shown), (len(hidden), len(shown))
    for m in measures:
        assert hidden[m].isna().all(), f"{m} shown on a suppressed cell"
        want = shown[f"{m}_want"].astype(float).to_numpy()
        have = shown[m].astype(float).to_numpy()
        assert np.allclose(have, want, rtol=1e-9, atol=1e-6, equal_nan=True), m


def test_disease_burden(stack: Settings, analytics_run: AnalyticsRun) -> None:
    d = frame(analytics_run, "diagnoses")
    d["month"] = month(d["diagnosed_at"])
    d["icd10_chapter"] = d["icd10_code"].map(CHAPTER)
    d["encounter"] = d["hospital_id"] + "/" + d["encounter_id"]
    expected = (
        d.groupby(["city", "month", "icd10_chapter"])
        .agg(
            diagnoses=("person_key", "size"),
            encounters=("encounter", "nunique"),
            patients=("person_key", "nunique"),
        )
        .reset_index()
    )
    got = gold(stack, analytics_run, "disease_burden")
    assert set(got["chapter_title"]) >= {"Diseases of the circulatory system", "Neoplasms"}
    check(
        got,
        expected,
        ["city", "month", "icd10_chapter"],
        ["patients"],
        ["diagnoses", "encounters", "patients"],
    )


def test_teleconsultation_load(stack: Settings, topology: Topology, analytics_run: AnalyticsRun) -> None:
    t = frame(analytics_run, "teleconsultations")
    level = {h.id: h.level for h in topology.hospitals}
    t["requesting_level"] = t["hospital_id"].map(level)
    t["month"] = month(t["requested_at"])
    t["turnaround"] = (t["answered_at"] - t["requested_at"]).dt.total_seconds() / 60
    assert t["answered_at"].isna().any(), "the data should hold unanswered requests"
    # A request has a report when an ECG or pathology report names it (same hospital and id).
    links = pd.concat(
        [
            frame(analytics_run, n)[["hospital_id", "teleconsult_id"]]
            for n in ("ecg_reports", "pathology_reports")
        ]
    ).dropna()
    linked = set(zip(links["hospital_id"], links["teleconsult_id"], strict=True))
    t["reported"] = [(h, i) in linked for h, i in zip(t["hospital_id"], t["teleconsult_id"], strict=True)]
    assert t["reported"].any() and not t["reported"].all(), "the data should hold requests with and without"
    grouped = t.groupby(["specialist_centre", "requesting_level", "month"])
    expected = grouped.agg(
        requests=("person_key", "size"),
        answered=("answered_at", "count"),
        reports=("reported", "sum"),
        patients=("person_key", "nunique"),
        turnaround_median_min=("turnaround", "median"),
    ).reset_index()
    expected["turnaround_p90_min"] = grouped["turnaround"].quantile(0.9).to_numpy()
    got = gold(stack, analytics_run, "teleconsultation_load")
    check(
        got,
        expected,
        ["specialist_centre", "requesting_level", "month"],
        ["patients"],
        ["requests", "answered", "reports", "patients", "turnaround_median_min", "turnaround_p90_min"],
    )


def test_imaging_use(stack: Settings, analytics_run: AnalyticsRun) -> None:
    i = frame(analytics_run, "imaging_studies")
    i["month"] = month(i["study_date"])
    expected = (
        i.groupby(["city", "modality", "month"])
        .agg(
            studies=("person_key", "size"),
            patients=("person_key", "nunique"),
            series=("number_of_series", "sum"),
        )
        .reset_index()
    )
    got = gold(stack, analytics_run, "imaging_use")
    check(got, expected, ["city", "modality", "month"], ["patients"], ["studies", "patients", "series"])


def test_readmissions(stack: Settings, topology: Topology, analytics_run: AnalyticsRun) -> None:
    e = frame(analytics_run, "encounters")
    stays = e[e["encounter_type"] == "inpatient"].reset_index(drop=True)
    window = pd.Timedelta(days=30)
    index = stays[
        stays["discharge_time"].notna() & (stays["discharge_time"] <= stays["admit_time"].max() - window)
    ]
    pairs = index.reset_index().merge(
        stays[["person_key", "admit_time"]], on="person_key", suffixes=("", "_next")
    )
    hit = pairs[
        (pairs["admit_time_next"] > pairs["discharge_time"])
        & (pairs["admit_time_next"] <= pairs["discharge_time"] + window)
    ]
    index = index.assign(readmitted=index.index.isin(hit["index"]))
    assert index["readmitted"].any(), "the data should hold readmissions"
    expected = index.groupby("hospital_id").agg(
        index_stays=("person_key", "size"),
        patients=("person_key", "nunique"),
        readmissions=("readmitted", "sum"),
    )
    readmitted = index[index["readmitted"]].groupby("hospital_id")["person_key"].nunique()
    expected["readmitted_patients"] = readmitted.reindex(expected.index, fill_value=0)
    expected = expected.reset_index()
    expected["readmission_rate"] = (expected["readmissions"] / expected["index_stays"]).round(4)
    got = gold(stack, analytics_run, "readmissions_30d")
    level = {h.id: h.level for h in topology.hospitals}
    assert all(level[h] == lvl for h, lvl in zip(got["hospital_id"], got["level"], strict=True))
    # 166 hospitals: the small ones have cells of fewer than k (readmitted) patients, suppressed.
    check(
        got,
        expected,
        ["hospital_id"],
        ["patients", "readmitted_patients"],
        ["index_stays", "patients", "readmissions", "readmitted_patients", "readmission_rate"],
    )


def test_referral_flows(stack: Settings, topology: Topology, analytics_run: AnalyticsRun) -> None:
    e = frame(analytics_run, "encounters")
    r = e[e["referred_from_hospital_id"].notna()].copy()
    level = {h.id: h.level for h in topology.hospitals}
    r["from_level"] = r["referred_from_hospital_id"].map(level)
    r["to_level"] = r["hospital_id"].map(level)
    step = r["to_level"].map(RANK) - r["from_level"].map(RANK)
    r["direction"] = np.select([step > 0, step < 0], ["up", "down"], "same level")
    r["month"] = month(r["admit_time"])
    expected = (
        r.groupby(["month", "from_level", "to_level", "direction"])
        .agg(referrals=("person_key", "size"), patients=("person_key", "nunique"))
        .reset_index()
    )
    got = gold(stack, analytics_run, "referral_flows")
    assert {"up", "down", "same level"} <= set(got["direction"])
    check(
        got,
        expected,
        ["month", "from_level", "to_level", "direction"],
        ["patients"],
        ["referrals", "patients"],
    )


def test_gold_tables_name_no_person(stack: Settings, analytics_run: AnalyticsRun) -> None:
    """Released aggregates carry no pseudonym either, and record the k they were made with."""
    from lakehouse.analytics.jobs import JOBS

    options = delta_storage_options(stack, site_credentials(stack, ANALYTICS_SITE))
    for job in JOBS:
        table = DeltaTable(f"{analytics_run.gold_root}/{job}", storage_options=options)
        names = set(table.schema().to_arrow().names)
        assert not names & {"person_key", "resident_id", "encounter_id", "name", "phone", "address"}, job
        assert json.loads(table.history(1)[0]["userMetadata"])["k"] == K


def test_spark_sql_and_submit(analytics_run: AnalyticsRun, tmp_path: Path) -> None:
    """Analysts' own SQL and code see every provincial table by name, read-only."""
    env = analytics_run.env
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "medshare",
            "spark-sql",
            "-e",
            "SELECT count(*) AS n FROM province.encounters; SELECT count(*) AS g FROM gold.imaging_use",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert str(analytics_run.province.tables["encounters"].num_rows) in done.stdout
    out = tmp_path / "out.json"
    script = tmp_path / "my_job.py"
    script.write_text(
        "import json, sys\n"
        "result = {'argv': sys.argv[1:], 'diagnoses': spark.table('province.diagnoses').count()}\n"
        "json.dump(result, open(sys.argv[1], 'w'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "medshare", "analytics", "submit", str(script), str(out), "--flag"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["argv"] == [str(out), "--flag"]
    assert result["diagnoses"] == analytics_run.province.tables["diagnoses"].num_rows


def test_analytics_identity_cannot_write_the_lakehouse(stack: Settings, topology: Topology) -> None:
    """Whatever code analysts submit runs as this identity: it reads provincial tables, writes gold."""
    import io

    from minio.error import S3Error

    from lakehouse.storage import s3_client

    client = s3_client(stack, site_credentials(stack, ANALYTICS_SITE))
    buckets = topology.province.buckets
    next(iter(client.list_objects(buckets.lakehouse)), None)  # reading is allowed
    with pytest.raises(S3Error) as denied:
        client.put_object(buckets.lakehouse, "analyst-was-here", io.BytesIO(b"x"), 1)
    assert denied.value.code == "AccessDenied"
    client.put_object(buckets.gold, "_probe/analyst-was-here", io.BytesIO(b"x"), 1)
    client.remove_object(buckets.gold, "_probe/analyst-was-here")


def test_unknown_job_is_a_clear_error(analytics_run: AnalyticsRun) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "medshare", "analytics", "run", "no_such_job"],
        env=analytics_run.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "no standard job 'no_such_job'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("k", [2, 10])
def test_suppression_threshold(spark, k: int) -> None:  # type: ignore[no-untyped-def]
    """The rule on a hand-made aggregate: 0 and ≥ k shown, 1..k-1 blanked (every measure)."""
    from lakehouse.analytics.privacy import suppress

    rows = [
        (name, n, n * 3)
        for name, n in [("none", 0), ("one", 1), ("below", k - 1), ("at", k), ("above", k + 7)]
    ]
    df = spark.createDataFrame(rows, "cell string, patients long, events long")
    out = {
        r["cell"]: r
        for r in suppress(df, person_counts=["patients"], measures=["patients", "events"], k=k).collect()
    }
    for cell in ("one", "below"):
        assert out[cell]["suppressed"] and out[cell]["patients"] is None and out[cell]["events"] is None
    for cell in ("none", "at", "above"):
        assert not out[cell]["suppressed"] and out[cell]["events"] == out[cell]["patients"] * 3
