"""Per-table extracts — CSV (RFC 4180) and JSON Lines — read as a stream of record parts.

CSV: the first record is the header; its names are matched to contract columns through the
file's profile (Chinese headers included). A record may span lines (a quoted field holding a line
break), so records are counted, not lines: a record's `line` is its row as a spreadsheet numbers
it (header = 1, first record = 2; blank lines are not rows); for a file without line breaks in
fields, that is its line. JSON Lines: the line. A record that cannot be read — the wrong number of
fields, invalid JSON, bytes not valid in the file's encoding — is kept with its text and a reason
(`BadRecord`) and quarantined later; the records after it are read as usual. A file whose header
lacks a required column cannot be read at all: `FileProblem`, naming what was found.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO

from ingestion.profiles import Profile
from ingestion.sources.text import REPLACEMENT, UTF8, decode_errors, read_head, undecodable

RawRecord = dict[str, str | None]

MALFORMED = "malformed_line"
UNDECODABLE = "undecodable"
CHUNK_ROWS = 8192
BLOCK_BYTES = 4 << 20  # pyarrow's CSV block: records are parsed (and memory held) this much at a time
RAW_LIMIT = 65536  # characters of a bad record's text kept in quarantine (the file stays in landing)


class FileProblem(ValueError):
    """The file cannot be read as an extract of its dataset; the message says why."""


@dataclass(frozen=True)
class BadRecord:
    line: int
    rule: str
    reason: str
    raw: str


@dataclass
class Chunk:
    """Up to CHUNK_ROWS records of one file. `rows[i][k]` is the value of `columns[k]` ("" when
    empty); `lines[i]` the line where row i starts."""

    columns: tuple[str, ...]
    rows: list[list[str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows) + len(self.bad)

    def part(self) -> Part:
        import pyarrow as pa
        import pyarrow.compute as pc

        empty = pa.scalar(None, pa.string())
        values: dict[str, Any] = {c: pa.array([], pa.string()) for c in self.columns}
        if self.rows:
            for name, column in zip(self.columns, zip(*self.rows, strict=True), strict=True):
                text = pa.array(column, pa.string())
                values[name] = pc.if_else(pc.equal(text, ""), empty, text)
        return Part(values, pa.array(self.lines, pa.int64()), self.bad)


@dataclass
class Part:
    """Records of one file as Arrow arrays: `values[column]` (text, null when empty) and `lines`
    (where each record starts), plus the records that could not be read."""

    values: dict[str, Any]  # column → pyarrow StringArray
    lines: Any  # pyarrow Int64Array
    bad: list[BadRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lines) + len(self.bad)


@dataclass(frozen=True)
class Header:
    names: tuple[str, ...]  # as written
    positions: tuple[int, ...]  # fields that hold a contract column
    columns: tuple[str, ...]  # the contract column of each of those fields


def map_header(
    names: Sequence[str], *, profile: Profile, columns: Sequence[str], required: Sequence[str]
) -> Header:
    found: dict[str, int] = {}
    for position, name in enumerate(names):
        column = profile.column_for(name, columns)
        if column is None:
            continue
        if column in found:
            first = names[found[column]].strip()
            raise FileProblem(f"headers {first!r} and {name.strip()!r} both name column {column!r}")
        found[column] = position
    missing = [c for c in required if c not in found]
    if missing:
        shown_names = ", ".join(repr(n.strip().lstrip("\ufeff")) for n in names[:12])
        more = f" (+{len(names) - 12} more)" if len(names) > 12 else ""
        hint = (
            f"; the header was split on {profile.delimiter!r} (profile {profile.name!r}) into a single"
            " field — is that the file's delimiter?"
            if len(names) == 1
            else f"; map the file's names to these columns in platform/sources.yaml"
            f" (profile {profile.name!r})"
        )
        raise FileProblem(
            f"header lacks required column(s) {', '.join(missing)}: it has {shown_names}{more}{hint}"
        )
    ordered = sorted(found.items(), key=lambda kv: kv[1])
    return Header(
        names=tuple(names),
        positions=tuple(p for _, p in ordered),
        columns=tuple(c for c, _ in ordered),
    )


def _raw(text: str) -> str:
    if len(text) <= RAW_LIMIT:
        return text
    return text[:RAW_LIMIT] + f"… [{len(text) - RAW_LIMIT} more characters]"


class _Prefixed(io.RawIOBase):
    """`head` (bytes already read from `rest`), then the rest."""

    def __init__(self, head: bytes, rest: BinaryIO | io.RawIOBase) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def read_csv(
    stream: BinaryIO | io.RawIOBase,
    *,
    profile: Profile,
    columns: Sequence[str],
    required: Sequence[str],
    encoding: str,
) -> Iterator[Part]:
    """Parts of a CSV file given as UTF-8 bytes (a text.Utf8Stream), parsed by pyarrow's
    streaming reader (RFC 4180: quoted delimiters, doubled quotes, line breaks in quoted fields,
    CRLF). Raises FileProblem, before any part, when the header cannot be used."""
    errors_before = decode_errors()
    head = read_head(stream)
    reader = csv.reader(
        io.StringIO(head.decode(UTF8, "replace")),
        delimiter=profile.delimiter,
        quotechar=profile.quote,
        strict=True,
    )
    try:
        names = next(reader)
    except StopIteration:
        raise FileProblem("empty file") from None
    except csv.Error as exc:
        raise FileProblem(f"the header cannot be read as CSV: {exc}") from None
    if undecodable("".join(names)):
        raise FileProblem(f"the header has bytes that are not valid {encoding}: {_raw(','.join(names))!r}")
    header = map_header(names, profile=profile, columns=columns, required=required)
    return _parts(_Prefixed(head, stream), header, profile, encoding, errors_before)


def _parts(
    stream: io.RawIOBase, header: Header, profile: Profile, encoding: str, errors_before: int
) -> Iterator[Part]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    width = len(header.names)
    fields = [f"f{i}" for i in range(width)]
    wanted = [fields[p] for p in header.positions]
    invalid: list[BadRecord] = []

    def on_invalid(row: Any) -> str:
        # The header is row 1, the first record row 2 — as a spreadsheet numbers them.
        reason = f"{MALFORMED}: {row.actual_columns} fields, header has {row.expected_columns}"
        invalid.append(BadRecord(int(row.number), MALFORMED, reason, _raw(row.text)))
        return "skip"

    batches = pcsv.open_csv(
        io.BufferedReader(stream, buffer_size=1 << 20),
        read_options=pcsv.ReadOptions(
            use_threads=False, block_size=BLOCK_BYTES, skip_rows=1, column_names=fields
        ),
        parse_options=pcsv.ParseOptions(
            delimiter=profile.delimiter,
            quote_char=profile.quote,
            double_quote=True,
            newlines_in_values=True,
            ignore_empty_lines=True,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pcsv.ConvertOptions(
            column_types={f: pa.string() for f in wanted},
            include_columns=wanted,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            null_values=[""],
        ),
    )
    next_row = 2
    while True:
        try:
            batch = batches.read_next_batch()
        except StopIteration:
            if invalid:  # bad records after the last batch (or in a file of bad records only)
                yield Part(
                    {c: pa.array([], pa.string()) for c in header.columns}, pa.array([], pa.int64()), invalid
                )
            break
        except pa.ArrowInvalid as exc:
            # What is left cannot be split into records (e.g. a quote never closed): it is one
            # bad record, and the file in the landing bucket keeps its text.
            reason = f"{MALFORMED}: the rest of the file cannot be read as CSV records ({exc})"
            invalid.append(BadRecord(next_row, MALFORMED, reason, ""))
            yield Part(
                {c: pa.array([], pa.string()) for c in header.columns}, pa.array([], pa.int64()), invalid
            )
            return
        skipped = {b.line for b in invalid}
        count = batch.num_rows + len(skipped)
        lines = [n for n in range(next_row, next_row + count) if n not in skipped] if skipped else None
        part = Part(
            {c: batch.column(f) for c, f in zip(header.columns, wanted, strict=True)},
            pa.array(lines if lines is not None else range(next_row, next_row + count), pa.int64()),
            invalid,
        )
        invalid = []
        next_row += count
        yield _checked(part, encoding) if decode_errors() != errors_before else part


def _checked(part: Part, encoding: str) -> Part:
    """Records holding bytes that were not valid in the file's encoding (U+FFFD after
    transcoding) become bad records; searched only in a file whose decoding met such bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not part.values or not len(part.lines):
        return part
    hits = [pc.fill_null(pc.match_substring(a, REPLACEMENT), False) for a in part.values.values()]
    mask = hits[0]
    for more in hits[1:]:
        mask = pc.or_(mask, more)
    if not pc.any(mask).as_py():
        return part
    rows = pa.table(part.values).filter(mask).to_pylist()
    lines = part.lines.filter(mask).to_pylist()
    reason = f"{UNDECODABLE}: bytes that are not valid {encoding} (shown as U+FFFD)"
    bad = [
        BadRecord(n, UNDECODABLE, reason, _raw(json.dumps(r, ensure_ascii=False)))
        for n, r in zip(lines, rows, strict=True)
    ]
    keep = pc.invert(mask)
    return Part({c: a.filter(keep) for c, a in part.values.items()}, part.lines.filter(keep), part.bad + bad)


