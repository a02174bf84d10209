"""Dialects of the synthetic exports, read back with independent means — Python's csv module with
the file's encoding and delimiter, json, openpyxl — to the exact records written; the byte-level
properties of each dialect; and every manifest defect line pointing at the record it names.

How each (format, profile) is to be read is written down here from the task and from
platform/sources.yaml (loaded with yaml), not taken from ingestion.dialects."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl
import pydicom
import pytest
import yaml

from ingestion.codes import code_set
from ingestion.defects import DEFECT, DefectRates, inject, untag
from ingestion.dialects import (
    CSV,
    CSV_BOM_MULTILINE,
    CSV_GB18030,
    DIALECTS,
    JSONL,
    Dialect,
    for_file,
    for_profile,
    multiline_free_text,
    parse_shares,
    pattern_template,
    write_table,
)
from ingestion.generate import GenerateOptions, Manifest, generate, plan_dialects
from ingestion.generate_media import CROSSCHECK, media_hospital
from ingestion.profiles import SourceProfiles, load_profiles
from ingestion.synthetic import Window, generate_batches
from lakehouse.contracts import Contract, load_contracts
from lakehouse.topology import Topology

pytestmark = pytest.mark.unit

PLATFORM = Path(__file__).resolve().parents[2] / "platform"
SOURCES = yaml.safe_load((PLATFORM / "sources.yaml").read_text(encoding="utf-8"))
HEADER_TO_COLUMN: dict[str, str] = SOURCES["default"]["headers"]
SPELLINGS: dict[str, dict[str, str]] = SOURCES["default"]["values"]  # column → {spelling: value}

ISO_DATE = r"(\d{4})-(\d{2})-(\d{2})"
SLASH_DATE = r"(\d{4})/(\d{2})/(\d{2})"
TIME = r"(\d{2}):(\d{2}):(\d{2})"


@dataclass(frozen=True)
class Spec:
    """How a text file of a (format, profile) is read."""

    encoding: str
    delimiter: str = ","
    bom: bool = False
    crlf: bool = False
    chinese: bool = False  # headers and coded values as sources.yaml spells them
    date: str = ISO_DATE
    timestamp: str = f"{ISO_DATE}T{TIME}"
    jsonl: bool = False


SPECS = {
    ("csv", "default"): Spec(encoding="utf-8"),
    ("jsonl", "default"): Spec(encoding="utf-8", jsonl=True),
    ("csv-gb18030", "default"): Spec(
        encoding="gb18030", crlf=True, chinese=True, timestamp=f"{ISO_DATE} {TIME}"
    ),
    ("csv-bom-multiline", "default"): Spec(encoding="utf-8", bom=True, crlf=True),
    ("csv-gb18030", "county-his"): Spec(
        encoding="gb18030", crlf=True, chinese=True, date=SLASH_DATE, timestamp=f"{SLASH_DATE} {TIME}"
    ),
    ("csv", "lis-semicolon"): Spec(encoding="utf-8", delimiter=";", timestamp=f"{ISO_DATE} {TIME}"),
}
PROFILE_FORMATS = {"county-his": "csv-gb18030", "township-sheet": "xlsx", "lis-semicolon": "csv"}


Records = dict[str, list[dict[str, str | None]]]
Export = tuple[Path, "Manifest"]


@dataclass
class Row:
    line: int  # the record's row (header = 1; a record with a line break is one row), or sheet row
    values: dict[str, str] | None  # canonical values; None when the line is malformed
    fields: list[object]  # as read


# --- Independent readers ------------------------------------------------------------------------
def chinese_header(column: str) -> str:
    return next((h for h, c in HEADER_TO_COLUMN.items() if c == column), column)


def canonical(column: str, value: str, kind: str, spec: Spec) -> str:
    """The value as the generator's records hold it (ISO dates, contract codes)."""
    if spec.chinese and column in SPELLINGS:
        return SPELLINGS[column].get(value, value)
    pattern = spec.date if kind == "date" else spec.timestamp if kind == "timestamp" else None
    m = re.fullmatch(pattern, value) if pattern else None
    if m is None:
        return value  # not a date (a wrong_type defect): as written
    y, mo, d, *time = m.groups()
    return f"{y}-{mo}-{d}" + (f"T{time[0]}:{time[1]}:{time[2]}" if time else "")


