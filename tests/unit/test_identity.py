"""Resident identity numbers (GB 11643-1999), pure Python."""

from __future__ import annotations

import random
from datetime import date

import pytest

from lakehouse.identity import (
    Sex,
    check_character,
    make_resident_id,
    resident_id_birth_date,
    resident_id_mismatch,
    resident_id_problem,
    resident_id_sex,
)

TODAY = date(2026, 6, 30)


def _iso7064_holds(resident_id: str) -> bool:
    """ISO 7064 MOD 11-2 as the standard states it, independent of the weight table: with
    positions i = 1..18 counted from the right (the check character at i = 1, X meaning 10),
    sum(a_i * 2^(i-1)) ≡ 1 (mod 11)."""
    values = [10 if c == "X" else int(c) for c in resident_id]
    total = sum(a * 2 ** (i - 1) for i, a in enumerate(reversed(values), start=1))
    return bool(total % 11 == 1)


# Worked examples of the standard: a Beijing Chaoyang woman born 1949-12-31 (sum 167, remainder
# 2 -> X) and a Guangdong man born 1880-01-01 (sum 195, remainder 8 -> 4).
@pytest.mark.parametrize(
    ("first17", "expected"),
    [
        ("11010519491231002", "X"),
        ("44052418800101001", "4"),
    ],
)
def test_check_character_of_the_standards_examples(first17: str, expected: str) -> None:
    assert check_character(first17) == expected


def test_check_character_satisfies_the_iso7064_congruence() -> None:
    rng = random.Random(7)
    seen = set()
    for _ in range(2000):
        first17 = "".join(rng.choice("0123456789") for _ in range(17))
        check = check_character(first17)
        seen.add(check)
        assert _iso7064_holds(first17 + check), first17
    assert seen == set("0123456789X")


@pytest.mark.parametrize(
    "bad", ["1101051949123100", "110105194912310021", "1101051949123100a", "１1010519491231002"]
)
def test_check_character_refuses_anything_but_17_ascii_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        check_character(bad)


def test_make_resident_id_is_valid_and_encodes_its_inputs() -> None:
    rng = random.Random(11)
    for _ in range(500):
        birth = date(rng.randrange(1900, 2026), rng.randrange(1, 13), rng.randrange(1, 29))
        sex: Sex = rng.choice(("M", "F"))
        region = f"41{rng.randrange(10000):04d}"
        rid = make_resident_id(region=region, birth_date=birth, sequence=rng.randrange(1000), sex=sex)
        assert resident_id_problem(rid, today=TODAY) is None, rid
        assert _iso7064_holds(rid)
        assert rid[:6] == region
        assert resident_id_birth_date(rid) == birth
        assert resident_id_sex(rid) == sex


@pytest.mark.parametrize(
    ("sequence", "sex", "expected"),
    [
        (0, "M", "001"),
        (0, "F", "000"),
        (999, "F", "998"),
        (999, "M", "999"),
        (122, "M", "123"),
        (123, "F", "122"),
        (124, "F", "124"),
    ],
)
def test_make_resident_id_adjusts_the_sequence_parity_to_the_sex(
    sequence: int, sex: str, expected: str
) -> None:
    rid = make_resident_id(region="410102", birth_date=date(1990, 1, 1), sequence=sequence, sex=sex)  # type: ignore[arg-type]
    assert rid[14:17] == expected


def test_make_resident_id_example_matches_the_standard() -> None:
    rid = make_resident_id(region="110105", birth_date=date(1949, 12, 31), sequence=2, sex="F")
    assert rid == "11010519491231002X"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"region": "41010", "birth_date": date(1990, 1, 1), "sequence": 1, "sex": "M"},
        {"region": "4101a2", "birth_date": date(1990, 1, 1), "sequence": 1, "sex": "M"},
        {"region": "990102", "birth_date": date(1990, 1, 1), "sequence": 1, "sex": "M"},
        {"region": "410102", "birth_date": date(1899, 12, 31), "sequence": 1, "sex": "M"},
        {"region": "410102", "birth_date": date(1990, 1, 1), "sequence": 1000, "sex": "M"},
        {"region": "410102", "birth_date": date(1990, 1, 1), "sequence": -1, "sex": "M"},
        {"region": "410102", "birth_date": date(1990, 1, 1), "sequence": True, "sex": "M"},
        {"region": "410102", "birth_date": date(1990, 1, 1), "sequence": 1, "sex": "m"},
    ],
)
def test_make_resident_id_refuses_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_resident_id(**kwargs)  # type: ignore[arg-type]


def test_valid_examples_have_no_problem() -> None:
    assert resident_id_problem("11010519491231002X", today=TODAY) is None
    assert (
        resident_id_problem(
            make_resident_id(region="410102", birth_date=TODAY, sequence=5, sex="M"), today=TODAY
        )
        is None
    )


