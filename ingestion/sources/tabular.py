"""CSV and JSON Lines extracts: one file per dataset, a header row (CSV) or one object per line.

A line that cannot be parsed — wrong number of fields, invalid JSON, not an object, a value that
is not a scalar — becomes a record with `_error` set and the raw line kept, so the job can
quarantine it under `malformed_line` instead of losing it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence

RawRecord = dict[str, str | None]

MALFORMED = "malformed_line"


def _text(content: bytes) -> str:
    # utf-8-sig: exports from Windows tools often start with a byte-order mark.
    return content.decode("utf-8-sig")


def _scalar(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(type(value).__name__)


def read_csv(content: bytes, *, columns: Sequence[str]) -> Iterator[RawRecord]:
    """Records keyed by header name; header columns outside `columns` are ignored, missing ones
    are None. Each record carries `_line` (1-based line number) and, when unparseable, `_error`
    and `_raw`."""
    text = _text(content)
    lines = text.splitlines()
    if not lines:
        return
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    wanted = [c for c in header if c in columns]
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            yield {"_line": str(number), "_error": f"{MALFORMED}: {exc}", "_raw": line}
            continue
        if len(fields) != len(header):
            yield {
                "_line": str(number),
                "_error": f"{MALFORMED}: {len(fields)} fields, header has {len(header)}",
                "_raw": line,
            }
            continue
        record: RawRecord = {c: None for c in columns}
        for name, value in zip(header, fields, strict=True):
            if name in wanted:
                record[name] = value if value != "" else None
        record["_line"] = str(number)
        yield record


def read_jsonl(content: bytes, *, columns: Sequence[str]) -> Iterator[RawRecord]:
    for number, line in enumerate(_text(content).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield {
                "_line": str(number),
                "_error": f"{MALFORMED}: invalid JSON ({exc.msg})",
                "_raw": line,
            }
            continue
        if not isinstance(obj, dict):
            yield {"_line": str(number), "_error": f"{MALFORMED}: not a JSON object", "_raw": line}
            continue
        record: RawRecord = {}
        try:
            for name in columns:
                record[name] = _scalar(obj.get(name))
        except TypeError as exc:
            yield {
                "_line": str(number),
                "_error": f"{MALFORMED}: {name} is a {exc}, not a value",
                "_raw": line,
            }
            continue
        record["_line"] = str(number)
        yield record


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