def read_text(content: bytes, spec: Spec, contract: Contract) -> list[Row]:
    text = content.decode(spec.encoding)
    assert text.startswith("\ufeff") == spec.bom
    text = text.removeprefix("\ufeff")
    types = {c.name: c.type for c in contract.columns}
    rows: list[Row] = []
    if spec.jsonl:
        for number, text_line in enumerate(text.split("\n"), start=1):
            if not text_line:
                continue
            try:
                obj = json.loads(text_line)
            except json.JSONDecodeError:
                rows.append(Row(number, None, [text_line]))
                continue
            rows.append(Row(number, {c: obj[c] or "" for c in contract.column_names}, [obj]))
        return rows
    # Records are numbered as rows, as a spreadsheet shows them: the header is row 1.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=spec.delimiter)
    header = next(reader)
    expected = [chinese_header(c) if spec.chinese else c for c in contract.column_names]
    assert header == expected
    for line, fields in enumerate(reader, start=2):
        if len(fields) != len(header):
            rows.append(Row(line, None, list(fields)))
            continue
        values = {
            c: canonical(c, v, types[c], spec) for c, v in zip(contract.column_names, fields, strict=True)
        }
        rows.append(Row(line, values, list(fields)))
    return rows


def cell_text(value: object, kind: str) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if kind == "date" else value.isoformat(timespec="seconds")
    assert isinstance(value, str), value
    return value


def read_xlsx(content: bytes, sheet: str, contract: Contract) -> list[Row]:
    book = openpyxl.load_workbook(io.BytesIO(content))
    assert book.sheetnames == [sheet]
    rows = list(book[sheet].iter_rows())
    assert [c.value for c in rows[0]] == list(contract.column_names)
    kinds = [c.type for c in contract.columns]
    out = [
        Row(
            cells[0].row,
            {
                c.name: cell_text(cell.value, k)
                for c, cell, k in zip(contract.columns, cells, kinds, strict=True)
            },
            list(cells),
        )
        for cells in rows[1:]
    ]
    # The read-only mode (what an ingestion reader uses) sees the same values.
    fast = openpyxl.load_workbook(io.BytesIO(content), read_only=True)
    assert [list(r) for r in fast[sheet].iter_rows(values_only=True)] == [
        [c.value for c in cells] for cells in rows
    ]
    fast.close()
    return out


def read_any(path: Path, info: dict[str, object], contract: Contract) -> list[Row]:
    if info["format"] == "xlsx":
        return read_xlsx(path.read_bytes(), str(info["sheet"]), contract)
    return read_text(path.read_bytes(), SPECS[str(info["format"]), str(info["profile"])], contract)


# --- What a defect looks like in the record read ------------------------------------------------
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def valid_resident_id(value: str) -> bool:
    if not re.fullmatch(r"\d{17}[\dX]", value):
        return False
    return "10X98765432"[sum(int(a) * w for a, w in zip(value, _WEIGHTS, strict=False)) % 11] == value[17]


def exhibits(kind: str, row: Row, before: list[Row], contract: Contract) -> bool:
    if kind in ("malformed_line", "truncated_file"):
        return row.values is None
    v = row.values
    if v is None:
        return False
    times = [v[c.name] for c in contract.columns if c.type in ("date", "timestamp")]
    if kind == "bad_check_digit":
        return not valid_resident_id(v["resident_id"])
    if kind == "id_mismatch":
        return ("M" if int(v["resident_id"][16]) % 2 else "F") != v["sex"]
    if kind == "future_date":
        return any(t.startswith("2031-") for t in times)
    if kind == "impossible_date":
        return any(t[4:10] == "-02-30" for t in times)
    if kind == "unknown_code":
        rule = next(r for r in contract.rules if r.kind == "code_in")
        assert rule.column and rule.code_list
        return v[rule.column] not in code_set(rule.code_list)
    if kind == "missing_required":
        return any(v[c.name] == "" for c in contract.columns if c.required)
    if kind == "wrong_type":
        return any(x in ("n/a", "yesterday") for x in v.values())
    if kind == "exact_duplicate":
        return any(r.values == v for r in before)
    if kind == "near_duplicate":
        return any(x.endswith("(corrected)") for x in v.values())
    raise AssertionError(f"unknown defect kind {kind}")


