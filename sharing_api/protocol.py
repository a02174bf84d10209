"""The Delta Sharing open protocol over the per-grant copies, decided by the same grants as the
JSON API.

Shares are the bulk purposes (`research`, `public_health`, `operations`), each with one schema,
`province`; a share's tables are the datasets the caller's grants allow for that purpose — the
first matching grant decides, exactly as for `POST /v1/datasets/{name}/query` — served from that
grant's copy. A table the caller may not see does not exist for it (404, the same answer as a
name that exists nowhere, so names cannot be probed).

Enforcement is by file: of a copy's files, only those whose partition values lie in the caller's
row scope are signed; predicates and limits only ever narrow that. Versions written before the
copy's last rebuild (under older grants or consents) are refused, whatever version or timestamp is
asked for.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse.topology import Hospital
from sharing_api.audit import AuditRecord
from sharing_api.catalog import CITY, HOSPITAL
from sharing_api.copies import SCOPE_COLUMN, SHARE_PURPOSES, CopySpec, CopyState, copy_state, copy_uri
from sharing_api.errors import BadRequest, NotFound, Unavailable
from sharing_api.grants import Grant
from sharing_api.lakeview import utc_now
from sharing_api.services import Services

SCHEMA = "province"
MAX_PAGE = 1000
MAX_CHANGE_VERSIONS = 1000


@dataclass(frozen=True)
class SharedTable:
    share: str
    name: str
    spec: CopySpec

    @property
    def grant(self) -> Grant:
        return self.spec.grant


def _tables(s: Services, hospital: Hospital, share: str, now: dt.datetime) -> list[SharedTable]:
    if share not in SHARE_PURPOSES:
        return []
    specs = s.shares.specs()
    out = []
    for name, view in s.views.items():
        grant = s.grants.decide(hospital, name, share, now).grant
        if grant is None:
            continue
        spec = CopySpec(grant, view, copy_uri(s.shares.root, grant.id, name))
        if spec in specs:
            out.append(SharedTable(share, name, spec))
    return out


def shares(s: Services, hospital: Hospital) -> list[str]:
    now = utc_now()
    return [p for p in SHARE_PURPOSES if _tables(s, hospital, p, now)]


def share_tables(s: Services, hospital: Hospital, share: str) -> list[SharedTable]:
    """The share's tables for this caller; a share with none does not exist for it."""
    tables = _tables(s, hospital, share, utc_now())
    if not tables:
        raise NotFound("no such share for this recipient", code="share_not_found")
    return tables


def schema_tables(s: Services, hospital: Hospital, share: str, schema: str) -> list[SharedTable]:
    tables = share_tables(s, hospital, share)
    if schema != SCHEMA:
        raise NotFound("no such schema in the share", code="schema_not_found")
    return tables


def resolve(
    s: Services, hospital: Hospital, share: str, schema: str, table: str, audit: AuditRecord
) -> SharedTable:
    audit.purpose = share if share in SHARE_PURPOSES else None
    audit.dataset = table if table in s.views else None  # never record a caller-made name
    for t in schema_tables(s, hospital, share, schema):
        if t.name == table:
            audit.grants = [t.grant.id]
            return t
    raise NotFound("no such table in the share for this recipient", code="table_not_found")


def page(items: list[dict[str, Any]], max_results: int | None, token: str | None) -> dict[str, Any]:
    """One page of a listing; the token is the offset (a caller only pages its own listing)."""
    start = 0
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest("pageToken is not one this server issued", code="invalid_page_token") from exc
    size = min(max_results or MAX_PAGE, MAX_PAGE)
    chunk = items[start : start + size]
    out: dict[str, Any] = {"items": chunk}
    if start + size < len(items):
        out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    return out


# -- versions -------------------------------------------------------------------------------------


def _open(s: Services, t: SharedTable, version: int | None = None) -> tuple[DeltaTable, CopyState]:
    """The copy (at `version`), after checking it reflects the current grant and consents."""
    try:
        latest = DeltaTable(t.spec.uri, storage_options=s.shares.options)
        state = copy_state(latest)
    except (TableNotFoundError, DeltaError, OSError) as exc:
        raise Unavailable(
            f"{t.share}.{SCHEMA}.{t.name} is being prepared; retry shortly", code="table_not_ready"
        ) from exc
    if state.fingerprint != t.spec.fingerprint(s.shares.opted_out(t.spec)):
        # Grant or consents changed since the copy was written: serve nothing until it is rebuilt.
        s.shares.sync.wake()
        raise Unavailable(
            f"{t.share}.{SCHEMA}.{t.name} is being brought up to date with a grant or consent change;"
            " retry shortly",
            code="table_not_ready",
        )
    if version is None or version == state.version:
        return latest, state
    check_version(state, version)
    latest.load_as_version(version)
    return latest, state


def check_version(state: CopyState, version: int) -> None:
    if version < state.first_servable:
        raise BadRequest(
            f"version {version} is not served: versions before {state.first_servable} were written"
            " under earlier grants or consents",
            code="version_unavailable",
        )
    if version > state.version:
        raise BadRequest(
            f"version {version} does not exist yet (latest {state.version})", code="version_unavailable"
        )


