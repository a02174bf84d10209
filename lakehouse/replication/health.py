"""What a replicator is doing and what it is waiting for, so that one that cannot make progress
says so instead of sitting idle.

The replicator's loop reports its transitions here (a unit started, an apply under way, a retry,
a failing poll, the partitions it holds); a daemon thread turns them every few seconds into
metrics and a status file under the state folder, which `medshare status` reads. The thread keeps
writing while the loop is blocked inside a long object-store call, so a stuck apply shows its age.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lakehouse.replication.metrics import ReplicationMetrics

log = logging.getLogger(__name__)

# A retry, a failing poll or a half-received unit older than this is a stall: said loudly.
STALL_SECONDS = 60.0
WRITE_EVERY = 2.0
# A status file not rewritten for this long belongs to a replicator that is gone or frozen.
STATUS_MAX_AGE = 30.0


@dataclass
class Wait:
    """One thing the replicator is waiting on, since when, and the last error if it is failing."""

    what: str
    since: float
    attempts: int = 0
    error: str = ""


@dataclass
class ReplicatorStatus:
    pid: int
    host: str
    namespace: str
    group: str
    updated: float
    started: float
    partitions: list[str] = field(default_factory=list)
    # Units received in part, by "city/dataset vN" → when their first chunk arrived.
    pending: dict[str, float] = field(default_factory=dict)
    busy: Wait | None = None
    retrying: Wait | None = None
    polling: Wait | None = None
    # Between consumer-group generations: no partitions are held, nothing can be applied.
    rebalancing: Wait | None = None
    last_progress: float = 0.0
    units_done: int = 0
    # Failed attempts of storage or broker calls since the start, and stalls said.
    failures: int = 0
    stalls_reported: int = 0
    stall_seconds: float = STALL_SECONDS

    def stalls(self, now: float | None = None) -> list[str]:
        """Why this replicator is not making progress; empty when it is."""
        now = time.time() if now is None else now
        limit = self.stall_seconds
        out = []
        waits = (("retrying", self.retrying), ("poll failing", self.polling), ("waiting", self.rebalancing))
        for kind, wait in waits:
            if wait is not None and now - wait.since >= limit:
                why = f" ({wait.error})" if wait.error else ""
                out.append(f"{kind} for {now - wait.since:.0f} s: {wait.what}{why}")
        for unit, since in sorted(self.pending.items()):
            if now - since >= limit and (self.busy is None or unit not in self.busy.what):
                out.append(f"{unit} half received for {now - since:.0f} s")
        if now - self.updated > STATUS_MAX_AGE:
            out.append(f"status not updated for {now - self.updated:.0f} s")
        return out

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ReplicatorStatus:
        waits = ("busy", "retrying", "polling", "rebalancing")
        status = cls(**{k: v for k, v in body.items() if k not in waits})
        status.busy, status.retrying, status.polling, status.rebalancing = (
            Wait(**body[k]) if body.get(k) else None for k in waits
        )
        return status


class Health:
    """Thread-safe record of the replicator's state; `start()` begins the periodic export."""

    def __init__(
        self,
        metrics: ReplicationMetrics,
        *,
        status_dir: Path | None,
        namespace: str,
        group: str,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self.metrics = metrics
        now = time.time()
        self._status = ReplicatorStatus(
            pid=os.getpid(),
            host=socket.gethostname(),
            namespace=namespace,
            group=group,
            updated=now,
            started=now,
            last_progress=now,
            stall_seconds=stall_seconds,
        )
        name = f"replicator-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self._path = None if status_dir is None else status_dir / name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said: set[str] = set()

    # -- reported by the loop ------------------------------------------------------------------
    def assigned(self, partitions: Iterable[str]) -> None:
        with self._lock:
            self._status.partitions = sorted(partitions)

    def unit_started(self, unit: str) -> None:
        with self._lock:
            self._status.pending.setdefault(unit, time.time())

    def unit_ended(self, unit: str, *, progress: bool) -> None:
        """The unit was applied or skipped (progress), or dropped to be read again."""
        with self._lock:
            self._status.pending.pop(unit, None)
            if progress:
                self._status.last_progress = time.time()
                self._status.units_done += 1

    def busy(self, what: str | None) -> None:
        with self._lock:
            self._status.busy = None if what is None else Wait(what, time.time())

    def rebalancing(self, now_rebalancing: bool) -> None:
        """Whether the consumer is between group generations (then it holds no partitions)."""
        with self._lock:
            if not now_rebalancing:
                self._status.rebalancing = None
            elif self._status.rebalancing is None:
                self._status.rebalancing = Wait("a consumer-group rebalance to finish", time.time())

    def failed(self, what: str, error: BaseException, *, kind: str = "retrying") -> None:
        """A retry of `what` (kind "retrying") or a failed poll ("polling")."""
        with self._lock:
            wait = getattr(self._status, kind)
            if wait is None or wait.what != what:
                wait = Wait(what, time.time())
                setattr(self._status, kind, wait)
            wait.attempts += 1
            self._status.failures += 1
            wait.error = str(error).splitlines()[0][:300] if str(error) else type(error).__name__

    def recovered(self, *, kind: str = "retrying") -> None:
        """The retried call passed (or was given up): nothing is failing any more."""
        with self._lock:
            wait = getattr(self._status, kind)
            if wait is not None:
                log.info(
                    "%s: no longer failing, after %d failed attempt(s) over %.0f s",
                    wait.what,
                    wait.attempts,
                    time.time() - wait.since,
                )
            setattr(self._status, kind, None)

    # -- the export ----------------------------------------------------------------------------
    def snapshot(self) -> ReplicatorStatus:
        with self._lock:
            self._status.updated = time.time()
            return ReplicatorStatus.from_json(json.loads(json.dumps(asdict(self._status))))

    def export(self) -> ReplicatorStatus:
        """Update the gauges and the status file; log each new stall once, loudly."""
        status = self.snapshot()
        now = status.updated
        stalls = status.stalls(now)
        self.metrics.stalled.set(1 if stalls else 0)
        self.metrics.pending_units.set(len(status.pending))
        self.metrics.assigned_partitions.set(len(status.partitions))
        self.metrics.last_progress.set(status.last_progress)
        retry = status.retrying or status.polling
        self.metrics.failing_seconds.set(0 if retry is None else now - retry.since)
        for stall in stalls:
            key = stall.split(" for ")[0]
            if key not in self._said:
                log.error("replicator stalled: %s", stall)
                self._said.add(key)
                with self._lock:
                    self._status.stalls_reported += 1
                status.stalls_reported += 1
        if not stalls and self._said:
            log.info("replicator making progress again")
            self._said.clear()
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(status)))
            tmp.replace(self._path)
        return status

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replicator-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._path is not None:
            self._path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(WRITE_EVERY):
            try:
                self.export()
            except OSError as exc:  # a full disk must not stop replication; say it once a pass
                log.warning("could not write the replicator status: %s", exc)


def read_statuses(status_dir: Path, namespace: str) -> list[ReplicatorStatus]:
    """The status of every replicator of `namespace` on this machine; files of processes that
    are gone are removed."""
    out = []
    for path in sorted(status_dir.glob("replicator-*.json")):
        try:
            status = ReplicatorStatus.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):  # half-written or foreign
            continue
        if status.host == socket.gethostname() and not _alive(status.pid):
            path.unlink(missing_ok=True)
            continue
        if status.namespace == namespace:
            out.append(status)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
