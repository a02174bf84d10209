"""An instance's background work, done once for all its request workers and outside them: appending
every worker's audit journal to the audit table, and asking the provincial tables for new versions.

Why not in the workers: a worker's event loop shares the GIL with the worker's own threads.
Measured over the 1M-patient read model: a poll of the six tables holds it for ~20 ms per pass, an
audit flush of 750 records for ~100 ms, each pass with stalls of 5–30 ms before the loop gets the
GIL back — at 150 requests/s per worker that is what a p99 is made of. The keeper runs as threads
of the uvicorn supervisor process (`serve`), which otherwise only watches the workers; the
workers' read models reload only when its status file says a table has a new version.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse.errors import ConfigError
from sharing_api.audit import AuditFlusher, try_lock
from sharing_api.background import lower_thread_priority
from sharing_api.operations import OperationsLink

log = logging.getLogger(__name__)


class TableWatch:
    """The current version of each provincial table (or why it cannot be read)."""

    def __init__(self, table_uris: dict[str, str], storage_options: dict[str, str]):
        self.table_uris = table_uris
        self.storage_options = storage_options
        self._tables: dict[str, DeltaTable] = {}

    def versions(self) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for dataset, uri in self.table_uris.items():
            try:
                table = self._tables.get(dataset)
                if table is None:
                    table = self._tables[dataset] = DeltaTable(uri, storage_options=self.storage_options)
                else:
                    table.update_incremental()
                seen[dataset] = table.version()
            except TableNotFoundError:
                seen[dataset] = "table does not exist"
            except (DeltaError, OSError) as exc:
                seen[dataset] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return seen


class Keeper:
    """Runs the flusher and the watch on threads; writes what they saw to the status file."""

    def __init__(
        self,
        *,
        flusher: AuditFlusher,
        watch: TableWatch,
        status: Path,
        lock: Path,
        interval: float,
        operations: OperationsLink | None = None,
    ):
        self.flusher = flusher
        self.operations = operations
        self.watch = watch
        self.status = status
        self.lock = lock
        self.interval = interval
        self._lock_fd: int | None = None
        self._tables: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Two keepers of one instance would append the same journal records twice.
        self._lock_fd = try_lock(self.lock)
        if self._lock_fd is None:
            raise ConfigError(
                f"another `medshare serve` of instance {self.flusher.store.instance!r} is running on "
                f"this host (it holds {self.lock}); give this one its own MEDSHARE_API_INSTANCE"
            )
        self.flusher.start()
        if self.operations is not None:
            self.operations.start()
        self._thread = threading.Thread(target=self._run, name="keeper-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """After the workers have stopped: the last journal records go to the audit table."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flusher.stop()
        if self.operations is not None:
            self.operations.stop()
        self._write(self._tables)
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def _run(self) -> None:
        lower_thread_priority()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._tables = self.watch.versions()
                self._write(self._tables)
            except Exception:  # a status not written makes workers poll themselves: never fatal
                log.exception("keeper pass failed; retrying")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _write(self, tables: dict[str, Any]) -> None:
        body = {
            "updated": time.time(),
            "pid": os.getpid(),
            "tables": tables,
            "audit": {"flushed": self.flusher.flushed, "error": self.flusher.last_error},
        }
        if self.operations is not None:
            body["operations"] = {
                "shipped": self.operations.shipped,
                "applied": self.operations.applied,
                "error": self.operations.last_error,
            }
        # Written aside and renamed: a reader sees the old status or the new, never half of one.
        tmp = self.status.with_name(f".{self.status.name}.{os.getpid()}")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.status)


def read_status(path: Path, *, max_age: float) -> dict[str, Any] | None:
    """The keeper's last status, or None when there is none as recent as `max_age` seconds (no
    keeper running: the caller does the work itself)."""
    try:
        body = json.loads(path.read_text())
        fresh = isinstance(body, dict) and time.time() - float(body.get("updated", 0)) <= max_age
    except (OSError, ValueError, TypeError):  # a half-written or foreign file is no status
        return None
    return body if fresh else None
