"""How hospitals write their per-table extracts: the dialects of the synthetic generator.

A `Dialect` is everything about a file that a reader must cope with — container (CSV text, JSON
Lines, an Excel workbook), text encoding and byte-order mark, line ends, delimiter, header names,
spellings of coded values, date and time layout, line breaks inside quoted fields, the sheet.

    csv                UTF-8, LF, contract column names as headers, ISO dates ('T' timestamps)
    jsonl              one JSON object per line, values as in csv
    csv-gb18030        GB18030, CRLF, the profile's (Chinese) headers and value spellings,
                       timestamps `yyyy-MM-dd HH:mm:ss`
    csv-bom-multiline  UTF-8 with a byte-order mark, CRLF; some free text holds a line break, a
                       comma and a quote (RFC 4180 quoting)
    xlsx               one sheet, header row of contract names, dates and times as Excel date
                       cells, everything else as text cells

A hospital whose profile (platform/sources.yaml) is not `default` writes what its profile says
(`for_profile`). `write_table` returns where each defect-tagged record starts, as a reader numbers
it: a CSV record's row (header = row 1; a record holding a line break is one row, as in a
spreadsheet), a JSON Lines record's line, the sheet row of a workbook.
A malformed-line defect has no form in a workbook: that record is written as it is and reported
in `Written.dropped` instead.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import json
import math
import random
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Literal

from ingestion.defects import DEFECT, MALFORMED_LINE, untag
from ingestion.profiles import DEFAULT, Profile
from lakehouse.contracts import Contract

RawRecord = dict[str, str | None]
Kind = Literal["csv", "jsonl", "xlsx"]
Tagged = tuple[int, tuple[str, str]]  # (line or sheet row, (defect kind, rule))

# Free-text columns that may hold a line break in `csv-bom-multiline` (those a dataset has).
FREE_TEXT = ("address", "department", "drug_name", "study_description", "value_text")
MULTILINE_SHARE = 0.2  # of the records with free text, in a multiline file
_FLUSH_ROWS = 4096


@dataclass(frozen=True, kw_only=True)
class Dialect:
    name: str  # recorded as the file's `format` in the manifest
    kind: Kind
    profile: str = DEFAULT  # the source profile the file is written for
    encoding: str = "utf-8"  # a Python codec; "utf-8-sig" writes a byte-order mark
    newline: str = "\n"
    delimiter: str = ","
    quote: str = '"'
    spelled: bool = False  # headers and coded values as the profile spells them (Chinese)
    # str.format templates over (year, month, day, hour, minute, second) of ISO values.
    date_format: str = "{0}-{1}-{2}"
    timestamp_format: str = "{0}-{1}-{2}T{3}:{4}:{5}"
    multiline: bool = False
    sheet: str = "Sheet1"

    @property
    def extension(self) -> str:
        return self.kind


CSV = Dialect(name="csv", kind="csv")
JSONL = Dialect(name="jsonl", kind="jsonl")
CSV_GB18030 = Dialect(
    name="csv-gb18030",
    kind="csv",
    encoding="gb18030",
    newline="\r\n",
    spelled=True,
    timestamp_format="{0}-{1}-{2} {3}:{4}:{5}",
)
CSV_BOM_MULTILINE = Dialect(
    name="csv-bom-multiline", kind="csv", encoding="utf-8-sig", newline="\r\n", multiline=True
)
XLSX = Dialect(name="xlsx", kind="xlsx")
DIALECTS: dict[str, Dialect] = {d.name: d for d in (CSV, JSONL, CSV_GB18030, CSV_BOM_MULTILINE, XLSX)}
# Every dialect gets a share, so each appears in every city even in a small export.
DEFAULT_SHARES: dict[str, float] = {
    "csv": 0.3,
    "jsonl": 0.2,
    "csv-gb18030": 0.2,
    "csv-bom-multiline": 0.15,
    "xlsx": 0.15,
}
# The dialect each named profile of platform/sources.yaml describes; a profile not listed is
# written as a workbook when it names a sheet, as GB18030 CSV when it declares a GB encoding,
# else as CSV — always with its own delimiter, sheet and first date and time formats.
PROFILE_DIALECTS = {"county-his": "csv-gb18030", "township-sheet": "xlsx", "lis-semicolon": "csv"}
_CODECS = {"utf-8": "utf-8", "utf-8-sig": "utf-8-sig", "gb18030": "gb18030", "gbk": "gbk"}


def parse_shares(text: str) -> dict[str, float]:
    """`csv=0.3,xlsx=0.2` → {"csv": 0.3, "xlsx": 0.2}, checked (see check_shares)."""
    shares: dict[str, float] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"{item!r}: write <dialect>=<share>, e.g. csv=0.3")
        if name in shares:
            raise ValueError(f"dialect {name!r} given twice")
        try:
            shares[name] = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: the share of {name!r} is not a number") from None
    check_shares(shares)
    return shares


def check_shares(shares: Mapping[str, float]) -> None:
    """Raise ValueError unless `shares` are weights (≥ 0, some positive) of known dialects."""
    for name, share in shares.items():
        if name not in DIALECTS:
            raise ValueError(f"unknown dialect {name!r} (known: {', '.join(DIALECTS)})")
        if not math.isfinite(share) or share < 0:
            raise ValueError(f"the share of dialect {name!r} must be a number ≥ 0, not {share}")
    if not any(share > 0 for share in shares.values()):
        raise ValueError("the dialect shares add up to 0: give at least one dialect a positive share")


# --- Spark datetime patterns → templates -------------------------------------------------------
_LETTERS = {"yyyy": "{0}", "MM": "{1}", "dd": "{2}", "HH": "{3}", "mm": "{4}", "ss": "{5}"}
_QUOTED = re.compile(r"'[^']*'")


def keeps_seconds(pattern: str) -> bool:
    return "ss" in _QUOTED.sub("", pattern)


def pattern_template(pattern: str) -> str:
    """A str.format template over (year, month, day, hour, minute, second) that writes what the
    Spark datetime `pattern` parses. Optional sections are written, except those holding
    fractions of a second (our values have none); a mandatory fraction is written as zeros."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "'":
            end = pattern.find("'", i + 1)
            if end < 0:
                raise ValueError(f"unclosed quote in {pattern!r}")
            out.append((pattern[i + 1 : end] or "'").replace("{", "{{").replace("}", "}}"))
            i = end + 1
        elif ch == "[":
            depth, end = 1, i + 1
            while end < len(pattern) and depth:
                depth += {"[": 1, "]": -1}.get(pattern[end], 0)
                end += 1
            if depth:
                raise ValueError(f"unclosed '[' in {pattern!r}")
            section = pattern[i + 1 : end - 1]
            if "S" not in _QUOTED.sub("", section):
                out.append(pattern_template(section))
            i = end
        elif ch.isalpha():
            run = len(pattern[i:]) - len(pattern[i:].lstrip(ch))
            letters = ch * run
            if ch == "S":
                out.append("0" * run)
            elif letters in _LETTERS:
                out.append(_LETTERS[letters])
            else:
                raise ValueError(f"{letters!r} in {pattern!r}: the generator writes {' '.join(_LETTERS)}")
            i += run
        else:
            out.append(ch.replace("{", "{{").replace("}", "}}"))
            i += 1
    return "".join(out)


