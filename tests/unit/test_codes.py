"""The shipped code lists: shapes from the dataset contracts, check digits, no duplicates."""

from __future__ import annotations

import re

import pytest

from ingestion.codes import CODE_LISTS, UnknownCodeListError, code_rows, code_set
from lakehouse.contracts import Contract, load_contracts
from lakehouse.settings import REPO_ROOT


@pytest.fixture(scope="module")
def contracts() -> dict[str, Contract]:
    return load_contracts(REPO_ROOT / "platform")


def _pattern(contracts: dict[str, Contract], dataset: str, column: str) -> re.Pattern[str]:
    pattern = contracts[dataset].column(column).pattern
    assert pattern is not None
    return re.compile(pattern)


def test_every_code_list_a_contract_names_is_shipped(contracts: dict[str, Contract]) -> None:
    named = {r.code_list for c in contracts.values() for r in c.rules if r.code_list}
    assert named <= set(CODE_LISTS)
    for name in named:
        assert code_set(name)


@pytest.mark.parametrize("name", CODE_LISTS)
def test_no_duplicate_codes_and_no_blank_cells(name: str) -> None:
    rows = code_rows(name)
    codes = [r["code"] for r in rows]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    assert code_set(name) == frozenset(codes)
    for row in rows:
        assert None not in row, row  # a row with more cells than the header
        assert all(v is not None and v.strip() == v and v for v in row.values()), row


def test_unknown_list_is_named_in_the_error() -> None:
    with pytest.raises(UnknownCodeListError, match=r"'snomed'.*icd10"):
        code_set("snomed")
    with pytest.raises(UnknownCodeListError, match=re.escape("'../icd10'")):
        code_rows("../icd10")


def test_code_rows_cannot_be_changed_by_a_caller() -> None:
    first = code_rows("atc")
    first[0]["code"] = "changed"
    assert code_rows("atc")[0]["code"] != "changed"


# --- ICD-10 ----------------------------------------------------------------------------------

# WHO ICD-10 chapters by the first three characters of the code.
WHO_CHAPTERS = [
    ("I", "A00", "B99"),
    ("II", "C00", "D48"),
    ("III", "D50", "D89"),
    ("IV", "E00", "E90"),
    ("V", "F00", "F99"),
    ("VI", "G00", "G99"),
    ("VII", "H00", "H59"),
    ("VIII", "H60", "H95"),
    ("IX", "I00", "I99"),
    ("X", "J00", "J99"),
    ("XI", "K00", "K93"),
    ("XII", "L00", "L99"),
    ("XIII", "M00", "M99"),
    ("XIV", "N00", "N99"),
    ("XV", "O00", "O99"),
    ("XVI", "P00", "P96"),
    ("XVII", "Q00", "Q99"),
    ("XVIII", "R00", "R99"),
    ("XIX", "S00", "T98"),
    ("XX", "V01", "Y98"),
    ("XXI", "Z00", "Z99"),
    ("XXII", "U00", "U99"),
]


def _who_chapter(code: str) -> str:
    matches = [ch for ch, low, high in WHO_CHAPTERS if low <= code[:3] <= high]
    assert len(matches) == 1, code
    return matches[0]


def test_icd10_codes(contracts: dict[str, Contract]) -> None:
    pattern = _pattern(contracts, "diagnoses", "icd10_code")
    rows = code_rows("icd10")
    assert len(rows) >= 150
    for row in rows:
        assert pattern.fullmatch(row["code"]), row
        assert row["chapter"] == _who_chapter(row["code"]), row
    chapters = {r["chapter"] for r in rows}
    assert len(chapters) >= 18
    for code in (
        "I10",
        "E11.9",
        "J18.9",
        "J44.9",
        "I63.9",
        "I25.1",
        "K29.5",
        "S72.0",
        "C34.9",
        "C16.9",
        "C22.0",
        "C50.9",
        "O80",
    ):
        assert code in code_set("icd10"), code


# --- LOINC -----------------------------------------------------------------------------------


def _loinc_check_digit(number: str) -> int:
    """LOINC's mod-10 check digit as the LOINC manual states it: the digits in odd positions
    counted from the right form a number that is doubled; its digits and the remaining digits
    are summed; the check digit brings the sum up to the next multiple of ten."""
    odd = number[::-1][0::2][::-1]
    even = number[::-1][1::2][::-1]
    total = sum(int(d) for d in str(int(odd) * 2) + even)
    return (10 - total % 10) % 10


def test_loinc_check_digit_of_known_codes() -> None:
    # Hand-worked: 718 -> odd positions 7,8 -> 78*2 = 156, even 1 -> 1+1+5+6 = 13 -> 7.
    assert _loinc_check_digit("718") == 7
    assert _loinc_check_digit("2345") == 7
    assert _loinc_check_digit("2160") == 0


def test_loinc_codes(contracts: dict[str, Contract]) -> None:
    pattern = _pattern(contracts, "lab_results", "loinc_code")
    rows = code_rows("loinc")
    assert len(rows) >= 40
    for row in rows:
        code = row["code"]
        assert pattern.fullmatch(code), row
        number, check = code.split("-")
        assert int(check) == _loinc_check_digit(number), row
        assert float(row["ref_low"]) < float(row["ref_high"]), row
        assert float(row["ref_low"]) >= 0, row
    for code in ("718-7", "2345-7", "2160-0", "6690-2"):
        assert code in code_set("loinc")


# --- ATC -------------------------------------------------------------------------------------


def test_atc_codes(contracts: dict[str, Contract]) -> None:
    pattern = _pattern(contracts, "medications", "atc_code")
    routes = contracts["medications"].column("route").allowed
    assert routes is not None
    rows = code_rows("atc")
    assert len(rows) >= 60
    for row in rows:
        assert pattern.fullmatch(row["code"]), row
        assert row["code"][0] in "ABCDGHJLMNPRSV", row  # the 14 anatomical main groups
        assert row["route"] in routes, row
        assert float(row["dose"]) > 0, row
        assert row["dose_unit"] in {"mg", "g", "µg", "IU", "mL"}, row
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names))
    for code in ("C09AA02", "C08CA01", "A10BA02", "J01CA04", "N02BE01"):
        assert code in code_set("atc")


# --- DICOM modality --------------------------------------------------------------------------


def test_dicom_modalities() -> None:
    rows = code_rows("dicom_modality")
    for row in rows:
        # DICOM defined terms for Modality (0008,0060): upper-case, a CS value of <= 16 chars.
        assert re.fullmatch(r"[A-Z]{2,16}", row["code"]), row
    assert {
        "CT",
        "MR",
        "CR",
        "DX",
        "US",
        "NM",
        "PT",
        "MG",
        "XA",
        "RF",
        "ECG",
        "SR",
        "SEG",
        "RTSTRUCT",
        "RTPLAN",
        "RTDOSE",
        "RTIMAGE",
        "OT",
    } <= code_set("dicom_modality")
