"""Running one service as a detached process: pid files, port checks, health waits, stopping."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lakehouse.errors import MedshareError


class ServiceError(MedshareError):
    """A service could not be started, checked or stopped."""


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    host: str
    ports: tuple[int, ...]
    run_dir: Path
    log_file: Path
    # A string that appears in our process's command line (the state folder): it tells our
    # process from an unrelated one that reused a stale pid.
    marker: str
    healthy: Callable[[], bool]
    start_timeout: float = 60.0

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"


@dataclass(frozen=True, kw_only=True)
class ServiceStatus:
    name: str
    pid: int | None
    ports: tuple[int, ...]
    healthy: bool
    log_file: Path


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def running_pid(spec: ServiceSpec) -> int | None:
    """The pid of our running process, or None; a stale pid file is removed."""
    try:
        pid = int(spec.pid_file.read_text().strip())
    except (OSError, ValueError):
        spec.pid_file.unlink(missing_ok=True)
        return None
    if _alive(pid) and spec.marker in _cmdline(pid):
        return pid
    spec.pid_file.unlink(missing_ok=True)
    return None


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


def start(spec: ServiceSpec) -> bool:
    """Start the service unless ours already runs; True when it was started now."""
    if running_pid(spec) is not None:
        return False
    for port in spec.ports:
        if port_taken(spec.host, port):
            raise ServiceError(
                f"{spec.name}: port {spec.host}:{port} is taken by another process; stop it or "
                f"choose another port (see MEDSHARE_* settings)"
            )
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    spec.log_file.parent.mkdir(parents=True, exist_ok=True)
    with spec.log_file.open("ab") as log:
        proc = subprocess.Popen(
            spec.argv,
            env={**os.environ, **spec.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the CLI; its own process group for stopping
        )
    spec.pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + spec.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            spec.pid_file.unlink(missing_ok=True)
            raise ServiceError(
                f"{spec.name} exited with code {proc.returncode} while starting; "
                f"log: {spec.log_file}\n{_log_tail(spec.log_file)}"
            )
        if spec.healthy():
            return True
        time.sleep(0.25)
    _terminate(proc.pid, timeout=10)
    spec.pid_file.unlink(missing_ok=True)
    raise ServiceError(
        f"{spec.name} was not healthy after {spec.start_timeout:.0f} s; "
        f"log: {spec.log_file}\n{_log_tail(spec.log_file)}"
    )


def _terminate(pid: int, *, timeout: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
    # Reap it when it is our own child (the test suite starts services in-process).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(spec: ServiceSpec, *, timeout: float = 30.0) -> bool:
    """Stop our process (SIGTERM, then SIGKILL after `timeout`); True when one was running."""
    pid = running_pid(spec)
    if pid is None:
        return False
    _terminate(pid, timeout=timeout)
    spec.pid_file.unlink(missing_ok=True)
    return True


def status(spec: ServiceSpec) -> ServiceStatus:
    pid = running_pid(spec)
    return ServiceStatus(
        name=spec.name,
        pid=pid,
        ports=spec.ports,
        healthy=pid is not None and spec.healthy(),
        log_file=spec.log_file,
    )