def parse_timestamp(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(
            "timestamps are ISO 8601, e.g. 2026-11-28T10:00:00Z", code="invalid_timestamp"
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _commit_times(table: DeltaTable) -> dict[int, int]:
    return {int(c["version"]): int(c["timestamp"]) for c in table.history()}


def version_at(s: Services, t: SharedTable, timestamp: str, *, at_or_after: bool) -> int:
    """The version a timestamp names: the newest commit at or before it (a snapshot), or the
    first at or after it (where changes start)."""
    table, state = _open(s, t)
    millis = int(parse_timestamp(timestamp).timestamp() * 1000)
    times = _commit_times(table)
    if at_or_after:
        found = [v for v, ts in times.items() if ts >= millis]
        version = min(found) if found else None
    else:
        found = [v for v, ts in times.items() if ts <= millis]
        version = max(found) if found else None
    if version is None:
        raise BadRequest(f"no version of the table at {timestamp}", code="version_unavailable")
    check_version(state, version)
    return version


def current_version(s: Services, t: SharedTable) -> int:
    return _open(s, t)[1].version


# -- files ----------------------------------------------------------------------------------------


def _in_scope(t: SharedTable, hospital: Hospital, values: dict[str, Any]) -> bool:
    column = SCOPE_COLUMN[t.grant.scope]
    if column is None:
        return True
    expected = hospital.city if column == CITY else hospital.id
    return values.get(column) == expected


def _file_id(uri: str, path: str) -> str:
    return hashlib.sha256(f"{uri}/{path}".encode()).hexdigest()[:24]


def _object(uri: str, path: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    key = urllib.parse.unquote(path)
    return bucket, f"{prefix}/{key}" if prefix else key


def _signed(s: Services, t: SharedTable, path: str, values: dict[str, Any], size: int) -> dict[str, Any]:
    url, expires = s.shares.signer.sign(*_object(t.spec.uri, path))
    return {
        "url": url,
        "id": _file_id(t.spec.uri, path),
        "partitionValues": {k: (None if v is None else str(v)) for k, v in values.items()},
        "size": int(size),
        "expirationTimestamp": expires,
    }


def protocol_line() -> dict[str, Any]:
    return {"protocol": {"minReaderVersion": 1}}


def metadata_line(table: DeltaTable) -> dict[str, Any]:
    meta = table.metadata()
    return {
        "metaData": {
            "id": meta.id,
            "format": {"provider": "parquet"},
            "schemaString": table.schema().to_json(),
            "partitionColumns": list(meta.partition_columns),
            "configuration": {},
        }
    }


@dataclass
class Listing:
    version: int
    lines: list[dict[str, Any]]
    file_ids: list[str]
    rows: int


def metadata(s: Services, t: SharedTable, version: int | None) -> Listing:
    table, _ = _open(s, t, version)
    return Listing(table.version(), [protocol_line(), metadata_line(table)], [], 0)


def query(s: Services, hospital: Hospital, t: SharedTable, version: int | None, limit: int | None) -> Listing:
    table, _ = _open(s, t, version)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    keys = [c for c in (CITY, HOSPITAL) if f"partition.{c}" in (actions[0] if actions else {})]
    lines = [protocol_line(), metadata_line(table)]
    ids: list[str] = []
    rows = 0
    for action in sorted(actions, key=lambda a: str(a["path"])):
        values = {k: action[f"partition.{k}"] for k in keys}
        if not _in_scope(t, hospital, values):
            continue
        if limit is not None and rows >= limit:
            break  # a hint: enough files for `limit` rows
        signed = _signed(s, t, str(action["path"]), values, int(action["size_bytes"]))
        signed["stats"] = json.dumps({"numRecords": int(action["num_records"] or 0)})
        lines.append({"file": signed})
        ids.append(signed["id"])
        rows += int(action["num_records"] or 0)
    return Listing(table.version(), lines, ids, rows)


def changes(s: Services, hospital: Hospital, t: SharedTable, start: int, end: int | None) -> Listing:
    table, state = _open(s, t)
    end = state.version if end is None else end
    check_version(state, start)
    check_version(state, end)
    if end < start:
        raise BadRequest("endingVersion is before startingVersion", code="invalid_version_range")
    if end - start >= MAX_CHANGE_VERSIONS:
        raise BadRequest(
            f"ask for at most {MAX_CHANGE_VERSIONS} versions at a time", code="invalid_version_range"
        )
    lines = [protocol_line(), metadata_line(table)]
    ids: list[str] = []
    rows = 0
    for version in range(start, end + 1):
        for kind, action, timestamp in _commit_actions(s, t, version):
            values = action.get("partitionValues") or {}
            if not action.get("dataChange", True) or not _in_scope(t, hospital, values):
                continue
            if kind == "remove" and version == state.first_servable:
                # The rebuild's removes name the files of versions no longer served (older grants
                # or consents): those are never signed (and are deleted after the rebuild).
                continue
            signed = _signed(s, t, action["path"], values, int(action.get("size") or 0))
            signed.update(timestamp=timestamp, version=version)
            lines.append({kind: signed})
            ids.append(signed["id"])
            stats = action.get("stats")
            if isinstance(stats, str):
                rows += int(json.loads(stats).get("numRecords", 0))
    return Listing(end, lines, ids, rows)


def _commit_actions(s: Services, t: SharedTable, version: int) -> Iterator[tuple[str, dict[str, Any], int]]:
    """The add and remove actions of one commit of the copy, read from its log entry."""
    bucket, key = _object(t.spec.uri, f"_delta_log/{version:020d}.json")
    try:
        text = s.shares.log_entry(bucket, key)
    except FileNotFoundError as exc:
        raise BadRequest(f"version {version} is no longer kept", code="version_unavailable") from exc
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    timestamp = next((int(e["commitInfo"]["timestamp"]) for e in entries if "commitInfo" in e), 0)
    for entry in entries:
        for kind in ("add", "remove"):
            if kind in entry:
                yield kind, entry[kind], timestamp or int(entry[kind].get("modificationTime", 0))
