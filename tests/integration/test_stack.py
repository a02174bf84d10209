"""`up`, `status`, `down` of a second, private stack (own ports and state folder), so the shared
stack the other tests use is never disturbed."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from infra import stack
from infra.process import ServiceError
from lakehouse.settings import Settings, load_settings
from lakehouse.topology import Topology
from tests.utils import processes_with


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def private_settings(tmp_path: Path, base: Settings) -> Settings:
    s3, console, broker, controller = free_ports(4)
    return load_settings(
        state_dir=tmp_path / "state",
        cache_dir=base.cache_dir,
        s3_endpoint=f"http://127.0.0.1:{s3}",
        s3_console_port=console,
        kafka_bootstrap=f"127.0.0.1:{broker}",
        kafka_controller_port=controller,
    )


def test_up_twice_is_a_no_op_and_down_leaves_no_process(
    tmp_path: Path, settings: Settings, topology: Topology
) -> None:
    mine = private_settings(tmp_path, settings)
    marker = str(mine.state_dir)
    try:
        assert stack.up(mine, topology) == ["minio", "kafka"]
        statuses = stack.status(mine)
        assert all(s.healthy for s in statuses)
        pids = {s.name: s.pid for s in statuses}
        assert set(processes_with(marker)) >= {p for p in pids.values() if p}

        assert stack.up(mine, topology) == []
        assert {s.name: s.pid for s in stack.status(mine)} == pids
    finally:
        stopped = stack.down(mine)
    assert stopped == ["kafka", "minio"]
    assert processes_with(marker) == []
    assert not any(s.healthy or s.pid for s in stack.status(mine))
    assert stack.down(mine) == []


def test_up_after_a_crash_replaces_the_stale_pid_file(
    tmp_path: Path, settings: Settings, topology: Topology
) -> None:
    mine = private_settings(tmp_path, settings)
    run = mine.state_dir / "run"
    run.mkdir(parents=True)
    # A pid file left by a killed run, pointing at a process that is not ours.
    (run / "minio.pid").write_text("1\n")
    try:
        assert "minio" in stack.up(mine, topology)
    finally:
        stack.down(mine)
    assert processes_with(str(mine.state_dir)) == []


def test_taken_port_fails_fast_saying_which(tmp_path: Path, settings: Settings, topology: Topology) -> None:
    mine = private_settings(tmp_path, settings)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", mine.kafka_host_port[1]))
        squatter.listen()
        try:
            with pytest.raises(
                ServiceError, match=f"kafka: port 127.0.0.1:{mine.kafka_host_port[1]} is taken"
            ):
                stack.up(mine, topology)
        finally:
            stack.down(mine)
    assert processes_with(str(mine.state_dir)) == []


def test_kafka_storage_formats_whatever_its_cluster_id_starts_with(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One random cluster id in 64 begins with '-' in base64; formatting once failed on those
    ("--cluster-id: expected one argument") — a test stack's start failing one time in 64."""
    from infra import services

    first = b"\xf8"  # 111110.. : the first base64 character is alphabet[62], '-'
    monkeypatch.setattr(services.uuid, "uuid4", lambda: uuid.UUID(bytes=first + bytes(15)))
    private = private_settings(tmp_path, settings)
    services.prepare_kafka(private)
    meta = (private.state_dir / "kafka" / "log" / "meta.properties").read_text()
    assert "cluster.id=-" in meta, meta
