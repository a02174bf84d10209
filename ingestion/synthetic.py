"""Clean synthetic hospital records for the topology: people who visit several hospitals in
several cities, with plausible encounters, ICD-10 diagnoses, LOINC labs, ATC medications,
imaging studies and teleconsultations. Seeded: the same seed gives the same records.

Records are raw records (see ingestion.sources): text values in canonical form.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from ingestion.codes import code_rows
from lakehouse.identity import make_resident_id
from lakehouse.topology import CareLevel, City, Hospital, Topology

RawRecord = dict[str, str | None]

SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕建国志强文辉鹏飞"
STREETS = [
    "人民路",
    "建设路",
    "中原路",
    "解放路",
    "文化路",
    "花园路",
    "工人路",
    "嵩山路",
    "黄河路",
    "淮河路",
]
DEPARTMENTS = [
    "internal medicine",
    "surgery",
    "cardiology",
    "respiratory",
    "paediatrics",
    "obstetrics",
    "orthopaedics",
    "neurology",
    "oncology",
    "emergency",
]
CENTRES = [
    "imaging",
    "ecg",
    "pathology",
    "cardiology",
    "neurology",
    "oncology",
    "paediatrics",
    "dermatology",
]
ENCOUNTER_TYPES = (
    ("outpatient", 70),
    ("inpatient", 15),
    ("emergency", 10),
    ("teleconsultation", 5),
)
IMAGING_MODALITIES = (("CT", 35), ("DX", 25), ("MR", 15), ("US", 20), ("NM", 2), ("MG", 3))
BODY_PARTS = {
    "CT": "CHEST",
    "DX": "CHEST",
    "MR": "HEAD",
    "US": "ABDOMEN",
    "NM": "WHOLEBODY",
    "MG": "BREAST",
}


def fmt_ts(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def fmt_date(value: dt.date) -> str:
    return value.isoformat()


@dataclass(frozen=True, kw_only=True)
class Person:
    resident_id: str
    name: str
    sex: str
    birth_date: dt.date
    phone: str
    address: str
    county_code: str
    home_city: str


@dataclass(frozen=True, kw_only=True)
class Window:
    start: dt.date
    end: dt.date

    def random_time(self, rng: random.Random) -> dt.datetime:
        days = (self.end - self.start).days
        day = self.start + dt.timedelta(days=rng.randrange(days + 1))
        return dt.datetime.combine(day, dt.time(rng.randrange(7, 22), rng.randrange(60), rng.randrange(60)))


def _weighted(rng: random.Random, options: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def make_person(rng: random.Random, city: City, sequence: int) -> Person:
    sex: Literal["M", "F"] = "M" if rng.random() < 0.5 else "F"
    age_days = int(min(max(rng.gauss(45, 20), 2), 98) * 365.25)
    birth = dt.date(2026, 6, 30) - dt.timedelta(days=age_days)
    # A 4-digit city code takes a county suffix; Jiyuan's 6-digit code is its own county.
    county = city.region_code
    if len(county) == 4:
        county += f"{rng.choice([2, 3, 4, 5, 22, 81, 82, 83]):02d}"
    given = "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
    return Person(
        resident_id=make_resident_id(region=county, birth_date=birth, sequence=sequence % 1000, sex=sex),
        name=rng.choice(SURNAMES) + given,
        sex=sex,
        birth_date=birth,
        phone=f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}",
        address=f"{city.name_zh or city.name}{rng.choice(STREETS)}{rng.randrange(1, 400)}号",
        county_code=county,
        home_city=city.id,
    )


class RecordFactory:
    """Builds the records of every dataset, per hospital, as people visit hospitals."""

    def __init__(self, topology: Topology, *, seed: int, window: Window) -> None:
        self.topology = topology
        self.rng = random.Random(seed)
        self.window = window
        self.records: dict[str, dict[str, list[RawRecord]]] = defaultdict(lambda: defaultdict(list))
        self._mrn: dict[tuple[str, str], str] = {}
        self._counters: dict[str, int] = defaultdict(int)
        self._icd = [r["code"] for r in code_rows("icd10")]
        self._loinc = code_rows("loinc")
        self._atc = code_rows("atc")
        self._provincial = [h for h in topology.hospitals if h.level is CareLevel.PROVINCIAL]
        self._centre = topology.hospital(topology.province.telemedicine_centre)

    def _next(self, prefix: str) -> int:
        self._counters[prefix] += 1
        return self._counters[prefix]

    def _choose_hospital(self, person: Person, cities: list[City]) -> Hospital:
        roll = self.rng.random()
        if roll < 0.7 or len(cities) == 1:
            city = person.home_city
        elif roll < 0.85 and self._provincial:
            return self.rng.choice(self._provincial)
        else:
            city = self.rng.choice(cities).id
        local = self.topology.hospitals_of(city)
        weights = [{"provincial": 2, "city": 4, "county": 5, "township": 3}[h.level.value] for h in local]
        return self.rng.choices(local, weights=weights)[0]

    def _add(self, hospital: Hospital, dataset: str, record: RawRecord) -> None:
        self.records[hospital.id][dataset].append(record)

    def _patient_mrn(self, person: Person, hospital: Hospital, first_visit: dt.datetime) -> str:
        key = (hospital.id, person.resident_id)
        if key not in self._mrn:
            mrn = f"{hospital.id.upper()}-{self._next('mrn:' + hospital.id):07d}"
            self._mrn[key] = mrn
            registered = first_visit - dt.timedelta(days=self.rng.randrange(0, 30), hours=1)
            self._add(
                hospital,
                "patients",
                {
                    "hospital_id": hospital.id,
                    "patient_mrn": mrn,
                    "resident_id": person.resident_id,
                    "name": person.name,
                    "sex": person.sex,
                    "birth_date": fmt_date(person.birth_date),
                    "phone": person.phone,
                    "address": person.address,
                    "county_code": person.county_code,
                    "registered_at": fmt_ts(registered),
                },
            )
        return self._mrn[key]

    def visit(self, person: Person, cities: list[City]) -> None:
        hospital = self._choose_hospital(person, cities)
        admit = self.window.random_time(self.rng)
        mrn = self._patient_mrn(person, hospital, admit)
        kind = _weighted(self.rng, ENCOUNTER_TYPES)
        if kind == "teleconsultation" and hospital.level in (CareLevel.PROVINCIAL,):
            kind = "outpatient"
        stay = {
            "inpatient": dt.timedelta(days=self.rng.randrange(1, 15)),
            "emergency": dt.timedelta(hours=self.rng.randrange(1, 12)),
        }.get(kind, dt.timedelta(minutes=self.rng.randrange(10, 120)))
        encounter_id = f"E{self._next('enc:' + hospital.id):08d}"
        referred = None
        if hospital.level in (CareLevel.PROVINCIAL, CareLevel.CITY) and self.rng.random() < 0.2:
            lower = [
                h
                for h in self.topology.hospitals_of(person.home_city)
                if h.level in (CareLevel.COUNTY, CareLevel.TOWNSHIP)
            ]
            referred = self.rng.choice(lower).id if lower else None
        self._add(
            hospital,
            "encounters",
            {
                "hospital_id": hospital.id,
                "encounter_id": encounter_id,
                "patient_mrn": mrn,
                "resident_id": person.resident_id,
                "encounter_type": kind,
                "department": self.rng.choice(DEPARTMENTS),
                "admit_time": fmt_ts(admit),
                "discharge_time": fmt_ts(admit + stay),
                "referred_from_hospital_id": referred,
            },
        )
        base: RawRecord = {
            "hospital_id": hospital.id,
            "encounter_id": encounter_id,
            "resident_id": person.resident_id,
        }
        self._diagnoses(hospital, base, admit)
        self._labs(hospital, base, admit)
        self._medications(hospital, base, admit)
        if hospital.level is not CareLevel.TOWNSHIP and self.rng.random() < 0.12:
            self._imaging(hospital, base, mrn, admit)
        if kind == "teleconsultation":
            self._teleconsultation(hospital, base, admit)

    def _diagnoses(self, hospital: Hospital, base: RawRecord, admit: dt.datetime) -> None:
        # Common conditions first in the list: weight falls with rank (a long tail).
        weights = [1 / (rank + 8) for rank in range(len(self._icd))]
        for seq in range(1, self.rng.choice((1, 1, 2, 2, 3)) + 1):
            self._add(
                hospital,
                "diagnoses",
                {
                    **base,
                    "diagnosis_seq": str(seq),
                    "icd10_code": self.rng.choices(self._icd, weights=weights)[0],
                    "diagnosis_type": "primary" if seq == 1 else "secondary",
                    "diagnosed_at": fmt_ts(admit + dt.timedelta(minutes=20 * seq)),
                },
            )

    def _labs(self, hospital: Hospital, base: RawRecord, admit: dt.datetime) -> None:
        for test in self.rng.sample(self._loinc, k=self.rng.choice((0, 1, 2, 3, 4))):
            low, high = float(test["ref_low"]), float(test["ref_high"])
            value = round(self.rng.gauss((low + high) / 2, (high - low) / 2.5), 2)
            flag = "L" if value < low else "H" if value > high else "N"
            self._add(
                hospital,
                "lab_results",
                {
                    **base,
                    "lab_result_id": f"L{self._next('lab:' + hospital.id):09d}",
                    "loinc_code": test["code"],
                    "value_num": str(value),
                    "value_text": None,
                    "unit": test["unit"],
                    "reference_low": test["ref_low"],
                    "reference_high": test["ref_high"],
                    "abnormal_flag": flag,
                    "collected_at": fmt_ts(admit + dt.timedelta(minutes=45)),
                },
            )

    def _medications(self, hospital: Hospital, base: RawRecord, admit: dt.datetime) -> None:
        for drug in self.rng.sample(self._atc, k=self.rng.choice((0, 1, 1, 2, 3))):
            start = admit.date()
            self._add(
                hospital,
                "medications",
                {
                    **base,
                    "medication_id": f"M{self._next('med:' + hospital.id):09d}",
                    "atc_code": drug["code"],
                    "drug_name": drug["name"],
                    "dose": drug["dose"],
                    "dose_unit": drug["dose_unit"],
                    "route": drug["route"],
                    "frequency": self.rng.choice(["qd", "bid", "tid", "prn"]),
                    "start_date": fmt_date(start),
                    "end_date": fmt_date(start + dt.timedelta(days=self.rng.randrange(1, 30))),
                },
            )

    def _imaging(self, hospital: Hospital, base: RawRecord, mrn: str, admit: dt.datetime) -> None:
        modality = _weighted(self.rng, IMAGING_MODALITIES)
        n = self._next("img:" + hospital.id)
        study_uid = f"1.2.826.0.1.3680043.10.1{self.rng.randrange(10**6)}.{n}.{self._next('uid')}"
        series_count = self.rng.choice((1, 1, 2))
        self._add(
            hospital,
            "imaging_studies",
            {
                **base,
                "study_instance_uid": study_uid,
                "accession_number": f"A{n:08d}",
                "patient_mrn": mrn,
                "modality": modality,
                "body_part": BODY_PARTS[modality],
                "study_date": fmt_date(admit.date()),
                "study_description": f"{modality} {BODY_PARTS[modality].lower()}",
                "referring_physician": self.rng.choice(SURNAMES) + "医生",
                "number_of_series": str(series_count),
            },
        )
        for s in range(1, series_count + 1):
            self._add(
                hospital,
                "imaging_series",
                {
                    "hospital_id": hospital.id,
                    "series_instance_uid": f"{study_uid}.{s}",
                    "study_instance_uid": study_uid,
                    "resident_id": base["resident_id"],
                    "modality": modality,
                    "body_part": BODY_PARTS[modality],
                    "series_description": f"series {s}",
                    "sop_class_uid": None,
                    "number_of_instances": str(self.rng.randrange(1, 4)),
                    "series_date": fmt_date(admit.date()),
                },
            )

    def _teleconsultation(self, hospital: Hospital, base: RawRecord, admit: dt.datetime) -> None:
        centre = self.rng.choice(CENTRES)
        outcome = self.rng.choices(["answered", "referred", "declined", "pending"], weights=[80, 10, 3, 7])[0]
        answered = (
            None
            if outcome == "pending"
            else fmt_ts(admit + dt.timedelta(minutes=self.rng.randrange(10, 2880)))
        )
        self._add(
            hospital,
            "teleconsultations",
            {
                **base,
                "teleconsult_id": f"T{self._next('tc:' + hospital.id):08d}",
                "consulting_hospital_id": self._centre.id,
                "specialist_centre": centre,
                "specialty": centre,
                "requested_at": fmt_ts(admit),
                "answered_at": answered,
                "outcome": outcome,
            },
        )


def generate_batches(
    topology: Topology,
    *,
    seed: int,
    patients: int,
    cities: list[City],
    window: Window,
    batch_size: int = 5_000,
    visits_per_patient: float = 3.0,
) -> Iterator[dict[str, dict[str, list[RawRecord]]]]:
    """Batches of {hospital id: {dataset: records}}, `batch_size` patients each, so memory stays
    bounded however many patients are asked for. A person belongs to one batch."""
    factory = RecordFactory(topology, seed=seed, window=window)
    rng = random.Random(seed + 1)
    seen: set[str] = set()
    for start in range(0, patients, batch_size):
        for serial in range(start, min(start + batch_size, patients)):
            person = make_person(rng, cities[serial % len(cities)], serial)
            while person.resident_id in seen:  # two people never share a resident ID
                person = make_person(rng, cities[serial % len(cities)], rng.randrange(1000))
            seen.add(person.resident_id)
            visits = 1 + int(rng.expovariate(1 / max(visits_per_patient - 1, 0.01)))
            for _ in range(visits):
                factory.visit(person, cities)
        batch = {h: dict(d) for h, d in sorted(factory.records.items())}
        factory.records.clear()
        yield batch