# Kinds nothing else produces: the rows showing them are exactly the rows the manifest names.
EXCLUSIVE = {
    "future_date",
    "impossible_date",
    "wrong_type",
    "near_duplicate",
    "malformed_line",
}


# --- Fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def contracts() -> dict[str, Contract]:
    return load_contracts(PLATFORM)


@pytest.fixture(scope="module")
def profiles(topology: Topology, contracts: dict[str, Contract]) -> SourceProfiles:
    return load_profiles(PLATFORM, topology, contracts)


@pytest.fixture(scope="module")
def records(topology: Topology) -> Records:
    """Synthetic records of every dataset, from every hospital."""
    batch = next(
        generate_batches(
            topology,
            seed=5,
            patients=150,
            cities=list(topology.cities),
            window=Window(start=dt.date(2025, 1, 1), end=dt.date(2026, 10, 31)),
        )
    )
    out: dict[str, list[dict[str, str | None]]] = {}
    for datasets in batch.values():
        for dataset, rows in datasets.items():
            out.setdefault(dataset, []).extend(rows)
    return out


def injected(records: Records, contract: Contract, dialect: Dialect) -> list[dict[str, str | None]]:
    rows = records[contract.name]
    if dialect.multiline:
        rows = multiline_free_text(rows, contract, random.Random(1))
    return inject(rows, contract, DefectRates().scaled(4), random.Random(2))


TEXT_DIALECTS = [
    (CSV, "default"),
    (JSONL, "default"),
    (CSV_GB18030, "default"),
    (CSV_BOM_MULTILINE, "default"),
    (None, "county-his"),
    (None, "lis-semicolon"),
]


def _dialect(dialect: Dialect | None, profile: str, profiles: SourceProfiles) -> Dialect:
    return dialect if dialect is not None else for_profile(profiles.profile(profile))


# --- Writers, one dialect at a time ---------------------------------------------------------------
@pytest.mark.parametrize(("dialect", "profile"), TEXT_DIALECTS, ids=lambda x: getattr(x, "name", x))
def test_text_dialects_read_back_to_the_records_written(
    dialect: Dialect | None,
    profile: str,
    profiles: SourceProfiles,
    records: Records,
    contracts: dict[str, Contract],
) -> None:
    dialect = _dialect(dialect, profile, profiles)
    spec = SPECS[dialect.name, profile]
    for name, contract in contracts.items():
        rows_in = injected(records, contract, dialect)
        out = io.BytesIO()
        written = write_table(
            rows_in, contract=contract, dialect=dialect, profile=profiles.profile(profile), out=out
        )
        content = out.getvalue()
        rows = read_text(content, spec, contract)
        assert written.rows == len(rows) == len(rows_in), name
        tagged: list[tuple[int, tuple[str, str]]] = []
        for row, record in zip(rows, rows_in, strict=True):
            defect = untag(str(record[DEFECT])) if DEFECT in record else None
            if defect is not None:
                tagged.append((row.line, defect))
            if defect is not None and defect[0] == "malformed_line":
                assert row.values is None, (name, row)
                continue
            assert row.values == {c: record[c] or "" for c in contract.column_names}, (name, row.line)
            if defect is None and not spec.jsonl:
                # Written in the dialect's own layout, not left canonical.
                for column, value in zip(contract.columns, row.fields, strict=True):
                    assert isinstance(value, str)
                    if value and column.type in ("date", "timestamp"):
                        assert re.fullmatch(spec.date if column.type == "date" else spec.timestamp, value)
                    if value and spec.chinese and column.name in SPELLINGS:
                        assert value in SPELLINGS[column.name], (column.name, value)
        assert written.tagged == tagged, name
        assert tagged, name


