"""Readers of hospital exports. Every reader yields *raw records*: dict[str, str | None] keyed by
the dataset contract's column names, values as text in canonical form — dates `YYYY-MM-DD`,
timestamps `YYYY-MM-DDTHH:MM:SS` (local time, no zone), numbers as decimal text, missing as None.
Typing and validation happen later, in Spark, so that a bad value is quarantined with its rule
instead of failing the reader."""
