"""The audit journal: each request's record made durable (SQLite, synchronous=FULL) before its
response leaves, with group commit.

Where the writing happens, and why. The commit cannot run on the event loop: each fsync would
stall every request of the worker (tried: 4.9 ms p99, 20 ms max per commit under load). On a
thread of the worker it shares the worker's GIL, and each time that thread enters Python while
the loop is busy it waits up to the 5 ms switch interval: at 150 requests/s per worker the wait
for a record was p50 ~3.7 ms, p99 ~26 ms for an fsync of ~0.3 ms (`benchmarks/journal_wait.py`).
So each worker has a **writer process** of its own, reached over a socket pair: the loop writes
a record's JSON line and goes on; the writer reads whatever lines have arrived, inserts and
commits them in one statement, and answers with one line per commit (`<last seq> <count>`, or
`! <count> <reason>`); the loop settles the waiting requests in order. No GIL is shared, and the
kernel wakes a sleeping writer within a fraction of a millisecond.

The writer dies with its worker (PR_SET_PDEATHSIG, and end-of-file on the socket): a record is
durable once it is answered, and a worker killed with -9 leaves only committed records behind.
A writer that dies alone fails the requests waiting for it (the middleware answers 503, fail
closed); the next record starts a new writer. This module imports only the standard library:
the writer is a fresh interpreter and starts in ~50 ms.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_ROOT = Path(__file__).resolve().parents[1]  # where `sharing_api` is imported from, for the writer


class AuditUnavailable(Exception):
    """The journal could not make a record durable; the request must not be answered with data."""


class JournalFile:
    """The SQLite file: every `write` is one statement that inserts its records with consecutive
    sequence numbers and commits them (autocommit; the fsync is inside it), or none of them."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # every commit is fsynced: durable before we answer
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL)"
        )
        self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex[:16],))
        self.id: str = self._conn.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0]

    def write(self, texts: list[str]) -> int:
        """The sequence number of the last record: the statement holds the write lock and the
        table is AUTOINCREMENT, so its records have the `len(texts)` numbers ending there."""
        cur = self._conn.execute(
            "INSERT INTO journal (record) SELECT value FROM json_each(?) ORDER BY key", (json.dumps(texts),)
        )
        return int(cur.lastrowid or 0)

    def close(self) -> None:
        self._conn.close()


