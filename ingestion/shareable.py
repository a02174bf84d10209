"""The shareable form of a curated city table in Spark: the same projection as
`lakehouse.shareable` (which documents what is kept, dropped and pseudonymised, and why)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from ingestion.pseudonymise_spark import person_key_col, pseudo_uid_col
from lakehouse.contracts import Contract
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.shareable import KEY_VERSION, LINEAGE, PERSON_KEY

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def shareable(df: DataFrame, contract: Contract, key: ProvinceKey) -> DataFrame:
    """Project a curated DataFrame onto its shareable form (contract columns, then lineage)."""
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
    return df.select(*projected, *[F.col(n) for n in LINEAGE])