def for_profile(profile: Profile) -> Dialect:
    """The dialect a hospital with a named profile writes: its delimiter, sheet and encoding, its
    first date format and its first timestamp format that keeps the seconds."""
    base = DIALECTS[
        PROFILE_DIALECTS.get(profile.name)
        or ("xlsx" if profile.sheet else "csv-gb18030" if profile.encoding in ("gb18030", "gbk") else "csv")
    ]
    with_seconds = [f for f in profile.timestamp_formats if keeps_seconds(f)]
    if not with_seconds:
        raise ValueError(
            f"profile {profile.name!r}: no timestamp format keeps the seconds "
            f"({', '.join(profile.timestamp_formats)}); the generator would lose data"
        )
    return replace(
        base,
        profile=profile.name,
        encoding=base.encoding if profile.encoding == "auto" else _CODECS[profile.encoding],
        delimiter=profile.delimiter,
        quote=profile.quote,
        sheet=profile.sheet or base.sheet,
        date_format=pattern_template(profile.date_formats[0]),
        timestamp_format=pattern_template(with_seconds[0]),
    )


def for_file(name: str, profile: Profile) -> Dialect:
    """Dialect `name` for a file read with `profile`: a named profile decides everything (see
    for_profile); the default profile only names the sheet of a workbook."""
    if profile.name != DEFAULT:
        return for_profile(profile)
    dialect = DIALECTS[name]
    return replace(dialect, sheet=profile.sheet) if dialect.kind == "xlsx" and profile.sheet else dialect


