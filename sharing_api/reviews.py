"""Reviews of break-glass accesses: every emergency lookup is flagged in the audit trail and waits
in the operators' queue until one of them records whether it was justified."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from sharing_api.db import Database
from sharing_api.errors import Conflict

Outcome = Literal["justified", "unjustified"]


@dataclass(frozen=True)
class Review:
    access_id: str
    outcome: str
    note: str
    reviewer: str
    reviewed_at: float


class Reviews:
    def __init__(self, db: Database):
        self.db = db

    def record(self, access_id: str, *, outcome: Outcome, note: str, reviewer: str) -> Review:
        review = Review(access_id, outcome, note, reviewer, time.time())
        conn = self.db.connect()
        cur = conn.execute(
            "INSERT OR IGNORE INTO break_glass_reviews (access_id, outcome, note, reviewer, reviewed_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (review.access_id, review.outcome, review.note, review.reviewer, review.reviewed_at),
        )
        if cur.rowcount == 0:
            raise Conflict("this access was reviewed already", code="already_reviewed")
        return review

    def of(self, access_ids: list[str]) -> dict[str, Review]:
        if not access_ids:
            return {}
        marks = ",".join("?" * len(access_ids))
        rows = self.db.connect().execute(
            "SELECT access_id, outcome, note, reviewer, reviewed_at FROM break_glass_reviews"
            f" WHERE access_id IN ({marks})",
            access_ids,
        )
        return {r[0]: Review(*r) for r in rows}
