"""Defects injected into clean synthetic records at configurable rates, each tagged with the
quarantine rule (or outcome) it must end in, so tests can prove nothing slips through."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

from ingestion.codes import code_set
from lakehouse.contracts import Contract

RawRecord = dict[str, str | None]

# Hidden key of a record: the defect kind and the rule it must be quarantined under. The writer
# removes it and turns it into manifest entries with the file and line.
DEFECT = "_defect"
DUPLICATE = "duplicate"  # outcome of exact and near duplicates: removed, not quarantined

# Rules that every contract has implicitly (see ingestion.validate).
TYPE_INVALID = "type_invalid"
REQUIRED_MISSING = "required_missing"
MALFORMED_LINE = "malformed_line"


def tag(kind: str, rule: str | None) -> str:
    """The DEFECT value: `kind|rule` (a string, like every raw value)."""
    return f"{kind}|{rule}"


def untag(value: str) -> tuple[str, str]:
    kind, _, rule = value.partition("|")
    return kind, rule


@dataclass(frozen=True, kw_only=True)
class DefectRates:
    """Fraction of rows (per dataset) that get each defect."""

    bad_check_digit: float = 0.01
    id_mismatch: float = 0.01  # patients: ID disagrees with recorded birth date or sex
    future_date: float = 0.005
    impossible_date: float = 0.005
    unknown_code: float = 0.01
    missing_required: float = 0.01
    wrong_type: float = 0.005
    malformed_line: float = 0.005
    exact_duplicate: float = 0.01
    near_duplicate: float = 0.005

    def scaled(self, factor: float) -> DefectRates:
        return DefectRates(**{f.name: getattr(self, f.name) * factor for f in fields(self)})


def _rule_of_kind(contract: Contract, kind: str) -> str | None:
    return next((r.name for r in contract.rules if r.kind == kind), None)


def _not_future_rule(contract: Contract) -> tuple[str, str] | None:
    rule = next((r for r in contract.rules if r.kind == "not_future"), None)
    return (rule.name, rule.column) if rule and rule.column else None


def _time_column(contract: Contract) -> str:
    return contract.partition_by.month


def _unknown_code(contract: Contract, rng: random.Random) -> tuple[str, str, str] | None:
    rule = next((r for r in contract.rules if r.kind == "code_in"), None)
    if rule is None or rule.column is None or rule.code_list is None:
        return None
    known = code_set(rule.code_list)
    # Shaped like a real code so only the membership rule (not the pattern) catches it.
    candidates = {
        "icd10": [f"U{n:02d}.{m}" for n in range(80, 99) for m in range(10)],
        "loinc": [f"{n}-{(n * 7) % 10}" for n in range(99000, 99100)],
        "atc": [f"Z{n:02d}ZZ{m:02d}" for n in range(10, 30) for m in range(10)],
        "dicom_modality": ["XX", "QQ", "ZZ"],
    }[rule.code_list]
    return rule.name, rule.column, rng.choice([c for c in candidates if c not in known])


def _break_check_digit(resident_id: str) -> str:
    digits = "0123456789X"
    return resident_id[:17] + digits[(digits.index(resident_id[17]) + 3) % 11]


def inject(
    records: list[RawRecord], contract: Contract, rates: DefectRates, rng: random.Random
) -> list[RawRecord]:
    """A new list: defective copies replace some records; duplicates are appended. Every changed
    or added record carries DEFECT = (kind, expected rule or DUPLICATE)."""
    out = [dict(r) for r in records]
    free = list(range(len(out)))
    rng.shuffle(free)

    def take(rate: float) -> list[int]:
        n = int(len(records) * rate + rng.random())  # unbiased rounding: rates hold on average
        picked, free[:] = free[:n], free[n:]
        return picked

    key = set(contract.business_key)
    required = [
        c.name for c in contract.columns if c.required and c.name not in key and c.identifier != "resident_id"
    ]
    typed = [c.name for c in contract.columns if c.type in ("int", "long", "double") and c.name not in key]
    time_col = _time_column(contract)

    if "resident_id" in contract.column_names:
        for i in take(rates.bad_check_digit):
            out[i]["resident_id"] = _break_check_digit(out[i]["resident_id"] or "")
            out[i][DEFECT] = tag("bad_check_digit", _rule_of_kind(contract, "resident_id"))
    mismatch = _rule_of_kind(contract, "resident_id_matches")
    if mismatch:
        for i in take(rates.id_mismatch):
            out[i]["sex"] = "F" if out[i]["sex"] == "M" else "M"
            out[i][DEFECT] = tag("id_mismatch", mismatch)
    future = _not_future_rule(contract)
    if future:
        for i in take(rates.future_date):
            value = out[i][future[1]] or "2026-01-01"
            out[i][future[1]] = "2031" + value[4:]
            out[i][DEFECT] = tag("future_date", future[0])
    for i in take(rates.impossible_date):
        value = out[i][time_col] or "2026-01-01"
        out[i][time_col] = value[:5] + "02-30" + value[10:]
        out[i][DEFECT] = tag("impossible_date", TYPE_INVALID)
    for i in take(rates.unknown_code):
        unknown = _unknown_code(contract, rng)
        if unknown:
            out[i][unknown[1]] = unknown[2]
            out[i][DEFECT] = tag("unknown_code", unknown[0])
    if required:
        for i in take(rates.missing_required):
            out[i][rng.choice(required)] = None
            out[i][DEFECT] = tag("missing_required", REQUIRED_MISSING)
    for i in take(rates.wrong_type):
        column = rng.choice(typed) if typed else time_col
        out[i][column] = "n/a" if column in typed else "yesterday"
        out[i][DEFECT] = tag("wrong_type", TYPE_INVALID)
    for i in take(rates.malformed_line):
        out[i][DEFECT] = tag("malformed_line", MALFORMED_LINE)

    clean = [i for i in free if DEFECT not in out[i]]
    extra: list[RawRecord] = []
    for i in clean[: int(len(records) * rates.exact_duplicate + rng.random())]:
        extra.append({**out[i], DEFECT: tag("exact_duplicate", DUPLICATE)})
    # A resent row's correction touches free text, never a column a rule checks (a hospital id).
    checked = {r.column for r in contract.rules if r.column}
    near_cols = [
        c.name
        for c in contract.columns
        if c.name not in checked
        and not c.required
        and c.name not in key
        and c.type == "string"
        and c.allowed is None
        and c.pattern is None
        and c.identifier is None
    ]
    start = len(extra)
    if near_cols:
        for i in clean[start : start + int(len(records) * rates.near_duplicate + rng.random())]:
            column = rng.choice(near_cols)
            extra.append(
                {
                    **out[i],
                    column: f"{out[i][column] or ''} (corrected)",
                    DEFECT: tag("near_duplicate", DUPLICATE),
                }
            )
    # Duplicates arrive later in the export, as resent rows do.
    return out + extra
