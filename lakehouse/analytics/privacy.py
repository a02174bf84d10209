"""Small-cell suppression of released aggregates.

A cell (one row of an aggregate) is suppressed when any of its patient counts lies between 1 and
k - 1: fewer than k people could be recognised from it. Its measures are blanked (null) and
`suppressed` is true, so analysts see that a cell exists without its small numbers. A count of 0
reveals nobody and stays. Each gold table is one grouping level without margins, so a blanked
cell cannot be recovered by subtracting the others from a released total.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

SUPPRESSED = "suppressed"


def suppress(df: DataFrame, *, person_counts: Sequence[str], measures: Sequence[str], k: int) -> DataFrame:
    """`df` with `suppressed` added and, on suppressed rows, every measure set to null."""
    from pyspark.sql import functions as F

    if k < 2:
        raise ValueError(f"k must be at least 2, not {k}")
    small = reduce(
        lambda a, b: a | b,
        [F.col(c).between(1, k - 1) for c in person_counts],
    )
    flagged = df.withColumn(SUPPRESSED, F.coalesce(small, F.lit(False)))
    for name in measures:
        kind = df.schema[name].dataType
        flagged = flagged.withColumn(
            name, F.when(F.col(SUPPRESSED), F.lit(None).cast(kind)).otherwise(F.col(name))
        )
    return flagged
