"""Many cities, one command: land each city's exports, run its ingestion, publish what changed.

Cities run one after another (each ingestion is a Spark job that uses the machine), each with
its own credentials; a city that fails is reported and the others still run, so one bad export
does not hold back the province."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lakehouse.errors import MedshareError
from lakehouse.settings import Settings
from lakehouse.storage import site_credentials
from lakehouse.topology import Topology

if TYPE_CHECKING:
    from ingestion.profiles import SourceProfiles
    from ingestion.report import RunReport
    from lakehouse.contracts import Contract
    from lakehouse.pseudonyms import ProvinceKey
    from lakehouse.replication.layout import ReplicationLayout
    from lakehouse.replication.publisher import PublishReport

STEPS = ("land", "ingest", "publish")
# (what is being done, done, total): the caller's progress bar.
Progress = Callable[[str, int, int], None]


def _quiet(_what: str, _done: int, _total: int) -> None:
    pass


@dataclass
class CityRun:
    city: str
    landed: int | None = None
    ingestion: RunReport | None = None
    published: PublishReport | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        ingested = self.ingestion is None or (
            self.ingestion.status == "succeeded" and all(d.balanced for d in self.ingestion.datasets.values())
        )
        return self.error is None and ingested


def parse_cities(topology: Topology, text: str | None, exports: Path | None = None) -> list[str]:
    """`all`, a comma-separated list, or (None) every city with a folder in `exports`; in the
    topology's order, each city checked against it."""
    if text is None:
        found = [c.id for c in topology.cities if exports is not None and (exports / c.id).is_dir()]
        if not found:
            raise MedshareError(
                f"no city folder in {exports} (expected e.g. {exports}/{topology.cities[0].id})"
            )
        return found
    if text.strip() == "all":
        return [c.id for c in topology.cities]
    wanted = {topology.city(c.strip()).id for c in text.split(",") if c.strip()}
    if not wanted:
        raise MedshareError("no city named: give `all` or a comma-separated list of cities")
    return [c.id for c in topology.cities if c.id in wanted]


def land_city(settings: Settings, topology: Topology, city: str, folder: Path) -> int:
    """Upload the city's export folder to its landing bucket; the number of files new or changed."""
    from ingestion.landing import land
    from lakehouse.storage import s3_client

    if not folder.is_dir():
        raise MedshareError(f"{folder} is not a folder: nothing to land for {city}")
    client = s3_client(settings, site_credentials(settings, city))
    return len(land(client, topology.city(city).buckets.landing, folder))


def ingest_city(
    settings: Settings,
    topology: Topology,
    contracts: dict[str, Contract],
    profiles: SourceProfiles,
    city: str,
    progress: Progress = _quiet,
) -> RunReport:
    """The city's ingestion job on its own Spark session (its credentials), stopped afterwards."""
    from ingestion.job import IngestOptions, run_ingestion
    from ingestion.read import store_access
    from lakehouse.spark import build_spark_session

    creds = site_credentials(settings, city)
    spark = build_spark_session(settings, creds, app_name=f"medshare-ingest-{city}")
    try:
        return run_ingestion(
            spark,
            store_access(settings, creds),
            topology,
            contracts,
            IngestOptions(city=city),
            progress,
            profiles=profiles,
        )
    finally:
        spark.stop()


def publish_city(
    settings: Settings,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
    city: str,
    progress: Progress = _quiet,
) -> PublishReport:
    from lakehouse.replication.publisher import Publisher

    publisher = Publisher(settings, layout, city, contracts, key, progress=progress)
    try:
        return publisher.run_once()
    finally:
        publisher.close()


def run_cities(
    settings: Settings,
    exports: Path,
    cities: Sequence[str],
    steps: Sequence[str] = STEPS,
    *,
    on_city: Callable[[str, int], None] = lambda _c, _n: None,
    progress: Progress = _quiet,
) -> list[CityRun]:
    """Run `steps` for each city in turn; `on_city(city, index)` when a city starts."""
    from ingestion.profiles import load_profiles
    from lakehouse.contracts import load_contracts
    from lakehouse.pseudonyms import ProvinceKey
    from lakehouse.replication.layout import ReplicationLayout
    from lakehouse.topology import load_topology

    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise MedshareError(f"unknown step(s) {', '.join(unknown)} (known: {', '.join(STEPS)})")
    topology = load_topology(settings.platform_dir)
    contracts = load_contracts(settings.platform_dir)
    profiles = load_profiles(settings.platform_dir, topology, contracts)
    layout = ReplicationLayout(topology)
    key = ProvinceKey.from_settings(settings) if "publish" in steps else None
    runs = []
    for index, city in enumerate(cities):
        on_city(city, index)
        run = CityRun(city)
        runs.append(run)
        for step in STEPS:
            if step not in steps:
                continue
            started = time.monotonic()
            try:
                if step == "land":
                    run.landed = land_city(settings, topology, city, exports / city)
                elif step == "ingest":
                    report = run.ingestion = ingest_city(
                        settings, topology, contracts, profiles, city, progress
                    )
                    if not run.ok:  # nothing of a failed or unbalanced run is published
                        run.error = f"ingest: run {report.run_id} {report.status}" + (
                            "" if report.status != "succeeded" else " but its row accounting does not balance"
                        )
                        break
                elif key is not None:
                    run.published = publish_city(settings, layout, contracts, key, city, progress)
            except MedshareError as exc:
                run.error = f"{step}: {exc}"
                break
            finally:
                run.seconds[step] = time.monotonic() - started
    return runs