def test_gb18030_bytes_crlf_and_chinese_headers(
    profiles: SourceProfiles, records: Records, contracts: dict[str, Contract]
) -> None:
    contract = contracts["patients"]
    out = io.BytesIO()
    write_table(
        injected(records, contract, CSV_GB18030),
        contract=contract,
        dialect=CSV_GB18030,
        profile=profiles.default,
        out=out,
    )
    content = out.getvalue()
    with pytest.raises(UnicodeDecodeError):
        content.decode("utf-8")
    assert content.startswith("医院编码,病案号,身份证号,姓名,性别,出生日期".encode("gb18030"))
    assert content.count(b"\n") == content.count(b"\r\n") > 10 and content.endswith(b"\r\n")
    assert "男".encode("gb18030") in content and b",M," not in content


def test_bom_multiline_quotes_line_breaks_commas_and_quotes(
    records: Records, contracts: dict[str, Contract]
) -> None:
    for name in ("patients", "encounters", "medications", "imaging_studies"):
        contract = contracts[name]
        out = io.BytesIO()
        rows_in = injected(records, contract, CSV_BOM_MULTILINE)
        write_table(rows_in, contract=contract, dialect=CSV_BOM_MULTILINE, out=out)
        content = out.getvalue()
        assert content.startswith(codecs.BOM_UTF8 + b"hospital_id,")
        assert content.split(b"\r\n")[0] == codecs.BOM_UTF8 + ",".join(contract.column_names).encode()
        rows = read_text(content, SPECS["csv-bom-multiline", "default"], contract)
        values = [v for r in rows if r.values for v in r.values.values()]
        broken = [v for v in values if "\n" in v]
        assert broken and any("\r\n" in v for v in broken), name
        assert any("," in v and '"' in v for v in broken), name
        assert b'""' in content  # a quote inside a field, doubled
        # Records span lines, yet each is one row: header = 1, records 2, 3, …
        assert [r.line for r in rows] == list(range(2, len(rows) + 2)), name
        assert content.count(b"\n") > len(rows) + 1


def test_plain_csv_has_no_bom_and_lf_only(records: Records, contracts: dict[str, Contract]) -> None:
    contract = contracts["encounters"]
    out = io.BytesIO()
    write_table(injected(records, contract, CSV), contract=contract, dialect=CSV, out=out)
    content = out.getvalue()
    assert b"\r" not in content and not content.startswith(codecs.BOM_UTF8)
    assert content.decode("utf-8").startswith(",".join(contract.column_names) + "\n")


def test_named_profiles_layouts(
    profiles: SourceProfiles, records: Records, contracts: dict[str, Contract]
) -> None:
    county = for_profile(profiles.profile("county-his"))
    contract = contracts["medications"]
    out = io.BytesIO()
    write_table(
        [r for r in records["medications"] if r["end_date"]][:5],
        contract=contract,
        dialect=county,
        profile=profiles.profile("county-his"),
        out=out,
    )
    line = out.getvalue().decode("gb18030").split("\r\n")[1]
    assert re.search(r",\d{4}/\d{2}/\d{2},\d{4}/\d{2}/\d{2}$", line), line
    lis = for_profile(profiles.profile("lis-semicolon"))
    out = io.BytesIO()
    write_table(records["lab_results"][:3], contract=contracts["lab_results"], dialect=lis, out=out)
    first = out.getvalue().decode("utf-8").split("\n")[1]
    assert first.count(";") == len(contracts["lab_results"].column_names) - 1
    assert re.search(r";\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", first), first


