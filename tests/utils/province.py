"""A synthetic provincial lakehouse written straight to the federated tables (as the replicator
would leave them: `city` + shareable columns + lineage, partitioned city/hospital_id/month), for
the sharing API's tests and its benchmark. Vectorised, so a million patients take seconds.

Patients get valid resident IDs; most of their care is at their home hospital, some elsewhere in
the province, so histories span cities. Event times fall in the `years` before `now`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from lakehouse.contracts import Contract
from lakehouse.identity import make_resident_id
from lakehouse.pseudonyms import ProvinceKey, person_key, pseudo_uid
from lakehouse.replication.layout import PROVINCE_PARTITIONS
from lakehouse.shareable import LINEAGE, shareable_schema
from lakehouse.topology import Topology

# As the replicator writes them.
PARTITIONS = list(PROVINCE_PARTITIONS)
ICD10 = ["I10", "E11.9", "J18.9", "I63.9", "C34.9", "K29.7", "N18.3", "J44.1", "I25.1", "M54.5"]
LOINC = ["2345-7", "718-7", "2160-0", "4548-4", "1751-7", "2093-3"]
ATC = ["C09AA05", "A10BA02", "J01CA04", "C10AA05", "N02BE01", "B01AC06"]
DEPARTMENTS = ["cardiology", "neurology", "oncology", "respiratory", "general", "paediatrics"]
MODALITIES = ["CT", "MR", "CR", "US", "DX"]


@dataclass
class Province:
    """What was written, kept in memory so tests can compute expectations independently."""

    now: dt.datetime
    resident_ids: list[str]
    person_keys: np.ndarray  # str, one per patient
    home: np.ndarray  # hospital id per patient
    tables: dict[str, pa.Table] = field(default_factory=dict)
    root: str = ""  # where write_province put them


def _hospital_city(topology: Topology) -> dict[str, str]:
    return {h.id: h.city for h in topology.hospitals}


def _frame(contract: Contract, topology: Topology, columns: dict[str, object], n: int) -> pa.Table:
    """Columns in the provincial table's order and types; lineage filled in."""
    schema = shareable_schema(contract)
    city_of = _hospital_city(topology)
    hospitals = columns["hospital_id"]
    assert isinstance(hospitals, np.ndarray)
    out: dict[str, pa.Array] = {
        "city": pa.array(np.vectorize(city_of.__getitem__)(hospitals) if n else [], pa.string())
    }
    for f in schema:
        if f.name in columns:
            out[f.name] = pa.array(columns[f.name], f.type) if n else pa.array([], f.type)
        elif f.name == "month":
            when = columns[contract.partition_by.month]
            out[f.name] = (
                pc.strftime(pa.array(when, schema.field(contract.partition_by.month).type), "%Y-%m")
                if n
                else pa.array([], pa.string())
            )
        elif f.name in LINEAGE:
            out[f.name] = pa.array(
                np.full(n, f"synthetic/{contract.name}.parquet" if f.name == "_source_file" else "run-0")
            )
        else:
            out[f.name] = pa.nulls(n, f.type)
    return pa.table(out)


