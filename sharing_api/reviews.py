"""Reviews of break-glass accesses: every emergency lookup is flagged in the audit trail and waits
in the operators' queue until one of them records whether it was justified."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Literal

from sharing_api import operations
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
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            seen = conn.execute(
                "SELECT 1 FROM break_glass_reviews WHERE access_id = ?", (access_id,)
            ).fetchone()
            if seen is not None:
                raise Conflict("this access was reviewed already", code="already_reviewed")
            seq = operations.commit(self.db, conn, *operations.review_change(asdict(review)))
        self.db.settle(seq)
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
