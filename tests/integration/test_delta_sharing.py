"""Delta Sharing with the official client (`delta-sharing` 1.4.2 from PyPI, in its own recipient
environment): each hospital gets exactly the rows and columns its grant allows, changes follow the
provincial tables, an opt-out removes a patient and retires older versions, and no URL for a file
outside a caller's scope can be had by guessing names, versions, timestamps or predicates.

Expectations are computed from the Arrow tables the province builder wrote, with the grants read
by the test's own oracle (plain YAML) and the masking formula re-implemented here."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from infra.recipient import read_share
from lakehouse.contracts import load_contracts
from lakehouse.errors import MedshareError
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.settings import Settings
from lakehouse.shareable import LINEAGE
from lakehouse.storage import (
    PROVINCE_SITE,
    SHARING_SITE,
    SIGNER_SITE,
    delta_storage_options,
    s3_client,
    site_credentials,
)
from lakehouse.topology import Hospital, Topology
from sharing_api.db import Database
from sharing_api.identities import Identities
from sharing_api.profile import profile_document, write_profile
from tests.utils import grants_oracle
from tests.utils.api import ApiServer, audit_uri
from tests.utils.province import Province, build_province, write_province

pytestmark = pytest.mark.integration

# Three hospitals with different grants: a provincial hospital (research over every city, masked
# and hidden columns; its own rows for operations), a city hospital (its city's diagnoses and labs
# for public health; own rows for operations) and a township health centre (own rows only).
HOSPITALS = ("zz-fahzu", "ly-c1", "ny-fc-bowang")
SHARES = ("research", "public_health", "operations")
SCOPES = {"all_cities", "own_city", "own_hospital"}


@dataclass
class Sharing:
    settings: Settings
    topology: Topology
    province: Province
    server: ApiServer
    grants: list[dict[str, Any]]
    profiles: dict[str, Path]
    tokens: dict[str, str]
    operator: str
    workdir: Path

    def hospital(self, hospital_id: str) -> Hospital:
        return self.topology.hospital(hospital_id)

    def read(self, hospital_id: str, *args: str) -> dict[str, Any]:
        return read_share(self.settings, self.profiles[hospital_id], *args, timeout=600)

    def load(self, hospital_id: str, table: str, *options: str) -> pa.Table:
        out = self.workdir / f"{uuid.uuid4().hex}.parquet"
        answer = self.read(hospital_id, "load", table, "--out", str(out), *options)
        got = pq.read_table(out)
        assert got.num_rows == answer["rows"]
        return got

    def copy_version(self, grant_id: str, dataset: str) -> int:
        options = delta_storage_options(self.settings, site_credentials(self.settings, SHARING_SITE))
        return DeltaTable(f"{self.server.share_root}/{grant_id}/{dataset}", storage_options=options).version()

    def synced(self) -> int:
        return int(httpx.get(f"{self.server.url}/healthz", timeout=5).json()["sharedCopiesSynced"])


@pytest.fixture(scope="module")
def sharing(
    stack: Settings, topology: Topology, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sharing]:
    contracts = load_contracts(stack.platform_dir)
    province = build_province(
        topology, contracts, ProvinceKey.from_settings(stack), patients=240, encounters=1500, seed=29
    )
    province.root = f"s3://{topology.province.buckets.lakehouse}/ds-test-{uuid.uuid4().hex[:8]}"
    write_province(
        province, province.root, delta_storage_options(stack, site_credentials(stack, PROVINCE_SITE))
    )
    workdir = tmp_path_factory.mktemp("delta-sharing")
    server = ApiServer(
        settings=stack,
        workdir=workdir / "api",
        tables_root=province.root,
        audit_table=audit_uri(stack, "ds"),
        instance="api-sharing",
        extra_env={"MEDSHARE_API_SHARE_SYNC_SECONDS": "1"},
    )
    server.start()
    try:
        server.wait_for_copies()
        store = Identities(Database(server.api_settings().db_path(stack)), topology)
        profiles, tokens = {}, {}
        for h in HOSPITALS:
            issued = store.issue("hospital", h, days=1)
            profiles[h] = workdir / f"{h}.share"
            write_profile(profiles[h], profile_document(f"{server.url}/delta-sharing/", issued))
            tokens[h] = issued.token
        yield Sharing(
            settings=stack,
            topology=topology,
            province=province,
            server=server,
            grants=grants_oracle.load(server.grants_file),
            profiles=profiles,
            tokens=tokens,
            operator=server.issue("sharing-ops", operator=True),
            workdir=workdir,
        )
    finally:
        server.stop()


# -- what the grants say, read independently ------------------------------------------------------


def expected_tables(sharing: Sharing, hospital_id: str) -> set[str]:
    hospital = sharing.hospital(hospital_id)
    out = set()
    for share in SHARES:
        for dataset in sharing.province.tables:
            grant = grants_oracle.expected_grant(sharing.grants, hospital, dataset, share)
            if grant is not None and grant["scope"] in SCOPES:
                out.add(f"{share}.province.{dataset}")
    return out


def _mask_key(settings: Settings) -> bytes:
    return hmac.new(
        settings.province_secret.get_secret_value().encode(), b"medshare-api-mask", hashlib.sha256
    ).digest()


def _masked(key: bytes, grant_id: str, column: str, values: pa.ChunkedArray) -> pa.Array:
    """The documented masks: text → '~' + 16 hex of HMAC(key, grant:column:value); dates and
    times → the first of their month; numbers and flags → null."""
    kind = values.type
    out: list[Any] = []
    for v in values.to_pylist():
        if v is None:
            out.append(None)
        elif pa.types.is_string(kind):
            out.append(
                "~" + hmac.new(key, f"{grant_id}:{column}:{v}".encode(), hashlib.sha256).hexdigest()[:16]
            )
        elif pa.types.is_timestamp(kind):
            out.append(v.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
        elif pa.types.is_date(kind):
            out.append(v.replace(day=1))
        else:
            out.append(None)
    return pa.array(out, kind)


def expected_rows(
    sharing: Sharing,
    hospital_id: str,
    dataset: str,
    share: str,
    *,
    without: frozenset[str] = frozenset(),
    rows: pa.Table | None = None,
) -> pa.Table:
    """The provincial rows (or `rows`, in the provincial form) as the grant shows them."""
    hospital = sharing.hospital(hospital_id)
    grant = grants_oracle.expected_grant(sharing.grants, hospital, dataset, share)
    assert grant is not None
    table = sharing.province.tables[dataset] if rows is None else rows
    if without:
        table = table.filter(pc.invert(pc.is_in(table["person_key"], pa.array(sorted(without)))))
    if grant["scope"] == "own_city":
        table = table.filter(pc.equal(table["city"], hospital.city))
    elif grant["scope"] == "own_hospital":
        table = table.filter(pc.equal(table["hospital_id"], hospital.id))
    keep = [
        c
        for c in table.column_names
        if c not in LINEAGE and grants_oracle.column_access(grant, c) != "hidden"
    ]
    table = table.select(keep)
    key = _mask_key(sharing.settings)
    for i, name in enumerate(table.column_names):
        if grants_oracle.column_access(grant, name) == "masked":
            table = table.set_column(i, name, _masked(key, grant["id"], name, table[name]))
    return table


def rows_of(table: pa.Table, like: pa.Table) -> list[str]:
    """Rows as comparable strings, after bringing the client's pandas round trip back to the
    expected types (nullable ints come back as floats, all-null columns as null)."""
    assert sorted(table.column_names) == sorted(like.column_names)
    table = table.select(like.column_names)
    columns = []
    for field in like.schema:
        column = table[field.name]
        if pa.types.is_timestamp(field.type) and pa.types.is_timestamp(column.type):
            column = pc.cast(column, pa.timestamp("us", tz="UTC"))
        columns.append(pc.cast(column, field.type))
    table = pa.Table.from_arrays(columns, schema=like.schema)
    return sorted(json.dumps(r, default=str, sort_keys=True) for r in table.to_pylist())


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("hospital_id", HOSPITALS)
def test_each_hospital_lists_exactly_its_granted_tables(sharing: Sharing, hospital_id: str) -> None:
    listed = set(sharing.read(hospital_id, "list")["tables"])
    assert listed == expected_tables(sharing, hospital_id)
    assert listed  # each of the three has something


TABLES = [
    ("zz-fahzu", "research", "encounters"),
    ("zz-fahzu", "research", "patients"),  # birth_date (a date) and person_key masked
    ("zz-fahzu", "research", "lab_results"),  # value_text masked, numbers kept
    ("zz-fahzu", "operations", "medications"),
    ("ly-c1", "public_health", "diagnoses"),
    ("ly-c1", "public_health", "lab_results"),
    ("ny-fc-bowang", "operations", "encounters"),
]


@pytest.mark.parametrize(("hospital_id", "share", "dataset"), TABLES)
def test_load_as_pandas_returns_exactly_the_grant(
    sharing: Sharing, hospital_id: str, share: str, dataset: str
) -> None:
    expected = expected_rows(sharing, hospital_id, dataset, share)
    assert expected.num_rows > 0
    got = sharing.load(hospital_id, f"{share}.province.{dataset}")
    assert rows_of(got, expected) == rows_of(expected, expected)

    # A limit returns that many rows, each one the grant allows; version 0 is the same table.
    limited = sharing.load(hospital_id, f"{share}.province.{dataset}", "--limit", "7")
    assert limited.num_rows == min(7, expected.num_rows)
    assert set(rows_of(limited, expected)) <= set(rows_of(expected, expected))
    at_zero = sharing.load(hospital_id, f"{share}.province.{dataset}", "--version", "0")
    assert rows_of(at_zero, expected) == rows_of(expected, expected)


def _replace_partition(sharing: Sharing, dataset: str, city: str, drop: int) -> tuple[str, pa.Table]:
    """Rewrite one (city, hospital, month) partition of a provincial table without its first
    `drop` rows, as a replication unit would; returns the hospital and the rows dropped."""
    table = sharing.province.tables[dataset]
    in_city = table.filter(pc.equal(table["city"], city))
    counts = in_city.group_by(["hospital_id", "month"]).aggregate([("person_key", "count")])
    best = max(counts.to_pylist(), key=lambda r: r["person_key_count"])
    hospital, month = best["hospital_id"], best["month"]
    mask = pc.and_(
        pc.and_(pc.equal(table["city"], city), pc.equal(table["hospital_id"], hospital)),
        pc.equal(table["month"], month),
    )
    part = table.filter(mask)
    kept, dropped = part.slice(drop), part.slice(0, drop)
    options = delta_storage_options(sharing.settings, site_credentials(sharing.settings, PROVINCE_SITE))
    write_deltalake(
        f"{sharing.province.root}/{dataset}",
        kept,
        mode="overwrite",
        predicate=f"city = '{city}' AND hospital_id = '{hospital}' AND month = '{month}'",
        storage_options=options,
    )
    sharing.province.tables[dataset] = pa.concat_tables([table.filter(pc.invert(mask)), kept])
    return hospital, dropped


def _wait_for_version(sharing: Sharing, grant_id: str, dataset: str, above: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        version = sharing.copy_version(grant_id, dataset)
        if version > above:
            return version
        time.sleep(0.3)
    raise AssertionError(f"copy {grant_id}/{dataset} did not move past version {above}")


def test_changes_follow_the_provincial_table_inside_the_scope(sharing: Sharing) -> None:
    """ly-c1 reads its city's diagnoses: a change in Luoyang shows up as the Luoyang part's old
    rows deleted and new rows inserted, netting exactly the rows removed; a change in Zhengzhou made in
    the same window does not appear at all."""
    before = sharing.copy_version("public-health-city", "diagnoses")
    old_scope = expected_rows(sharing, "ly-c1", "diagnoses", "public_health")
    time.sleep(1.1)  # commit timestamps are in milliseconds: keep "before" strictly before
    moment = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(1.1)
    hospital, dropped = _replace_partition(sharing, "diagnoses", "luoyang", drop=2)
    _replace_partition(sharing, "diagnoses", "zhengzhou", drop=3)
    _wait_for_version(sharing, "public-health-city", "diagnoses", before)
    sharing.server.wait_for_copies(passes=sharing.synced() + 2)  # both changes are in

    out = sharing.workdir / "changes.parquet"
    answer = sharing.read(
        "ly-c1",
        "changes",
        "public_health.province.diagnoses",
        "--out",
        str(out),
        "--starting-version",
        str(before + 1),
    )
    changes = pq.read_table(out)
    assert answer["rows"] == changes.num_rows > 0
    # The Luoyang part of the copy was rewritten (a part is a city for an own-city grant).
    assert set(changes["city"].to_pylist()) == {"luoyang"}
    assert hospital in set(changes["hospital_id"].to_pylist())
    kinds = changes["_change_type"].to_pylist()
    assert set(kinds) == {"insert", "delete"}
    data = changes.drop_columns(["_change_type", "_commit_version", "_commit_timestamp"])
    inserted = rows_of(data.filter(pc.equal(changes["_change_type"], "insert")), old_scope)
    deleted = rows_of(data.filter(pc.equal(changes["_change_type"], "delete")), old_scope)
    net_deleted = list(deleted)
    for row in inserted:
        net_deleted.remove(row)
    dropped_rows = rows_of(
        expected_rows(sharing, "ly-c1", "diagnoses", "public_health", rows=dropped), old_scope
    )
    assert sorted(net_deleted) == dropped_rows

    # And the table now holds exactly the new scope; time travel to a moment before the change
    # (by timestamp, and by version) gives the old one.
    now = expected_rows(sharing, "ly-c1", "diagnoses", "public_health")
    got = sharing.load("ly-c1", "public_health.province.diagnoses")
    assert rows_of(got, now) == rows_of(now, now)
    then = sharing.load("ly-c1", "public_health.province.diagnoses", "--timestamp", moment)
    assert rows_of(then, old_scope) == rows_of(old_scope, old_scope)
    then = sharing.load("ly-c1", "public_health.province.diagnoses", "--version", str(before))
    assert rows_of(then, old_scope) == rows_of(old_scope, old_scope)


def test_an_opt_out_rebuilds_the_copies_and_retires_older_versions(sharing: Sharing) -> None:
    encounters = sharing.province.tables["encounters"]
    own = encounters.filter(pc.equal(encounters["hospital_id"], "ny-fc-bowang"))
    counts = pc.value_counts(own["person_key"]).to_pylist()
    patient = str(max(counts, key=lambda c: c["counts"])["values"])
    theirs = max(c["counts"] for c in counts)
    # Before the opt-out the hospital's copy holds every one of the patient's rows.
    got = sharing.load("ny-fc-bowang", "operations.province.encounters")
    assert got["person_key"].to_pylist().count(patient) == theirs > 0
    old = sharing.copy_version("operations-own", "encounters")
    table_path = TABLE.format(share="operations", schema="province", table="encounters")
    with sharing.server.client(sharing.tokens["ny-fc-bowang"]) as c:
        answer = c.post(table_path + "/query", json={})
    old_files = _urls(answer)
    assert old_files and all(httpx.get(f["url"], timeout=30).status_code == 200 for f in old_files)
    # URLs are short-lived: a revocation holds within minutes (10 by default).
    now_ms = time.time() * 1000
    assert all(now_ms < f["expirationTimestamp"] <= now_ms + 10 * 60_000 + 5_000 for f in old_files)
    passes = sharing.synced()

    with sharing.server.client(sharing.operator) as c:
        r = c.post("/v1/admin/consents", json={"person_key": patient, "note": "test opt-out"})
        assert r.status_code == 201, r.text
        consent_id = r.json()["consent_id"]
    sharing.server.wait_for_copies(passes=passes + 2)

    for hospital_id, share in (("ny-fc-bowang", "operations"), ("zz-fahzu", "research")):
        expected = expected_rows(sharing, hospital_id, "encounters", share, without=frozenset({patient}))
        got = sharing.load(hospital_id, f"{share}.province.encounters")
        assert rows_of(got, expected) == rows_of(expected, expected)
    got = sharing.load("ny-fc-bowang", "operations.province.encounters")
    assert patient not in got["person_key"].to_pylist()

    # The versions written before the opt-out held the patient: they are refused, and audited.
    new = sharing.copy_version("operations-own", "encounters")
    assert new > old
    with pytest.raises(MedshareError, match="version_unavailable"):
        sharing.load("ny-fc-bowang", "operations.province.encounters", "--version", str(old))
    with sharing.server.client(sharing.tokens["ny-fc-bowang"]) as c:
        r = c.get(
            "/delta-sharing/shares/operations/schemas/province/tables/encounters/changes",
            params={"startingVersion": old},
        )
        assert r.status_code == 400 and r.json()["errorCode"] == "version_unavailable"
        # The changes from the rebuild on sign its new files only, never the ones it removed
        # (they held the patient), and those are gone from the store, signed URLs or not.
        r = c.get(table_path + "/changes", params={"startingVersion": new})
        assert r.status_code == 200, r.text
        kinds = [next(iter(json.loads(line))) for line in r.text.splitlines()[2:] if line.strip()]
        assert kinds and set(kinds) == {"add"}, kinds
    assert all(httpx.get(f["url"], timeout=30).status_code == 404 for f in old_files)

    # The opt-out revoked: the next copies hold the patient's rows again.
    passes = sharing.synced()
    with sharing.server.client(sharing.operator) as c:
        assert c.delete(f"/v1/admin/consents/{consent_id}").status_code == 200
    sharing.server.wait_for_copies(passes=passes + 2)
    got = sharing.load("ny-fc-bowang", "operations.province.encounters")
    assert got["person_key"].to_pylist().count(patient) == theirs


# -- guessing -------------------------------------------------------------------------------------

TABLE = "/delta-sharing/shares/{share}/schemas/{schema}/tables/{table}"


def _urls(response: httpx.Response) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert "protocol" in lines[0] and "metaData" in lines[1]
    return [next(iter(line.values())) for line in lines[2:]]


def test_no_url_outside_the_scope_can_be_had_by_guessing(sharing: Sharing) -> None:
    """The township centre may read its own operations rows: every other share, schema, table,
    version and timestamp is refused (and audited), and hints never widen what is signed."""
    me = "ny-fc-bowang"
    refused: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
        ("GET", "/delta-sharing/shares/research", "", None, 404),
        ("GET", "/delta-sharing/shares/public_health/schemas", "", None, 404),
        ("GET", "/delta-sharing/shares/treatment/all-tables", "", None, 404),
        ("GET", "/delta-sharing/shares/emergency/schemas/province/tables", "", None, 404),
        ("GET", "/delta-sharing/shares/operations/schemas/default/tables", "", None, 404),
        (
            "GET",
            TABLE.format(share="research", schema="province", table="encounters") + "/metadata",
            "",
            None,
            404,
        ),
        (
            "POST",
            TABLE.format(share="research", schema="province", table="encounters") + "/query",
            "",
            {},
            404,
        ),
        (
            "POST",
            TABLE.format(share="operations", schema="province", table="patients") + "/query",
            "",
            {},
            404,
        ),
        (
            "POST",
            TABLE.format(share="operations", schema="province", table="imaging_series") + "/query",
            "",
            {},
            404,
        ),
        (
            "POST",
            TABLE.format(share="operations", schema="default", table="encounters") + "/query",
            "",
            {},
            404,
        ),
        (
            "POST",
            TABLE.format(share="operations", schema="province", table="encounters") + "/query",
            "",
            {"version": 10**6},
            400,
        ),
        (
            "POST",
            TABLE.format(share="operations", schema="province", table="encounters") + "/query",
            "",
            {"timestamp": "2001-01-01T00:00:00Z"},
            400,
        ),
        (
            "POST",
            TABLE.format(share="operations", schema="province", table="encounters") + "/query",
            "",
            {"timestamp": "yesterday"},
            400,
        ),
        (
            "GET",
            TABLE.format(share="operations", schema="province", table="encounters") + "/changes",
            "startingVersion=999999",
            None,
            400,
        ),
        (
            "GET",
            TABLE.format(share="operations", schema="province", table="encounters") + "/metadata",
            "timestamp=1999-12-31T00:00:00Z",
            None,
            400,
        ),
    ]
    ids = []
    with sharing.server.client(sharing.tokens[me]) as c:
        for method, path, query, body, status in refused:
            rid = uuid.uuid4().hex
            ids.append(rid)
            url = f"{path}?{query}" if query else path
            r = c.request(method, url, json=body, headers={"X-Request-ID": rid})
            assert r.status_code == status, (method, url, body, r.status_code, r.text)
            assert set(r.json()) == {"errorCode", "message"}

        # Hints naming other cities and hospitals, a huge limit, time travel: only own files.
        query = TABLE.format(share="operations", schema="province", table="encounters") + "/query"
        other = {
            "op": "equal",
            "children": [
                {"op": "column", "name": "hospital_id", "valueType": "string"},
                {"op": "literal", "value": "zz-fahzu", "valueType": "string"},
            ],
        }
        files: list[dict[str, Any]] = []
        for body in (
            {},
            {"jsonPredicateHints": json.dumps(other)},
            {"predicateHints": ["hospital_id = 'zz-fahzu'", "city = 'zhengzhou'"]},
            {"limitHint": 10**9},
            {"version": sharing.copy_version("operations-own", "encounters")},
        ):
            r = c.post(query, json=body)
            assert r.status_code == 200, r.text
            files += _urls(r)
        r = c.get(
            TABLE.format(share="operations", schema="province", table="encounters") + "/changes",
            params={"startingVersion": sharing.copy_version("operations-own", "encounters")},
        )
        assert r.status_code == 200, r.text
        files += _urls(r)
    assert files
    endpoint = urlsplit(sharing.settings.s3_endpoint)
    shared = sharing.topology.province.buckets.shared
    for f in files:
        assert f["partitionValues"] == {"city": "nanyang", "hospital_id": me}
        url = urlsplit(f["url"])
        # Path-style, for the configured endpoint, inside the shared bucket, in the caller's part.
        assert url.netloc == endpoint.netloc
        path = unquote(url.path)
        assert path.startswith(f"/{shared}/") and f"/city=nanyang/hospital_id={me}/" in path

    # A signed URL reads its file; the same signature for another hospital's file does not.
    first = files[0]["url"]
    got = httpx.get(first, timeout=30)
    assert got.status_code == 200 and got.content[:4] == b"PAR1"
    forged = first.replace(f"hospital_id%3D{me}", "hospital_id%3Dny-c1")
    assert forged != first
    assert httpx.get(forged, timeout=30).status_code == 403

    # The signer's identity cannot read the provincial lakehouse at all, whatever it signs.
    options = delta_storage_options(sharing.settings, site_credentials(sharing.settings, PROVINCE_SITE))
    raw_path = DeltaTable(f"{sharing.province.root}/encounters", storage_options=options).file_uris()[0]
    bucket, _, key = raw_path.removeprefix("s3://").partition("/")
    signer = s3_client(sharing.settings, site_credentials(sharing.settings, SIGNER_SITE))
    assert httpx.get(signer.presigned_get_object(bucket, key), timeout=30).status_code == 403

    # Every refused attempt left a deny record naming this hospital.
    time.sleep(1.5)  # the audit flush runs every 0.5 s
    with sharing.server.client(sharing.operator) as c:
        r = c.get("/v1/audit", params={"hospital_id": me, "decision": "deny", "limit": 1000})
        assert r.status_code == 200, r.text
        recorded = {rec["request_id"]: rec for rec in r.json()["records"]}
    for rid, (method, path, _, _, status) in zip(ids, refused, strict=True):
        assert rid in recorded, (method, path)
        assert recorded[rid]["status"] == status


def test_query_reads_are_audited_with_the_files_signed(sharing: Sharing) -> None:
    rid = uuid.uuid4().hex
    with sharing.server.client(sharing.tokens["ly-c1"]) as c:
        r = c.post(
            TABLE.format(share="public_health", schema="province", table="lab_results") + "/query",
            json={},
            headers={"X-Request-ID": rid},
        )
        assert r.status_code == 200
        signed = {f["id"] for f in _urls(r)}
    time.sleep(1.5)
    with sharing.server.client(sharing.operator) as c:
        records = c.get("/v1/audit", params={"hospital_id": "ly-c1", "limit": 1000}).json()["records"]
    record = next(rec for rec in records if rec["request_id"] == rid)
    assert record["decision"] == "allow" and record["purpose"] == "public_health"
    assert record["dataset"] == "lab_results" and record["grants"] == "public-health-city"
    assert set(record["detail"].split(": ", 1)[1].split(",")) == signed
    assert record["rows_returned"] == expected_rows(sharing, "ly-c1", "lab_results", "public_health").num_rows


def test_profile_command_writes_a_private_working_profile(sharing: Sharing, tmp_path: Path) -> None:
    target = tmp_path / "zz-fahzu.share"
    env = {**os.environ, **sharing.server.env}
    done = subprocess.run(
        [sys.executable, "-m", "medshare", "hospitals", "profile", "zz-fahzu", "--out", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    profile = json.loads(target.read_text())
    assert profile["shareCredentialsVersion"] == 1
    assert profile["endpoint"] == f"http://127.0.0.1:{sharing.server.port}/delta-sharing/"
    expires = dt.datetime.fromisoformat(profile["expirationTime"].replace("Z", "+00:00"))
    assert dt.timedelta(days=80) < expires - dt.datetime.now(dt.UTC) < dt.timedelta(days=91)
    assert profile["bearerToken"] not in done.stdout + done.stderr  # the secret is in the file only
    listed = read_share(sharing.settings, target, "list")["tables"]
    assert set(listed) == expected_tables(sharing, "zz-fahzu")

    # Two provincial sites: a file per site, one credential (it holds at both sites).
    other_site = "http://127.0.0.1:1"  # never called: only named in the second file
    two = {
        "MEDSHARE_SITES": "henan-dc-a,henan-dc-b",
        # Given as a list: not derived from the one-site stack's ports.
        "MEDSHARE_KAFKA_BOOTSTRAP": f"{sharing.settings.kafka_bootstrap},{sharing.settings.kafka_bootstrap}",
        "MEDSHARE_API_URLS": f"{sharing.server.url},{other_site}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "medshare", "hospitals", "profile", "zz-fahzu", "--out", str(target)],
        env=env | two,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    second = json.loads((tmp_path / "zz-fahzu.henan-dc-b.share").read_text())
    assert second["endpoint"] == f"{other_site}/delta-sharing/"
    assert second["bearerToken"] == json.loads(target.read_text())["bearerToken"]