def build_province(
    topology: Topology,
    contracts: dict[str, Contract],
    key: ProvinceKey,
    *,
    patients: int,
    encounters: int,
    seed: int = 7,
    now: dt.datetime | None = None,
    years: float = 3.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Province:
    rng = np.random.default_rng(seed)
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    hospitals = np.array([h.id for h in topology.hospitals])
    cities = {c.id: c.region_code for c in topology.cities}
    city_of = _hospital_city(topology)

    # Patients
    home = hospitals[rng.integers(0, len(hospitals), patients)]
    births = rng.integers(0, 80 * 365, patients)
    sexes = rng.integers(0, 2, patients)
    resident_ids = [
        make_resident_id(
            region=(cities[city_of[h]] + "01")[:6],
            birth_date=dt.date(1940, 1, 1) + dt.timedelta(days=int(b)),
            sequence=int(i % 499) + 1,
            sex="M" if s else "F",
        )
        for i, (h, b, s) in enumerate(zip(home, births, sexes, strict=True))
    ]
    # Unique IDs: the sequence repeats, so make colliding ones unique by bumping the sequence.
    seen: set[str] = set()
    for i, rid in enumerate(resident_ids):
        bump = 0
        while rid in seen:
            bump += 1
            rid = make_resident_id(
                region=rid[:6],
                birth_date=dt.date(int(rid[6:10]), int(rid[10:12]), int(rid[12:14])),
                sequence=(int(rid[14:17]) + 2 * bump) % 998 + 1,
                sex="M" if int(rid[16]) % 2 else "F",
            )
        seen.add(rid)
        resident_ids[i] = rid
    progress(f"{patients} patients")
    keys = np.array([person_key(key, r) for r in resident_ids])
    span = int(years * 365 * 86400)
    epoch = np.datetime64(now.replace(tzinfo=None), "us")

    def times(m: int) -> np.ndarray:
        return epoch - rng.integers(3600, span, m).astype("timedelta64[s]")

    province = Province(now=now, resident_ids=resident_ids, person_keys=keys, home=home)
    registered = times(patients)
    province.tables["patients"] = _frame(
        contracts["patients"],
        topology,
        {
            "hospital_id": home,
            "person_key": keys,
            "key_version": np.full(patients, key.version, np.int32),
            "sex": np.where(sexes == 1, "M", "F"),
            "birth_date": (np.datetime64("1940-01-01") + births.astype("timedelta64[D]")),
            "county_code": np.array([cities[city_of[h]] + "01" for h in home]),
            "registered_at": registered,
        },
        patients,
    )

    # Encounters: 75 % at the home hospital, the rest anywhere in the province.
    who = rng.integers(0, patients, encounters)
    away = rng.random(encounters) < 0.25
    enc_hospital = np.where(away, hospitals[rng.integers(0, len(hospitals), encounters)], home[who])
    admit = times(encounters)
    referred = np.where(
        rng.random(encounters) < 0.1, hospitals[rng.integers(0, len(hospitals), encounters)], None
    )
    enc_ids = np.char.add("E", np.arange(encounters).astype(str))
    enc_type = np.array(["outpatient", "inpatient", "emergency", "teleconsultation"])[
        rng.integers(0, 4, encounters)
    ]
    province.tables["encounters"] = _frame(
        contracts["encounters"],
        topology,
        {
            "hospital_id": enc_hospital,
            "encounter_id": enc_ids,
            "person_key": keys[who],
            "key_version": np.full(encounters, key.version, np.int32),
            "encounter_type": enc_type,
            "department": np.array(DEPARTMENTS)[rng.integers(0, len(DEPARTMENTS), encounters)],
            "admit_time": admit,
            "discharge_time": admit + rng.integers(1800, 5 * 86400, encounters).astype("timedelta64[s]"),
            "referred_from_hospital_id": referred,
        },
        encounters,
    )
    progress(f"{encounters} encounters")

    def subset(share: float) -> np.ndarray:
        return np.flatnonzero(rng.random(encounters) < share)

    d = np.arange(encounters)
    province.tables["diagnoses"] = _frame(
        contracts["diagnoses"],
        topology,
        {
            "hospital_id": enc_hospital[d],
            "encounter_id": enc_ids[d],
            "diagnosis_seq": np.ones(len(d), np.int32),
            "person_key": keys[who[d]],
            "key_version": np.full(len(d), key.version, np.int32),
            "icd10_code": np.array(ICD10)[rng.integers(0, len(ICD10), len(d))],
            "diagnosis_type": np.full(len(d), "primary"),
            "diagnosed_at": admit[d],
        },
        len(d),
    )
    lab = subset(0.5)
    value = rng.normal(5.0, 2.0, len(lab)).round(2)
    province.tables["lab_results"] = _frame(
        contracts["lab_results"],
        topology,
        {
            "hospital_id": enc_hospital[lab],
            "lab_result_id": np.char.add("L", lab.astype(str)),
            "encounter_id": enc_ids[lab],
            "person_key": keys[who[lab]],
            "key_version": np.full(len(lab), key.version, np.int32),
            "loinc_code": np.array(LOINC)[rng.integers(0, len(LOINC), len(lab))],
            "value_num": value,
            "value_text": np.char.add("v=", value.astype(str)),
            "unit": np.full(len(lab), "mmol/L"),
            "reference_low": np.full(len(lab), 3.0),
            "reference_high": np.full(len(lab), 7.0),
            "abnormal_flag": np.where(value > 7.0, "H", np.where(value < 3.0, "L", "N")),
            "collected_at": admit[lab] + np.timedelta64(3600, "s"),
        },
        len(lab),
    )
    med = subset(0.4)
    start = admit[med].astype("datetime64[D]")
    province.tables["medications"] = _frame(
        contracts["medications"],
        topology,
        {
            "hospital_id": enc_hospital[med],
            "medication_id": np.char.add("M", med.astype(str)),
            "encounter_id": enc_ids[med],
            "person_key": keys[who[med]],
            "key_version": np.full(len(med), key.version, np.int32),
            "atc_code": np.array(ATC)[rng.integers(0, len(ATC), len(med))],
            "drug_name": np.array(ATC)[rng.integers(0, len(ATC), len(med))],
            "dose": rng.integers(1, 500, len(med)).astype(float),
            "dose_unit": np.full(len(med), "mg"),
            "route": np.full(len(med), "oral"),
            "frequency": np.full(len(med), "bid"),
            "start_date": start,
            "end_date": start + rng.integers(1, 30, len(med)).astype("timedelta64[D]"),
        },
        len(med),
    )
    img = subset(0.08)
    study_uids = np.array([pseudo_uid(key, f"1.2.3.{i}") for i in img]) if len(img) else np.array([], str)
    study_date = admit[img].astype("datetime64[D]")
    modality = np.array(MODALITIES)[rng.integers(0, len(MODALITIES), len(img))]
    province.tables["imaging_studies"] = _frame(
        contracts["imaging_studies"],
        topology,
        {
            "hospital_id": enc_hospital[img],
            "study_instance_uid": study_uids,
            "person_key": keys[who[img]],
            "key_version": np.full(len(img), key.version, np.int32),
            "encounter_id": enc_ids[img],
            "modality": modality,
            "body_part": np.full(len(img), "CHEST"),
            "study_date": study_date,
            "study_description": np.char.add(modality, " chest"),
            "number_of_series": np.ones(len(img), np.int32),
        },
        len(img),
    )
    province.tables["imaging_series"] = _frame(
        contracts["imaging_series"],
        topology,
        {
            "hospital_id": enc_hospital[img],
            "series_instance_uid": np.char.add(study_uids.astype(str), ".1") if len(img) else study_uids,
            "study_instance_uid": study_uids,
            "person_key": keys[who[img]],
            "key_version": np.full(len(img), key.version, np.int32),
            "modality": modality,
            "body_part": np.full(len(img), "CHEST"),
            "series_description": np.char.add(modality, " axial"),
            "sop_class_uid": np.full(len(img), "1.2.840.10008.5.1.4.1.1.2"),
            "number_of_instances": rng.integers(1, 300, len(img)).astype(np.int32),
            "series_date": study_date,
        },
        len(img),
    )
    tele = subset(0.05)
    # Answered by the telemedicine centre after 10 minutes to ~2 days; one in ten still pending.
    requested = admit[tele]
    waited = (10 + rng.lognormal(4.5, 1.0, len(tele))).astype("timedelta64[m]").astype("timedelta64[s]")
    pending = rng.random(len(tele)) < 0.1
    answered = np.where(pending, np.datetime64("NaT"), requested + waited)
    province.tables["teleconsultations"] = _frame(
        contracts["teleconsultations"],
        topology,
        {
            "hospital_id": enc_hospital[tele],
            "teleconsult_id": np.char.add("T", tele.astype(str)),
            "encounter_id": enc_ids[tele],
            "person_key": keys[who[tele]],
            "key_version": np.full(len(tele), key.version, np.int32),
            "consulting_hospital_id": np.full(len(tele), topology.province.telemedicine_centre),
            "specialist_centre": np.array(["imaging", "ecg", "cardiology"])[rng.integers(0, 3, len(tele))],
            "specialty": np.full(len(tele), "general"),
            "requested_at": requested,
            "answered_at": answered,
            "outcome": np.where(pending, "pending", "answered"),
        },
        len(tele),
    )
    # ECGs: local ones (6 % of encounters, read where recorded) and one for each answered request
    # to the ECG centre (read there, carrying the request's id). Drawn after every other table, so
    # those stay as they were for a seed.
    centre = province.tables["teleconsultations"]
    to_ecg = np.flatnonzero(
        (centre.column("specialist_centre").to_numpy(zero_copy_only=False) == "ecg") & ~pending
    )
    local = subset(0.06)
    ecg = np.concatenate([local, tele[to_ecg]])
    remote = np.arange(len(ecg)) >= len(local)
    request = np.concatenate([np.full(len(local), None), np.char.add("T", tele[to_ecg].astype(str))])
    rate = rng.integers(50, 130, len(ecg)).astype(np.int32)
    qt = (400 - (rate - 75) * 1.5).astype(np.int32)
    recorded = admit[ecg] + np.where(remote, -60, 600).astype("timedelta64[s]")
    reported = np.concatenate([recorded[: len(local)] + np.timedelta64(1800, "s"), answered[to_ecg]])
    province.tables["ecg_reports"] = _frame(
        contracts["ecg_reports"],
        topology,
        {
            "hospital_id": enc_hospital[ecg],
            "ecg_id": np.char.add(np.where(remote, "ECGT", "ECG"), ecg.astype(str)),
            "encounter_id": enc_ids[ecg],
            "person_key": keys[who[ecg]],
            "key_version": np.full(len(ecg), key.version, np.int32),
            "teleconsult_id": request,
            "reading_hospital_id": np.where(remote, topology.province.telemedicine_centre, enc_hospital[ecg]),
            "recorded_at": recorded,
            "reported_at": reported,
            "lead_count": np.full(len(ecg), 12, np.int32),
            "heart_rate_bpm": rate,
            "qt_interval_ms": qt,
            "qtc_interval_ms": (qt / np.sqrt(60 / rate)).round().astype(np.int32),
            "rhythm": np.where(rate > 100, "sinus_tachycardia", "sinus"),
            "findings": np.where(rate > 100, "窦性心动过速", "窦性心律，正常心电图"),
            "report_status": np.full(len(ecg), "final"),
        },
        len(ecg),
    )
    path = subset(0.02)
    collected = admit[path] + np.timedelta64(7200, "s")
    malignant = rng.random(len(path)) < 0.3
    province.tables["pathology_reports"] = _frame(
        contracts["pathology_reports"],
        topology,
        {
            "hospital_id": enc_hospital[path],
            "pathology_id": np.char.add("P", path.astype(str)),
            "encounter_id": enc_ids[path],
            "person_key": keys[who[path]],
            "key_version": np.full(len(path), key.version, np.int32),
            "reading_hospital_id": enc_hospital[path],
            "specimen_type": np.full(len(path), "biopsy"),
            "specimen_site": np.full(len(path), "stomach"),
            "collected_at": collected,
            "reported_at": collected + np.timedelta64(3 * 86400, "s"),
            "diagnosis_code": np.where(malignant, "C16.9", "K29.5"),
            "diagnosis_text": np.where(malignant, "胃腺癌", "慢性萎缩性胃炎"),
            "behaviour": np.where(malignant, "malignant", "benign"),
            "report_status": np.full(len(path), "final"),
        },
        len(path),
    )
    return province


def write_province(province: Province, root: str, storage_options: dict[str, str]) -> None:
    """Write every table under `root/<dataset>` (overwriting)."""
    province.root = root
    for name, table in province.tables.items():
        write_deltalake(
            f"{root}/{name}",
            table,
            mode="overwrite",
            partition_by=PARTITIONS,
            storage_options=storage_options,
        )
