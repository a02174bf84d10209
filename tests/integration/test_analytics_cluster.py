"""The standard analytics jobs on a two-worker Spark standalone cluster give the same gold tables as
on local[*]: same data, different execution (separate executor JVMs that fetch the Delta/s3a jars
from the driver, shuffles between processes, Python on the workers)."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from deltalake import DeltaTable

from infra import spark_cluster
from lakehouse.analytics.jobs import JOBS
from lakehouse.settings import Settings
from lakehouse.storage import ANALYTICS_SITE, delta_storage_options, site_credentials
from lakehouse.topology import Topology
from tests.integration.conftest import AnalyticsRun, analytics_env, run_analytics

pytestmark = pytest.mark.slow

WORKERS = 2
# One job is enough to prove the cluster path (executor JVMs, jars, shuffles between processes,
# Python on the workers): readmissions shuffles every stay by patient between the executors.
# Every job's own result is checked on local[*] by test_analytics_jobs; a second job here cost
# ~40 s of `make test`.
CLUSTER_JOBS = ("readmissions_30d",)
APP_NAME = "medshare-analytics-run"  # what `medshare analytics run` names its application


@pytest.fixture(scope="module")
def cluster(stack: Settings) -> Iterator[str]:
    """A running two-worker cluster, stopped afterwards whatever happens; its master URL."""
    try:
        spark_cluster.up(stack, WORKERS)
        yield spark_cluster.master_url(stack)
    finally:
        spark_cluster.down(stack)


def gold_frame(stack: Settings, uri: str, job: str) -> pd.DataFrame:
    options = delta_storage_options(stack, site_credentials(stack, ANALYTICS_SITE))
    df = DeltaTable(uri, storage_options=options).to_pandas()
    # Row order is not part of a table: sort by the job's keys, then by every other column.
    keys = list(JOBS[job].keys)
    order = keys + sorted(c for c in df.columns if c not in keys)
    return df[order].sort_values(order, na_position="last").reset_index(drop=True)


def finished_app(since_ms: float) -> dict[str, Any]:
    """Our application in the master's list of completed ones (the run has returned by now)."""
    state = spark_cluster.master_state()
    assert state is not None, "the Spark master does not answer"
    apps = [
        a
        for a in state.get("completedapps", [])
        if a.get("name") == APP_NAME and a.get("starttime", 0) >= since_ms
    ]
    assert len(apps) == 1, f"expected one completed {APP_NAME} since the run began: {apps}"
    return apps[0]


def executor_logs(settings: Settings, app_id: str) -> dict[int, list[Path]]:
    """stderr of each executor of the application, by worker: a worker keeps them in its work folder
    as <work-dir>/<app id>/<executor id>/stderr."""
    root = spark_cluster.cluster_dir(settings)
    return {i: sorted((root / f"worker-{i}" / app_id).glob("*/stderr")) for i in range(WORKERS)}


def test_cluster_gold_equals_local(
    stack: Settings, topology: Topology, analytics_run: AnalyticsRun, cluster: str
) -> None:
    gold_root = f"s3://{topology.province.buckets.gold}/analytics-cluster-test-{uuid.uuid4().hex[:8]}"
    env = analytics_env(analytics_run.tables_root, gold_root)
    began_ms = time.time() * 1000 - 1000
    run_analytics(env, "run", *CLUSTER_JOBS, "--master", cluster)

    for job in CLUSTER_JOBS:
        local = gold_frame(stack, f"{analytics_run.gold_root}/{job}", job)
        on_cluster = gold_frame(stack, f"{gold_root}/{job}", job)
        assert len(local) > 0, job
        # Exact: every measure is a count, or a rate rounded from counts, so no float sum can
        # depend on how rows were spread over partitions.
        pd.testing.assert_frame_equal(on_cluster, local, check_exact=True, obj=f"gold.{job}")

    # The run really used the cluster: the master ran the application to the end, and each worker
    # launched an executor for it that ran tasks (not a driver falling back to local mode).
    app = finished_app(began_ms)
    assert app["state"] == "FINISHED", app
    logs = executor_logs(stack, app["id"])
    for worker, stderr in logs.items():
        assert len(stderr) == 1, f"worker-{worker} ran {len(stderr)} executor(s) of {app['id']}"
        assert "Running task" in stderr[0].read_text(errors="replace"), f"worker-{worker}'s executor idle"
    # Each executor folder holds a copy of the ~27 MB of jars; the workers' own clean-up does not run
    # once the fixture stops them, so remove them here (kept above for a failing run's post-mortem).
    for worker in logs:
        shutil.rmtree(spark_cluster.cluster_dir(stack) / f"worker-{worker}" / app["id"], ignore_errors=True)
