"""Chinese 18-character resident identity numbers (GB 11643-1999).

Layout: 6-digit administrative region code, 8-digit birth date YYYYMMDD, 3-digit sequence
(odd = male, even = female), 1 check character (ISO 7064 MOD 11-2).

The Spark column versions live in `ingestion.identity_spark` and share the constants and reason
texts defined here, so a row quarantined in Spark reads the same as one checked in Python.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

Sex = Literal["M", "F"]

LENGTH = 18
# ISO 7064 MOD 11-2 weights are 2^(17-i) mod 11 for positions i = 0..16.
WEIGHTS: tuple[int, ...] = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
# Check character by remainder 0..10 of the weighted sum.
CHECK_CHARACTERS = "10X98765432"
# First two digits of the region code: provinces, autonomous regions, municipalities, plus
# Taiwan (71) and the two SARs (81, 82), as listed in GB/T 2260.
PROVINCE_CODES: frozenset[str] = frozenset(
    f"{n:02d}"
    for n in (
        *range(11, 16),
        *range(21, 24),
        *range(31, 38),
        *range(41, 47),
        *range(50, 55),
        *range(61, 66),
        71,
        81,
        82,
    )
)
EARLIEST_BIRTH_DATE = date(1900, 1, 1)

# ASCII only: str.isdigit() would accept full-width and other Unicode digits.
_DIGITS_17 = re.compile(r"[0-9]{17}")
_REGION = re.compile(r"[0-9]{6}")

# Reason prefixes, shared with the Spark version: callers may group reasons by prefix.
MISSING = "missing"
WRONG_LENGTH = "wrong length"
NON_DIGIT = "non-digit characters"
LOWER_CASE_X = "lower-case x"
BAD_CHECK_FORMAT = "bad check character format"
UNKNOWN_PROVINCE = "unknown province code"
IMPOSSIBLE_BIRTH_DATE = "impossible birth date"
FUTURE_BIRTH_DATE = "birth date in the future"
EARLY_BIRTH_DATE = "birth date before 1900"
BAD_CHECK = "bad check character"


def check_character(first17: str) -> str:
    """The MOD 11-2 check character of the first 17 digits."""
    if not _DIGITS_17.fullmatch(first17):
        raise ValueError(f"expected 17 ASCII digits, got {first17!r}")
    total = sum(int(d) * w for d, w in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARACTERS[total % 11]


def make_resident_id(*, region: str, birth_date: date, sequence: int, sex: Sex) -> str:
    """A valid resident ID; the sequence's parity is adjusted to the sex (odd = male).

    Flipping the lowest bit keeps the sequence within 0..999 (0 -> 1, 999 -> 998).
    """
    if not _REGION.fullmatch(region):
        raise ValueError(f"region must be 6 ASCII digits, got {region!r}")
    if region[:2] not in PROVINCE_CODES:
        raise ValueError(f"{UNKNOWN_PROVINCE} '{region[:2]}' in region {region!r}")
    if birth_date < EARLIEST_BIRTH_DATE:
        raise ValueError(f"{EARLY_BIRTH_DATE}: {birth_date.isoformat()}")
    if isinstance(sequence, bool) or not 0 <= sequence <= 999:
        raise ValueError(f"sequence must be an int in 0..999, got {sequence!r}")
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    wanted_parity = 1 if sex == "M" else 0
    if sequence % 2 != wanted_parity:
        sequence ^= 1
    ymd = f"{birth_date.year:04d}{birth_date.month:02d}{birth_date.day:02d}"
    first17 = f"{region}{ymd}{sequence:03d}"
    return first17 + check_character(first17)


def _parse_birth_date(value: str) -> date | None:
    digits = value[6:14]
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def resident_id_problem(value: str | None, *, today: date) -> str | None:
    """None when `value` is a valid resident ID, else a short reason naming the first problem.

    Checks run in a fixed order (length, characters, province, birth date, check character) and
    the first failure is reported, so a reason names exactly one problem.
    """
    if value is None:
        return MISSING
    if len(value) != LENGTH:
        return f"{WRONG_LENGTH}: {len(value)} characters, expected {LENGTH}"
    if not _DIGITS_17.fullmatch(value[:17]):
        return f"{NON_DIGIT} in the first 17 positions"
    last = value[17]
    if last == "x":
        # Exports must be canonical: a lower-case x would give a different person_key.
        return f"{LOWER_CASE_X} as check character, expected upper-case X"
    if last not in "0123456789X":
        return f"{BAD_CHECK_FORMAT}: '{last}' is not a digit or X"
    if value[:2] not in PROVINCE_CODES:
        return f"{UNKNOWN_PROVINCE} '{value[:2]}'"
    birth = _parse_birth_date(value)
    if birth is None:
        return f"{IMPOSSIBLE_BIRTH_DATE} '{value[6:14]}'"
    if birth > today:
        return f"{FUTURE_BIRTH_DATE}: {birth.isoformat()}"
    if birth < EARLIEST_BIRTH_DATE:
        return f"{EARLY_BIRTH_DATE}: {birth.isoformat()}"
    expected = check_character(value[:17])
    if last != expected:
        return f"{BAD_CHECK}: expected {expected}, found {last}"
    return None


def resident_id_birth_date(value: str) -> date:
    """The birth date encoded in a resident ID (positions 7-14)."""
    if len(value) != LENGTH or not _DIGITS_17.fullmatch(value[:17]):
        raise ValueError(f"not an 18-character resident ID: {value!r}")
    birth = _parse_birth_date(value)
    if birth is None:
        raise ValueError(f"{IMPOSSIBLE_BIRTH_DATE} '{value[6:14]}' in {value!r}")
    return birth


def resident_id_sex(value: str) -> Sex:
    """The sex encoded in a resident ID: an odd sequence (positions 15-17) is male."""
    if len(value) != LENGTH or not _DIGITS_17.fullmatch(value[:17]):
        raise ValueError(f"not an 18-character resident ID: {value!r}")
    return "M" if int(value[14:17]) % 2 == 1 else "F"


def resident_id_mismatch(value: str | None, *, birth_date: date | None, sex: str | None) -> str | None:
    """A reason when the ID disagrees with the recorded birth date or sex, else None.

    An ID too malformed to read (or a missing value on either side) is no mismatch: the
    `resident_id` rule or the required-column check reports it instead, once.
    """
    if value is None or len(value) != LENGTH or not _DIGITS_17.fullmatch(value[:17]):
        return None
    problems = []
    id_birth = _parse_birth_date(value)
    if birth_date is not None and id_birth is not None and id_birth != birth_date:
        problems.append(
            f"birth date {id_birth.isoformat()} in the resident ID differs from "
            f"the recorded {birth_date.isoformat()}"
        )
    id_sex = resident_id_sex(value)
    if sex is not None and id_sex != sex:
        problems.append(f"sex {id_sex} in the resident ID differs from the recorded {sex}")
    return "; ".join(problems) or None


_ID_SHAPE = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")


def holds_resident_id(text: str) -> bool:
    """Whether free text holds something shaped like a resident ID (17 digits and a check
    character): free text that reaches provincial storage must not carry one."""
    return _ID_SHAPE.search(text) is not None
