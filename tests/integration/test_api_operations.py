"""The API in operation: audit completeness across kill -9, answers when part of the lakehouse
cannot be read, grants changed without a restart, and rate limits."""

from __future__ import annotations

import collections
import datetime as dt
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pytest
import yaml
from deltalake import DeltaTable

from lakehouse.contracts import load_contracts
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.settings import Settings
from lakehouse.storage import AUDIT_SITE, PROVINCE_SITE, delta_storage_options, s3_client, site_credentials
from lakehouse.topology import Topology, load_topology
from tests.utils import grants_oracle
from tests.utils.api import ApiServer, audit_uri
from tests.utils.province import build_province, write_province

UNLIMITED = {"MEDSHARE_API_RATE_PER_SECOND": "100000", "MEDSHARE_API_RATE_BURST": "100000"}


def _options(settings: Settings) -> dict[str, str]:
    """The audit bucket's identity (it reads and appends)."""
    return delta_storage_options(settings, site_credentials(settings, AUDIT_SITE))


def test_audit_complete_when_killed_under_load(
    stack: Settings, province_data, tmp_path: Path, unique: str
) -> None:
    """Every answered request has exactly one audit record, also across kill -9 and restart; the
    only records without an answer are those of requests in flight at the kill."""
    server = ApiServer(
        settings=stack,
        workdir=tmp_path / "api",
        tables_root=province_data.root,
        audit_table=audit_uri(stack, "kill"),
        instance="api-kill",
        extra_env=UNLIMITED,
    )
    server.start()
    token = server.issue("zz-c1")
    keys = list(province_data.person_keys[:200])
    outcome: dict[str, int | None] = {}
    lock = threading.Lock()
    stop = threading.Event()
    clients = 8

    def load(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=10.0) as c:
            while not stop.is_set():
                request_id = f"load-{uuid.uuid4().hex}"
                kind = rng.random()
                auth = token if kind < 0.9 else "mst_0000000000000000." + "A" * 43  # some 401s
                headers = {"Authorization": f"Bearer {auth}", "X-Request-ID": request_id}
                person = rng.choice(keys)
                try:
                    if kind < 0.6:  # break-glass lookups
                        r = c.post(
                            "/v1/patients/emergency",
                            json={"person_key": person, "reason": "cardiac arrest in the waiting room"},
                            headers=headers,
                        )
                    else:  # research never names a patient: 403
                        r = c.get(
                            "/v1/patients/history",
                            params={"purpose": "research", "person_key": person},
                            headers=headers,
                        )
                    status: int | None = r.status_code
                except httpx.HTTPError:
                    status = None  # no answer: the process was killed meanwhile
                    time.sleep(0.05)
                with lock:
                    outcome[request_id] = status

    threads = [threading.Thread(target=load, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(random.uniform(2.0, 4.0))
        server.kill()
        time.sleep(0.5)
        server.start()
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    # uvicorn shuts down gracefully on SIGTERM (audit flushed), then re-raises it to exit.
    assert server.stop() in (0, -signal.SIGTERM)
    audit = DeltaTable(server.audit_table, storage_options=_options(stack)).to_pyarrow_table(
        columns=["request_id", "status"]
    )
    ids = audit["request_id"].to_pylist()
    counts = collections.Counter(ids)
    duplicates = [i for i, n in counts.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} requests audited twice"
    status_of = dict(zip(ids, audit["status"].to_pylist(), strict=True))
    answered = {i: s for i, s in outcome.items() if s is not None}
    unanswered = {i for i, s in outcome.items() if s is None}
    assert len(answered) > 100 and unanswered, (len(answered), len(unanswered))
    missing = [i for i in answered if i not in status_of]
    assert not missing, f"{len(missing)} answered requests have no audit record"
    assert all(status_of[i] == s for i, s in answered.items())
    extra = set(status_of) - set(answered)
    assert extra <= unanswered, "audit records of requests never sent"
    assert len(extra) <= clients, "more unanswered-but-audited requests than were in flight"
    assert {s for s in answered.values()} >= {200, 401, 403}


def test_missing_parts_are_reported_not_fatal(
    stack: Settings, topology: Topology, tmp_path: Path, unique: str
) -> None:
    contracts = load_contracts(stack.platform_dir)
    data = build_province(
        topology, contracts, ProvinceKey.from_settings(stack), patients=80, encounters=500, seed=5
    )
    del data.tables["imaging_studies"]  # a table that was never replicated
    bucket = topology.province.buckets.lakehouse
    prefix = f"api-partial-{unique}"
    write_province(
        data, f"s3://{bucket}/{prefix}", delta_storage_options(stack, site_credentials(stack, PROVINCE_SITE))
    )
    # One city's lab results become unreadable: a data file of theirs is gone.
    client = s3_client(stack, site_credentials(stack, PROVINCE_SITE))
    parquet = [
        o.object_name
        for o in client.list_objects(bucket, prefix=f"{prefix}/lab_results/city=luoyang/", recursive=True)
        if o.object_name.endswith(".parquet")
    ]
    assert parquet
    client.remove_object(bucket, parquet[0])

    server = ApiServer(
        settings=stack,
        workdir=tmp_path / "api",
        tables_root=f"s3://{bucket}/{prefix}",
        audit_table=audit_uri(stack, "missing"),
    )
    server.start()
    try:
        labs = data.tables["lab_results"]
        person = labs.filter(pc.equal(labs["city"], "luoyang"))["person_key"][0].as_py()
        with server.client(server.issue("ny-c1")) as c:
            r = c.post(
                "/v1/patients/emergency",
                json={"person_key": person, "reason": "stroke, time of onset unknown", "limit": 1000},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            missing = {(m["type"], m["city"]) for m in body["missing"]}
            assert ("lab_results", "luoyang") in missing
            assert {("imaging_studies", c.id) for c in topology.cities} <= missing
            # Everything readable is there.
            readable = 0
            for name in ("encounters", "diagnoses", "medications", "teleconsultations", "lab_results"):
                t = data.tables[name]
                mine = t.filter(pc.equal(t["person_key"], person))
                if name == "lab_results":
                    mine = mine.filter(pc.not_equal(mine["city"], "luoyang"))
                readable += mine.num_rows
            assert body["total"] == readable
            r = c.post("/v1/datasets/lab_results/query", json={"purpose": "operations", "limit": 5})
            assert r.status_code == 200 and any(m["city"] == "luoyang" for m in r.json()["missing"])
    finally:
        server.stop()


@pytest.fixture(scope="module")
def limited_server(stack: Settings, province_data, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = ApiServer(
        settings=stack,
        workdir=tmp_path_factory.mktemp("api-admin"),
        tables_root=province_data.root,
        audit_table=audit_uri(stack, "admin"),
        instance="api-admin",
        # Two workers: every limit must hold for the instance, not once per worker.
        extra_env={
            "MEDSHARE_API_WORKERS": "2",
            "MEDSHARE_API_RATE_PER_SECOND": "2",
            "MEDSHARE_API_RATE_BURST": "40",
            "MEDSHARE_API_LOGIN_FAILURES_PER_MINUTE": "6",
            "MEDSHARE_API_LOGIN_FAILURE_BURST": "5",
        },
    )
    server.start()
    yield server
    server.stop()


def test_grants_change_without_restart(limited_server: ApiServer) -> None:
    research = {
        "id": "research-county-diagnoses",
        "recipient": {"levels": ["county"]},
        "datasets": ["diagnoses"],
        "purposes": ["research"],
        "scope": "own_city",
        "columns": {"masked": ["person_key"]},
    }
    hospital = limited_server.issue("zz-zm-county")
    with (
        limited_server.client(limited_server.issue("grants-admin", operator=True)) as admin,
        limited_server.client(hospital) as c,
    ):
        assert c.post("/v1/datasets/diagnoses/query", json={"purpose": "research"}).status_code == 403
        listing = admin.get("/v1/admin/grants")
        etag = listing.headers["ETag"]
        r = admin.post("/v1/admin/grants", json=research, headers={"If-Match": etag})
        assert r.status_code == 201, r.text
        r = c.post("/v1/datasets/diagnoses/query", json={"purpose": "research", "limit": 3})
        assert r.status_code == 200 and r.json()["grant"] == research["id"]
        assert all(row["city"] == "zhengzhou" for row in r.json()["rows"])

        # Conflicts and invalid grants.
        assert admin.post("/v1/admin/grants", json=research).status_code == 409  # id exists
        stale = admin.delete(f"/v1/admin/grants/{research['id']}", headers={"If-Match": etag})
        assert stale.status_code == 409 and stale.json()["errorCode"] == "grants_changed"
        bad = admin.post("/v1/admin/grants", json={**research, "id": "typo", "datasets": ["diagnosis"]})
        assert bad.status_code == 422
        assert c.get("/v1/admin/grants").status_code == 403  # hospitals do not manage grants

        # A hand edit of the file applies too: the new grant moved first, narrowed to a week.
        data = yaml.safe_load(limited_server.grants_file.read_text())
        data["grants"] = [
            {**research, "id": "research-county-week", "scope": "own_hospital"},
            *[g for g in data["grants"] if g["id"] != research["id"]],
        ]
        limited_server.grants_file.write_text(yaml.safe_dump(data))
        deadline = time.monotonic() + 10
        while True:
            r = c.post("/v1/datasets/diagnoses/query", json={"purpose": "research", "limit": 3})
            if r.json().get("grant") == "research-county-week" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.json()["grant"] == "research-county-week"
        assert {row["hospital_id"] for row in r.json()["rows"]} <= {"zz-zm-county"}
        assert admin.delete("/v1/admin/grants/research-county-week").status_code == 200
        assert c.post("/v1/datasets/diagnoses/query", json={"purpose": "research"}).status_code == 403


def test_validity_windows_honour_utc_offsets(limited_server: ApiServer) -> None:
    """A window bound written with an offset is that instant: an hour ago in Beijing time has
    passed although its clock reading is hours ahead of UTC; the API and the independent oracle
    (tests/utils/grants_oracle) agree on every grant of the file."""
    now = dt.datetime.now(dt.UTC)
    beijing, eastern = dt.timezone(dt.timedelta(hours=8)), dt.timezone(dt.timedelta(hours=-5))
    hour = dt.timedelta(hours=1)
    base = {"datasets": ["diagnoses"], "purposes": ["research"], "scope": "own_hospital"}
    windows = {
        "zz-zm-county": ("window-ended", {"valid_until": (now - hour).astimezone(beijing).isoformat()}, 403),
        "zz-xy-county": (
            "window-open",
            {
                "valid_from": (now - hour).astimezone(beijing).isoformat(),
                "valid_until": (now + hour).astimezone(eastern).isoformat(),
            },
            200,
        ),
        "ny-dz-county": ("window-ahead", {"valid_from": (now + hour).astimezone(eastern).isoformat()}, 403),
    }
    topology = load_topology(limited_server.settings.platform_dir)
    with limited_server.client(limited_server.issue("windows-admin", operator=True)) as admin:
        for hospital_id, (grant_id, window, _) in windows.items():
            grant = {"id": grant_id, "recipient": {"hospitals": [hospital_id]}, **base, **window}
            assert admin.post("/v1/admin/grants", json=grant).status_code == 201
        try:
            grants = grants_oracle.load(limited_server.grants_file)
            for hospital_id, (grant_id, _, status) in windows.items():
                with limited_server.client(limited_server.issue(hospital_id)) as c:
                    r = c.post("/v1/datasets/diagnoses/query", json={"purpose": "research", "limit": 1})
                assert r.status_code == status, (hospital_id, r.text)
                expected = grants_oracle.expected_grant(
                    grants, topology.hospital(hospital_id), "diagnoses", "research"
                )
                assert (expected is not None) == (status == 200), hospital_id
                if status == 200:
                    assert r.json()["grant"] == expected["id"] == grant_id
        finally:
            for grant_id, _, _ in windows.values():
                assert admin.delete(f"/v1/admin/grants/{grant_id}").status_code == 200


def _journals(server: ApiServer, request_ids: set[str]) -> set[str]:
    """Which workers' journals recorded these requests (one journal per worker process)."""
    operator = server.issue("limits-auditor", operator=True)
    with server.client(operator) as admin:
        records = admin.get("/v1/audit", params={"limit": 1000}).json()["records"]
    return {r["journal"] for r in records if r["request_id"] in request_ids}


def _fresh_connections(server: ApiServer, n: int, token: str, *, source: str = "127.0.0.1") -> list:  # type: ignore[type-arg]
    """`n` requests to /v1/me, each on a new connection (so both workers get some), from `source`."""
    out = []
    for i in range(n):
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(base_url=server.url, transport=transport, timeout=30.0) as c:
            rid = f"limit-{uuid.uuid4().hex}-{i}"
            r = c.get("/v1/me", headers={"Authorization": f"Bearer {token}", "X-Request-ID": rid})
            out.append((rid, r))
    return out


def test_rate_limit_per_credential_holds_across_workers(limited_server: ApiServer) -> None:
    busy, calm = limited_server.issue("ly-c1"), limited_server.issue("ly-c1")
    started = time.monotonic()
    answers = _fresh_connections(limited_server, 90, busy)
    elapsed = time.monotonic() - started
    statuses = [r.status_code for _, r in answers]
    assert set(statuses) <= {200, 429}
    # The instance's burst of 40 plus 2 a second — not 40 per worker.
    allowed = statuses.count(200)
    assert 40 <= allowed <= 40 + 2 * elapsed + 1, (allowed, elapsed)
    limited = next(r for _, r in answers if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["errorCode"] == "rate_limited"
    # Both workers answered (else this proves nothing about sharing the limit).
    assert len(_journals(limited_server, {rid for rid, _ in answers})) == 2
    # Another credential of the same hospital is not held back.
    with limited_server.client(calm) as c:
        assert c.get("/v1/me").status_code == 200


def test_failed_logins_per_address_are_refused_before_verification(limited_server: ApiServer) -> None:
    """Guessing from one address: 5 failures (the burst), then 429 without verifying — also for
    a valid token from that address — while other addresses are unaffected."""
    guesser = "127.0.0.7"
    bad = f"mst_{'0' * 16}.{'x' * 43}"
    answers = _fresh_connections(limited_server, 12, bad, source=guesser)
    codes = [r.status_code for _, r in answers]
    assert codes == [401] * 5 + [429] * 7, codes
    assert len(_journals(limited_server, {rid for rid, _ in answers})) == 2
    valid = limited_server.issue("ly-c1")
    ((_, refused),) = _fresh_connections(limited_server, 1, valid, source=guesser)
    assert refused.status_code == 429 and refused.json()["errorCode"] == "rate_limited"
    ((_, fine),) = _fresh_connections(limited_server, 1, valid, source="127.0.0.8")
    assert fine.status_code == 200
