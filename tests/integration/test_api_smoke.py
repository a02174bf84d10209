"""The API process starts over a provincial lakehouse and answers an authenticated request."""

from __future__ import annotations


def test_health_and_me(api_server) -> None:
    token = api_server.issue("zz-c1")
    with api_server.client(token) as c:
        me = c.get("/v1/me")
        assert me.status_code == 200, me.text
        assert me.json()["hospital"]["id"] == "zz-c1"
        public = c.get("/healthz").json()
    assert public["ready"] and public["problems"] == 0
    # Without a credential /healthz names no table, path or error; operators see those.
    assert set(public) == {"ready", "generation", "keeperRunning", "sharedCopiesSynced", "problems"}
    health = api_server.health()
    assert health["ready"] and not health["missing"] and health["keeperRunning"]
