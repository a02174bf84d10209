"""Clean synthetic hospital records for the topology: people who visit several hospitals in
several cities, with plausible encounters, ICD-10 diagnoses, LOINC labs, ATC medications,
imaging studies, teleconsultations, ECGs and pathology reports. Seeded: the same seed gives the
same records.

The ECG and pathology records (and the ECG waveforms' imaging studies) are drawn from a random
stream of their own, so adding them left every other dataset's records as they were for a seed.

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
# A 12-lead ECG cart that sends DICOM waveforms to the PACS (PS3.3 A.34.3).
ECG_WAVEFORM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.9.1.1"
ECG_RHYTHMS = (
    ("sinus", 70),
    ("sinus_tachycardia", 8),
    ("sinus_bradycardia", 8),
    ("atrial_fibrillation", 8),
    ("atrial_flutter", 1),
    ("paced", 1),
    ("other", 4),
)
# Heart rate range per rhythm (beats per minute), and the reading's ICD-10 code when abnormal.
ECG_RATES = {
    "sinus": (60, 100),
    "sinus_tachycardia": (101, 140),
    "sinus_bradycardia": (40, 59),
    "atrial_fibrillation": (70, 150),
    "atrial_flutter": (75, 150),
    "paced": (60, 80),
    "other": (50, 110),
}
ECG_CONCLUSIONS = {"atrial_fibrillation": "I48.9", "atrial_flutter": "I48.9", "other": "I49.9"}
ECG_FINDINGS = {
    "sinus": "窦性心律，正常心电图",
    "sinus_tachycardia": "窦性心动过速",
    "sinus_bradycardia": "窦性心动过缓",
    "atrial_fibrillation": "心房颤动",
    "atrial_flutter": "心房扑动",
    "paced": "起搏心律",
    "other": "心律失常，建议动态心电图",
}
# (specimen type, site, ICD-10 code, behaviour, diagnosis as reported), roughly by frequency.
PATHOLOGY_CASES = (
    ("biopsy", "stomach", "K29.5", "benign", "慢性萎缩性胃炎"),
    ("biopsy", "stomach", "C16.9", "malignant", "胃腺癌"),
    ("biopsy", "colon", "K63.5", "benign", "结肠息肉"),
    ("biopsy", "colon", "D12.6", "benign", "结肠管状腺瘤"),
    ("resection", "colon", "C18.9", "malignant", "结肠腺癌"),
    ("biopsy", "oesophagus", "C15.9", "malignant", "食管鳞状细胞癌"),
    ("biopsy", "lung", "C34.9", "malignant", "肺腺癌"),
    ("frozen_section", "breast", "D24", "benign", "乳腺纤维腺瘤"),
    ("excision", "breast", "C50.9", "malignant", "乳腺浸润性导管癌"),
    ("cytology", "cervix", "C53.9", "malignant", "宫颈鳞状细胞癌"),
    ("resection", "uterus", "D25.9", "benign", "子宫平滑肌瘤"),
    ("cytology", "thyroid", "C73", "malignant", "甲状腺乳头状癌"),
    ("resection", "liver", "C22.0", "malignant", "肝细胞癌"),
    ("resection", "appendix", "K37", "benign", "急性化脓性阑尾炎"),
)
PATHOLOGY_WEIGHTS = (20, 6, 12, 8, 4, 4, 5, 6, 4, 4, 6, 3, 2, 8)
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
        # Who reads a specialist service's requests: its centre's hospital, else the telemedicine
        # centre itself.
        self._readers = {c.service.value: c.hospital for c in topology.province.specialist_centres}
        self.specialist_rng = random.Random(seed + 17)

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
        teleconsult = self._teleconsultation(hospital, base, admit) if kind == "teleconsultation" else None
        self._specialist(hospital, base, mrn, admit, kind, teleconsult)

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

    def _teleconsultation(self, hospital: Hospital, base: RawRecord, admit: dt.datetime) -> RawRecord:
        centre = self.rng.choice(CENTRES)
        outcome = self.rng.choices(["answered", "referred", "declined", "pending"], weights=[80, 10, 3, 7])[0]
        answered = (
            None
            if outcome == "pending"
            else fmt_ts(admit + dt.timedelta(minutes=self.rng.randrange(10, 2880)))
        )
        record: RawRecord = {
            **base,
            "teleconsult_id": f"T{self._next('tc:' + hospital.id):08d}",
            "consulting_hospital_id": self._centre.id,
            "specialist_centre": centre,
            "specialty": centre,
            "requested_at": fmt_ts(admit),
            "answered_at": answered,
            "outcome": outcome,
        }
        self._add(hospital, "teleconsultations", record)
        return record

    def _specialist(
        self,
        hospital: Hospital,
        base: RawRecord,
        mrn: str,
        admit: dt.datetime,
        kind: str,
        teleconsult: RawRecord | None,
    ) -> None:
        """The visit's ECG and pathology records: the one a teleconsultation to the ECG or
        pathology centre asked for (read there), else, now and then, one read at the hospital."""
        rng = self.specialist_rng
        local_ecg, local_pathology = rng.random(), rng.random()
        centre = teleconsult["specialist_centre"] if teleconsult else None
        if centre == "ecg":
            self._ecg(hospital, base, mrn, admit, teleconsult)
        elif hospital.level is not CareLevel.TOWNSHIP and local_ecg < 0.08:
            self._ecg(hospital, base, mrn, admit, None)
        if centre == "pathology":
            self._pathology(hospital, base, mrn, admit, teleconsult)
        elif kind == "inpatient" and hospital.level is not CareLevel.TOWNSHIP and local_pathology < 0.15:
            self._pathology(hospital, base, mrn, admit, None)

    def _read_by(
        self, hospital: Hospital, service: str, start: dt.datetime, teleconsult: RawRecord | None
    ) -> tuple[str, str | None, str]:
        """(reading hospital, reported_at, report status) of a report started at `start`."""
        rng = self.specialist_rng
        if teleconsult is None:
            local = start + dt.timedelta(minutes=rng.randrange(5, 240))
            return hospital.id, fmt_ts(local), rng.choices(["final", "amended"], weights=[97, 3])[0]
        reader = self._readers.get(service, self._centre.id)
        status = {"answered": "final", "referred": "final", "pending": "preliminary"}.get(
            teleconsult["outcome"] or "", "cancelled"
        )
        # The centre's report is issued when the request is answered (never before the start).
        answered = teleconsult["answered_at"]
        return reader, max(answered, fmt_ts(start)) if answered else None, status

    def _ecg(
        self, hospital: Hospital, base: RawRecord, mrn: str, admit: dt.datetime, teleconsult: RawRecord | None
    ) -> None:
        rng = self.specialist_rng
        # An ECG read remotely was recorded just before it was sent.
        minutes = -rng.randrange(1, 10) if teleconsult else rng.randrange(10, 90)
        recorded = admit + dt.timedelta(minutes=minutes)
        reader, reported, status = self._read_by(hospital, "ecg", recorded, teleconsult)
        rhythm = _weighted(rng, ECG_RHYTHMS)
        rate = rng.randint(*ECG_RATES[rhythm])
        qt = int(rng.gauss(400 - (rate - 75) * 1.5, 15))
        # Bazett: QTc = QT / sqrt(RR in seconds).
        qtc = round(qt / ((60 / rate) ** 0.5))
        conclusion = ECG_CONCLUSIONS.get(rhythm) or (
            rng.choice(["I20.9", "I21.9"]) if rng.random() < 0.03 else None
        )
        n = self._next("ecg:" + hospital.id)
        study_uid = None
        if hospital.level is not CareLevel.TOWNSHIP and rng.random() < 0.5:
            study_uid = f"1.2.826.0.1.3680043.10.2{rng.randrange(10**6)}.{n}.{self._next('ecg-uid')}"
            self._ecg_waveform(hospital, base, mrn, recorded, study_uid, n)
        self._add(
            hospital,
            "ecg_reports",
            {
                **base,
                "ecg_id": f"ECG{n:08d}",
                "patient_mrn": mrn,
                "teleconsult_id": teleconsult["teleconsult_id"] if teleconsult else None,
                "reading_hospital_id": reader,
                "study_instance_uid": study_uid,
                "recorded_at": fmt_ts(recorded),
                "reported_at": reported,
                "lead_count": "12",
                "heart_rate_bpm": str(rate),
                "pr_interval_ms": None
                if rhythm in ("atrial_fibrillation", "atrial_flutter")
                else str(rng.randint(120, 200)),
                "qrs_duration_ms": str(rng.randint(130, 170) if rhythm == "paced" else rng.randint(80, 110)),
                "qt_interval_ms": str(qt),
                "qtc_interval_ms": str(qtc),
                "rhythm": rhythm,
                "findings": ECG_FINDINGS[rhythm],
                "conclusion_code": conclusion,
                "report_status": status,
                "reading_physician": rng.choice(SURNAMES) + "医生",
            },
        )

    def _ecg_waveform(
        self, hospital: Hospital, base: RawRecord, mrn: str, recorded: dt.datetime, study_uid: str, n: int
    ) -> None:
        """The waveform the ECG cart stored in the PACS: an imaging study of modality ECG."""
        self._add(
            hospital,
            "imaging_studies",
            {
                **base,
                "study_instance_uid": study_uid,
                "accession_number": f"AE{n:08d}",
                "patient_mrn": mrn,
                "modality": "ECG",
                "body_part": None,
                "study_date": fmt_date(recorded.date()),
                "study_description": "resting 12-lead ECG",
                "referring_physician": self.specialist_rng.choice(SURNAMES) + "医生",
                "number_of_series": "1",
            },
        )
        self._add(
            hospital,
            "imaging_series",
            {
                "hospital_id": hospital.id,
                "series_instance_uid": f"{study_uid}.1",
                "study_instance_uid": study_uid,
                "resident_id": base["resident_id"],
                "modality": "ECG",
                "body_part": None,
                "series_description": "12-lead ECG",
                "sop_class_uid": ECG_WAVEFORM_SOP_CLASS,
                "number_of_instances": "1",
                "series_date": fmt_date(recorded.date()),
            },
        )

    def _pathology(
        self, hospital: Hospital, base: RawRecord, mrn: str, admit: dt.datetime, teleconsult: RawRecord | None
    ) -> None:
        rng = self.specialist_rng
        # A specimen sent for a remote reading was taken before the request.
        hours = -rng.randrange(1, 72) if teleconsult else rng.randrange(1, 48)
        collected = admit + dt.timedelta(hours=hours)
        specimen, site, code, behaviour, text = rng.choices(PATHOLOGY_CASES, weights=PATHOLOGY_WEIGHTS)[0]
        reader, reported, status = self._read_by(hospital, "pathology", collected, teleconsult)
        if teleconsult is None and reported is not None:
            # A local paraffin section takes days; a frozen section, under an hour.
            hours = 1 if specimen == "frozen_section" else rng.randrange(48, 168)
            reported = fmt_ts(collected + dt.timedelta(hours=hours))
        self._add(
            hospital,
            "pathology_reports",
            {
                **base,
                "pathology_id": f"P{self._next('path:' + hospital.id):08d}",
                "patient_mrn": mrn,
                "teleconsult_id": teleconsult["teleconsult_id"] if teleconsult else None,
                "reading_hospital_id": reader,
                "specimen_type": specimen,
                "specimen_site": site,
                "collected_at": fmt_ts(collected),
                "reported_at": reported,
                "diagnosis_code": code if status != "cancelled" else None,
                "diagnosis_text": text if status != "cancelled" else None,
                "behaviour": behaviour if status != "cancelled" else None,
                "report_status": status,
                "pathologist": rng.choice(SURNAMES) + "医生",
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
