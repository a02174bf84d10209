"""Delta Sharing's small parts without services: which grants can be served as files, copy
fingerprints, partition predicates, listing pages, signed URLs, profile files, and a copy built
and updated on a local Delta table."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake
from pydantic import SecretStr

from lakehouse.contracts import load_contracts
from lakehouse.settings import Settings
from lakehouse.storage import Credentials
from sharing_api.catalog import catalog
from sharing_api.copies import (
    _META,
    CopySpec,
    CopyWriter,
    IncompleteCopy,
    _parts_sql,
    copy_specs,
    copy_state,
    unservable_reason,
)
from sharing_api.errors import BadRequest
from sharing_api.grants import ColumnPolicy, Grant, GrantFile, Recipient
from sharing_api.identities import IssuedToken
from sharing_api.masking import Masker
from sharing_api.profile import profile_document, write_profile
from sharing_api.protocol import page
from sharing_api.signing import UrlSigner


def _grant(
    scope: str = "all_cities", purposes: tuple[str, ...] = ("research",), **columns: tuple[str, ...]
) -> Grant:
    return Grant(
        id="g1",
        recipient=Recipient(levels=("provincial",)),
        datasets=("encounters", "diagnoses"),
        purposes=purposes,  # type: ignore[arg-type]
        scope=scope,  # type: ignore[arg-type]
        columns=ColumnPolicy(**columns),
    )


@pytest.fixture
def views(settings: Settings):  # type: ignore[no-untyped-def]
    return catalog(load_contracts(settings.platform_dir))


def test_which_grants_are_served_as_files(views) -> None:  # type: ignore[no-untyped-def]
    view = views["encounters"]
    assert unservable_reason(_grant("all_cities"), view) is None
    assert unservable_reason(_grant("own_city"), view) is None
    assert unservable_reason(_grant("own_hospital"), view) is None
    assert "care" in str(unservable_reason(_grant("under_care"), view))
    # A scope enforced by a column the grant masks or hides cannot be enforced by file.
    assert "hospital_id" in str(unservable_reason(_grant("own_hospital", masked=("hospital_id",)), view))
    assert "city" in str(unservable_reason(_grant("own_city", hidden=("city",)), view))
    # Treatment and emergency are per-patient decisions: no copies for them.
    grants = GrantFile(grants=(_grant(purposes=("treatment", "emergency")), _grant()))
    specs = copy_specs(grants, views, "s3://shared/x")
    assert [s.uri for s in specs] == ["s3://shared/x/g1/encounters", "s3://shared/x/g1/diagnoses"]


def test_fingerprint_changes_with_policy_and_consents(views) -> None:  # type: ignore[no-untyped-def]
    plain = CopySpec(_grant(), views["encounters"], "u")
    masked = CopySpec(_grant(masked=("department",)), views["encounters"], "u")
    hidden = CopySpec(_grant(hidden=("department",)), views["encounters"], "u")
    prints = {s.fingerprint(frozenset()) for s in (plain, masked, hidden)}
    assert len(prints) == 3
    assert plain.fingerprint(frozenset({"a"})) != plain.fingerprint(frozenset())
    assert plain.fingerprint(frozenset({"a", "b"})) == plain.fingerprint(frozenset({"b", "a"}))
    assert "department" not in hidden.columns and "department" in masked.columns
    # A part per city; per hospital too only where the scope is enforced by hospital.
    assert masked.partition_columns == ["city"]
    own = CopySpec(_grant("own_hospital"), views["encounters"], "u")
    assert own.partition_columns == ["city", "hospital_id"]
    assert CopySpec(_grant("own_hospital", masked=("city",)), views["encounters"], "u").partition_columns == [
        "hospital_id"
    ]
    assert own.fingerprint(frozenset()) != plain.fingerprint(frozenset())


def test_partition_predicates_quote_values() -> None:
    assert _parts_sql(["city", "hospital_id"], [("a", "b"), ("c", "d'e")]) == (
        "(city = 'a' AND hospital_id = 'b') OR (city = 'c' AND hospital_id = 'd''e')"
    )
    assert _parts_sql([], [()]) == "true"


def test_listing_pages() -> None:
    items = [{"name": str(i)} for i in range(5)]
    first = page(items, 2, None)
    assert [i["name"] for i in first["items"]] == ["0", "1"]
    second = page(items, 2, first["nextPageToken"])
    third = page(items, 2, second["nextPageToken"])
    assert [i["name"] for i in third["items"]] == ["4"] and "nextPageToken" not in third
    with pytest.raises(BadRequest):
        page(items, 2, "not a token")


def test_signed_urls_are_path_style_for_the_recipients_endpoint() -> None:
    signer = UrlSigner(
        endpoint="https://lake.example.org:9443",
        credentials=Credentials(access_key="signer", secret_key=SecretStr("s" * 40)),
        region="us-east-1",
        lifetime=dt.timedelta(minutes=120),
    )
    url, expires = signer.sign("henan-shared", "g1/encounters/city=zhengzhou/part-0.parquet")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "lake.example.org:9443")
    assert unquote(parts.path) == "/henan-shared/g1/encounters/city=zhengzhou/part-0.parquet"
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["7200"] and query["X-Amz-Credential"][0].startswith("signer/")
    assert abs(expires / 1000 - (dt.datetime.now(dt.UTC).timestamp() + 7200)) < 5


def test_profile_file_is_private(tmp_path: Path) -> None:
    issued = IssuedToken(
        token_id="abc", token="mst_abc.secret", kind="hospital", subject="ly-c1", expires_at=0.0
    )
    target = tmp_path / "sub" / "ly-c1.share"
    write_profile(target, profile_document("http://api:8040/delta-sharing/", issued))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text()) == {
        "shareCredentialsVersion": 1,
        "endpoint": "http://api:8040/delta-sharing/",
        "bearerToken": "mst_abc.secret",
        "expirationTime": "1970-01-01T00:00:00.000Z",
    }


def test_a_copy_is_built_then_updated_part_by_part(tmp_path: Path, views) -> None:  # type: ignore[no-untyped-def]
    """On local Delta tables: the copy masks and hides as the grant says, drops opted-out
    patients, and a change to one hospital's partition rewrites only that part."""
    view = views["diagnoses"]
    root = tmp_path / "province"
    rows = []
    for i in range(12):
        row = {f.name: None for f in view.schema}
        row.update(
            city="c1" if i < 8 else "c2",
            hospital_id=f"h{i % 3}",
            person_key=f"{i % 5:064x}",
            key_version=1,
            diagnosis_code="I10",
            diagnosed_at=dt.datetime(2026, 3, 14, 9, 30, tzinfo=dt.UTC),
        )
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=view.schema).append_column("month", pa.array(["2026-03"] * 12))
    write_deltalake(str(root / "diagnoses"), table, partition_by=["city", "hospital_id", "month"])
    masker = Masker(b"k")
    grant = _grant("own_hospital", masked=("person_key",), hidden=("key_version",))
    spec = CopySpec(grant, view, str(tmp_path / "shared" / "g1" / "diagnoses"))
    writer = CopyWriter(tables_root=str(root), storage_options={}, masker=masker)

    opted_out = frozenset({f"{0:064x}"})
    built = writer.sync(spec, opted_out)
    assert built.action == "built"
    copy = DeltaTable(spec.uri)
    got = copy.to_pyarrow_table()
    assert "key_version" not in got.column_names and "month" not in got.column_names
    assert got.num_rows == 12 - 3  # patient 0 had rows 0, 5 and 10
    assert set(got["person_key"].to_pylist()) == {
        masker.token("g1", "person_key", f"{i:064x}") for i in range(1, 5)
    }
    assert copy.metadata().partition_columns == ["city", "hospital_id"]
    assert writer.sync(spec, opted_out).action == "unchanged"

    # One hospital's partition changes: only that part of the copy is rewritten.
    part = table.filter(pc.and_(pc.equal(table["city"], "c1"), pc.equal(table["hospital_id"], "h1")))
    write_deltalake(
        str(root / "diagnoses"),
        part.slice(1),
        mode="overwrite",
        predicate="city = 'c1' AND hospital_id = 'h1' AND month = '2026-03'",
    )
    updated = writer.sync(spec, opted_out)
    assert (updated.action, updated.parts) == ("updated", 1)
    log = [json.loads(line) for line in (Path(spec.uri) / "_delta_log" / "00000000000000000001.json").open()]
    touched = {
        json.dumps(a[k]["partitionValues"], sort_keys=True) for a in log for k in ("add", "remove") if k in a
    }
    assert touched == {json.dumps({"city": "c1", "hospital_id": "h1"}, sort_keys=True)}
    state = copy_state(DeltaTable(spec.uri))
    assert (state.version, state.first_servable) == (1, 0)

    # A new opt-out rebuilds the copy whole; older versions are no longer servable.
    rebuilt = writer.sync(spec, opted_out | {f"{1:064x}"})
    assert rebuilt.action == "rebuilt"
    state = copy_state(DeltaTable(spec.uri))
    assert (state.version, state.first_servable) == (2, 2)

    # A copy whose newest commit lacks medshare's fields (an older medshare wrote it) is rebuilt
    # by the next pass, not a failed pass every time; serving treats it as not ready.
    copy = DeltaTable(spec.uri)
    older = {"source_version": 1, "fingerprint": "f"}  # no first_servable yet
    write_deltalake(
        spec.uri,
        copy.to_pyarrow_table().slice(0, 1),
        mode="append",
        commit_properties=CommitProperties(custom_metadata={_META: json.dumps(older)}),
    )
    with pytest.raises(IncompleteCopy, match="first_servable"):
        copy_state(DeltaTable(spec.uri))
    again = writer.sync(spec, opted_out | {f"{1:064x}"})
    assert again.action == "rebuilt"
    state = copy_state(DeltaTable(spec.uri))
    assert (state.version, state.first_servable) == (4, 4)
