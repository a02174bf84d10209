"""`medshare relayout`: rebuild a provincial table written before the (city, month) layout.

A table the replicator created before it partitioned by (city, month) is partitioned
city/hospital_id/month: the replicator still applies units to it (same predicate) but cannot
compact it, and with 18 cities its partitions are thousands of tiny files. Rebuilding it is one
overwrite of the whole table with the new partitioning — a commit like any other, so:

- the units' `txn` versions stay in the table's state (they are not per file), so exactly-once
  holds across the rebuild, and is checked after it;
- the files of earlier versions stay in the log until VACUUM, so time travel to a version still
  served (Delta Sharing copies, an API generation) reads what it read before;
- the rows are checked: the same count before and after.

Then each (city, month) is Z-ordered by person_key, as the replicator's compaction would leave it.
The table has one writer: the replicators must be stopped while it runs (the CLI checks that the
replicator's consumer group has no member). Should one commit in between anyway, the rebuild's
commit is not the next version and it says so, loudly: run `medshare verify`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse.errors import MedshareError
from lakehouse.replication.layout import CITY, MONTH, PROVINCE_PARTITIONS, ReplicationLayout
from lakehouse.replication.replicator import (
    COMPACT_TARGET_BYTES,
    MAX_FILE_BYTES,
    MIN_FILE_BYTES,
    WRITE_BUDGET_BYTES,
    WRITER_PROPERTIES,
)
from lakehouse.shareable import PERSON_KEY

Progress = Callable[[str], None]


class RelayoutError(MedshareError):
    """A table could not be rebuilt, or was rebuilt but another writer committed meanwhile."""


@dataclass(frozen=True, kw_only=True)
class Rebuilt:
    dataset: str
    uri: str
    partitioned_by: tuple[str, ...]  # as found
    from_version: int | None  # None: nothing to do (missing, or already laid out)
    to_version: int | None = None
    rows: int = 0
    files_before: int = 0
    files_after: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return self.from_version is not None


def _transactions(table: DeltaTable, app_ids: Sequence[str]) -> dict[str, int | None]:
    return {app: table.transaction_version(app) for app in app_ids}


def _rows(table: DeltaTable) -> int:
    return int(table.to_pyarrow_dataset().count_rows())


def relayout_table(
    layout: ReplicationLayout,
    dataset: str,
    storage_options: dict[str, str],
    progress: Progress = lambda _: None,
) -> Rebuilt:
    """Rebuild the provincial table of `dataset` in (city, month) partitions clustered by
    person_key; a no-op for a table already laid out so, or one that does not exist."""
    uri = layout.province_table(dataset).uri
    try:
        table = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        return Rebuilt(dataset=dataset, uri=uri, partitioned_by=(), from_version=None)
    except (DeltaError, OSError) as exc:
        raise RelayoutError(f"{uri}: cannot open the table: {exc}") from exc
    found = tuple(table.metadata().partition_columns)
    if found == PROVINCE_PARTITIONS:
        return Rebuilt(dataset=dataset, uri=uri, partitioned_by=found, from_version=None)
    if not {CITY, MONTH} <= set(table.schema().to_arrow().names):
        raise RelayoutError(f"{uri}: no {CITY!r} and {MONTH!r} columns: not a provincial table")
    started = time.monotonic()
    version = table.version()
    app_ids = [layout.app_id(c.id, dataset) for c in layout.topology.cities]
    before = _transactions(table, app_ids)
    actions = pa.table(table.get_add_actions(flatten=True))
    files_before = actions.num_rows
    rows = _rows(table)
    # One open file per (city, month) while writing: keep them within the replicator's budget.
    partitions = len(
        pa.table({"c": actions[f"partition.{CITY}"], "m": actions[f"partition.{MONTH}"]})
        .group_by(["c", "m"])
        .aggregate([])
    )
    target = min(max(WRITE_BUDGET_BYTES // max(partitions, 1), MIN_FILE_BYTES), MAX_FILE_BYTES)
    progress(f"{dataset}: rewriting {rows:,} rows from {files_before:,} files (version {version})")
    source = table.to_pyarrow_dataset()
    reader = pa.RecordBatchReader.from_batches(source.schema, source.to_batches(batch_size=65_536))
    try:
        write_deltalake(
            table,
            reader,
            mode="overwrite",
            schema_mode="overwrite",  # the partitioning changes with it
            partition_by=list(PROVINCE_PARTITIONS),
            storage_options=storage_options,
            target_file_size=target,
            writer_properties=WRITER_PROPERTIES,
            commit_properties=CommitProperties(custom_metadata={"medshare.operation": "relayout"}),
        )
    except (DeltaError, pa.ArrowException, OSError) as exc:
        raise RelayoutError(f"{uri}: the rewrite was not committed (the table is as it was): {exc}") from exc
    table.update_incremental()
    written = table.version()
    if written != version + 1:
        raise RelayoutError(
            f"{uri}: another writer committed while the table was rebuilt (version {version} → "
            f"{written}); stop every replicator, then run `medshare verify` and relayout again"
        )
    if PERSON_KEY in table.schema().to_arrow().names:
        progress(f"{dataset}: clustering by {PERSON_KEY}")
        table.optimize.z_order(
            [PERSON_KEY], target_size=COMPACT_TARGET_BYTES, writer_properties=WRITER_PROPERTIES
        )
        table.update_incremental()
    after = _transactions(table, app_ids)
    if after != before:
        changed = {a: (before[a], after[a]) for a in app_ids if before[a] != after[a]}
        raise RelayoutError(f"{uri}: the applied versions changed during the rebuild: {changed}")
    if (got := _rows(table)) != rows:
        raise RelayoutError(f"{uri}: {rows:,} rows before the rebuild, {got:,} after")
    return Rebuilt(
        dataset=dataset,
        uri=uri,
        partitioned_by=found,
        from_version=version,
        to_version=table.version(),
        rows=rows,
        files_before=files_before,
        files_after=pa.table(table.get_add_actions(flatten=True)).num_rows,
        seconds=time.monotonic() - started,
    )