def spread(index: int, share: float) -> bool:
    """Whether item `index` (0-based) of a sequence is picked when `share` of the items are,
    evenly spread and the first item picked (so a small sequence still has one)."""
    return math.ceil((index + 1) * share - 1e-9) > math.ceil(index * share - 1e-9)


# --- Values -------------------------------------------------------------------------------------
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2}))?")


def _reformat(template: str, timestamp: bool) -> Callable[[str], str]:
    def convert(value: str) -> str:
        # Written field by field, so an impossible date (02-30) stays impossible in any layout;
        # a value that is no date at all (a wrong_type defect) is written as it is.
        m = _ISO.fullmatch(value)
        if m is None or (timestamp and m.group(4) is None):
            return value
        return template.format(*m.groups())

    return convert


def _spell(spellings: Mapping[str, str]) -> Callable[[str], str]:
    return lambda value: spellings.get(value, value)


def header_names(contract: Contract, profile: Profile) -> list[str]:
    """For each column, the first header the profile maps to it; else the column's own name."""
    first: dict[str, str] = {}
    for header, column in profile.headers.items():
        first.setdefault(column, header)
    return [first.get(c, c) for c in contract.column_names]


def value_spellings(profile: Profile) -> dict[str, dict[str, str]]:
    """column → {contract value: the profile's first spelling of it}."""
    out: dict[str, dict[str, str]] = {}
    for column, spellings in profile.values.items():
        inverse = out.setdefault(column, {})
        for spelled, value in spellings.items():
            inverse.setdefault(value, spelled)
    return out


class _Cells:
    """Turns records into the fields of one dialect's rows."""

    def __init__(self, contract: Contract, dialect: Dialect, profile: Profile | None) -> None:
        self.columns = contract.column_names
        self.types = [c.type for c in contract.columns]
        if dialect.spelled and profile is None:
            raise ValueError(f"dialect {dialect.name!r} spells headers and values: give the profile")
        self.header = list(self.columns)
        spellings: dict[str, dict[str, str]] = {}
        if dialect.spelled and profile is not None:
            self.header, spellings = header_names(contract, profile), value_spellings(profile)
        # A workbook holds dates as date cells: its values stay ISO until they become cells.
        text_dates = dialect.kind != "xlsx"
        converters: list[Callable[[str], str] | None] = []
        for name, kind in zip(self.columns, self.types, strict=True):
            if name in spellings:
                converters.append(_spell(spellings[name]))
            elif kind == "date" and text_dates and dialect.date_format != CSV.date_format:
                converters.append(_reformat(dialect.date_format, timestamp=False))
            elif kind == "timestamp" and text_dates and dialect.timestamp_format != CSV.timestamp_format:
                converters.append(_reformat(dialect.timestamp_format, timestamp=True))
            else:
                converters.append(None)
        self.converters = converters if any(converters) else None

    def fields(self, record: RawRecord) -> list[str]:
        values = ["" if (v := record.get(c)) is None else v for c in self.columns]
        if self.converters is not None:
            for k, convert in enumerate(self.converters):
                if convert is not None and values[k]:
                    values[k] = convert(values[k])
        return values


