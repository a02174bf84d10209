"""Pieces of the analytics package that need no Spark: ICD-10 chapters, SQL statement splitting,
the analytics storage identity's policy."""

from __future__ import annotations

import itertools

import pytest

from lakehouse.analytics.icd10 import CHAPTERS, UNKNOWN, chapter_of
from medshare.analytics_cli import split_statements


@pytest.mark.parametrize(
    ("code", "chapter"),
    [
        # First and last categories of neighbouring chapters (WHO ICD-10 2019), and subcodes.
        ("A00", "I"),
        ("B99.9", "I"),
        ("C00", "II"),
        ("D48.7", "II"),
        ("D50", "III"),
        ("H59", "VII"),
        ("H60.1", "VIII"),
        ("I63.9", "IX"),
        ("S72.0", "XIX"),
        ("T98", "XIX"),
        ("V01", "XX"),
        ("Y98", "XX"),
        ("Z99.2", "XXI"),
        ("U07.1", "XXII"),
        ("e11.9", "IV"),
        # Categories no chapter holds.
        ("D49", UNKNOWN),
        ("K95", UNKNOWN),
        ("U99", UNKNOWN),
    ],
)
def test_chapter_of(code: str, chapter: str) -> None:
    assert chapter_of(code) == chapter


def test_chapters_do_not_overlap() -> None:
    ranges = sorted((first, last) for _, first, last, _ in CHAPTERS)
    for (_, last), (first, _) in itertools.pairwise(ranges):
        assert last < first


def test_split_statements() -> None:
    assert split_statements("SELECT 1; SELECT ';' AS s;;\n SELECT `a;b` FROM t") == [
        "SELECT 1",
        "SELECT ';' AS s",
        "SELECT `a;b` FROM t",
    ]
    assert split_statements("  ;  ") == []


def test_analytics_identity_reads_lakehouse_writes_gold(topology) -> None:  # type: ignore[no-untyped-def]
    from infra.provision import bucket_policy, site_buckets
    from lakehouse.storage import ANALYTICS_SITE

    read_write, read_only = site_buckets(topology)[ANALYTICS_SITE]
    assert read_write == (topology.province.buckets.gold,)
    assert read_only == (topology.province.buckets.lakehouse,)
    statements = bucket_policy(read_write, read_only)["Statement"]
    lakehouse = [
        s for s in statements if any(topology.province.buckets.lakehouse in r for r in s["Resource"])
    ]
    assert all(
        not any(a in ("s3:*", "s3:PutObject", "s3:DeleteObject") for a in s["Action"]) for s in lakehouse
    )
