"""The replicator's health record: what counts as a stall, the status file `medshare status`
reads, and the metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from lakehouse.replication.health import Health, ReplicatorStatus, Wait, read_statuses
from lakehouse.replication.metrics import ReplicationMetrics
from lakehouse.replication.replicator import _finish_rebalance


def _health(tmp_path: Path, namespace: str = "t1", stall_seconds: float = 60.0) -> Health:
    return Health(
        ReplicationMetrics(),
        status_dir=tmp_path,
        namespace=namespace,
        group=f"{namespace}.g",
        stall_seconds=stall_seconds,
    )


def _status(**changes: object) -> ReplicatorStatus:
    now = time.time()
    status = ReplicatorStatus(pid=1, host="h", namespace="", group="g", updated=now, started=now)
    for name, value in changes.items():
        setattr(status, name, value)
    return status


def test_a_retry_is_a_stall_only_once_it_lasts() -> None:
    now = time.time()
    young = _status(retrying=Wait("apply zz/encounters v3", now - 5, 2, "S3 error"))
    old = _status(retrying=Wait("apply zz/encounters v3", now - 61, 9, "S3 error"))
    assert young.stalls(now) == []
    (stall,) = old.stalls(now)
    assert stall == "retrying for 61 s: apply zz/encounters v3 (S3 error)"


def test_a_failing_poll_and_a_half_received_unit_are_stalls() -> None:
    now = time.time()
    polling = _status(polling=Wait("poll the broker", now - 70, 30, "NoBrokersAvailable"))
    assert polling.stalls(now)[0].startswith("poll failing for 70 s")
    pending = _status(pending={"ly/patients v2": now - 90})
    assert pending.stalls(now) == ["ly/patients v2 half received for 90 s"]
    # A unit being applied (a long write) is busy, not stalled.
    busy = _status(pending={"ly/patients v2": now - 90}, busy=Wait("apply ly/patients v2", now - 80))
    assert busy.stalls(now) == []


def test_a_rebalance_that_does_not_finish_is_a_stall_and_survives_the_status_file(tmp_path: Path) -> None:
    health = _health(tmp_path, stall_seconds=10.0)
    health.rebalancing(True)
    started = health.snapshot().rebalancing
    assert started is not None
    health.rebalancing(True)  # still the same wait, from when it began
    assert health.snapshot().rebalancing == started
    later = started.since + 15  # past the stall limit, before the status file counts as old
    (stall,) = health.snapshot().stalls(later)
    assert stall == "waiting for 15 s: a consumer-group rebalance to finish"
    body = json.loads(json.dumps(asdict(health.snapshot())))
    assert ReplicatorStatus.from_json(body).rebalancing == started
    health.rebalancing(False)
    assert health.snapshot().rebalancing is None and health.snapshot().stalls(later) == []


class _Coordinator:
    """kafka-python's consumer coordinator, as far as `_finish_rebalance` asks it."""

    def __init__(self, *, rebalancing: bool, rejoin: bool) -> None:
        self.rebalancing, self.rejoin, self.requested = rebalancing, rejoin, 0

    def rebalance_in_progress(self) -> bool:
        return self.rebalancing

    def need_rejoin(self) -> bool:
        return self.rejoin

    def request_rejoin(self) -> None:
        self.requested += 1
        self.rejoin = True


@pytest.mark.parametrize(
    ("rebalancing", "rejoin", "requested"),
    [(False, False, 0), (True, True, 0), (True, False, 1)],
)
def test_only_a_join_no_poll_would_finish_is_asked_to_finish(
    rebalancing: bool, rejoin: bool, requested: int
) -> None:
    coordinator = _Coordinator(rebalancing=rebalancing, rejoin=rejoin)
    consumer = SimpleNamespace(_coordinator=coordinator)
    assert _finish_rebalance(consumer) is rebalancing  # type: ignore[arg-type]
    assert coordinator.requested == requested


def test_a_status_not_rewritten_is_a_stall() -> None:
    now = time.time()
    assert _status(updated=now - 45).stalls(now) == ["status not updated for 45 s"]


def test_failures_and_recovery(tmp_path: Path) -> None:
    health = _health(tmp_path)
    health.failed("open s3://x", OSError("Kernel error -> Generic S3 error\n  more lines"))
    health.failed("open s3://x", OSError("again"))
    snap = health.snapshot()
    assert snap.retrying is not None and snap.retrying.attempts == 2 and snap.retrying.error == "again"
    assert snap.failures == 2
    health.recovered()
    assert health.snapshot().retrying is None and health.snapshot().failures == 2


def test_units_started_and_ended(tmp_path: Path) -> None:
    health = _health(tmp_path)
    health.unit_started("zz/encounters v1")
    health.unit_started("ly/encounters v4")
    health.unit_ended("zz/encounters v1", progress=True)
    health.unit_ended("ly/encounters v4", progress=False)  # dropped: read again later
    snap = health.snapshot()
    assert snap.pending == {} and snap.units_done == 1


def test_export_sets_the_metrics_and_says_a_stall_once(tmp_path: Path) -> None:
    health = _health(tmp_path, stall_seconds=0.0)
    health.failed("apply zz/encounters v1", OSError("S3 error"))
    first, second = health.export(), health.export()
    assert health.metrics.stalled._value.get() == 1
    assert first.stalls_reported == second.stalls_reported == 1
    health.recovered()
    health.export()
    assert health.metrics.stalled._value.get() == 0
    assert health.metrics.failing_seconds._value.get() == 0


def test_status_files_round_trip_and_filter_by_namespace(tmp_path: Path) -> None:
    mine, other = _health(tmp_path, "t1"), _health(tmp_path, "t2")
    mine.assigned(["t1.medshare.encounters[0]"])
    mine.busy("apply zz/encounters v7")
    mine.export()
    other.export()
    (status,) = read_statuses(tmp_path, "t1")
    assert status.pid == os.getpid() and status.partitions == ["t1.medshare.encounters[0]"]
    assert status.busy is not None and status.busy.what == "apply zz/encounters v7"
    mine.stop()
    assert [s.namespace for s in read_statuses(tmp_path, "t1")] == []


def test_files_of_gone_processes_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    pid = int(gone.stdout)
    health = _health(tmp_path)
    body = json.loads(json.dumps(health.export().__dict__, default=lambda w: w.__dict__))
    path = tmp_path / f"replicator-{pid}-dead.json"
    path.write_text(json.dumps({**body, "pid": pid}))
    (tmp_path / "replicator-9-garbage.json").write_text("{not json")
    assert [s.pid for s in read_statuses(tmp_path, "t1")] == [os.getpid()]
    assert not path.exists()