def multiline_free_text(
    records: Sequence[RawRecord], contract: Contract, rng: random.Random
) -> list[RawRecord]:
    """Records of which some free text (the first and MULTILINE_SHARE of those that have any)
    holds a line break — LF, every third one CRLF — a comma and a quote, as notes typed into a
    HIS do."""
    columns = [c for c in FREE_TEXT if c in contract.column_names]
    out: list[RawRecord] = []
    changed = 0
    for record in records:
        filled = [c for c in columns if record.get(c)]
        if filled and (rng.random() < MULTILINE_SHARE or not changed):
            column = rng.choice(filled)
            sep = "\r\n" if changed % 3 == 2 else "\n"
            record = {**record, column: f'{record[column]}{sep}备注: "复核", 见第{changed % 7 + 2}页'}
            changed += 1
        out.append(record)
    return out


# --- Writers ------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Written:
    rows: int  # records a reader finds (malformed lines included)
    tagged: list[Tagged] = field(default_factory=list)
    # Defects that this dialect cannot hold (a malformed line in a workbook): written as clean
    # records and left out of `tagged`, so the manifest lists only what is in the file.
    dropped: list[tuple[str, str]] = field(default_factory=list)


class _Text:
    """What csv.writer writes to: text kept until flushed as bytes."""

    def __init__(self, out: BinaryIO, encoding: str) -> None:
        self.out = out
        if encoding == "utf-8-sig":
            out.write(codecs.BOM_UTF8)
            encoding = "utf-8"
        self.encoding = encoding
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        if len(self.parts) >= _FLUSH_ROWS:
            self.flush()
        return len(text)

    def flush(self) -> None:
        self.out.write("".join(self.parts).encode(self.encoding))
        self.parts.clear()


def _malformed_json(values: list[str], columns: Sequence[str]) -> str:
    return json.dumps(dict(zip(columns[:3], values[:3], strict=True)), ensure_ascii=False)[:-1] + ', "'


def write_table(
    records: Sequence[RawRecord],
    *,
    contract: Contract,
    dialect: Dialect,
    out: BinaryIO,
    profile: Profile | None = None,
) -> Written:
    """Write `records` (defect-tagged ones included, see ingestion.defects) to `out` in `dialect`;
    `profile` gives the headers and spellings of a `spelled` dialect."""
    cells = _Cells(contract, dialect, profile)
    if dialect.kind == "xlsx":
        return _write_xlsx(records, cells, dialect, out)
    text = _Text(out, dialect.encoding)
    written = Written(rows=len(records))
    writer = csv.writer(
        text, delimiter=dialect.delimiter, quotechar=dialect.quote, lineterminator=dialect.newline
    )
    if dialect.kind == "csv":
        writer.writerow(cells.header)
    columns = cells.columns
    # A record's line is its row as a spreadsheet (and the reader) numbers it: header = 1, the
    # first record 2 — a record holding a line break is still one row. JSON Lines: the line.
    first = 2 if dialect.kind == "csv" else 1
    for index, record in enumerate(records):
        line = first + index
        values = cells.fields(record)
        tagged_as = record.get(DEFECT)
        defect = untag(tagged_as) if tagged_as is not None else None
        if defect is not None:
            written.tagged.append((line, defect))
        if defect is not None and defect[1] == MALFORMED_LINE:
            if dialect.kind == "csv":
                writer.writerow(values[:3])  # too few fields
            else:
                text.write(_malformed_json(values, columns) + dialect.newline)
        elif dialect.kind == "csv":
            writer.writerow(values)
        else:
            row = {c: (v or None) for c, v in zip(columns, values, strict=True)}
            text.write(json.dumps(row, ensure_ascii=False) + dialect.newline)
    text.flush()
    return written


