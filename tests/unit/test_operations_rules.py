"""The rules by which every provincial site applies operational changes (sharing_api/operations.py):
two sites' changes, applied in any order and any number of times, leave the same state."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sharing_api import operations
from sharing_api.db import Database


def credential(token_id: str, *, expires: float = 1000.0, revoked: float | None = None) -> dict[str, Any]:
    return {
        "token_id": token_id,
        "kind": "hospital",
        "subject": "zz-fahzu",
        "secret_hash": "0" * 64,
        "created_at": 1.0,
        "expires_at": expires,
        "revoked_at": revoked,
        "parent_id": None,
        "label": "",
        "issued_by": "op",
    }


def state(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    conn = db.connect()
    return {
        table: [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
        for table in ("credentials", "consents", "consents_withdrawn", "break_glass_reviews")
    }


def apply_all(db: Database, changes: list[tuple[str, dict[str, Any]]]) -> None:
    """As the applier does: records at increasing offsets, in one batch."""
    records = [
        SimpleNamespace(offset=i, value=json.dumps(change).encode())
        for i, (_key, change) in enumerate(changes)
    ]
    operations.apply_records(db, "ops", records, None)


CHANGES = [
    operations.credential_change(credential("c1")),
    # Site B rotated it (expiry shortened) while site A revoked it.
    operations.credential_change(credential("c1", expires=500.0)),
    operations.credential_change(credential("c1", revoked=20.0)),
    operations.credential_change(credential("c1", revoked=10.0)),
    operations.consent_change(
        {
            "consent_id": "o1",
            "person_key": "p",
            "hospital_id": None,
            "purpose": None,
            "note": "",
            "created_at": 1.0,
            "created_by": "op",
        }
    ),
    operations.withdrawal_change("o1", 5.0),
    operations.review_change(
        {"access_id": "j-1", "outcome": "justified", "note": "", "reviewer": "ann", "reviewed_at": 7.0}
    ),
    operations.review_change(
        {"access_id": "j-1", "outcome": "unjustified", "note": "", "reviewer": "bob", "reviewed_at": 6.0}
    ),
]


def test_any_order_and_any_repetition_gives_one_state(tmp_path: Path) -> None:
    reference = Database(tmp_path / "reference.db")
    apply_all(reference, CHANGES)
    expected = state(reference)
    # What the rules promise, independently of any order: the earliest revocation and the
    # shortest expiry stand; the withdrawn opt-out stays withdrawn; the earliest review stands.
    (cred,) = reference.connect().execute("SELECT expires_at, revoked_at FROM credentials").fetchall()
    assert tuple(cred) == (500.0, 10.0)
    assert expected["consents"] == [] and [r[0] for r in expected["consents_withdrawn"]] == ["o1"]
    assert [(r[0], r[1], r[3]) for r in expected["break_glass_reviews"]] == [("j-1", "unjustified", "bob")]
    for n, order in enumerate(itertools.islice(itertools.permutations(CHANGES), 0, None, 997)):
        db = Database(tmp_path / f"order-{n}.db")
        apply_all(db, list(order) + list(order[:3]))  # and some arrive twice
        assert state(db) == expected, order


def test_a_record_already_applied_is_not_applied_again(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite")
    first = [SimpleNamespace(offset=0, value=json.dumps(CHANGES[0][1]).encode())]
    assert operations.apply_records(db, "ops", first, None) == 1
    # Another keeper of the same database, or a redelivery: the offset says it is done.
    assert operations.apply_records(db, "ops", first, None) == 0
    assert operations.applied_offset(db, "ops") == 1


def test_grants_change_rewrites_the_file_only_when_it_differs(tmp_path: Path) -> None:
    path = tmp_path / "grants.yaml"
    path.write_text("grants: []\n")
    db = Database(tmp_path / "db.sqlite")
    _key, change = operations.grants_change("grants: [x]\n")
    with db.connect() as conn:
        operations.apply_change(conn, change, path)
    assert path.read_text() == "grants: [x]\n"
    before = path.stat().st_mtime_ns
    with db.connect() as conn:
        operations.apply_change(conn, change, path)
    assert path.stat().st_mtime_ns == before


def test_a_local_change_is_applied_and_waits_in_the_outbox(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite")
    conn = db.connect()
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        seq = operations.commit(db, conn, *operations.credential_change(credential("c9")))
    assert conn.execute("SELECT token_id FROM credentials").fetchall()[0][0] == "c9"
    (key, value) = conn.execute("SELECT key, value FROM outbox WHERE seq = ?", (seq,)).fetchone()
    assert key == "credential:c9" and json.loads(value)["row"]["token_id"] == "c9"
    assert db.settle(seq) is False  # nobody shipped it, and settle_seconds 0 waits for nothing
