"""Excel exports (.xlsx, .xls): one sheet — the profile's, else the first —
read row by row as chunks, by calamine (python-calamine: a Rust reader, ~14× openpyxl's read-only
mode here; it holds one sheet's cells, which Excel bounds at 1,048,576 rows).

The first non-empty row is the header, matched to contract columns like a CSV header. Cells
are turned into the text an export would have held: dates and times as ISO text (a date cell
in a timestamp column gets midnight), whole numbers without a decimal point, other numbers as
Python writes them. A resident ID typed as a number has lost its last digits to Excel's 15-digit
precision: it arrives as such and is quarantined by the resident-ID rule, not repaired.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ingestion.profiles import Profile
from ingestion.sources.tabular import CHUNK_ROWS, Chunk, FileProblem, map_header


def _cell_text(value: object, column_type: str) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        if column_type == "date":
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="microseconds" if value.microsecond else "seconds")
    if isinstance(value, dt.date):
        return value.isoformat() if column_type == "date" else f"{value.isoformat()} 00:00:00"
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):  # a duration cell
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def read_xlsx(
    path: Path,
    *,
    profile: Profile,
    columns: Sequence[str],
    required: Sequence[str],
    types: Mapping[str, str],
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[Chunk]:
    """Chunks of the sheet's records; `line` is the sheet's row number. Raises FileProblem when
    the file is no workbook, lacks the sheet, or its header lacks a required column."""
    from python_calamine import CalamineError, CalamineWorkbook

    try:
        book = CalamineWorkbook.from_path(str(path))
    except (CalamineError, OSError, ValueError) as exc:
        raise FileProblem(f"not an Excel workbook (.xlsx, .xls): {exc}") from None
    if profile.sheet is not None and profile.sheet not in book.sheet_names:
        names = ", ".join(book.sheet_names)
        raise FileProblem(f"no sheet {profile.sheet!r} (profile {profile.name!r}); the workbook has {names}")
    try:
        sheet = (
            book.get_sheet_by_name(profile.sheet) if profile.sheet is not None else book.get_sheet_by_index(0)
        )
    except (CalamineError, IndexError, ValueError) as exc:
        raise FileProblem(f"the sheet cannot be read: {exc}") from None
    # iter_rows starts at the sheet's first row (row 1), so a row's number is its position.
    rows: Iterator[tuple[int, Sequence[object]]] = enumerate(sheet.iter_rows(), start=1)
    header = None
    for _, values in rows:
        if any(v not in (None, "") for v in values):
            header = map_header(
                [_cell_text(v, "string") for v in values], profile=profile, columns=columns, required=required
            )
            break
    if header is None:
        raise FileProblem(f"sheet {sheet.name!r} is empty")
    return _rows(rows, header.positions, header.columns, types, chunk_rows)


def _rows(
    rows: Iterator[tuple[int, Sequence[object]]],
    positions: tuple[int, ...],
    columns: tuple[str, ...],
    types: Mapping[str, str],
    chunk_rows: int,
) -> Iterator[Chunk]:
    kinds = [types.get(c, "string") for c in columns]
    chunk = Chunk(columns)
    for number, values in rows:
        if all(v in (None, "") for v in values):
            continue  # a blank row
        width = len(values)
        chunk.rows.append(
            [_cell_text(values[p], k) if p < width else "" for p, k in zip(positions, kinds, strict=True)]
        )
        chunk.lines.append(number)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = Chunk(columns)
    if len(chunk):
        yield chunk
