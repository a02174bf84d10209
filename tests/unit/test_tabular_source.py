"""The CSV, JSON Lines and Excel readers on exports written by hand, the way hospital systems write
them — not by our generator: GB18030 with CRLF, a byte-order mark, line breaks and delimiters in
quoted fields (RFC 4180), Chinese headers, damaged bytes, a workbook with date cells."""

from __future__ import annotations

import codecs
import datetime as dt
import io
from pathlib import Path

import pytest
from openpyxl import Workbook

from ingestion.profiles import SourceProfiles, default_profile
from ingestion.sources.excel import read_xlsx
from ingestion.sources.tabular import FileProblem, Part, read_csv, read_jsonl
from ingestion.sources.text import GB18030, UTF8, UTF8_BOM, NotText, detect_encoding, open_utf8

pytestmark = pytest.mark.unit

PATIENT_COLUMNS = (
    "hospital_id",
    "patient_mrn",
    "resident_id",
    "name",
    "sex",
    "birth_date",
    "phone",
    "address",
    "county_code",
    "registered_at",
)
REQUIRED = ("hospital_id", "patient_mrn", "resident_id", "name", "sex", "birth_date", "registered_at")
CHINESE = [
    "医院编码",
    "病案号",
    "身份证号",
    "姓名",
    "性别",
    "出生日期",
    "联系电话",
    "现住址",
    "县区编码",
    "建档时间",
]


def _read(
    content: bytes, profile=None, columns=PATIENT_COLUMNS, required=REQUIRED
) -> tuple[list[dict], list, str]:
    """Every record as {column: value} with its line, the bad records, the encoding found."""
    profile = profile or default_profile_with_chinese()
    stream = open_utf8(io.BytesIO(content), profile.encoding)
    parts = list(
        read_csv(stream, profile=profile, columns=columns, required=required, encoding=stream.encoding)
    )
    return _records(parts), [b for p in parts for b in p.bad], stream.encoding


def _records(parts: list[Part]) -> list[dict]:
    out = []
    for part in parts:
        columns = {c: a.to_pylist() for c, a in part.values.items()}
        for i, line in enumerate(part.lines.to_pylist()):
            out.append({"_line": line, **{c: v[i] for c, v in columns.items()}})
    return out


def default_profile_with_chinese():
    """The default profile of platform/sources.yaml, as hospitals' exports are read."""
    return _profiles().default


def _profiles() -> SourceProfiles:
    from ingestion.profiles import load_profiles
    from lakehouse.contracts import load_contracts
    from lakehouse.topology import load_topology

    platform = Path(__file__).resolve().parents[2] / "platform"
    contracts = load_contracts(platform)
    return load_profiles(platform, load_topology(platform), contracts)


# Written by hand as a county HIS writes it: CRLF, a quoted address with a line break, a comma and
# a doubled quote, an empty phone.
HIS_ROWS = (
    ",".join(CHINESE) + "\r\n"
    "zz-xy-county,MR0001,410181198001010012,张伟,男,1980-01-01,13912345678,"
    '"河南省郑州市\r\n荥阳市 索河路 ""一号"" 院, 3栋",410181,2025-01-02 08:30:00\r\n'
    "zz-xy-county,MR0002,410181199002020021,王芳,女,1990-02-02,,荥阳市京城路,410181,2025-01-03 09:00\r\n"
)


def test_gb18030_with_crlf_and_a_line_break_in_a_quoted_field() -> None:
    content = HIS_ROWS.encode("gb18030")
    with pytest.raises(UnicodeDecodeError):
        content.decode("utf-8")  # really GB18030, not UTF-8 in disguise
    records, bad, encoding = _read(content)
    assert encoding == GB18030 and not bad
    assert [r["_line"] for r in records] == [2, 3]  # rows, as a spreadsheet numbers them
    first, second = records
    assert first["address"] == '河南省郑州市\r\n荥阳市 索河路 "一号" 院, 3栋'
    assert first["name"] == "张伟" and first["sex"] == "男" and first["resident_id"] == "410181198001010012"
    assert second["phone"] is None and second["registered_at"] == "2025-01-03 09:00"


