"""Code lists shipped as package data (ingestion/codes/*.csv): ICD-10, LOINC, ATC, DICOM modality.

The `code_in` contract rules name these lists (icd10, loinc, atc, dicom_modality). Each CSV has
a header row and a `code` column; the folder shares the module's name because it holds only data
(no __init__.py), so `import ingestion.codes` still finds this module.
"""

from __future__ import annotations

import csv
import io
from functools import cache
from importlib import resources

from lakehouse.errors import ConfigError

CODE_LISTS: tuple[str, ...] = ("atc", "dicom_modality", "icd10", "loinc")


class UnknownCodeListError(ConfigError):
    """A contract or caller named a code list that is not shipped."""


@cache
def _read(name: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    # Rows are cached as tuples so no caller can change what the next one reads.
    if name not in CODE_LISTS:
        raise UnknownCodeListError(f"unknown code list {name!r}; known code lists: {', '.join(CODE_LISTS)}")
    text = resources.files("ingestion").joinpath("codes", f"{name}.csv").read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "code" not in reader.fieldnames:
        raise UnknownCodeListError(f"code list {name!r} has no 'code' column")
    return tuple(tuple(row.items()) for row in reader)


def code_rows(name: str) -> tuple[dict[str, str], ...]:
    """Every row of a code list, as dicts keyed by the CSV header (fresh dicts on each call)."""
    return tuple(dict(row) for row in _read(name))


@cache
def code_set(name: str) -> frozenset[str]:
    """The codes of a code list."""
    return frozenset(dict(row)["code"] for row in _read(name))
