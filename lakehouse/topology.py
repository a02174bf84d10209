"""The typed model of platform/topology.yaml: province, cities, hospitals, buckets, Kafka topics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from lakehouse.errors import TopologyError

TOPOLOGY_FILE = "topology.yaml"

Ident = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*$", max_length=40)]
# S3 bucket naming rules (lowercase, digits, dots, hyphens; 3..63 characters).
BucketName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CareLevel(StrEnum):
    PROVINCIAL = "provincial"
    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"


class Service(StrEnum):
    """What a provincial specialist centre reads for the hospitals that consult it."""

    IMAGING = "imaging"
    ECG = "ecg"
    PATHOLOGY = "pathology"


class SpecialistCentre(_Frozen):
    id: Ident
    name: str
    name_zh: str | None = None
    service: Service
    hospital: Ident  # the hospital that hosts it


class DataCentre(_Frozen):
    """A provincial site: its object store, broker (Kafka rack `rack`), replicator and API."""

    id: Ident
    name: str
    rack: Ident


class ProvinceBuckets(_Frozen):
    lakehouse: BucketName
    gold: BucketName
    shared: BucketName  # the copies served over Delta Sharing (masked, consent-filtered)
    audit: BucketName  # the API's audit trail: versioned, appended to, readable by no analyst


class CityBuckets(_Frozen):
    landing: BucketName
    bronze: BucketName
    curated: BucketName
    quarantine: BucketName


class Province(_Frozen):
    id: Ident
    name: str
    name_zh: str | None = None
    region_code: Annotated[str, StringConstraints(pattern=r"^\d{2}$")]
    data_centres: tuple[DataCentre, ...] = Field(min_length=1)
    telemedicine_centre: Ident
    specialist_centres: tuple[SpecialistCentre, ...] = ()
    buckets: ProvinceBuckets


class City(_Frozen):
    id: Ident
    name: str
    name_zh: str | None = None
    # 4 digits for a prefecture-level city, 6 for one the province administers (Jiyuan, 419001).
    region_code: Annotated[str, StringConstraints(pattern=r"^\d{4}(\d{2})?$")]
    sub_centre: str
    buckets: CityBuckets


class Hospital(_Frozen):
    id: Ident
    name: str
    name_zh: str | None = None
    city: Ident
    level: CareLevel
    # GB/T 2260 code of the county (county-level city, former county) a county or township
    # hospital serves.
    county: Annotated[str, StringConstraints(pattern=r"^\d{6}$")] | None = None


class Topic(_Frozen):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
    dataset: Ident | str
    partitions: int | None = Field(default=None, ge=1)
    # Broker-side topic settings, e.g. {cleanup.policy: compact}.
    config: dict[str, str] = Field(default_factory=dict)


class KafkaLayout(_Frozen):
    default_partitions: int = Field(default=3, ge=1)
    # 1 on a single-broker development stack; 3 on a real cluster.
    replication_factor: int = Field(default=1, ge=1)
    topics: tuple[Topic, ...]

    def partitions_of(self, topic: Topic) -> int:
        return topic.partitions or self.default_partitions


class Topology(_Frozen):
    province: Province
    cities: tuple[City, ...] = Field(min_length=1)
    hospitals: tuple[Hospital, ...] = Field(min_length=1)
    kafka: KafkaLayout

    def city(self, city_id: str) -> City:
        for city in self.cities:
            if city.id == city_id:
                return city
        known = ", ".join(c.id for c in self.cities)
        raise TopologyError(f"unknown city {city_id!r} (known: {known})")

    def data_centre(self, site_id: str) -> DataCentre:
        for site in self.province.data_centres:
            if site.id == site_id:
                return site
        known = ", ".join(s.id for s in self.province.data_centres)
        raise TopologyError(f"unknown provincial site {site_id!r} (known: {known})")

    def hospital(self, hospital_id: str) -> Hospital:
        for hospital in self.hospitals:
            if hospital.id == hospital_id:
                return hospital
        raise TopologyError(f"unknown hospital {hospital_id!r}")

    def hospitals_of(self, city_id: str) -> tuple[Hospital, ...]:
        return tuple(h for h in self.hospitals if h.city == city_id)

    def all_buckets(self) -> tuple[str, ...]:
        buckets = list(self.province.buckets.model_dump().values())
        for city in self.cities:
            buckets.extend(city.buckets.model_dump().values())
        return tuple(buckets)


def _loc(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _duplicates(items: Sequence[Any], attr: str, section: str, what: str) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for i, item in enumerate(items):
        value = getattr(item, attr)
        if value in seen:
            problems.append(
                f"{section}[{i}].{attr}: duplicate {what} {value!r} (first at {section}[{seen[value]}])"
            )
        else:
            seen[value] = i
    return problems


def _cross_check(topo: Topology) -> list[str]:
    problems = _duplicates(topo.cities, "id", "cities", "city id")
    problems += _duplicates(topo.hospitals, "id", "hospitals", "hospital id")
    problems += _duplicates(topo.kafka.topics, "name", "kafka.topics", "topic name")
    problems += _duplicates(
        topo.province.specialist_centres, "id", "province.specialist_centres", "centre id"
    )
    regions = {c.id: c.region_code for c in topo.cities}
    for i, hospital in enumerate(topo.hospitals):
        if hospital.city not in regions:
            problems.append(
                f"hospitals[{i}].city: unknown city {hospital.city!r} of hospital {hospital.id!r}"
            )
        elif hospital.county is not None and not hospital.county.startswith(regions[hospital.city][:4]):
            problems.append(
                f"hospitals[{i}].county: {hospital.county!r} of hospital {hospital.id!r} is not inside "
                f"city {hospital.city!r} (region {regions[hospital.city]!r})"
            )
        if hospital.level in (CareLevel.COUNTY, CareLevel.TOWNSHIP) and hospital.county is None:
            problems.append(
                f"hospitals[{i}].county: {hospital.level} hospital {hospital.id!r} needs its county's code"
            )
    hospital_ids = {h.id for h in topo.hospitals}
    if topo.province.telemedicine_centre not in hospital_ids:
        problems.append(
            f"province.telemedicine_centre: unknown hospital {topo.province.telemedicine_centre!r}"
        )
    for i, centre in enumerate(topo.province.specialist_centres):
        if centre.hospital not in hospital_ids:
            problems.append(
                f"province.specialist_centres[{i}].hospital: unknown hospital {centre.hospital!r}"
            )
    for i, city in enumerate(topo.cities):
        if not city.region_code.startswith(topo.province.region_code):
            problems.append(
                f"cities[{i}].region_code: {city.region_code!r} is not inside province region "
                f"{topo.province.region_code!r}"
            )
    owners: dict[str, str] = {}
    bucket_sites = [("province.buckets", topo.province.buckets.model_dump())]
    bucket_sites += [(f"cities[{i}].buckets", c.buckets.model_dump()) for i, c in enumerate(topo.cities)]
    for where, buckets in bucket_sites:
        for role, name in buckets.items():
            if name in owners:
                problems.append(f"{where}.{role}: bucket {name!r} already used by {owners[name]}")
            owners[name] = f"{where}.{role}"
    return problems


def parse_topology(data: object, *, source: str) -> Topology:
    """Validate already-parsed YAML; every error names `source`, the key and the problem."""
    try:
        topo = Topology.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_loc(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise TopologyError(f"{source}: " + f"\n{source}: ".join(problems)) from exc
    problems = _cross_check(topo)
    if problems:
        raise TopologyError(f"{source}: " + f"\n{source}: ".join(problems))
    return topo


def load_topology(platform_dir: Path) -> Topology:
    """Load and check `platform_dir/topology.yaml`."""
    path = platform_dir / TOPOLOGY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read the topology: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from exc
    return parse_topology(data, source=str(path))
