"""The API's small local database (SQLite): credentials and consents.

SQLite because the API and the `medshare hospitals` commands on the same data-centre host must see
each other's writes at once (a revoked token stops working on the next request) without another
server to run. WAL mode lets the CLI write while the API reads.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

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
"""


class Database:
    """One SQLite file; one connection per thread (sqlite3 connections are not thread-safe)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self.connect() as conn:
            conn.executescript(SCHEMA)
            # Files made before credentials recorded their issuer.
            columns = {row[1] for row in conn.execute("PRAGMA table_info(credentials)")}
            if "issued_by" not in columns:
                conn.execute("ALTER TABLE credentials ADD COLUMN issued_by TEXT NOT NULL DEFAULT ''")

    def connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn
