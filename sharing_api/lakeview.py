"""The API's read model of the provincial lakehouse: every (dataset, city) of the federated tables
held in memory as Arrow, sorted by person_key, refreshed when the Delta table gets a new version.

Why in memory: a patient lookup must answer in milliseconds over millions of rows, and the
provincial tables are partitioned by city/month (how they are written), not by person; a scan
per lookup would read a file per city and month. Sorting by person_key and binary search (numpy over the
fixed-width keys) makes a lookup a few slices. Only (dataset, city) parts whose files changed are
re-read, in the background; requests keep reading the previous generation meanwhile, and a part
that cannot be read is reported missing (or stale) rather than failing the request.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse.shareable import PERSON_KEY
from lakehouse.topology import Topology
from sharing_api.catalog import CITY, DatasetView

log = logging.getLogger(__name__)

KEY_WIDTH = 64  # person_key: hex HMAC-SHA256


@dataclass(frozen=True, eq=False)
class Segment:
    """One city's rows of one dataset at one table version, sorted by (person_key, time desc)."""

    dataset: str
    city: str
    version: int
    files: frozenset[str]
    table: pa.Table
    keys: np.ndarray = field(repr=False)  # the person_key column as fixed-width bytes, same order

    def rows_of(self, probe: np.bytes_) -> pa.Table | None:
        """One person's rows (`probe_of` their key), None when this part has none — most parts
        of most people: one search tells, and no empty slice is made."""
        keys = self.keys
        lo = int(keys.searchsorted(probe))
        if lo == len(keys) or keys[lo] != probe:
            return None
        hi = int(keys.searchsorted(probe, "right"))
        return self.table.slice(lo, hi - lo)


def probe_of(person_key: str) -> np.bytes_:
    """A person_key as the fixed-width bytes the parts' key arrays hold (made once per lookup)."""
    return np.bytes_(person_key.encode("ascii"))


@dataclass(frozen=True, eq=False)
class Generation:
    """An immutable view of every part; a new one replaces it when anything changes."""

    number: int
    segments: Mapping[tuple[str, str], Segment]
    # (dataset, city) → why it cannot be served (never loaded) or is stale (served from an older load).
    missing: Mapping[tuple[str, str], str]
    stale: Mapping[tuple[str, str], str]
    created: float = field(default_factory=time.monotonic)

    def parts(self, dataset: str, cities: Iterator[str] | tuple[str, ...]) -> list[Segment]:
        return [s for c in cities if (s := self.segments.get((dataset, c))) is not None]


def _sorted_part(table: pa.Table, view: DatasetView) -> tuple[pa.Table, np.ndarray]:
    table = table.filter(pc.is_valid(table[PERSON_KEY]))
    order = pc.sort_indices(table, [(PERSON_KEY, "ascending"), (view.time_column, "descending")])
    table = table.take(order).combine_chunks()
    keys_arrow = pc.cast(table[PERSON_KEY].combine_chunks(), pa.binary(KEY_WIDTH))
    data = keys_arrow.buffers()[1]
    assert data is not None
    keys = np.frombuffer(
        data, dtype=f"S{KEY_WIDTH}", count=len(keys_arrow), offset=keys_arrow.offset * KEY_WIDTH
    )
    return table, keys