VALID = "11010519491231002X"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        ("", "wrong length: 0 characters, expected 18"),
        (VALID[:17], "wrong length: 17 characters, expected 18"),
        (VALID + "0", "wrong length: 19 characters, expected 18"),
        ("1101A519491231002X", "non-digit characters in the first 17 positions"),
        ("１1010519491231002X"[:18], "non-digit characters in the first 17 positions"),
        ("11010519491231002x", "lower-case x as check character, expected upper-case X"),
        ("11010519491231002Y", "bad check character format: 'Y' is not a digit or X"),
        # 99 and 10 are no province; 41 would be valid.
        ("99010519491231002X", "unknown province code '99'"),
        ("10010519491231002X", "unknown province code '10'"),
        ("11010519490230002X", "impossible birth date '19490230'"),
        ("11010519491301002X", "impossible birth date '19491301'"),
        ("11010500000101002X", "impossible birth date '00000101'"),
        ("11010520260701002X", "birth date in the future: 2026-07-01"),
        ("440524188001010014", "birth date before 1900: 1880-01-01"),
        ("110105194912310021", "bad check character: expected X, found 1"),
    ],
)
def test_each_problem_is_named(value: str | None, reason: str) -> None:
    assert resident_id_problem(value, today=TODAY) == reason


def test_leap_days() -> None:
    leap = make_resident_id(region="410102", birth_date=date(2000, 2, 29), sequence=1, sex="M")
    assert resident_id_problem(leap, today=TODAY) is None
    # 1900 is no leap year (divisible by 100, not by 400).
    first17 = "41010219000229001"
    assert (
        resident_id_problem(first17 + check_character(first17), today=TODAY)
        == "impossible birth date '19000229'"
    )


def test_birth_on_today_and_on_1900_01_01_are_valid() -> None:
    for birth in (TODAY, date(1900, 1, 1)):
        rid = make_resident_id(region="410102", birth_date=birth, sequence=7, sex="M")
        assert resident_id_problem(rid, today=TODAY) is None


def test_every_province_prefix() -> None:
    valid = {
        11,
        12,
        13,
        14,
        15,
        21,
        22,
        23,
        31,
        32,
        33,
        34,
        35,
        36,
        37,
        41,
        42,
        43,
        44,
        45,
        46,
        50,
        51,
        52,
        53,
        54,
        61,
        62,
        63,
        64,
        65,
        71,
        81,
        82,
    }
    for prefix in range(100):
        first17 = f"{prefix:02d}010219900101001"
        problem = resident_id_problem(first17 + check_character(first17), today=TODAY)
        if prefix in valid:
            assert problem is None, prefix
        else:
            assert problem == f"unknown province code '{prefix:02d}'"


def test_any_single_digit_change_breaks_the_check() -> None:
    rid = make_resident_id(region="410305", birth_date=date(1975, 8, 14), sequence=37, sex="M")
    for pos in range(14, 17):  # sequence digits keep region and date valid
        for digit in "0123456789":
            if digit != rid[pos]:
                changed = rid[:pos] + digit + rid[pos + 1 :]
                problem = resident_id_problem(changed, today=TODAY)
                assert problem is not None and problem.startswith("bad check character: ")


def test_birth_date_and_sex_read_from_the_id() -> None:
    assert resident_id_birth_date("11010519491231002X") == date(1949, 12, 31)
    assert resident_id_sex("11010519491231002X") == "F"
    assert resident_id_sex("440524188001010014") == "M"
    for bad in ("1101051949123100", "11010519491331002X"):
        with pytest.raises(ValueError):
            resident_id_birth_date(bad)
    with pytest.raises(ValueError):
        resident_id_sex("1101051949123100")


def test_mismatch() -> None:
    rid = "11010519491231002X"
    assert resident_id_mismatch(rid, birth_date=date(1949, 12, 31), sex="F") is None
    assert resident_id_mismatch(rid, birth_date=date(1949, 12, 30), sex="F") == (
        "birth date 1949-12-31 in the resident ID differs from the recorded 1949-12-30"
    )
    assert resident_id_mismatch(rid, birth_date=date(1949, 12, 31), sex="M") == (
        "sex F in the resident ID differs from the recorded M"
    )
    both = resident_id_mismatch(rid, birth_date=date(1950, 1, 1), sex="M")
    assert both is not None and both.count("differs") == 2


def test_mismatch_leaves_unreadable_ids_and_missing_values_to_other_rules() -> None:
    assert resident_id_mismatch(None, birth_date=date(1949, 12, 31), sex="F") is None
    assert resident_id_mismatch("1101051949", birth_date=date(1949, 12, 31), sex="F") is None
    assert resident_id_mismatch("11010519491231002X", birth_date=None, sex=None) is None
    # An impossible date is the resident_id rule's finding; the sex can still be compared.
    impossible = "11010519491331002X"
    assert resident_id_mismatch(impossible, birth_date=date(1949, 12, 31), sex="F") is None
    assert resident_id_mismatch(impossible, birth_date=date(1949, 12, 31), sex="M") == (
        "sex F in the resident ID differs from the recorded M"
    )