def test_utf8_with_a_byte_order_mark_counts_records_not_lines() -> None:
    """The case of issue 18: 18 valid records, one address holding a quoted line break, were
    counted as 19 rows, one patient lost to quarantine."""
    header = ",".join(PATIENT_COLUMNS)
    rows = [
        f"zz-c1,M{i:03d},41010219900101{i:04d},患者{i},M,1990-01-01,,"
        + ('"金水区\n农业路 8 号"' if i == 7 else f"地址{i}")
        + ",410105,2025-01-02T08:30:00"
        for i in range(18)
    ]
    content = codecs.BOM_UTF8 + (header + "\n" + "\n".join(rows) + "\n").encode()
    records, bad, encoding = _read(content)
    assert encoding == UTF8_BOM and not bad and len(records) == 18
    assert records[0]["hospital_id"] == "zz-c1"  # the mark is not part of the first header
    assert records[7]["address"] == "金水区\n农业路 8 号"
    assert [r["_line"] for r in records] == list(range(2, 20))


def test_records_with_the_wrong_number_of_fields_are_kept_with_a_reason() -> None:
    header = ",".join(PATIENT_COLUMNS)
    good = "zz-c1,M1,410102199001010012,甲,M,1990-01-01,,地址,410105,2025-01-02T08:30:00"
    content = "\n".join([header, good, "zz-c1,M2,too,few", good.replace("M1", "M3"), good + ",extra", ""])
    records, bad, _ = _read(content.encode())
    assert [r["patient_mrn"] for r in records] == ["M1", "M3"]
    assert [r["_line"] for r in records] == [2, 4]
    assert [(b.line, b.rule) for b in bad] == [(3, "malformed_line"), (5, "malformed_line")]
    assert "4 fields, header has 10" in bad[0].reason and bad[0].raw == "zz-c1,M2,too,few"


def test_a_file_cut_inside_its_last_record_loses_only_that_record() -> None:
    header = ",".join(PATIENT_COLUMNS)
    records, bad, _ = _read((header + "\nzz-c1,M1,4101").encode())
    assert records == [] and [(b.line, b.rule) for b in bad] == [(2, "malformed_line")]


def test_bytes_not_valid_in_the_encoding_quarantine_their_record_only() -> None:
    good = HIS_ROWS.encode("gb18030")
    damaged = (
        "zz-xy-county,MR0003,410181198001010038,".encode("gb18030")
        + b"\xff\xfe"
        + (",男,1980-01-01,,地址,410181,2025-01-02 08:30:00\r\n".encode("gb18030"))
    )
    records, bad, encoding = _read(good + damaged)
    assert encoding == GB18030
    assert [r["patient_mrn"] for r in records] == ["MR0001", "MR0002"]
    assert [(b.line, b.rule) for b in bad] == [(4, "undecodable")]
    assert "not valid gb18030" in bad[0].reason and "MR0003" in bad[0].raw


def test_headers_map_by_profile_and_a_missing_required_column_names_what_was_found() -> None:
    content = "姓名,性别,身份证号\n张三,男,410102199001011234\n".encode()
    with pytest.raises(FileProblem, match="lacks required column") as caught:
        _read(content)
    assert "'姓名'" in str(caught.value) and "hospital_id" in str(caught.value)
    # Read with the bare default (no Chinese names), the same file names what to declare.
    with pytest.raises(FileProblem, match=r"platform/sources\.yaml"):
        _read(content, profile=default_profile())


def test_two_headers_for_one_column_are_refused() -> None:
    header = ",".join([*CHINESE, "住院号"])
    with pytest.raises(FileProblem, match="'病案号' and '住院号' both name column 'patient_mrn'"):
        _read((header + "\n").encode("gb18030"))


def test_a_declared_delimiter_that_does_not_fit_says_so() -> None:
    profile = _profiles().profile("lis-semicolon")
    content = (",".join(PATIENT_COLUMNS) + "\nzz-c1,M1\n").encode()
    with pytest.raises(FileProblem, match=r"split on ';'.*single field"):
        _read(content, profile=profile)
    semicolons = ";".join(PATIENT_COLUMNS) + "\nzz-c1;M1;4101;甲;M;1990-01-01;;a, b;410105;2025-01-02 08:30\n"
    records, bad, _ = _read(semicolons.encode(), profile=profile)
    assert not bad and records[0]["address"] == "a, b"