@pytest.mark.parametrize("profile", ["default", "township-sheet"])
def test_xlsx_reads_back_with_typed_cells(
    profile: str, profiles: SourceProfiles, records: Records, contracts: dict[str, Contract]
) -> None:
    dialect = for_file("xlsx", profiles.profile(profile))
    sheet = "Sheet1" if profile == "default" else SOURCES["profiles"]["township-sheet"]["sheet"]
    assert dialect.sheet == sheet
    for name, contract in contracts.items():
        rows_in = injected(records, contract, dialect)
        out = io.BytesIO()
        written = write_table(rows_in, contract=contract, dialect=dialect, out=out)
        rows = read_xlsx(out.getvalue(), sheet, contract)
        assert written.rows == len(rows) == len(rows_in), name
        tagged, dropped = [], []
        for row, record in zip(rows, rows_in, strict=True):
            # A workbook has no malformed line: that record is written as it is, untagged.
            assert row.values == {c: record[c] or "" for c in contract.column_names}, (name, row.line)
            defect = untag(str(record[DEFECT])) if DEFECT in record else None
            if defect is not None and defect[1] == "malformed_line":
                dropped.append(defect)
            elif defect is not None:
                tagged.append((row.line, defect))
            else:
                for column, cell in zip(contract.columns, row.fields, strict=True):
                    if cell.value is None:  # type: ignore[attr-defined]
                        continue
                    if column.type in ("date", "timestamp"):
                        assert cell.is_date and isinstance(cell.value, dt.datetime)  # type: ignore[attr-defined]
                    else:
                        assert cell.data_type == "s" and cell.number_format == "@"  # type: ignore[attr-defined]
        assert written.tagged == tagged and written.dropped == dropped, name
        assert all(line >= 2 for line, _ in tagged)


# --- The generator --------------------------------------------------------------------------------
DEMO = ("zhengzhou", "luoyang")


