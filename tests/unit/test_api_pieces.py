"""The API's small parts without services: filters, masks, cursors, rate limits, credentials,
and the audit journal's group commit."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import uvloop

from lakehouse.topology import Topology
from sharing_api.audit import (
    AuditFlusher,
    AuditQuery,
    AuditStore,
    JournalReader,
    read_audit,
    to_arrow,
)
from sharing_api.db import Database
from sharing_api.errors import BadRequest, NotFound, Unauthorized, Unprocessable
from sharing_api.filters import Filter, expression
from sharing_api.grants import ColumnPolicy
from sharing_api.identities import Identities
from sharing_api.journal import AuditUnavailable, Journal
from sharing_api.masking import Masker
from sharing_api.paging import decode_cursor, encode_cursor
from sharing_api.ratelimit import RateLimiter

SCHEMA = pa.schema(
    [
        ("code", pa.string()),
        ("n", pa.int32()),
        ("x", pa.float64()),
        ("day", pa.date32()),
        ("at", pa.timestamp("us", tz="UTC")),
        ("secret", pa.string()),
        ("hidden_one", pa.string()),  # hidden for the caller: neither filterable nor masked
    ]
)
T = pa.table(
    {
        "code": ["I10", "I63.9", "E11.9", None],
        "n": [1, 2, 3, 4],
        "x": [1.5, None, 3.5, 4.5],
        "day": [dt.date(2026, 1, 15), dt.date(2026, 2, 1), dt.date(2026, 2, 28), None],
        "at": [dt.datetime(2026, 1, 15, 10, tzinfo=dt.UTC)] * 4,
        "secret": ["a", "b", "a", None],
        "hidden_one": ["h"] * 4,
    },
    schema=SCHEMA,
)
FILTERABLE = {"code", "n", "x", "day", "at"}
MASKED = {"secret"}


def _rows(*filters: dict) -> list[int]:
    expr = expression([Filter.model_validate(f) for f in filters], SCHEMA, FILTERABLE, MASKED)
    return T.filter(expr)["n"].to_pylist() if expr is not None else T["n"].to_pylist()


def test_filters() -> None:
    assert _rows() == [1, 2, 3, 4]
    assert _rows({"column": "code", "op": "eq", "value": "I10"}) == [1]
    assert _rows({"column": "code", "op": "starts_with", "value": "I"}) == [1, 2]
    assert _rows({"column": "n", "op": "in", "value": [2, 4]}) == [2, 4]
    assert _rows({"column": "n", "op": "not_in", "value": [2, 4]}) == [1, 3]
    assert _rows({"column": "x", "op": "is_null"}) == [2]
    assert _rows(
        {"column": "day", "op": "ge", "value": "2026-02-01"}, {"column": "n", "op": "lt", "value": 3}
    ) == [2]
    assert _rows({"column": "at", "op": "lt", "value": "2026-01-15T10:00:01Z"}) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "bad",
    [
        {"column": "n", "op": "eq", "value": "1"},
        {"column": "n", "op": "eq", "value": True},
        {"column": "day", "op": "eq", "value": "15/01/2026"},
        {"column": "code", "op": "in", "value": []},
        {"column": "code", "op": "eq", "value": ["I10"]},
        {"column": "x", "op": "is_null", "value": 1},
        {"column": "n", "op": "starts_with", "value": 1},
        {"column": "secret", "op": "eq", "value": "a"},  # masked: not filterable
        {"column": "nope", "op": "eq", "value": "a"},
    ],
)
def test_bad_filters(bad: dict) -> None:
    with pytest.raises(Unprocessable) as refused:
        expression([Filter.model_validate(bad)], SCHEMA, FILTERABLE, MASKED)
    # The message never echoes the value sent.
    assert repr(bad["value"]) not in refused.value.message and "15/01/2026" not in refused.value.message


def test_a_hidden_column_reads_like_one_that_does_not_exist() -> None:
    answers = []
    for column in ("hidden_one", "nope"):
        with pytest.raises(Unprocessable) as refused:
            expression([Filter(column=column, op="eq", value="a")], SCHEMA, FILTERABLE, MASKED)
        answers.append(refused.value.message)
    assert answers[0] == answers[1] and "hidden_one" not in answers[0]


def test_masks() -> None:
    masker = Masker(b"k")
    out = masker.apply(T, ColumnPolicy(masked=("secret", "day", "x", "at"), hidden=("n",)), "g1")
    assert "n" not in out.column_names
    tokens = out["secret"].to_pylist()
    assert tokens[0] == tokens[2] != tokens[1] and tokens[3] is None
    assert all(t.startswith("~") and t not in ("a", "b") for t in tokens[:3])
    assert out["day"].to_pylist() == [dt.date(2026, 1, 1), dt.date(2026, 2, 1), dt.date(2026, 2, 1), None]
    assert out["at"].to_pylist()[0] == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert out["x"].null_count == 4
    # Another grant gets other tokens: masked values do not link across grants.
    other = masker.apply(T, ColumnPolicy(masked=("secret",)), "g2")["secret"].to_pylist()
    assert other[0] != tokens[0]


def test_cursors() -> None:
    cursor = encode_cursor(3, 100, "abc")
    assert decode_cursor(cursor, "abc") == (3, 100)
    for bad, digest in [(cursor, "other"), ("garbage!", "abc"), ("", "abc")]:
        with pytest.raises(BadRequest):
            decode_cursor(bad, digest)


def test_rate_limiter(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path / "rl.db", name="requests", rate=10, burst=3)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a")
    assert 0 < wait <= 0.1
    assert limiter.take("b") == 0.0
    time.sleep(0.15)
    assert limiter.take("a") == 0.0


def test_rate_limits_are_shared_by_every_process_of_an_instance(tmp_path: Path) -> None:
    """Workers are processes: a credential gets the instance's burst, not one per worker."""
    path = tmp_path / "rl.db"
    here = RateLimiter(path, name="requests", rate=0.001, burst=10)
    script = (
        "import sys; from pathlib import Path; from sharing_api.ratelimit import RateLimiter; "
        "r = RateLimiter(Path(sys.argv[1]), name='requests', rate=0.001, burst=10); "
        "print(sum(r.take('cred') == 0.0 for _ in range(8)))"
    )
    other = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True)
    assert other.stdout.strip() == "8", other.stderr
    assert [here.take("cred") == 0.0 for _ in range(3)] == [True, True, False]
    # Another limit in the same file keeps its own buckets; `wait` uses no token.
    failures = RateLimiter(path, name="login_failures", rate=0.001, burst=1)
    assert failures.wait("cred") == 0.0 and failures.wait("cred") == 0.0
    assert failures.take("cred") == 0.0 and failures.wait("cred") > 0


