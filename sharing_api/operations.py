"""Operational state held by every provincial site: credentials and their revocation, patients'
opt-outs, break-glass reviews and the grants, changed at either site, hold at both (docs/sites.md).

Each change is written to the site's database together with an outbox row, in one transaction
(sharing_api/db.py). The instance's keeper ships the outbox to the operations topic — one
partition, so one order, with a replica in each site — and applies the topic, every site's changes
its own included, to the local database, recording the offset applied in the same transaction.
Changes are whole rows, and the rules below give the same result whatever order two sites'
changes arrive in, and however often one arrives:

- a credential: the row as issued; its expiry only ever shortens (rotation); a revocation is final
  and the earliest revocation time stands;
- an opt-out: recorded once; a withdrawal is final (a late copy of the opt-out is not applied);
- a break-glass review: the earliest review stands (two operators reviewing one access at two
  sites at once are both audited; the first decision is the record);
- the grants: the whole document; the later in the topic wins.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from lakehouse import kafka
from lakehouse.settings import Settings
from sharing_api.db import Database

log = logging.getLogger(__name__)

CREDENTIAL, CONSENT, WITHDRAWN, REVIEW, GRANTS = (
    "credential",
    "consent",
    "consent-withdrawn",
    "review",
    "grants",
)
SHIP_BATCH = 500


def credential_change(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"credential:{row['token_id']}", {"type": CREDENTIAL, "row": row}


def consent_change(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"consent:{row['consent_id']}", {"type": CONSENT, "row": row}


def withdrawal_change(consent_id: str, at: float) -> tuple[str, dict[str, Any]]:
    return f"consent:{consent_id}", {"type": WITHDRAWN, "row": {"consent_id": consent_id, "withdrawn_at": at}}


def review_change(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"review:{row['access_id']}", {"type": REVIEW, "row": row}


def grants_change(text: str) -> tuple[str, dict[str, Any]]:
    return "grants", {"type": GRANTS, "text": text}


def commit(db: Database, conn: sqlite3.Connection, key: str, change: dict[str, Any]) -> int:
    """A change made here: applied by the same rules as anyone's, and put in the outbox (inside
    the caller's transaction); its outbox number."""
    apply_change(conn, change, None)
    return db.record(conn, key, change)


def _columns(row: dict[str, Any]) -> tuple[str, str]:
    names = sorted(row)
    return ", ".join(names), ", ".join(f":{n}" for n in names)


def apply_change(conn: sqlite3.Connection, change: dict[str, Any], grants_path: Path | None) -> None:
    """Apply one change by the rules above, inside the caller's transaction."""
    kind, row = change.get("type"), change.get("row") or {}
    if kind == CREDENTIAL:
        names, values = _columns(row)
        conn.execute(
            f"INSERT INTO credentials ({names}) VALUES ({values}) ON CONFLICT(token_id) DO UPDATE SET"
            " expires_at = MIN(credentials.expires_at, excluded.expires_at),"
            " revoked_at = CASE WHEN credentials.revoked_at IS NULL THEN excluded.revoked_at"
            " WHEN excluded.revoked_at IS NULL THEN credentials.revoked_at"
            " ELSE MIN(credentials.revoked_at, excluded.revoked_at) END",
            row,
        )
    elif kind == CONSENT:
        names, values = _columns(row)
        conn.execute(
            f"INSERT INTO consents ({names}) SELECT {values} WHERE NOT EXISTS"
            " (SELECT 1 FROM consents_withdrawn WHERE consent_id = :consent_id) ON CONFLICT DO NOTHING",
            row,
        )
    elif kind == WITHDRAWN:
        conn.execute("DELETE FROM consents WHERE consent_id = :consent_id", row)
        conn.execute(
            "INSERT INTO consents_withdrawn (consent_id, withdrawn_at) VALUES (:consent_id, :withdrawn_at)"
            " ON CONFLICT DO NOTHING",
            row,
        )
    elif kind == REVIEW:
        names, values = _columns(row)
        conn.execute(
            f"INSERT INTO break_glass_reviews ({names}) VALUES ({values})"
            " ON CONFLICT(access_id) DO UPDATE SET outcome = excluded.outcome, note = excluded.note,"
            " reviewer = excluded.reviewer,"
            " reviewed_at = excluded.reviewed_at WHERE (excluded.reviewed_at, excluded.reviewer)"
            " < (break_glass_reviews.reviewed_at, break_glass_reviews.reviewer)",
            row,
        )
    elif kind == GRANTS:
        if grants_path is not None:
            write_grants(grants_path, str(change["text"]))
    else:
        log.error("unknown operations change %r: skipped", kind)