def test_encoding_detection() -> None:
    text = "姓名,地址\r\n张三,郑州\r\n"
    assert detect_encoding(text.encode("utf-8"), complete=True) == UTF8
    assert detect_encoding(text.encode("gb18030"), complete=True) == GB18030
    assert detect_encoding(codecs.BOM_UTF8 + text.encode(), complete=True) == UTF8_BOM
    # A multi-byte character cut by the end of the first megabyte is not an error.
    assert detect_encoding("郑".encode()[:2], complete=False) == UTF8
    with pytest.raises(NotText, match="NUL"):
        detect_encoding(b"PK\x03\x04\x00\x00", complete=True)
    with pytest.raises(NotText, match="empty"):
        open_utf8(io.BytesIO(b"  \r\n"), "auto")


def test_json_lines_keys_map_like_headers() -> None:
    lines = [
        '{"医院编码": "zz-c1", "病案号": "M1", "身份证号": "410102199001011234", "姓名": "张三", "age": 35}',
        "",
        '{"hospital_id": "zz-c1", "patient_mrn": "M2", "name": {"first": "x"}}',
        "{not json",
        "[1, 2]",
    ]
    text = io.TextIOWrapper(io.BytesIO("\n".join(lines).encode()), encoding="utf-8", newline="")
    chunks = list(
        read_jsonl(text, profile=default_profile_with_chinese(), columns=PATIENT_COLUMNS, encoding=UTF8)
    )
    rows = [r for c in chunks for r in c.rows]
    bad = [b for c in chunks for b in c.bad]
    assert rows == [["zz-c1", "M1", "410102199001011234", "张三", "", "", "", "", "", ""]]
    assert [(b.line, b.rule) for b in bad] == [
        (3, "malformed_line"),
        (4, "malformed_line"),
        (5, "malformed_line"),
    ]
    assert "name is a dict" in bad[0].reason and "invalid JSON" in bad[1].reason


def test_excel_workbook_with_date_cells_and_a_named_sheet(tmp_path: Path) -> None:
    book = Workbook()
    book.active.title = "说明"
    book.active.append(["这一页不是数据"])
    sheet = book.create_sheet("数据")
    sheet.append([])  # a blank first row: the header is the first row with something in it
    sheet.append(CHINESE)
    sheet.append(
        [
            "zz-zm-guandu",
            "G001",
            "410122198503030031",
            "赵六",
            "男",
            dt.date(1985, 3, 3),
            13800001111,
            "中牟县官渡镇",
            "410122",
            dt.datetime(2025, 4, 5, 14, 30),
        ]
    )
    sheet.append([None] * 10)
    sheet.append(
        [
            "zz-zm-guandu",
            "G002",
            "410122198503030040",
            "钱七",
            "女",
            "1985/03/03",
            None,
            None,
            410122,
            dt.date(2025, 4, 6),
        ]
    )
    path = tmp_path / "patients.xlsx"
    book.save(path)
    profile = _profiles().profile("township-sheet")
    types = {c: "string" for c in PATIENT_COLUMNS} | {"birth_date": "date", "registered_at": "timestamp"}
    chunks = list(read_xlsx(path, profile=profile, columns=PATIENT_COLUMNS, required=REQUIRED, types=types))
    rows = [dict(zip(chunks[0].columns, r, strict=True)) for c in chunks for r in c.rows]
    lines = [n for c in chunks for n in c.lines]
    assert lines == [3, 5]  # sheet rows
    assert rows[0]["birth_date"] == "1985-03-03" and rows[0]["registered_at"] == "2025-04-05 14:30:00"
    assert rows[0]["phone"] == "13800001111" and rows[1]["county_code"] == "410122"
    assert rows[1]["birth_date"] == "1985/03/03" and rows[1]["registered_at"] == "2025-04-06 00:00:00"
    missing = profile.model_copy(update={"sheet": "患者"})
    with pytest.raises(FileProblem, match=r"no sheet '患者'.*说明, 数据"):
        read_xlsx(path, profile=missing, columns=PATIENT_COLUMNS, required=REQUIRED, types=types)


def test_a_file_that_is_no_workbook(tmp_path: Path) -> None:
    path = tmp_path / "x.xlsx"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(FileProblem, match="not an Excel workbook"):
        read_xlsx(path, profile=default_profile(), columns=PATIENT_COLUMNS, required=REQUIRED, types={})