def test_credentials(tmp_path: Path, topology: Topology) -> None:
    store = Identities(Database(tmp_path / "db.sqlite"), topology)
    issued = store.issue("hospital", "zz-c1", days=1)
    principal = store.authenticate(issued.token)
    assert principal.hospital is not None and principal.hospital.id == "zz-c1"
    assert issued.token.split(".")[1] not in (tmp_path / "db.sqlite").read_bytes().decode("latin-1")
    with pytest.raises(NotFound):
        store.issue("hospital", "nowhere", days=1)
    with pytest.raises(Unprocessable):
        store.issue("operator", "Bad Name!", days=1)
    access = store.access_token(issued.token_id, issued.token.split(".")[1], minutes=15)
    assert store.authenticate(access.token).credential_id == issued.token_id
    with pytest.raises(Unauthorized):
        store.access_token(access.token_id, access.token.split(".")[1], minutes=15)  # no chaining
    store.revoke(issued.token_id)
    for token in (issued.token, access.token):
        with pytest.raises(Unauthorized, match="revoked"):
            store.authenticate(token)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # the server runs uvloop
def test_journal_group_commit_and_order(tmp_path: Path, loop: str) -> None:
    journal = Journal(tmp_path / "audit.db")

    async def many() -> list[int]:
        return await asyncio.gather(*(journal.append({"time": time.time(), "n": i}) for i in range(200)))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as runner:
        seqs = runner.run(many())
    assert sorted(seqs) == list(range(1, 201))
    assert journal.commits < 200  # concurrent records shared commits
    reader = JournalReader.open(journal.path)  # as the instance's flusher reads it
    assert reader is not None and reader.id == journal.id
    rows = reader.pending(0, 1000)
    assert [r["n"] for _, r in rows] == [r["n"] for _, r in sorted(rows)]
    by_seq = dict(rows)  # each append was told the seq its own record got
    assert all(by_seq[seq]["n"] == n for n, seq in enumerate(seqs))
    table = to_arrow("api-0", journal.id, rows)
    assert table.num_rows == 200 and set(table["journal"].to_pylist()) == {journal.id}
    reader.trim(150)
    assert [s for s, _ in reader.pending(0, 1000)] == list(range(151, 201))
    reader.close()
    journal.close()
    # Reopened (a restart): the same file id, the sequence goes on.
    again = Journal(tmp_path / "audit.db")
    assert again.id == journal.id and again.append_sync({"time": time.time()}) == 201
    again.close()


