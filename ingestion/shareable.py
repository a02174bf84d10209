"""The shareable form of a curated city table: what may leave the city for the province.

- `resident_id` → `person_key` = HMAC-SHA256(province key, resident ID) + `key_version`: the
  province links a person across hospitals and cities without holding the ID (a plain hash of an
  18-digit ID is reversible by brute force; a keyed one is not without the key).
- `direct` identifiers (names, phone numbers, street addresses, local MRNs, accession numbers,
  referring physicians) are dropped: nothing downstream needs them.
- DICOM UIDs → `2.25.<HMAC-derived integer>`, the same in every city, so studies still join.
- Everything else is kept: clinical content, codes, dates, hospital and month (the partitions the
  province reads by), and lineage (`_source_file`, `_run_id`) which names no person.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from ingestion.pseudonymise import ProvinceKey
from ingestion.pseudonymise_spark import person_key_col, pseudo_uid_col
from lakehouse.contracts import Contract

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PERSON_KEY = "person_key"
KEY_VERSION = "key_version"
# Lineage columns of curated tables that only the city needs (a checksum of a hospital's file).
CITY_ONLY = ("_source_checksum",)


def shareable_columns(contract: Contract) -> list[str]:
    """Names of the shareable form's columns, in order."""
    out: list[str] = []
    for c in contract.columns:
        if c.identifier == "resident_id":
            out += [PERSON_KEY, KEY_VERSION]
        elif c.identifier != "direct":
            out.append(c.name)
    return out


def shareable(df: DataFrame, contract: Contract, key: ProvinceKey) -> DataFrame:
    """Project a curated DataFrame onto its shareable form (contract columns, then the rest)."""
    if not contract.shareable:
        raise ValueError(f"dataset {contract.name!r} is not shareable")
    projected = []
    for c in contract.columns:
        if c.identifier == "resident_id":
            projected += [
                person_key_col(key, F.col(c.name)).alias(PERSON_KEY),
                F.lit(key.version).alias(KEY_VERSION),
            ]
        elif c.identifier == "uid":
            projected.append(pseudo_uid_col(key, F.col(c.name)).alias(c.name))
        elif c.identifier is None:
            projected.append(F.col(c.name))
    contract_names = set(contract.column_names)
    rest = [F.col(n) for n in df.columns if n not in contract_names and n not in CITY_ONLY]
    return df.select(*projected, *rest)