def _scalar(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(type(value).__name__)


def read_jsonl(
    text: TextIO,
    *,
    profile: Profile,
    columns: Sequence[str],
    encoding: str,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[Chunk]:
    """Chunks of records, one JSON object per line; keys are matched to columns like CSV headers."""
    names: dict[str, int | None] = {}  # key as written → position in `columns` (None: no column)

    def position(key: str) -> int | None:
        if key not in names:
            column = profile.column_for(key, columns)
            names[key] = None if column is None else list(columns).index(column)
        return names[key]

    chunk = Chunk(tuple(columns))
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        row, problem = _json_row(line, len(columns), position, encoding)
        if row is None:
            rule = UNDECODABLE if problem.startswith(UNDECODABLE) else MALFORMED
            chunk.bad.append(BadRecord(number, rule, problem, _raw(line)))
        else:
            chunk.rows.append(row)
            chunk.lines.append(number)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = Chunk(tuple(columns))
    if len(chunk):
        yield chunk


def _json_row(
    line: str, width: int, position: Callable[[str], int | None], encoding: str
) -> tuple[list[str] | None, str]:
    """The record's values by column position, or None and why the line is not a record."""
    if undecodable(line):
        return None, f"{UNDECODABLE}: bytes that are not valid {encoding} (shown as U+FFFD)"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"{MALFORMED}: invalid JSON ({exc.msg})"
    if not isinstance(obj, dict):
        return None, f"{MALFORMED}: not a JSON object"
    row = [""] * width
    for key, value in obj.items():
        at = position(key)
        if at is None:
            continue
        try:
            row[at] = _scalar(value) or ""
        except TypeError as exc:
            return None, f"{MALFORMED}: {key} is a {exc}, not a value"
    return row, ""


# --- Writers (the generator's plain dialects and the tests') --------------------------------------
def write_csv(records: Sequence[RawRecord], *, columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow(["" if record.get(c) is None else record[c] for c in columns])
    return buf.getvalue().encode()


def write_jsonl(records: Sequence[RawRecord], *, columns: Sequence[str]) -> bytes:
    lines = (json.dumps({c: r.get(c) for c in columns}, ensure_ascii=False) for r in records)
    return ("\n".join(lines) + "\n").encode()
