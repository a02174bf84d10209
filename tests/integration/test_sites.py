"""Two provincial sites (docs/sites.md), both serving: every city's data reaches both sites'
lakehouses exactly once each; a revocation or an opt-out made at one site holds at the other
within seconds; when every process of one site is killed under a steady load of history lookups,
the lookups carry on at the other site, the cities keep publishing, nothing is lost, the audit
trail holds every request once, and the killed site catches up by itself when it returns.

On a two-site stack of the test's own (tests/utils/sites.py): the cities' object store, two sites
(a MinIO and a broker each, one Kafka cluster with a replica of every partition in each site),
the witness controller; a replicator per site (`medshare replicator --site`) and a sharing API
per site (`medshare serve`, with its site's settings), each its own process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable

from infra import stack
from lakehouse.contracts import Contract
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.settings import Settings
from lakehouse.storage import AUDIT_SITE, delta_storage_options, site_credentials
from lakehouse.topology import Topology
from sharing_api.client import FailoverClient
from sharing_api.identities import parse_token
from tests.utils.api import ApiServer
from tests.utils.browser import TIMEOUT_MS, chromium_page, look_up, sign_in
from tests.utils.province import Province
from tests.utils.replication import (
    CITIES,
    assert_province_holds_the_cities,
    curated_rows,
    hospitals,
    make_topics,
    publish,
    wait_verified,
    write_city,
)
from tests.utils.sites import (
    SITES,
    Lookups,
    TwoSites,
    history,
    known_at,
    patient_with_history,
    provincial_tables,
    stop,
    two_site_stack,
    until,
)

DATASETS = ("encounters", "patients")
# A revocation or an opt-out made at one site holds at the other within this (issue 20).
PROPAGATION_SECONDS = 5.0
# After a site is lost, the first lookup answered by the other site within this (RTO).
RTO_SECONDS = 30.0


@pytest.fixture(scope="module")
def sites(settings: Settings, topology: Topology) -> Iterator[TwoSites]:
    with two_site_stack(topology, settings.cache_dir) as two:
        yield two


@pytest.fixture(scope="module")
def province(sites: TwoSites, topology: Topology) -> Province:
    """The same small provincial lakehouse in both sites' stores, for the APIs to serve."""
    return provincial_tables(sites, topology, "sites-api")


@pytest.fixture(scope="module")
def apis(
    sites: TwoSites, province: Province, topology: Topology, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ApiServer]]:
    """A sharing API at each site, over that site's copy of `province`, sharing one operations topic."""
    topic = f"t{uuid.uuid4().hex[:8]}.operations"  # one for both sites' servers (made as they start)
    audit = f"s3://{topology.province.buckets.audit}/sites-{uuid.uuid4().hex[:8]}"
    servers = {
        site: sites.api(
            site, tmp_path_factory.mktemp(site), tables_root=province.root, audit_table=audit, topic=topic
        )
        for site in SITES
    }
    urls = ",".join(server.url for server in servers.values())
    for server in servers.values():
        server.extra_env["MEDSHARE_API_URLS"] = urls  # the clinician page fails over between them
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_a_revocation_an_opt_out_and_a_grant_at_one_site_hold_at_the_other_within_seconds(
    apis: dict[str, ApiServer], province: Province
) -> None:
    a, b = (apis[s] for s in SITES)
    patient, hospital = patient_with_history(a, province)
    # Issued at A (as `medshare hospitals issue-token` there would), usable at B once applied there.
    token = a.issue(hospital)
    parsed = parse_token(token)
    assert parsed is not None
    with a.client(token) as at_a, b.client(token) as at_b, b.client(b.issue("ops-b", operator=True)) as op_b:
        until(
            "A's new credential accepted at B",
            lambda: history(at_b, province, patient).status_code == 200,
            30,
        )

        revoked = op_b.post(f"/v1/admin/credentials/{parsed[0]}/revoke")
        assert revoked.status_code == 200, revoked.text
        seconds = until(
            "B's revocation refused at A", lambda: history(at_a, province, patient).status_code == 401, 30
        )
        assert seconds <= PROPAGATION_SECONDS
        assert history(at_a, province, patient).json()["errorCode"] == "token_revoked"

    other = a.issue(hospital)
    with a.client(other) as at_a, b.client(b.issue("ops-b2", operator=True)) as op_b:
        assert history(at_a, province, patient).status_code == 200
        opted = op_b.post("/v1/admin/consents", json={"resident_id": province.resident_ids[patient]})
        assert opted.status_code == 201, opted.text
        seconds = until(
            "B's opt-out applied at A", lambda: history(at_a, province, patient).status_code == 403, 30
        )
        assert seconds <= PROPAGATION_SECONDS
        assert history(at_a, province, patient).json()["errorCode"] == "consent_denied"

    # A grant added at A is in force at B: the whole document, the same version at both sites.
    grant = {
        "id": "sites-test-research",
        "description": "A grant added at one site",
        "recipient": {"hospitals": [hospital]},
        "datasets": ["diagnoses"],
        "purposes": ["research"],
        "scope": "own_hospital",
    }
    with (
        a.client(a.issue("ops-a", operator=True)) as op_a,
        b.client(b.issue("ops-b3", operator=True)) as op_b,
    ):
        added = op_a.post("/v1/admin/grants", json=grant)
        assert added.status_code == 201, added.text

        def in_force_at_b() -> bool:
            return any(g["id"] == grant["id"] for g in op_b.get("/v1/admin/grants").json()["grants"])

        assert until("A's grant in force at B", in_force_at_b, 30) <= PROPAGATION_SECONDS
        assert op_b.get("/v1/admin/grants").json()["version"] == added.json()["version"]