@pytest.fixture(scope="module")
def export(
    topology: Topology,
    contracts: dict[str, Contract],
    profiles: SourceProfiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Export:
    """`make demo`'s exports (seed, size, cities), defect rates tripled so every kind occurs."""
    out = tmp_path_factory.mktemp("exports")
    options = GenerateOptions(seed=2026, patients=400, cities=DEMO, rates=DefectRates().scaled(3))
    manifest = generate(topology, contracts, out, options, profiles=profiles)
    assert Manifest.load(out / "manifest.json") == manifest
    return out, manifest


def _hospital(key: str) -> str:
    return key.split("/")[1]


def test_every_dialect_is_written_in_every_city(export: Export) -> None:
    _, manifest = export
    for city in DEMO:
        written = {
            str(f["format"])
            for k, f in manifest.files.items()
            if k.startswith(f"{city}/") and f["profile"] == "default" and int(str(f["rows"])) > 0
        }
        assert written == set(DIALECTS), city


def test_named_profiles_write_what_they_declare(export: Export) -> None:
    _, manifest = export
    checked = set()
    for key, info in manifest.files.items():
        hospital = SOURCES["hospitals"].get(_hospital(key))
        if hospital is None:
            assert info["profile"] == "default", key
            continue
        own = hospital.get("datasets", {}).get(info["dataset"], {})
        profile = own.get("profile", hospital["profile"])
        assert info["profile"] == profile and info["format"] == PROFILE_FORMATS[profile], key
        if info["format"] == "xlsx":
            assert info["sheet"] == SOURCES["profiles"][profile]["sheet"]
        checked.add(profile)
    assert checked >= {"county-his", "township-sheet"}


def test_every_file_and_defect_line_is_exact(export: Export, contracts: dict[str, Contract]) -> None:
    out, manifest = export
    kinds: set[tuple[str, str]] = set()
    for key, info in manifest.files.items():
        city, file = key.split("/", 1)
        contract = contracts[str(info["dataset"])]
        rows = read_any(out / key, info, contract)
        assert len(rows) == info["rows"], key
        by_line = {r.line: i for i, r in enumerate(rows)}
        defects = [d for d in manifest.defects if d.city == city and d.file == file]
        for d in defects:
            assert d.line in by_line, (key, d)
            i = by_line[d.line]
            assert exhibits(d.kind, rows[i], rows[:i], contract), (key, d, rows[i])
            kinds.add((str(info["format"]), d.kind))
        for kind in EXCLUSIVE:
            shown = {r.line for i, r in enumerate(rows) if exhibits(kind, r, rows[:i], contract)}
            named = {d.line for d in defects if d.kind == kind}
            if kind == "malformed_line":
                named |= {d.line for d in defects if d.kind == "truncated_file"}
            assert shown == named, (key, kind)
    # Malformed lines stay in the text dialects, never in a workbook.
    assert {f for f, k in kinds if k == "malformed_line"} >= {"csv", "jsonl", "csv-gb18030"}
    assert ("xlsx", "malformed_line") not in kinds
    assert {f for f, _ in kinds} == set(DIALECTS)


def test_the_truncated_file_is_plain_csv(export: Export) -> None:
    out, manifest = export
    truncated = [d for d in manifest.defects if d.kind == "truncated_file"]
    assert sorted(d.city for d in truncated) == sorted(DEMO)
    for d in truncated:
        info = manifest.files[f"{d.city}/{d.file}"]
        assert (info["format"], info["profile"]) == ("csv", "default")
        content = (out / d.city / d.file).read_bytes()
        assert content.count(b"\n") == d.line - 1 and not content.endswith(b"\n")


def test_multiline_records_are_numbered_by_row(export: Export, contracts: dict[str, Contract]) -> None:
    """A defect after a record holding a line break is named by its row, not its physical line."""
    out, manifest = export
    after_a_break = 0
    for key, info in manifest.files.items():
        if info["format"] != "csv-bom-multiline":
            continue
        rows = read_any(out / key, info, contracts[str(info["dataset"])])
        city, file = key.split("/", 1)
        spans = [any("\n" in str(v) for v in r.fields) for r in rows]
        for d in manifest.defects:
            if d.city == city and d.file == file:
                assert rows[d.line - 2].line == d.line
                after_a_break += any(spans[: d.line - 2])
    assert after_a_break > 0


def test_media_forms(export: Export, topology: Topology) -> None:
    out, manifest = export
    forms = {city: str(manifest.media[city]["fhir"]) for city in DEMO}
    assert sorted(forms.values()) == ["bundle", "ndjson"]
    for city, form in forms.items():
        hospital = media_hospital(topology, city)
        assert hospital is not None and manifest.media[city]["hospital"] == hospital.id
        fhir = out / city / hospital.id / "fhir"
        if form == "bundle":
            assert list(fhir.glob("bundle-*.json")) and not list(fhir.rglob("*.ndjson"))
            continue
        files = list(fhir.glob("bulk-*/*.ndjson"))
        assert {p.stem for p in files} >= {"Patient", "Encounter", "Condition", "Observation"}
        for path in files:
            lines = path.read_text(encoding="utf-8").split("\n")
            assert lines[-1] == ""
            assert all(json.loads(line)["resourceType"] == path.stem for line in lines[:-1])


def test_pacs_studies_have_a_dicomdir_and_no_extension(export: Export, topology: Topology) -> None:
    out, manifest = export
    for city in DEMO:
        hospital = media_hospital(topology, city)
        assert hospital is not None
        dicom = out / city / hospital.id / "dicom"
        directories = list(dicom.rglob("DICOMDIR"))
        info = manifest.media[city]
        pacs, studies = int(str(info["pacs_studies"])), int(str(info["dicom_studies"]))
        assert 0 < len(directories) == pacs < studies, city
        for directory in directories:
            files = [p for p in directory.parent.iterdir() if p != directory]
            assert files and all(p.suffix == "" for p in files)
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            assert re.fullmatch(r"[A-Z0-9-]+-\d{7}", str(ds.PatientID))
        plain = list(dicom.rglob("*.dcm"))
        assert (
            len({p.parent.parent for p in plain if p.name != "broken-0000.dcm"}) + len(directories)
            == (info["dicom_studies"])
        )


def test_crosscheck_stays_plain_csv(export: Export, topology: Topology) -> None:
    out, _ = export
    for city in DEMO:
        hospital = media_hospital(topology, city)
        assert hospital is not None
        files = list((out / CROSSCHECK / city / hospital.id).rglob("*.csv"))
        assert files
        for path in files:
            assert path.read_bytes().startswith(b"hospital_id,") and b"\r" not in path.read_bytes()


def _plan(
    topology: Topology, contracts: dict[str, Contract], profiles: SourceProfiles, **options: Any
) -> dict[tuple[str, str], str]:
    plan = plan_dialects(topology, topology.cities, contracts, profiles, GenerateOptions(**options), set())
    return {k: d.name for k, d in plan.items()}


def test_dialect_choice_follows_the_seed_and_the_shares(
    topology: Topology, contracts: dict[str, Contract], profiles: SourceProfiles
) -> None:
    assert _plan(topology, contracts, profiles, seed=3) == _plan(topology, contracts, profiles, seed=3)
    assert len({tuple(_plan(topology, contracts, profiles, seed=s).items()) for s in range(4)}) == 4
    only = _plan(topology, contracts, profiles, seed=3, dialects={"jsonl": 1, "csv": 0})
    defaults = {k for k in only if profiles.for_file(k[0], k[1]).name == "default"}
    assert defaults and {only[k] for k in defaults} == {"jsonl"}
    shares = _plan(topology, contracts, profiles, seed=3, dialects={"csv": 3, "xlsx": 1})
    counts = [sum(1 for k in defaults if shares[k] == d) for d in ("csv", "xlsx")]
    # Each city rounds its own shares (largest remainders): csv = 3/4 n + e and xlsx = 1/4 n - e
    # with |e| < 1, so csv - 3 xlsx = 4e is off by less than 4 a city.
    assert abs(counts[0] - 3 * counts[1]) < 4 * len(topology.cities)
    assert counts[0] == pytest.approx(3 * counts[1], rel=0.05)


def test_workbook_budget_keeps_named_profiles(
    topology: Topology, contracts: dict[str, Contract], profiles: SourceProfiles, tmp_path: Path
) -> None:
    options = GenerateOptions(
        seed=4, patients=60, cities=("zhengzhou",), media=False, xlsx_max_rows=0, dialects={"xlsx": 1}
    )
    manifest = generate(topology, contracts, tmp_path, options, profiles=profiles)
    formats = {(f["format"], f["profile"]) for f in manifest.files.values()}
    assert ("xlsx", "township-sheet") in formats and ("xlsx", "default") not in formats
    assert ("csv", "default") in formats


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown dialect 'xls'"):
        GenerateOptions(dialects={"xls": 1})
    with pytest.raises(ValueError, match="≥ 0"):
        GenerateOptions(dialects={"csv": -1})
    with pytest.raises(ValueError, match="add up to 0"):
        GenerateOptions(dialects={"csv": 0})
    with pytest.raises(ValueError, match="pacs_share"):
        GenerateOptions(pacs_share=1.5)
    assert parse_shares("csv=0.3, xlsx=0.2") == {"csv": 0.3, "xlsx": 0.2}
    for bad, message in (("csv", "<dialect>=<share>"), ("csv=x", "not a number"), ("csv=1,csv=2", "twice")):
        with pytest.raises(ValueError, match=message):
            parse_shares(bad)


def test_cli_rejects_bad_dialects(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medshare.cli import app

    result = CliRunner().invoke(app, ["generate", str(tmp_path), "--dialects", "csv=1,parquet=1"])
    assert result.exit_code == 2 and "unknown dialect 'parquet'" in result.output
    assert not (tmp_path / "manifest.json").exists()


def test_spark_patterns_become_templates(profiles: SourceProfiles) -> None:
    assert pattern_template("yyyy/MM/dd HH:mm[:ss]") == "{0}/{1}/{2} {3}:{4}:{5}"
    assert pattern_template("yyyy-MM-dd'T'HH:mm[:ss][.SSSSSS]") == "{0}-{1}-{2}T{3}:{4}:{5}"
    assert pattern_template("yyyyMMddHHmmss") == "{0}{1}{2}{3}{4}{5}"
    with pytest.raises(ValueError, match="EEE"):
        pattern_template("EEE yyyy")
    no_seconds = profiles.profile("lis-semicolon").model_copy(update={"timestamp_formats": ("yyyyMMddHHmm",)})
    with pytest.raises(ValueError, match="keeps the seconds"):
        for_profile(no_seconds)