def write_grants(path: Path, text: str) -> None:
    """Replace the grants file with `text` (written aside and renamed) unless it holds it already;
    the grant book re-reads a changed file before its next decision."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".grants-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def ship(db: Database, producer: KafkaProducer, topic: str, *, timeout: float = 10.0) -> int:
    """Send the outbox, oldest first, to `topic` and delete what the brokers acknowledged
    (acks=all: in both sites while both are up); the number shipped. A crash between the two
    ships a change twice, which the rules make harmless."""
    conn = db.connect()
    rows = conn.execute("SELECT seq, key, value FROM outbox ORDER BY seq LIMIT ?", (SHIP_BATCH,)).fetchall()
    if not rows:
        return 0
    futures = [
        producer.send(topic, key=r["key"].encode(), value=r["value"].encode(), partition=0) for r in rows
    ]
    producer.flush(timeout=timeout)
    for future in futures:
        future.get(timeout=0)
    conn.execute("DELETE FROM outbox WHERE seq <= ?", (rows[-1]["seq"],))
    return len(rows)


def apply_records(db: Database, topic: str, records: list[Any], grants_path: Path | None) -> int:
    """Apply polled records in one transaction with the offset reached; records at offsets
    already applied (a redelivery, another keeper of the same database) are skipped."""
    conn = db.connect()
    applied = 0
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        stored = conn.execute(
            "SELECT next_offset FROM operations_applied WHERE topic = ?", (topic,)
        ).fetchone()
        next_offset = stored[0] if stored else 0
        for record in records:
            if record.offset < next_offset:
                continue
            try:
                change = json.loads(record.value)
            except (TypeError, ValueError):
                log.error("operations record at offset %d is not JSON: skipped", record.offset)
            else:
                apply_change(conn, change, grants_path)
                applied += 1
            next_offset = record.offset + 1
        conn.execute(
            "INSERT INTO operations_applied (topic, next_offset) VALUES (?, ?)"
            " ON CONFLICT(topic) DO UPDATE SET next_offset = excluded.next_offset",
            (topic, next_offset),
        )
    return applied


def applied_offset(db: Database, topic: str) -> int:
    row = (
        db.connect()
        .execute("SELECT next_offset FROM operations_applied WHERE topic = ?", (topic,))
        .fetchone()
    )
    return int(row[0]) if row else 0


class OperationsLink:
    """The keeper's two loops: ship the outbox, apply the topic. Either survives the broker being
    away (it retries); neither holds up requests, which read the local database only."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        topic: str,
        grants_path: Path | None,
        *,
        interval: float = 0.05,
    ):
        self.settings = settings
        self.db = db
        self.topic = topic
        self.grants_path = grants_path
        self.interval = interval
        self.shipped = 0
        self.applied = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name, target in (("operations-ship", self._ship_loop), ("operations-apply", self._apply_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _failed(self, what: str, exc: BaseException) -> None:
        message = f"{what}: {type(exc).__name__}: {exc}"
        if message != self.last_error:
            expected = isinstance(exc, (KafkaError, sqlite3.Error, OSError))
            log.warning("operations %s (retrying)", message, exc_info=not expected)
        self.last_error = message
        self._stop.wait(1.0)

    def _ship_loop(self) -> None:
        producer: KafkaProducer | None = None
        while not self._stop.is_set():
            try:
                if producer is None:
                    producer = kafka.producer(self.settings, max_block_ms=10_000, request_timeout_ms=10_000)
                sent = ship(self.db, producer, self.topic)
                self.shipped += sent
                if sent:
                    self.last_error = None
                else:
                    self._stop.wait(self.interval)
            except Exception as exc:  # the loop outlives any one failure: the outbox keeps the changes
                if producer is not None:
                    producer.close(timeout=0)
                    producer = None
                self._failed("shipping the outbox", exc)
        if producer is not None:
            producer.close(timeout=5)

    def _apply_loop(self) -> None:
        consumer: KafkaConsumer | None = None
        partition = TopicPartition(self.topic, 0)
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = kafka.consumer(self.settings, group_id=None)
                    consumer.assign([partition])
                    consumer.seek(partition, applied_offset(self.db, self.topic))
                polled = consumer.poll(timeout_ms=250)
                for records in polled.values():
                    self.applied += apply_records(self.db, self.topic, records, self.grants_path)
            except Exception as exc:  # the loop outlives any one failure: the offset says where it was
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._failed("applying the topic", exc)
        if consumer is not None:
            consumer.close()