def commit_round(
    sites: TwoSites, layout: ReplicationLayout, contracts: dict[str, Contract], salt: str
) -> None:
    """A new version of each city's tables (as its ingestion would commit), then published."""
    for n, city in enumerate(CITIES):
        for name in DATASETS:
            rows = curated_rows(
                contracts[name], hospitals(layout.topology, city), 1500, salt=f"{city}{salt}", seed=n
            )
            write_city(sites.settings, layout, city, contracts[name], rows)


def publish_all(
    sites: TwoSites, layout: ReplicationLayout, contracts: dict[str, Contract], key: ProvinceKey
) -> None:
    for city in CITIES:
        publish(sites.settings, layout, city, contracts, key)


def test_the_clinician_page_carries_on_at_the_other_site(
    apis: dict[str, ApiServer], province: Province
) -> None:
    a, b = (apis[s] for s in SITES)
    patient, hospital = patient_with_history(a, province)
    token = a.issue(hospital)
    until("A's credential applied at B", lambda: known_at(b, token), 30)
    with chromium_page() as page:
        response = page.goto(f"{a.url}/ui", timeout=TIMEOUT_MS)
        assert response is not None and response.ok
        assert b.url in (response.headers.get("content-security-policy") or "")
        assert "Signed in as" in sign_in(page, token)
        look_up(page, province.resident_ids[patient], "operations")
        assert page.locator("#error").is_hidden(), page.text_content("#error")
        shown = page.locator("#timeline tr.entry").count()
        assert shown > 0 and page.evaluate("() => document.body.dataset.site") == a.url

        a.kill()  # the page, already loaded, carries on at B
        try:
            look_up(page, province.resident_ids[patient], "operations")
            assert page.locator("#error").is_hidden(), page.text_content("#error")
            assert page.locator("#timeline tr.entry").count() == shown
            assert page.evaluate("() => document.body.dataset.site") == b.url

            # So does the command line, given both sites (A first).
            command = ["history", province.resident_ids[patient], "--purpose", "operations"]
            done = subprocess.run(
                [sys.executable, "-m", "medshare", *command, "--url", a.url, "--url", b.url],
                env={**os.environ, "MEDSHARE_API_TOKEN": token},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["entries"], done.stdout  # the history, as JSON on stdout
            assert f"from {b.url}" in done.stderr
            assert province.resident_ids[patient] not in done.stdout + done.stderr
        finally:
            a.start()


def audit_ids(settings: Settings, uri: str, token_ids: set[str]) -> Counter[str]:
    """Request ids in one site's audit table, of requests made with these credentials, counted."""
    try:
        table = DeltaTable(
            uri, storage_options=delta_storage_options(settings, site_credentials(settings, AUDIT_SITE))
        )
    except Exception:  # not created yet
        return Counter()
    rows = table.to_pyarrow_dataset().to_table(columns=["request_id", "token_id"]).to_pylist()
    return Counter(r["request_id"] for r in rows if r["token_id"] in token_ids)


def test_a_site_killed_loses_nothing_and_catches_up_by_itself(
    sites: TwoSites,
    apis: dict[str, ApiServer],
    province: Province,
    topology: Topology,
    contracts: dict[str, Contract],
    key: ProvinceKey,
    unique: str,
    tmp_path: Path,
) -> None:
    a, b = (sites.site(s) for s in SITES)
    api_a, api_b = (apis[s] for s in SITES)
    layout = ReplicationLayout(topology, f"t{unique}")
    make_topics(sites.settings, layout)
    args = ("replicator", "--namespace", layout.namespace, "--metrics-port", "0", "--site")
    logs = {s: tmp_path / f"replicator-{s}.log" for s in SITES}
    replicators = {s: sites.medshare(logs[s], *args, s) for s in SITES}

    patient, hospital = patient_with_history(api_a, province)
    token = api_a.issue(hospital)
    counted = api_a.issue(hospital)  # the N sequential requests of the audit check
    # Applied at B before A goes (read from B's database: a request would be audited).
    until("A's credentials applied at B", lambda: known_at(api_b, token, counted), 30)
    load = Lookups(FailoverClient([api_a.url, api_b.url], token), province, patient)
    sequential: list[str] = []

    def lookup_at(server: ApiServer) -> None:
        with server.client(counted) as c:
            response = history(c, province, patient)
        assert response.status_code == 200, response.text
        sequential.append(response.headers["x-request-id"])

    try:
        started = time.monotonic()
        commit_round(sites, layout, contracts, "r1")
        publish_all(sites, layout, contracts, key)
        wait_verified(sites.settings, layout, contracts, key, sites=[a, b], datasets=DATASETS, timeout=180)
        both_after = time.monotonic() - started
        load.start()
        for n in range(10):  # spread over both sites
            lookup_at(api_a if n % 2 else api_b)

        # Committed by the cities and published just before the failure; applied nowhere yet, or
        # in one site only — either way it must be in both in the end.
        commit_round(sites, layout, contracts, "r2")
        publish_all(sites, layout, contracts, key)
        time.sleep(1.0)  # lookups answered by A before it goes
        lost_at = time.monotonic()
        replicators[SITES[0]].send_signal(signal.SIGKILL)
        api_a.kill()
        killed = sites.kill_site(SITES[0])
        assert sorted(killed) == [f"kafka-{SITES[0]}", f"minio-{SITES[0]}"]
        replicators[SITES[0]].wait(30)
        for _ in range(10):
            lookup_at(api_b)

        # The cities keep publishing while site A is gone, and site B has everything.
        commit_round(sites, layout, contracts, "r3")
        publish_all(sites, layout, contracts, key)
        published_after = time.monotonic() - lost_at
        wait_verified(sites.settings, layout, contracts, key, sites=[b], datasets=DATASETS, timeout=180)
        b_complete_after = time.monotonic() - lost_at
        load.close()

        # Lookups: answered by A before the loss, by B after, none failed; the first answer after
        # the loss came within the RTO.
        assert not load.failures, load.failures[:5]
        assert all(a.status == 200 for a in load.answers), Counter(a.status for a in load.answers)
        before = [a.end for a in load.answers if a.end < lost_at and a.site == api_a.url]
        after = [a.end for a in load.answers if a.end > lost_at and a.site == api_b.url]
        assert before and after
        rto = min(after) - lost_at
        assert rto <= RTO_SECONDS

        # Site A comes back on its old folders, knowing nothing of the interval, and catches up.
        back = time.monotonic()
        stack.up(sites.settings, topology, sites=[SITES[0]])
        replicators[SITES[0]] = sites.medshare(logs[SITES[0]], *args, SITES[0])
        api_a.start()
        wait_verified(sites.settings, layout, contracts, key, sites=[a, b], datasets=DATASETS, timeout=240)
        caught_up_after = time.monotonic() - back
        for site in (a, b):
            assert_province_holds_the_cities(site, layout, contracts, key, DATASETS)

        # The audit trail, in both sites: the N sequential requests exactly once each; every
        # answered lookup once (plus at most the one in flight when A died, journaled there).
        answered = {a.request_id for a in load.answers}
        ids = {t: parse_token(t)[0] for t in (token, counted)}  # type: ignore[index]
        for site in (a, b):

            def missing(site: Settings = site) -> str:
                held = audit_ids(site, api_a.audit_table, {ids[counted]})
                lookups = audit_ids(site, api_a.audit_table, {ids[token]})
                gaps = (set(sequential) ^ set(held), answered - set(lookups))
                return "" if not any(gaps) else f"{len(gaps[0])} of the N, {len(gaps[1])} lookups"

            try:
                until(f"the audit trail complete at {site.site_id}", lambda: not missing(), 120)
            except AssertionError as exc:
                tail = "\n".join(
                    line for s in apis.values() for line in s.log.read_text().splitlines() if "audit" in line
                )
                raise AssertionError(f"{exc}: {missing()} missing\n{tail[-3000:]}") from None
            held = audit_ids(site, api_a.audit_table, {ids[counted]})
            assert sum(held.values()) == len(sequential) == 20 and max(held.values()) == 1
            lookups = audit_ids(site, api_a.audit_table, {ids[token]})
            assert max(lookups.values()) == 1 and len(lookups) - len(answered) <= 1
        print(
            f"both sites complete {both_after:.1f} s after the first commits; site A lost: lookups "
            f"answered by B {rto:.2f} s later ({len(load.answers)} lookups, none failed); cities "
            f"published again after {published_after:.1f} s, site B complete after "
            f"{b_complete_after:.1f} s; site A back and caught up after {caught_up_after:.1f} s"
        )
    finally:
        load.close()
        for proc in replicators.values():
            stop(proc)
    for site in SITES:
        assert replicators[site].returncode == 0, logs[site].read_text()[-3000:]