def test_a_journal_not_yet_set_up_is_not_read(tmp_path: Path) -> None:
    assert JournalReader.open(tmp_path / "absent.db") is None
    assert not (tmp_path / "absent.db").exists()  # looking did not create it
    (tmp_path / "empty.db").write_bytes(b"")
    assert JournalReader.open(tmp_path / "empty.db") is None


def test_flusher_appends_every_journal_once(tmp_path: Path) -> None:
    """Two workers' journals go to the audit table in one commit with a `txn` each; a flusher that
    died after the commit but before trimming is followed by one that appends nothing again."""
    from deltalake import DeltaTable

    paths = [tmp_path / f"audit-api-0-{slot}.db" for slot in (0, 1)]
    journals = [Journal(p) for p in paths]
    for n in range(30):
        journals[n % 2].append_sync({"time": time.time(), "request_id": f"r{n}", "status": 200})
    store = AuditStore(
        instance="api-0", journals=lambda: paths, table_uri=str(tmp_path / "audit"), storage_options={}
    )
    crashed = AuditFlusher(store, interval=60, batch_rows=1000)
    crashed._journals()  # open the readers, then make trimming "crash"
    for reader in crashed._readers.values():
        reader.trim = lambda upto: None  # type: ignore[method-assign]
    assert crashed.flush_once() == 30
    table = DeltaTable(store.table_uri)
    assert table.version() == 0  # one commit for both journals
    for journal in journals:
        assert table.transaction_version(f"medshare-audit/api-0/{journal.path.stem[-1]}/{journal.id}") == 15

    journals[1].append_sync({"time": time.time(), "request_id": "r30", "status": 200})
    # Read before it is flushed: the table and every journal, each record once.
    seen = read_audit(store, AuditQuery())["request_id"].to_pylist()
    assert sorted(seen) == sorted(f"r{n}" for n in range(31))
    after = AuditFlusher(store, interval=60, batch_rows=1000)
    assert after.flush_once() == 1  # only the new record, though nothing was trimmed
    assert after.flush_once() == 0
    ids = DeltaTable(store.table_uri).to_pyarrow_table(columns=["request_id", "instance"])
    assert sorted(ids["request_id"].to_pylist()) == sorted(f"r{n}" for n in range(31))
    assert set(ids["instance"].to_pylist()) == {"api-0/0", "api-0/1"}
    for journal in journals:
        journal.close()


def test_journal_fails_closed(tmp_path: Path) -> None:
    """A record the journal cannot make durable fails every request of its commit (the
    middleware then answers 503 instead of the data)."""
    journal = Journal(tmp_path / "audit.db")
    refuse = "CREATE TRIGGER refuse BEFORE INSERT ON journal BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    journal._file._conn.execute(refuse)  # as a full or read-only disk would refuse the writer

    async def two() -> list[int | BaseException]:
        return await asyncio.gather(
            *(journal.append({"time": time.time(), "n": i}) for i in range(2)), return_exceptions=True
        )

    failed = asyncio.run(two())
    assert all(isinstance(r, AuditUnavailable) and "disk full" in str(r) for r in failed), failed
    journal._file._conn.execute("DROP TRIGGER refuse")
    assert asyncio.run(journal.append({"time": time.time()})) == 1  # nothing half-written before
    journal.close()


def test_journal_writer_killed(tmp_path: Path) -> None:
    """A writer process that dies fails the requests waiting for it (none is told its record is
    durable); the next record starts another writer, and the sequence goes on."""
    journal = Journal(tmp_path / "audit.db")

    async def scenario() -> tuple[list[int | BaseException], int]:
        assert await journal.append({"time": time.time()}) == 1
        assert journal._writer is not None
        writer = journal._writer[0]
        writer.send_signal(signal.SIGSTOP)  # records wait in its socket ...
        waiting = [asyncio.ensure_future(journal.append({"time": time.time(), "n": i})) for i in range(3)]
        await asyncio.sleep(0.2)
        assert not any(f.done() for f in waiting)
        writer.kill()  # ... and it dies before committing them
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        with pytest.raises(AuditUnavailable, match="another starts in"):  # not a process a request
            await journal.append({"time": time.time()})
        await asyncio.sleep(1.0)
        return outcomes, await journal.append({"time": time.time(), "n": 3})

    outcomes, seq = asyncio.run(scenario())
    assert all(isinstance(o, AuditUnavailable) for o in outcomes), outcomes
    reader = JournalReader.open(journal.path)
    assert reader is not None
    rows = reader.pending(0, 100)
    assert [r.get("n") for _, r in rows] == [None, 3] and rows[-1][0] == seq
    reader.close()
    journal.close()