class _Link(asyncio.Protocol):
    """The event loop's end of the socket to a writer: requests wait here in the order sent."""

    def __init__(self) -> None:
        self.waiting: collections.deque[asyncio.Future[int]] = collections.deque()
        self.transport: asyncio.WriteTransport | None = None
        self.commits = 0
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's: no isinstance check here.
        self.transport = cast(asyncio.WriteTransport, transport)

    def send(self, line: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(line)
        return future

    def data_received(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            try:
                head, count, *reason = line.split(b" ", 2)
                futures = [self.waiting.popleft() for _ in range(int(count))]
            except (ValueError, IndexError):
                # Not our writer's answer: close, so every waiting request fails (connection_lost)
                # instead of waiting for ever.
                log.error("audit journal writer answered %r; closing the link", line[:100])
                if self.transport is not None:
                    self.transport.close()
                return
            self.commits += 1
            if head == b"!":
                error = AuditUnavailable(reason[0].decode(errors="replace") if reason else "write failed")
                for future in futures:
                    if not future.done():  # done: its request was cancelled meanwhile
                        future.set_exception(error)
            else:
                for seq, future in enumerate(futures, start=int(head) - len(futures) + 1):
                    if not future.done():
                        future.set_result(seq)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        error = AuditUnavailable("the audit journal's writer process stopped")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class Journal:
    """A worker's journal: `append` from the event loop, through the writer process;
    `append_sync` from other code (tests, the CLI), in this process."""

    def __init__(self, path: Path):
        self.path = path
        self._file = JournalFile(path)  # sets the file up before any writer or reader opens it
        self.id = self._file.id
        # Started now, not at the first request (an interpreter's start is ~50 ms).
        self._writer: tuple[subprocess.Popen[bytes], socket.socket] | None = self._spawn()
        self._link: _Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self._retired_commits = 0
        self._last_connect = -1.0

    @property
    def commits(self) -> int:
        """Commits the writers have made (each answered one or more records)."""
        return self._retired_commits + (self._link.commits if self._link is not None else 0)

    async def append(self, record: dict[str, Any]) -> int:
        """The record's sequence number once it is durable; AuditUnavailable when it is not."""
        line = _dumps(record).encode() + b"\n"
        link = self._link
        if link is None or link.transport is None or self._loop is not asyncio.get_running_loop():
            link = await self._connected()
        return await link.send(line)

    def append_sync(self, record: dict[str, Any]) -> int:
        return self._file.write([_dumps(record)])

    async def _connected(self) -> _Link:
        # Concurrent first records share one connect; shielded, so a cancelled request does not
        # cancel it for the others.
        if self._connecting is None or self._connecting.get_loop() is not asyncio.get_running_loop():
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        if self._link is not None:  # its writer stopped, or it belongs to another (test) loop
            # At most one new writer a second: whatever stops them must not cost a process a request.
            wait = self._last_connect + 1.0 - time.monotonic()
            if self._link.transport is None and wait > 0:
                raise AuditUnavailable(f"the audit journal's writer stopped; another starts in {wait:.1f} s")
            self._retire()
        self._last_connect = time.monotonic()
        if self._writer is not None and self._writer[0].poll() is not None:
            code = self._writer[0].returncode
            log.warning("audit journal writer of %s exited (%s); starting another", self.path, code)
            self._stop_writer()
        try:
            if self._writer is None:
                self._writer = self._spawn()
            # The transport gets its own descriptor: ours stays to end the writer (`_stop_writer`).
            _, link = await loop.create_unix_connection(_Link, sock=self._writer[1].dup())
        except OSError as exc:
            raise AuditUnavailable(f"cannot start the audit journal's writer: {exc}") from exc
        self._link, self._loop = link, loop
        if link.transport is None:
            raise AuditUnavailable("the audit journal's writer did not take the connection")
        return link

    def _spawn(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        # The writer gets SIGKILL when the *thread* that started it ends (PR_SET_PDEATHSIG): start
        # it from one that lives as long as the journal — the worker's main thread, its loop's.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        paths = [str(_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        args = [str(self.path), str(theirs.fileno()), str(os.getpid())]
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "sharing_api.journal", *args],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
            )
        return process, ours

    def _retire(self) -> None:
        assert self._link is not None
        self._retired_commits += self._link.commits
        self._link = self._loop = None
        self._stop_writer()

    def _stop_writer(self) -> None:
        if self._writer is None:
            return
        process, sock = self._writer
        self._writer = None
        # End of file for the writer (the transport's descriptor shares the socket): it commits
        # and answers what it has read, then exits.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        if self._link is not None:
            self._retire()
        self._stop_writer()
        self._file.close()


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), default=str)


def _serve(path: Path, sock: socket.socket) -> None:
    """The writer process: commit what has arrived, answer, repeat, until end of file."""
    journal = JournalFile(path)
    pending = b""
    while data := sock.recv(1 << 20):
        *lines, pending = (pending + data).split(b"\n")
        if not lines:
            continue
        try:
            reply = f"{journal.write([line.decode() for line in lines])} {len(lines)}\n"
        except sqlite3.Error as exc:
            reason = " ".join(str(exc).split())  # one line
            reply = f"! {len(lines)} {reason}\n"
        try:
            sock.sendall(reply.encode())
        except OSError:
            break  # the worker is gone; what was committed stays
    journal.close()


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    _die_with(int(sys.argv[3]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group; the worker decides
    _serve(Path(sys.argv[1]), socket.socket(fileno=int(sys.argv[2])))
