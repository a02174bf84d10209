"""The instance keeper's small contracts: one keeper per instance, a status the workers can
trust or ignore, and a read model that reloads only when the keeper saw a new version."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lakehouse.errors import ConfigError
from lakehouse.settings import get_settings
from lakehouse.topology import load_topology
from sharing_api.audit import AuditFlusher, AuditStore
from sharing_api.keeper import Keeper, TableWatch, read_status
from sharing_api.lakeview import LakeView


def _keeper(tmp_path: Path) -> Keeper:
    store = AuditStore(instance="api-0", journals=list, table_uri=str(tmp_path / "audit"), storage_options={})
    return Keeper(
        flusher=AuditFlusher(store, interval=60, batch_rows=100),
        watch=TableWatch({"encounters": str(tmp_path / "no-such-table")}, {}),
        status=tmp_path / "keeper-api-0.json",
        lock=tmp_path / "keeper-api-0.lock",
        interval=0.05,
    )


def test_one_keeper_per_instance_and_its_status(tmp_path: Path) -> None:
    first = _keeper(tmp_path)
    first.start()
    try:
        with pytest.raises(ConfigError, match="another `medshare serve` of instance 'api-0'"):
            _keeper(tmp_path).start()
        deadline = time.monotonic() + 10
        while (status := read_status(first.status, max_age=5)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert status is not None
        # A table that cannot be read is reported with the reason, not skipped.
        assert status["tables"] == {"encounters": "table does not exist"}
        assert status["audit"] == {"flushed": 0, "error": None}
    finally:
        first.stop()
    second = _keeper(tmp_path)  # the lock went with the first
    second.start()
    second.stop()


def test_an_old_or_broken_status_is_no_status(tmp_path: Path) -> None:
    path = tmp_path / "keeper.json"
    assert read_status(path, max_age=60) is None
    path.write_text(json.dumps({"updated": time.time() - 120, "tables": {}}))
    assert read_status(path, max_age=60) is None  # its keeper has stopped writing
    path.write_text("{not json")
    assert read_status(path, max_age=60) is None
    for updated in ('"soon"', "null", "[1]"):  # readable JSON, no time in it: not a crash either
        path.write_text(f'{{"updated": {updated}, "tables": {{}}}}')
        assert read_status(path, max_age=60) is None
    path.write_text(json.dumps({"updated": time.time(), "tables": {"encounters": 3}}))
    assert read_status(path, max_age=60) == {
        "updated": pytest.approx(time.time(), abs=5),
        "tables": {"encounters": 3},
    }


def _view_counting_passes(versions: Callable[[], object | None]) -> tuple[LakeView, list[object]]:
    """A read model over no tables whose refresh passes are recorded (with the versions then)."""
    view = LakeView(
        table_uris={},
        views={},
        topology=load_topology(get_settings().platform_dir),
        storage_options={},
        refresh_seconds=0.01,
        versions=versions,
    )
    passes: list[object] = []
    refresh = view.refresh

    def counted() -> bool:
        passes.append(versions())
        return refresh()

    view.refresh = counted  # type: ignore[method-assign]
    return view, passes


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_read_model_reloads_only_when_the_keeper_saw_a_change() -> None:
    versions: dict[str, object] = {"encounters": 1}
    view, passes = _view_counting_passes(lambda: dict(versions))
    view.start()
    try:
        assert _until(lambda: len(passes) >= 1)
        time.sleep(0.3)  # ~30 more passes of the loop
        assert passes == [{"encounters": 1}]  # the first load, then nothing while nothing changes
        versions["encounters"] = 2
        assert _until(lambda: len(passes) >= 2)
        time.sleep(0.3)
        assert passes == [{"encounters": 1}, {"encounters": 2}]
    finally:
        view.stop()

    no_keeper, asked = _view_counting_passes(lambda: None)
    no_keeper.start()
    try:
        # Without a keeper it asks the tables itself, pass after pass.
        assert _until(lambda: len(asked) >= 3)
    finally:
        no_keeper.stop()