class LakeView:
    """Keeps the current Generation up to date on a background thread."""

    def __init__(
        self,
        *,
        table_uris: Mapping[str, str],
        views: Mapping[str, DatasetView],
        topology: Topology,
        storage_options: dict[str, str],
        refresh_seconds: float,
        keep_seconds: float = 600.0,
        versions: Callable[[], object | None] | None = None,
    ):
        self.table_uris = dict(table_uris)
        self.views = views
        self.cities = tuple(c.id for c in topology.cities)
        self.storage_options = storage_options
        self.refresh_seconds = refresh_seconds
        # The tables' versions as someone else polls them (the instance's keeper), None when
        # nobody does: then this process asks the tables itself on every pass.
        self.versions = versions
        self.keep_seconds = keep_seconds
        self._tables: dict[str, DeltaTable] = {}
        self._listed: dict[str, tuple[int, dict[str, frozenset[str]]]] = {}
        self._current = Generation(0, {}, {}, {})
        self._history: dict[int, Generation] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loaded = threading.Event()

    # -- reading ---------------------------------------------------------------------------------
    @property
    def current(self) -> Generation:
        return self._current

    def generation(self, number: int) -> Generation | None:
        """A recent generation (for a cursor that pinned it), or None once it is dropped."""
        if number == self._current.number:
            return self._current
        with self._lock:
            return self._history.get(number)

    # -- refreshing ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lakeview-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        seen: object | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            now = self.versions() if self.versions is not None else None
            try:
                if now is None or now != seen:
                    self.refresh()
                    # A part that could not be read is tried again on the next pass.
                    current = self._current
                    seen = None if current.missing or current.stale else now
            except Exception:
                seen = None
                log.exception("read model refresh failed; retrying")
            if not self.loaded.is_set():
                # The loaded read model lives as long as the process: leaving its objects out of
                # the collector's full passes keeps those passes (and the pauses they cause) short.
                gc.freeze()
            self.loaded.set()
            self._stop.wait(max(0.0, self.refresh_seconds - (time.monotonic() - started)))

    def refresh(self) -> bool:
        """One pass over every dataset; True when a new generation was published."""
        old = self._current
        segments = dict(old.segments)
        missing: dict[tuple[str, str], str] = {}
        stale: dict[tuple[str, str], str] = {}
        changed = False
        for dataset, uri in self.table_uris.items():
            view = self.views[dataset]
            try:
                files = self._files_by_city(dataset, uri)
            except (DeltaError, OSError) as exc:
                reason = _reason(exc)
                for city in self.cities:
                    key = (dataset, city)
                    if key in segments:
                        stale[key] = f"serving an older version: {reason}"
                    else:
                        missing[key] = reason
                continue
            table = self._tables[dataset]
            for city in self.cities:
                key = (dataset, city)
                wanted = files.get(city, frozenset())
                have = segments.get(key)
                if have is not None and have.files == wanted:
                    continue
                try:
                    segments[key] = self._load(table, view, city, wanted)
                    changed = True
                except (DeltaError, OSError, pa.ArrowException) as exc:
                    if have is not None:
                        stale[key] = f"serving version {have.version}: {_reason(exc)}"
                    else:
                        missing[key] = _reason(exc)
        if changed or missing != dict(old.missing) or stale != dict(old.stale):
            self._publish(Generation(old.number + 1, segments, missing, stale))
            return True
        return False

    def _publish(self, generation: Generation) -> None:
        with self._lock:
            old = self._current
            if old.number:
                self._history[old.number] = old
            cutoff = time.monotonic() - self.keep_seconds
            for number, gen in list(self._history.items()):
                # A superseded generation lives while a cursor may still page through it.
                if gen.created < cutoff or len(self._history) > 4:
                    del self._history[number]
            self._current = generation

    def _files_by_city(self, dataset: str, uri: str) -> dict[str, frozenset[str]]:
        table = self._tables.get(dataset)
        try:
            if table is None:
                table = DeltaTable(uri, storage_options=self.storage_options)
                self._tables[dataset] = table
            else:
                table.update_incremental()
        except TableNotFoundError as exc:
            raise OSError(f"table {uri} does not exist") from exc
        version = table.version()
        listed = self._listed.get(dataset)
        if listed is not None and listed[0] == version:
            # Listing a big table's files costs real CPU; only a new version can change them.
            return listed[1]
        actions = pa.table(table.get_add_actions(flatten=True))
        paths = actions.column("path").to_pylist()
        cities = actions.column(f"partition.{CITY}").to_pylist()
        by_city: dict[str, set[str]] = {}
        for path, city in zip(paths, cities, strict=True):
            by_city.setdefault(city, set()).add(path)
        files = {c: frozenset(p) for c, p in by_city.items()}
        self._listed[dataset] = (version, files)
        return files

    def _load(self, table: DeltaTable, view: DatasetView, city: str, files: frozenset[str]) -> Segment:
        version = table.version()
        if files:
            data = table.to_pyarrow_dataset(partitions=[(CITY, "=", city)])
            names = set(data.schema.names)
            part = data.to_table(columns=[c for c in view.columns if c in names])
            # A column the contract added later and this city never sent reads as null.
            for f in view.schema:
                if f.name not in names:
                    part = part.append_column(f, pa.nulls(part.num_rows, f.type))
            part = part.select(list(view.columns)).cast(view.schema)
        else:
            part = view.schema.empty_table()
        sorted_table, keys = _sorted_part(part, view)
        log.info("loaded %s/%s: %d rows at version %d", view.name, city, sorted_table.num_rows, version)
        return Segment(view.name, city, version, files, sorted_table, keys)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