# --- Excel ------------------------------------------------------------------------------------
# The workbook is written as its XML parts, streamed: openpyxl's write-only mode manages about
# 11k rows/s here, this about 100k — the generator runs at 10M rows. Tests read it with openpyxl.
_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_PARTS = {
    "[Content_Types].xml": (
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_CT}.worksheet+xml"/>'
        f'<Override PartName="/xl/styles.xml" ContentType="{_CT}.styles+xml"/>'
        "</Types>"
    ),
    "_rels/.rels": (
        f'<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" '
        f'Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
    ),
    "xl/_rels/workbook.xml.rels": (
        f'<Relationships xmlns="{_PKG_REL}">'
        f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_REL}/styles" Target="styles.xml"/>'
        "</Relationships>"
    ),
    # Cell styles: 0 general, 1 date, 2 date and time, 3 text ('@': IDs and codes stay text).
    "xl/styles.xml": (
        f'<styleSheet xmlns="{_MAIN}">'
        '<numFmts count="2"><numFmt numFmtId="164" formatCode="yyyy-mm-dd"/>'
        '<numFmt numFmtId="165" formatCode="yyyy-mm-dd hh:mm:ss"/></numFmts>'
        '<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
        '<cellXfs count="4"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="49" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        "</cellXfs>"
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
        "</styleSheet>"
    ),
}
_ESCAPE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;"})
_EPOCH = dt.date(1899, 12, 30).toordinal()  # Excel's day 0 (1900 date system)
_FIRST_SERIAL_DAY = dt.date(1900, 3, 1).toordinal()  # serials before it are off by Lotus's leap day
_STYLE = {"date": "1", "timestamp": "2"}


def _column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _text_cell(ref: str, value: str) -> str:
    space = ' xml:space="preserve"' if "\n" in value or value[0] == " " or value[-1] == " " else ""
    return f'<c r="{ref}" t="inlineStr" s="3"><is><t{space}>{value.translate(_ESCAPE)}</t></is></c>'


def _serial(value: str, kind: str) -> str | None:
    """The Excel serial number of an ISO date or timestamp; None when it is not a valid one."""
    try:
        if kind == "date":
            day, seconds = dt.date.fromisoformat(value).toordinal(), 0.0
        else:
            moment = dt.datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                return None
            day = moment.toordinal()
            seconds = moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6
    except ValueError:
        return None
    if day < _FIRST_SERIAL_DAY:
        return None
    return str(day - _EPOCH) if kind == "date" else repr(day - _EPOCH + seconds / 86400)


def _write_xlsx(records: Sequence[RawRecord], cells: _Cells, dialect: Dialect, out: BinaryIO) -> Written:
    written = Written(rows=len(records))
    letters = [_column_letter(k) for k in range(len(cells.columns))]
    kinds = [t if t in _STYLE else None for t in cells.types]
    last = f"{letters[-1]}{len(records) + 1}"
    workbook = (
        f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets>'
        f'<sheet name="{dialect.sheet.translate(_ESCAPE)}" sheetId="1" r:id="rId1"/></sheets></workbook>'
    )
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as book:
        for name, part in (*_PARTS.items(), ("xl/workbook.xml", workbook)):
            book.writestr(name, _XML + part)
        with book.open("xl/worksheets/sheet1.xml", "w") as sheet:
            header = "".join(_text_cell(f"{c}1", h) for c, h in zip(letters, cells.header, strict=True))
            start = f'<worksheet xmlns="{_MAIN}"><dimension ref="A1:{last}"/><sheetData>'
            sheet.write(f'{_XML}{start}<row r="1">{header}</row>'.encode())
            parts: list[str] = []
            for number, record in enumerate(records, start=2):
                tagged_as = record.get(DEFECT)
                if tagged_as is not None:
                    defect = untag(tagged_as)
                    if defect[1] == MALFORMED_LINE:
                        written.dropped.append(defect)  # a sheet row has no malformed form
                    else:
                        written.tagged.append((number, defect))
                row = [f'<row r="{number}">']
                for letter, kind, value in zip(letters, kinds, cells.fields(record), strict=True):
                    if not value:
                        continue
                    serial = None if kind is None else _serial(value, kind)
                    if serial is None:  # text, or an impossible date: as written
                        row.append(_text_cell(f"{letter}{number}", value))
                    else:
                        row.append(f'<c r="{letter}{number}" s="{_STYLE[str(kind)]}"><v>{serial}</v></c>')
                row.append("</row>")
                parts.append("".join(row))
                if len(parts) >= _FLUSH_ROWS:
                    sheet.write("".join(parts).encode())
                    parts.clear()
            sheet.write(("".join(parts) + "</sheetData></worksheet>").encode())
    return written
