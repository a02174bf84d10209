"""The process manager with a real, tiny service (python -m http.server) on a free port."""

import os
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from infra import process
from infra.process import ServiceError, ServiceSpec
from tests.utils import processes_with


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_spec(tmp_path: Path, port: int, *, argv: tuple[str, ...] | None = None) -> ServiceSpec:
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    served = tmp_path / "served"
    served.mkdir(exist_ok=True)
    return ServiceSpec(
        name="web",
        argv=argv
        or (
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(served),
        ),
        host="127.0.0.1",
        ports=(port,),
        run_dir=tmp_path / "run",
        log_file=tmp_path / "logs" / "web.log",
        marker=str(served),
        healthy=healthy,
        start_timeout=10,
    )


def test_start_twice_is_a_no_op_and_stop_ends_it(tmp_path: Path) -> None:
    spec = http_spec(tmp_path, free_port())
    assert process.start(spec) is True
    pid = process.running_pid(spec)
    assert pid is not None
    try:
        assert process.start(spec) is False
        assert process.running_pid(spec) == pid
        assert process.status(spec).healthy
    finally:
        assert process.stop(spec) is True
    assert processes_with(spec.marker) == []
    assert process.running_pid(spec) is None
    assert process.stop(spec) is False
    assert not process.status(spec).healthy


def test_stale_pid_file_is_replaced(tmp_path: Path) -> None:
    spec = http_spec(tmp_path, free_port())
    spec.run_dir.mkdir(parents=True)
    # Our own pid: alive, but its command line lacks the marker, so it is not "ours".
    spec.pid_file.write_text(f"{os.getpid()}\n")
    assert process.running_pid(spec) is None
    assert not spec.pid_file.exists()
    spec.pid_file.write_text("garbage\n")
    try:
        assert process.start(spec) is True
    finally:
        process.stop(spec)


def test_taken_port_fails_fast_naming_it(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        spec = http_spec(tmp_path, port)
        with pytest.raises(ServiceError, match=f"port 127.0.0.1:{port} is taken"):
            process.start(spec)
    assert not spec.pid_file.exists()


def test_crash_at_start_names_the_log(tmp_path: Path) -> None:
    port = free_port()
    argv = (sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)")
    spec = http_spec(tmp_path, port, argv=argv)
    with pytest.raises(ServiceError) as err:
        process.start(spec)
    assert "exited with code 3" in str(err.value)
    assert str(spec.log_file) in str(err.value)
    assert "boom: bad config" in str(err.value)


def test_never_healthy_times_out_and_leaves_nothing(tmp_path: Path) -> None:
    marker = f"time.sleep(60) # {tmp_path}"
    argv = (sys.executable, "-c", f"import time; {marker}")
    spec = http_spec(tmp_path, free_port(), argv=argv)
    spec = ServiceSpec(**{**spec.__dict__, "start_timeout": 1.0, "marker": marker})
    with pytest.raises(ServiceError, match="not healthy after 1 s"):
        process.start(spec)
    assert process.running_pid(spec) is None
    assert processes_with(marker) == []
