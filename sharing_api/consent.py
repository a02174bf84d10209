"""Patients' consent decisions: an opt-out denies sharing their history, for every recipient and
purpose or only some. Kept by person_key: the resident ID is hashed before it gets here."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass

from sharing_api import operations
from sharing_api.db import Database
from sharing_api.errors import NotFound


@dataclass(frozen=True, kw_only=True)
class OptOut:
    consent_id: str
    person_key: str
    hospital_id: str | None  # None: every recipient
    purpose: str | None  # None: every purpose
    note: str
    created_at: float
    created_by: str

    def covers(self, hospital_id: str, purpose: str) -> bool:
        return (self.hospital_id in (None, hospital_id)) and (self.purpose in (None, purpose))


class Consents:
    def __init__(self, db: Database):
        self.db = db

    def opt_out(
        self, person_key: str, *, hospital_id: str | None, purpose: str | None, note: str, created_by: str
    ) -> OptOut:
        record = OptOut(
            consent_id=secrets.token_hex(8),
            person_key=person_key,
            hospital_id=hospital_id,
            purpose=purpose,
            note=note,
            created_at=time.time(),
            created_by=created_by,
        )
        conn = self.db.connect()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            seq = operations.commit(self.db, conn, *operations.consent_change(asdict(record)))
        self.db.settle(seq)
        return record

    def of(self, person_key: str) -> list[OptOut]:
        rows = self.db.connect().execute(
            "SELECT * FROM consents WHERE person_key = ? ORDER BY created_at", (person_key,)
        )
        return [OptOut(**dict(r)) for r in rows]

    def withdraw(self, consent_id: str) -> None:
        """Withdraw an opt-out, for good: a copy of it arriving later from the other site is not
        applied again."""
        conn = self.db.connect()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT 1 FROM consents WHERE consent_id = ?", (consent_id,)).fetchone() is None:
                raise NotFound("no consent record with that id", code="consent_not_found")
            seq = operations.commit(self.db, conn, *operations.withdrawal_change(consent_id, time.time()))
        self.db.settle(seq)

    def opted_out(self, hospital_id: str, purpose: str) -> set[str]:
        """person_keys of every patient whose opt-out covers this recipient and purpose."""
        rows = self.db.connect().execute(
            "SELECT DISTINCT person_key FROM consents WHERE (hospital_id IS NULL OR hospital_id = ?)"
            " AND (purpose IS NULL OR purpose = ?)",
            (hospital_id, purpose),
        )
        return {r["person_key"] for r in rows}

    def opted_out_of_any(self, purposes: tuple[str, ...]) -> frozenset[str]:
        """person_keys of every patient with an opt-out covering one of these purposes, whichever
        recipient it names: a copy shared by many recipients drops the patient for all of them."""
        marks = ",".join("?" * len(purposes))
        rows = self.db.connect().execute(
            f"SELECT DISTINCT person_key FROM consents WHERE purpose IS NULL OR purpose IN ({marks})",
            purposes,
        )
        return frozenset(r["person_key"] for r in rows)

    def denying(self, person_key: str, hospital_id: str, purpose: str) -> OptOut | None:
        """The first opt-out that covers this recipient and purpose, if any."""
        for record in self.of(person_key):
            if record.covers(hospital_id, purpose):
                return record
        return None
