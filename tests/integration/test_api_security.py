"""The security review of issue 17, one test per finding, against a real API process and the real
object store (the Delta Sharing finding is in test_delta_sharing.py, the ingestion one in
test_ingestion.py). Each of these failed on the code the review read."""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import os
import subprocess
import sys
import uuid

import httpx
import pandas as pd
import pytest
from minio.error import S3Error

from lakehouse.settings import Settings
from lakehouse.storage import (
    ANALYTICS_SITE,
    API_READER_SITE,
    AUDIT_SITE,
    PROVINCE_SITE,
    root_credentials,
    s3_client,
    site_credentials,
)
from lakehouse.topology import Topology
from sharing_api.catalog import HISTORY
from sharing_api.masking import Masker
from tests.utils.api import ApiServer

REASON = "unconscious on arrival, allergies unknown"
DATASETS = HISTORY  # every dataset of the patient history: none may be read as a bulk emergency


@pytest.fixture(scope="module")
def frames(province_data) -> dict[str, pd.DataFrame]:  # type: ignore[no-untyped-def]
    return {name: t.to_pandas() for name, t in province_data.tables.items()}


@pytest.fixture(scope="module")
def operator(api_server: ApiServer) -> str:
    return api_server.issue("security-auditor", operator=True)


def _audit(server: ApiServer, operator: str, **params: object) -> list[dict]:
    records: list[dict] = []
    cursor = None
    with server.client(operator) as c:
        while True:
            r = c.get("/v1/audit", params={**params, "limit": 1000, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            records += r.json()["records"]
            cursor = r.json()["nextCursor"]
            if cursor is None:
                return records


# 1. Emergency as bulk export ---------------------------------------------------------------------


def test_1_emergency_is_never_a_dataset_query(api_server: ApiServer) -> None:
    """The confirmed hole: a township centre read 1,000 diagnoses of both cities, keys in clear."""
    with api_server.client(api_server.issue("zz-zm-guandu")) as c:
        for dataset in DATASETS:
            r = c.post(f"/v1/datasets/{dataset}/query", json={"purpose": "emergency", "limit": 1000})
            assert r.status_code == 403 and r.json()["errorCode"] == "purpose_not_for_datasets", dataset
        listing = c.get("/v1/datasets", params={"purpose": "emergency"})
        assert listing.status_code == 200 and listing.json() == []


# 2. Break-glass without a reason, never flagged --------------------------------------------------


def test_2_every_emergency_is_flagged_break_glass_with_a_reason_in_the_body(
    api_server: ApiServer, frames: dict[str, pd.DataFrame], operator: str
) -> None:
    person = str(frames["encounters"].person_key.iloc[0])
    with api_server.client(api_server.issue("ly-yc-county")) as c:
        # The plain lookup the review used, with or without a reason in the query string.
        for params in ({}, {"reason": REASON}):
            r = c.get("/v1/patients/history", params={"purpose": "emergency", "person_key": person, **params})
            assert r.status_code == 422 and r.json()["errorCode"] == "break_glass_required"
        for reason in ("", "x", "!!!!!!!!!!!!", "ok"):
            r = c.post("/v1/patients/emergency", json={"person_key": person, "reason": reason})
            assert r.status_code == 422, reason
        rid = f"sec2-{uuid.uuid4().hex}"
        r = c.post(
            "/v1/patients/emergency",
            json={"person_key": person, "reason": REASON},
            headers={"X-Request-ID": rid},
        )
        assert r.status_code == 200 and r.json()["breakGlass"]["used"]
    (record,) = [x for x in _audit(api_server, operator, purpose="emergency") if x["request_id"] == rid]
    assert record["flagged"] and record["break_glass"] and record["break_glass_reason"] == REASON
    # It waits in the operators' review queue until one of them decides.
    with api_server.client(operator) as admin:
        queue = admin.get("/v1/admin/break-glass").json()["accesses"]
        (pending,) = [a for a in queue if a["request_id"] == rid]
        r = admin.post(
            f"/v1/admin/break-glass/{pending['access_id']}/review",
            json={"outcome": "justified", "note": "confirmed with the ward"},
        )
        assert r.status_code == 201, r.text
        assert (
            admin.post(
                f"/v1/admin/break-glass/{pending['access_id']}/review", json={"outcome": "unjustified"}
            ).status_code
            == 409
        )
        queue = admin.get("/v1/admin/break-glass").json()["accesses"]
        assert rid not in {a["request_id"] for a in queue}
        reviewed = admin.get("/v1/admin/break-glass", params={"status": "reviewed"}).json()["accesses"]
        assert any(a["request_id"] == rid and a["review"]["reviewer"] for a in reviewed)


# 3. History accepts bulk purposes -----------------------------------------------------------------


def test_3_research_and_public_health_never_name_a_patient(api_server: ApiServer, province_data) -> None:  # type: ignore[no-untyped-def]
    rid = province_data.resident_ids[0]
    for hospital, purpose in (("zz-fahzu", "research"), ("zz-c1", "public_health")):
        with api_server.client(api_server.issue(hospital)) as c:
            r = c.get("/v1/patients/history", params={"purpose": purpose}, headers={"X-Resident-Id": rid})
            assert r.status_code == 403 and r.json()["errorCode"] == "purpose_not_per_patient"


# 5. Masked tokens linkable through the order -------------------------------------------------------


def test_5_a_masked_result_is_not_in_the_order_of_the_real_keys(
    stack: Settings, api_server: ApiServer, frames: dict[str, pd.DataFrame]
) -> None:
    """Served in person_key order, a research stream lines up with a clear-key stream."""
    rows: list[dict] = []
    cursor = None
    with api_server.client(api_server.issue("zz-fahzu")) as c:
        while True:
            body = {"purpose": "research", "limit": 500, **({"cursor": cursor} if cursor else {})}
            r = c.post("/v1/datasets/diagnoses/query", json=body)
            assert r.status_code == 200, r.text
            rows += r.json()["rows"]
            cursor = r.json()["nextCursor"]
            if cursor is None:
                break
    d = frames["diagnoses"]
    assert len(rows) == len(d)
    # Paging neither repeats nor skips a row: the pages are the one-page answer (as far as one
    # page of the largest size goes), in its order.
    with api_server.client(api_server.issue("zz-fahzu")) as c:
        whole = c.post("/v1/datasets/diagnoses/query", json={"purpose": "research", "limit": 10_000}).json()
    assert len(whole["rows"]) == min(len(rows), 10_000)
    assert whole["rows"] == rows[: len(whole["rows"])]
    # The tokens, mapped back to their keys with the documented mask (the test knows the secret).
    masker = Masker(stack.province_secret.get_secret_value().encode())
    back = {masker.token("research-provincial", "person_key", k): k for k in set(d.person_key)}
    keys = [back[r["person_key"]] for r in rows]
    ascending = sum(a <= b for a, b in itertools.pairwise(keys)) / (len(keys) - 1)
    # Sorted by key, nearly every neighbour pair ascends; a shuffle gives about half.
    assert 0.3 < ascending < 0.7, ascending


# 6. Existence and opt-out status --------------------------------------------------------------------


def test_6_no_opt_out_or_existence_told_to_a_hospital_without_access(
    api_server: ApiServer, frames: dict[str, pd.DataFrame], operator: str
) -> None:
    hospital = "ny-fc-bowang"  # a township centre of Nanyang
    e = frames["encounters"]
    treated = set(e.person_key[e.hospital_id == hospital]) | set(
        e.person_key[e.referred_from_hospital_id == hospital]
    )
    stranger = next(str(p) for p in e.person_key.unique() if p not in treated)
    with api_server.client(operator) as admin:
        consent = admin.post(
            "/v1/admin/consents", json={"person_key": stranger, "note": "security test"}
        ).json()
    try:
        with api_server.client(api_server.issue(hospital)) as c:
            r = c.get("/v1/patients/history", params={"purpose": "treatment", "person_key": stranger})
            # Not consent_denied: whether they opted out is none of this hospital's business.
            assert r.status_code == 403 and r.json()["errorCode"] == "not_under_care"
            # A patient nobody knows and one without rows here look the same: empty, not 404.
            nobody = hashlib.sha256(b"nobody").hexdigest()
            for key in (nobody, stranger):
                r = c.get("/v1/patients/history", params={"purpose": "operations", "person_key": key})
                assert r.status_code == 200 and r.json()["total"] == 0 and r.json()["entries"] == []
            r = c.post("/v1/patients/emergency", json={"person_key": nobody, "reason": REASON})
            assert r.status_code == 200 and r.json()["total"] == 0
    finally:
        with api_server.client(operator) as admin:
            admin.delete(f"/v1/admin/consents/{consent['consent_id']}")


# 7. Operators becoming hospitals -----------------------------------------------------------------------


def test_7_operators_cannot_mint_hospital_credentials_and_the_cli_is_audited(
    api_server: ApiServer, operator: str
) -> None:
    with api_server.client(operator) as admin:
        r = admin.post("/v1/admin/credentials", json={"kind": "hospital", "subject": "zz-fahzu", "days": 1})
        assert r.status_code == 403 and r.json()["errorCode"] == "hospital_credential_refused"
        r = admin.post("/v1/admin/credentials", json={"kind": "operator", "subject": "second-op", "days": 1})
        assert r.status_code == 201
        operator_id = r.json()["token_id"]
        listed = {c["token_id"]: c for c in admin.get("/v1/admin/credentials").json()}
        assert listed[operator_id]["issued_by"] == "security-auditor"
    env = {**os.environ, **api_server.env}
    cli = [sys.executable, "-m", "medshare", "hospitals"]
    issued = subprocess.run(
        [*cli, "issue-token", "zz-c1", "--by", "alice@pdc"], env=env, capture_output=True, text=True
    )
    assert issued.returncode == 0, issued.stderr
    token_id = issued.stdout.strip()[4:].split(".")[0]
    revoked = subprocess.run([*cli, "revoke", token_id, "--by", "bob@pdc"], env=env, capture_output=True)
    assert revoked.returncode == 0
    records = [r for r in _audit(api_server, operator) if token_id in (r["detail"] or "")]
    assert {(r["route"], r["principal"]) for r in records} == {
        ("medshare hospitals issue-token", "alice@pdc"),
        ("medshare hospitals revoke", "bob@pdc"),
    }
    with api_server.client(operator) as admin:
        listed = {c["token_id"]: c for c in admin.get("/v1/admin/credentials").json()}
    assert listed[token_id]["issued_by"] == "alice@pdc"


# 8. Secrets and identities ---------------------------------------------------------------------------


def _denied(call) -> bool:  # type: ignore[no-untyped-def]
    try:
        call()
    except S3Error as exc:
        return exc.code == "AccessDenied"
    return False


def test_8_each_component_has_its_own_identity_and_no_more(stack: Settings, topology: Topology) -> None:
    buckets = topology.province.buckets
    # No site secret is the old HMAC of the root password.
    root = stack.root_password.get_secret_value().encode()
    for site in (PROVINCE_SITE, API_READER_SITE, AUDIT_SITE, "zhengzhou"):
        derived = hmac.new(root, f"site:{site}".encode(), hashlib.sha256).hexdigest()[:40]
        assert stack.site_secret(site).get_secret_value() != derived, site
    reader = s3_client(stack, site_credentials(stack, API_READER_SITE))
    name = f"security-{uuid.uuid4().hex}"
    body = io.BytesIO(b"x")
    assert _denied(lambda: reader.put_object(buckets.lakehouse, name, body, 1))  # reads only
    assert _denied(lambda: reader.list_objects(buckets.audit).__next__())
    audit = s3_client(stack, site_credentials(stack, AUDIT_SITE))
    audit.put_object(buckets.audit, name, io.BytesIO(b"x"), 1)
    assert _denied(lambda: audit.remove_object(buckets.audit, name))  # appends, never deletes
    assert _denied(lambda: audit.get_object(buckets.lakehouse, "x"))
    analysts = s3_client(stack, site_credentials(stack, ANALYTICS_SITE))
    assert _denied(lambda: analysts.get_object(buckets.audit, name))  # analysts never see it
    admin = s3_client(stack, root_credentials(stack))
    assert admin.get_bucket_versioning(buckets.audit).status == "Enabled"


def test_8_the_api_runs_without_the_root_secret_and_refuses_development_keys(
    stack: Settings, api_server: ApiServer
) -> None:
    """The API process is started without MEDSHARE_S3_ROOT_PASSWORD (tests/utils/api.py drops it)
    and still serves; off loopback the public development key is refused at start."""
    with api_server.client(api_server.issue("zz-c1")) as c:
        assert c.get("/v1/me").status_code == 200
    env = {
        **os.environ,
        "MEDSHARE_S3_ENDPOINT": "http://minio.pdc.henan:9000",
        "MEDSHARE_PROVINCE_KEY": "medshare-dev-province-key",
    }
    refused = subprocess.run(
        [sys.executable, "-m", "medshare", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "public development default" in refused.stderr + refused.stdout


# 10. Forwarded-for ----------------------------------------------------------------------------------------


def test_10_x_forwarded_for_is_not_believed(api_server: ApiServer, operator: str) -> None:
    rid = f"sec10-{uuid.uuid4().hex}"
    with api_server.client(api_server.issue("zz-c1")) as c:
        c.get("/v1/me", headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": rid})
    (record,) = [r for r in _audit(api_server, operator) if r["request_id"] == rid]
    assert record["client_address"] == "127.0.0.1"


# 11. Values echoed ---------------------------------------------------------------------------------


def test_11_no_submitted_value_is_echoed_or_audited(
    api_server: ApiServer, province_data, operator: str
) -> None:  # type: ignore[no-untyped-def]
    rid = province_data.resident_ids[1]
    token = api_server.issue("zz-fahzu")
    probes = []
    with api_server.client(token) as c:
        for filters in (
            [{"column": "admit_time", "op": "ge", "value": rid}],  # wrong type: the value is not echoed
            [{"column": rid, "op": "eq", "value": "x"}],  # no such column: the name is not echoed
        ):
            request_id = f"sec11-{uuid.uuid4().hex}"
            r = c.post(
                "/v1/datasets/encounters/query",
                json={"purpose": "research", "filters": filters},
                headers={"X-Request-ID": request_id},
            )
            assert r.status_code == 422 and rid not in r.text
            probes.append(request_id)
        # A hidden column and one that does not exist get the same answer.
        answers = [
            c.post(
                "/v1/datasets/encounters/query",
                json={"purpose": "research", "filters": [{"column": column, "op": "eq", "value": "x"}]},
            ).json()["message"]
            for column in ("encounter_id", "no_such_column")
        ]
        assert answers[0] == answers[1]
        shares = httpx.get(
            f"{api_server.url}/delta-sharing/shares/{rid}/schemas",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert shares.status_code == 404 and rid not in shares.text
    records = [r for r in _audit(api_server, operator) if r["request_id"] in probes]
    assert len(records) == 2 and rid not in str(records)
    # /healthz answers without a credential and names no table, path or error.
    public = httpx.get(f"{api_server.url}/healthz").json()
    assert set(public) == {"ready", "generation", "keeperRunning", "sharedCopiesSynced", "problems"}
    assert "s3://" not in str(public)
