"""Who is calling: hospital and operator credentials, stored hashed, with expiry, revocation and
rotation, and the short-lived access tokens of the OAuth2 client-credentials flow.

A bearer token reads `mst_<token id>.<secret>`. The id finds the row; only SHA-256 of the 256-bit
random secret is stored (a slow password hash buys nothing for a random secret of that size), and
the comparison is constant-time. The id alone is what logs and the audit name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from lakehouse.errors import TopologyError
from lakehouse.identity import holds_resident_id
from lakehouse.topology import Hospital, Topology
from sharing_api import operations
from sharing_api.db import Database
from sharing_api.errors import NotFound, Unauthorized, Unprocessable

Kind = Literal["hospital", "operator"]
PREFIX = "mst_"
_TOKEN = re.compile(r"^mst_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_OPERATOR = re.compile(r"^[a-z][a-z0-9_.-]{1,63}$")


@dataclass(frozen=True, kw_only=True)
class Principal:
    """An authenticated caller. `credential_id` is the long-lived credential behind the request
    (the client's, when the request came with an access token): rate limits and audit use it."""

    kind: Kind
    subject: str
    token_id: str
    credential_id: str
    hospital: Hospital | None = None

    @property
    def hospital_id(self) -> str | None:
        return self.hospital.id if self.hospital else None


@dataclass(frozen=True, kw_only=True)
class IssuedToken:
    token_id: str
    token: str  # shown once, never stored
    kind: str
    subject: str
    expires_at: float


@dataclass(frozen=True, kw_only=True)
class CredentialInfo:
    token_id: str
    kind: str
    subject: str
    created_at: float
    expires_at: float
    revoked_at: float | None
    parent_id: str | None
    label: str
    issued_by: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


class Identities:
    """The credential store. Every method is one short SQLite statement or transaction."""

    def __init__(self, db: Database, topology: Topology, *, clock: Callable[[], float] = time.time):
        self.db = db
        self.topology = topology
        # The wall clock behind issue, expiry and revocation times (tests set it to the past).
        self.clock = clock

    # -- issuing -------------------------------------------------------------------------------
    def issue(
        self, kind: Kind, subject: str, *, days: float, label: str = "", issued_by: str = ""
    ) -> IssuedToken:
        if kind == "hospital":
            try:
                self.topology.hospital(subject)
            except TopologyError as exc:
                raise NotFound(str(exc), code="unknown_hospital") from exc
        elif not _OPERATOR.fullmatch(subject):
            raise Unprocessable("an operator name is 2-64 of a-z 0-9 _ . - starting with a letter")
        if days <= 0:
            raise Unprocessable("a credential's lifetime must be positive")
        if holds_resident_id(label) or holds_resident_id(subject):
            raise Unprocessable("a credential's subject and label must not hold a resident ID")
        return self._insert(
            kind, subject, lifetime=days * 86400, label=label, parent_id=None, issued_by=issued_by
        )

    def _insert(
        self,
        kind: str,
        subject: str,
        *,
        lifetime: float,
        label: str,
        parent_id: str | None,
        issued_by: str,
    ) -> IssuedToken:
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = self.clock()
        row = {
            "token_id": token_id,
            "kind": kind,
            "subject": subject,
            "secret_hash": _hash(secret),
            "created_at": now,
            "expires_at": now + lifetime,
            "revoked_at": None,
            "parent_id": parent_id,
            "label": label,
            "issued_by": issued_by,
        }
        conn = self.db.connect()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            seq = operations.commit(self.db, conn, *operations.credential_change(row))
        if kind != "access":
            # An access token lives minutes and a client gets another at either site: only the
            # long-lived credentials wait until the other site can see them.
            self.db.settle(seq)
        return IssuedToken(
            token_id=token_id,
            token=f"{PREFIX}{token_id}.{secret}",
            kind=kind,
            subject=subject,
            expires_at=now + lifetime,
        )

    def revoke(self, token_id: str) -> CredentialInfo:
        """Revoke a credential and every access token obtained with it (at either site)."""
        conn = self.db.connect()
        now = self.clock()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                "SELECT * FROM credentials WHERE token_id = ? OR parent_id = ?"
                " ORDER BY parent_id IS NOT NULL",
                (token_id, token_id),
            ).fetchall()
            if not rows or rows[0]["token_id"] != token_id:
                raise NotFound("no credential with that id", code="credential_not_found")
            seq = 0
            for row in rows:
                revoked = {**dict(row), "revoked_at": row["revoked_at"] or now}
                seq = operations.commit(self.db, conn, *operations.credential_change(revoked))
        self.db.settle(seq)
        return self.info(token_id)

    def rotate(self, token_id: str, *, grace_hours: float, days: float, issued_by: str = "") -> IssuedToken:
        """A new credential for the same subject; the old one keeps working for `grace_hours`."""
        old = self.info(token_id)
        if old.kind not in ("hospital", "operator"):
            raise Unprocessable("only hospital and operator credentials are rotated; access tokens expire")
        if old.revoked_at is not None:
            raise Unprocessable(f"credential {token_id} is revoked; issue a new one instead")
        new = self._insert(
            old.kind, old.subject, lifetime=days * 86400, label=old.label, parent_id=None, issued_by=issued_by
        )
        cutoff = self.clock() + grace_hours * 3600
        conn = self.db.connect()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            row = dict(conn.execute("SELECT * FROM credentials WHERE token_id = ?", (token_id,)).fetchone())
            row["expires_at"] = min(row["expires_at"], cutoff)
            seq = operations.commit(self.db, conn, *operations.credential_change(row))
        self.db.settle(seq)
        return new

    def info(self, token_id: str) -> CredentialInfo:
        row = self._fetch(token_id)
        if row is None:
            raise NotFound("no credential with that id", code="credential_not_found")
        return _info(row)

    def _fetch(self, token_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = (
            self.db.connect().execute("SELECT * FROM credentials WHERE token_id = ?", (token_id,)).fetchone()
        )
        return row

    def list(self, *, include_access: bool = False) -> list[CredentialInfo]:
        sql = "SELECT * FROM credentials"
        if not include_access:
            sql += " WHERE kind != 'access'"
        return [_info(r) for r in self.db.connect().execute(sql + " ORDER BY created_at")]

    # -- OAuth2 client credentials ---------------------------------------------------------------
    def access_token(self, client_id: str, client_secret: str, *, minutes: int) -> IssuedToken:
        """Exchange a credential (id + secret) for an access token of `minutes` lifetime."""
        client = self._verify(client_id, client_secret, allow_access=False)
        return self._insert(
            "access",
            client.subject,
            lifetime=minutes * 60,
            label=f"oauth:{client_id}",
            parent_id=client_id,
            issued_by=f"oauth:{client_id}",
        )

    # -- authentication --------------------------------------------------------------------------
    def authenticate(self, bearer: str) -> Principal:
        parsed = parse_token(bearer)
        if parsed is None:
            raise Unauthorized("malformed bearer token", code="token_malformed")
        token_id, secret = parsed
        row = self._verify(token_id, secret, allow_access=True)
        credential_id = token_id
        kind = row.kind
        if row.kind == "access":
            parent_row = self._fetch(row.parent_id or "")
            parent = None if parent_row is None else _info(parent_row)
            if parent is None or parent.revoked_at is not None:
                raise Unauthorized("the client credential behind this token is revoked", code="token_revoked")
            if parent.expires_at <= self.clock():
                raise Unauthorized(
                    "the client credential behind this token has expired", code="token_expired"
                )
            credential_id, kind = parent.token_id, parent.kind
        hospital = self.topology.hospital(row.subject) if kind == "hospital" else None
        return Principal(
            kind="hospital" if kind == "hospital" else "operator",
            subject=row.subject,
            token_id=token_id,
            credential_id=credential_id,
            hospital=hospital,
        )

    def _verify(self, token_id: str, secret: str, *, allow_access: bool) -> _Stored:
        row = self._fetch(token_id)
        # Hash even when the id is unknown, so timing does not tell known ids from unknown ones.
        given = _hash(secret)
        if row is None or not hmac.compare_digest(given, row["secret_hash"]):
            raise Unauthorized("unknown credential", code="token_invalid")
        stored = _Stored.of(row)
        if stored.kind == "access" and not allow_access:
            raise Unauthorized("an access token cannot obtain another one", code="token_invalid")
        if stored.revoked_at is not None:
            raise Unauthorized("this credential has been revoked", code="token_revoked")
        if stored.expires_at <= self.clock():
            raise Unauthorized("this credential has expired", code="token_expired")
        return stored


@dataclass(frozen=True)
class _Stored:
    token_id: str
    kind: str
    subject: str
    expires_at: float
    revoked_at: float | None
    parent_id: str | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> _Stored:
        return cls(
            row["token_id"],
            row["kind"],
            row["subject"],
            row["expires_at"],
            row["revoked_at"],
            row["parent_id"],
        )


def _info(row: sqlite3.Row) -> CredentialInfo:
    return CredentialInfo(
        token_id=row["token_id"],
        kind=row["kind"],
        subject=row["subject"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        parent_id=row["parent_id"],
        label=row["label"],
        issued_by=row["issued_by"],
    )
