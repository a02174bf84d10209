"""Credentials: issued by the CLI, hashed, expiring, revocable, rotatable; OAuth2 client
credentials; every bad token rejected; no secret in logs or the audit trail."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import httpx

from sharing_api.identities import Identities


def _cli(api_server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medshare", "hospitals", *args],
        env={**os.environ, **api_server.env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _me(api_server, token: str) -> httpx.Response:
    with api_server.client(token) as c:
        return c.get("/v1/me")


def test_cli_issue_revoke_and_rejections(api_server) -> None:
    issued = _cli(api_server, "issue-token", "zz-xy-county", "--days", "1", "--label", "his")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    token_id, secret = token[4:].split(".")
    assert _me(api_server, token).json()["subject"] == "zz-xy-county"

    # Only the hash is stored.
    db = api_server.api_settings().db_path(api_server.settings)
    assert secret.encode() not in db.read_bytes()

    rejected = {
        "malformed": "not-a-token",
        "truncated": token[:-5],
        "guessed id": f"mst_{secrets.token_hex(8)}.{secrets.token_urlsafe(32)}",
        "guessed secret": f"mst_{token_id}.{secrets.token_urlsafe(32)}",
    }
    codes = {}
    for name, bad in rejected.items():
        r = _me(api_server, bad)
        assert r.status_code == 401, name
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        codes[name] = r.json()["errorCode"]
    assert codes == {
        "malformed": "token_malformed",
        "truncated": "token_malformed",
        "guessed id": "token_invalid",
        "guessed secret": "token_invalid",
    }
    with api_server.client() as c:
        r = c.get("/v1/me")
        assert r.status_code == 401 and r.json()["errorCode"] == "token_missing"
        r = c.get("/v1/me", headers={"Authorization": f"Basic {token}"})
        assert r.status_code == 401

    revoked = _cli(api_server, "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    r = _me(api_server, token)
    assert r.status_code == 401 and r.json()["errorCode"] == "token_revoked"
    assert _cli(api_server, "revoke", "0000000000000000").returncode == 1

    listing = _cli(api_server, "tokens")
    assert token_id in listing.stderr + listing.stdout and secret not in listing.stderr + listing.stdout


def test_expiry_rotation_and_client_credentials(api_server) -> None:
    from lakehouse.topology import load_topology
    from sharing_api.db import Database

    db = Database(api_server.api_settings().db_path(api_server.settings))
    topology = load_topology(api_server.settings.platform_dir)
    store = Identities(db, topology)
    # Issued two days ago for one day, and one issued now: the server's clock tells them apart.
    issued_before = Identities(db, topology, clock=lambda: time.time() - 2 * 86400)
    short = issued_before.issue("hospital", "ny-fc-bowang", days=1)
    valid = store.issue("hospital", "ny-fc-bowang", days=1)
    assert _me(api_server, valid.token).status_code == 200
    r = _me(api_server, short.token)
    assert r.status_code == 401 and r.json()["errorCode"] == "token_expired"

    # Rotation: both work during the grace period; without grace the old one stops at once.
    old = store.issue("hospital", "ny-fc-bowang", days=1)
    new = store.rotate(old.token_id, grace_hours=1, days=1)
    assert _me(api_server, old.token).status_code == 200 and _me(api_server, new.token).status_code == 200
    newer = store.rotate(new.token_id, grace_hours=0, days=1)
    assert _me(api_server, new.token).json()["errorCode"] == "token_expired"
    assert _me(api_server, newer.token).status_code == 200

    # OAuth2 client credentials: form fields or HTTP Basic; short-lived, revoked with the client.
    client = store.issue("hospital", "ly-c1", days=1)
    client_secret = client.token.split(".", 1)[1]
    with api_server.client() as c:
        r = c.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client.token_id,
                "client_secret": client_secret,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "Bearer" and 600 < body["expires_in"] <= 3600
        basic = c.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client.token_id, client_secret)
        )
        assert basic.status_code == 200
        wrong = c.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client.token_id,
                "client_secret": "x" * 43,
            },
        )
        assert wrong.status_code == 401
        assert c.post("/oauth/token", data={"grant_type": "password"}).status_code == 400
    access = body["access_token"]
    assert _me(api_server, access).json()["subject"] == "ly-c1"
    store.revoke(client.token_id)
    r = _me(api_server, access)
    assert r.status_code == 401 and r.json()["errorCode"] == "token_revoked"

    # No secret of any of these credentials in the server's log or the audit trail.
    operator = api_server.issue("secrets-check", operator=True)
    with api_server.client(operator) as c:
        audit = c.get("/v1/audit", params={"limit": 1000}).text
    log = api_server.log.read_text()
    for token in (short.token, old.token, new.token, newer.token, client.token, access):
        secret = token.split(".", 1)[1]
        assert secret not in log and secret not in audit
