"""The API's small local database (SQLite): credentials, consents and break-glass reviews.

SQLite because the API and the `medshare hospitals` commands on the same data-centre host must see
each other's writes at once (a revoked token stops working on the next request) without another
server to run. WAL mode lets the CLI write while the API reads.

Every change is also written, in the same transaction, to the `outbox`: the instance's keeper
ships it to the operations topic, from which every provincial site applies every change
(sharing_api/operations.py).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    token_id    TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,          -- hospital | operator | access
    subject     TEXT NOT NULL,          -- hospital id or operator name
    secret_hash TEXT NOT NULL,          -- sha256 hex of the secret; the secret is never stored
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    revoked_at  REAL,
    parent_id   TEXT,                   -- access tokens: the client credential that obtained them
    label       TEXT NOT NULL DEFAULT '',
    issued_by   TEXT NOT NULL DEFAULT ''  -- the operator (API) or host user (CLI) who issued it
);
CREATE INDEX IF NOT EXISTS credentials_parent ON credentials(parent_id);
CREATE TABLE IF NOT EXISTS consents (
    consent_id  TEXT PRIMARY KEY,
    person_key  TEXT NOT NULL,
    hospital_id TEXT,                   -- NULL: every recipient
    purpose     TEXT,                   -- NULL: every purpose
    note        TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    created_by  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consents_person ON consents(person_key);
CREATE TABLE IF NOT EXISTS break_glass_reviews (
    access_id   TEXT PRIMARY KEY,       -- <journal>-<seq> of the audited break-glass access
    outcome     TEXT NOT NULL,          -- justified | unjustified
    note        TEXT NOT NULL DEFAULT '',
    reviewer    TEXT NOT NULL,          -- the operator
    reviewed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS consents_withdrawn (
    consent_id   TEXT PRIMARY KEY,      -- an opt-out withdrawn: never applied again
    withdrawn_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    key        TEXT NOT NULL,           -- what changed: credential:<id>, consent:<id>, ...
    value      TEXT NOT NULL,           -- the change as JSON (sharing_api/operations.py)
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS operations_applied (
    topic       TEXT PRIMARY KEY,
    next_offset INTEGER NOT NULL        -- the operations topic's offset applied up to
);
"""


class Database:
    """One SQLite file; one connection per thread (sqlite3 connections are not thread-safe)."""

    def __init__(self, path: Path, *, settle_seconds: float = 0.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # How long a change waits for the keeper to ship it to the operations topic (the API's
        # workers); 0: not at all (the CLI ships its changes itself).
        self.settle_seconds = settle_seconds
        self._local = threading.local()
        with self.connect() as conn:
            conn.executescript(SCHEMA)
            # Files made before credentials recorded their issuer.
            columns = {row[1] for row in conn.execute("PRAGMA table_info(credentials)")}
            if "issued_by" not in columns:
                conn.execute("ALTER TABLE credentials ADD COLUMN issued_by TEXT NOT NULL DEFAULT ''")

    def record(self, conn: sqlite3.Connection, key: str, value: dict[str, Any]) -> int:
        """Put a change in the outbox, inside the caller's transaction on `conn`; its number."""
        cur = conn.execute(
            "INSERT INTO outbox (key, value, created_at) VALUES (?, ?, ?)",
            (key, json.dumps(value, sort_keys=True), time.time()),
        )
        return int(cur.lastrowid or 0)

    def settle(self, seq: int) -> bool:
        """Wait up to `settle_seconds` until the keeper has shipped change `seq` (it is then in
        both sites' brokers); False if it has not (it holds here, and ships when a broker is back)."""
        deadline = time.monotonic() + self.settle_seconds
        conn = self.connect()
        while conn.execute("SELECT 1 FROM outbox WHERE seq <= ? LIMIT 1", (seq,)).fetchone() is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn
