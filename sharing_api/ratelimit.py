"""Rate limits shared by every worker of an API instance: token buckets in one SQLite file.

A bucket held in each worker's memory would give a credential N times its limit with N workers
(and a token guesser N times its attempts), so the buckets live in a file every worker of the
instance opens. Each decision is one short write transaction; nothing needs to survive a crash,
so the file is written without fsync. Times are CLOCK_MONOTONIC, which on Linux is one clock for
every process of the host.

Two uses: requests per credential (`take`), and failed logins per client address, which are
checked before a token is verified (`wait`) and counted after it failed (`take`), so a guesser
who is over the limit gets no more verifications.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name   TEXT NOT NULL,       -- which limit: requests, login_failures
    key    TEXT NOT NULL,       -- a credential id or "addr:<client address>"
    tokens REAL NOT NULL,
    last   REAL NOT NULL,       -- CLOCK_MONOTONIC of the last refill
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
"""
# One decision in this many also drops buckets that have refilled completely (they hold no state).
_PRUNE_ONE_IN = 2000


class RateLimiter:
    """One named limit: `rate` tokens a second, at most `burst` held, per key."""

    def __init__(self, path: Path, *, name: str, rate: float, burst: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.name = name
        self.rate = rate
        self.burst = float(burst)
        self._local = threading.local()
        self._connect().executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            self._local.conn = conn
        return conn

    def take(self, key: str) -> float:
        """Use one token: 0.0 when the request may go ahead, else the seconds until it may."""
        return self._decide(key, consume=True)

    def wait(self, key: str) -> float:
        """Seconds until `key` has a token again (0.0 when it has one now); uses none."""
        return self._decide(key, consume=False)

    def _decide(self, key: str, *, consume: bool) -> float:
        conn = self._connect()
        now = time.monotonic()
        # A decision that uses a token reads and writes in one transaction that holds the write
        # lock, so two workers cannot both spend the last token.
        conn.execute("BEGIN IMMEDIATE" if consume else "BEGIN")
        try:
            row = conn.execute(
                "SELECT tokens, last FROM buckets WHERE name = ? AND key = ?", (self.name, key)
            ).fetchone()
            tokens = self.burst if row is None else min(self.burst, row[0] + (now - row[1]) * self.rate)
            allowed = tokens >= 1.0
            if consume:
                left = tokens - 1.0 if allowed else tokens
                conn.execute(
                    "INSERT INTO buckets (name, key, tokens, last) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name, key) DO UPDATE SET tokens = excluded.tokens, last = excluded.last",
                    (self.name, key, left, now),
                )
                if random.randrange(_PRUNE_ONE_IN) == 0:
                    conn.execute(
                        "DELETE FROM buckets WHERE name = ? AND last < ?",
                        (self.name, now - self.burst / self.rate),
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return 0.0 if allowed else (1.0 - tokens) / self.rate
