"""What hospitals really send, written by hand in this test the way their systems write it — never
by our generator — ingested by the real job on MinIO + Spark:

- a county HIS export: GB18030, CRLF, Chinese headers, dates with slashes, 男/女, a quoted line break;
- a UTF-8 export with a byte-order mark whose address holds a quoted line break (RFC 4180);
- a township clinic's Excel workbook, data on a named sheet, dates as date cells;
- a FHIR R4 transaction Bundle in the style of the HL7 examples (urn:uuid references, an MR
  identifier in the hospital's own system, NNCHN, no organisation) with one unmappable entry;
- a FHIR Bulk Data export (NDJSON, one file per resource type, references across files);
- a PACS media export (pydicom's own DICOMDIR test set: extension-less files, PatientID = MRN, no
  resident ID), whose studies are linked to the patients through the hospital's registry — one
  patient arrives a run later, and its studies wait for it.

For each: every valid record curated, every bad one quarantined under its rule, and
rows in + back from waiting = curated + quarantined + duplicates + waiting, exactly.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
import uuid
from collections import Counter
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from deltalake import DeltaTable
from openpyxl import Workbook

from ingestion.job import IngestOptions, run_ingestion
from ingestion.profiles import load_profiles
from ingestion.read import store_access
from ingestion.report import RunReport
from lakehouse.contracts import load_contracts
from lakehouse.identity import make_resident_id
from lakehouse.settings import Settings
from lakehouse.storage import delta_storage_options, s3_client, s3_uri, site_credentials
from lakehouse.topology import Topology

CITY = "zhengzhou"
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def rid(n: int, sex: str = "M", born: dt.date = dt.date(1980, 1, 1)) -> str:
    return make_resident_id(region="410102", birth_date=born, sequence=n, sex=sex)  # type: ignore[arg-type]


class City:
    """The test's own prefix in Zhengzhou's buckets: landing keys and tables."""

    def __init__(self, settings: Settings, topology: Topology, spark) -> None:
        self.settings, self.topology, self.spark = settings, topology, spark
        self.root = f"tests/dialects-{uuid.uuid4().hex[:8]}/"
        self.creds = site_credentials(settings, CITY)
        self.client = s3_client(settings, self.creds)
        self.contracts = load_contracts(settings.platform_dir)
        self.profiles = load_profiles(settings.platform_dir, topology, self.contracts)

    def put(self, key: str, content: bytes) -> None:
        self.client.put_object(f"{CITY}-landing", self.root + key, io.BytesIO(content), len(content))

    def ingest(self) -> RunReport:
        options = IngestOptions(city=CITY, table_root=self.root, landing_prefix=self.root, now=NOW)
        access = store_access(self.settings, self.creds)
        return run_ingestion(
            self.spark, access, self.topology, self.contracts, options, profiles=self.profiles
        )

    def table(self, bucket: str, name: str) -> list[dict]:
        uri = s3_uri(f"{CITY}-{bucket}", f"{self.root}{name}")
        options = delta_storage_options(self.settings, self.creds)
        try:
            return DeltaTable(uri, storage_options=options).to_pyarrow_table().to_pylist()
        except Exception:
            return []

    def quarantined(self, dataset: str) -> Counter[tuple[str, str]]:
        """(source file, rule) of every quarantined row of `dataset`."""
        return Counter(
            (r["source_file"], r["rule"]) for r in self.table("quarantine", "rows") if r["dataset"] == dataset
        )


@pytest.fixture(scope="module")
def city(spark, stack: Settings, topology: Topology) -> City:
    return City(stack, topology, spark)


def assert_balanced(report: RunReport) -> None:
    assert report.status == "succeeded", report.error
    for ds in report.datasets.values():
        assert (
            ds.rows_in + ds.from_waiting == ds.curated + ds.quarantined_total + ds.duplicates + ds.waiting
        ), ds


# --- The exports -----------------------------------------------------------------------------------
HIS_HEADER = [
    "医院编码",
    "病案号",
    "身份证号",
    "姓名",
    "性别",
    "出生日期",
    "联系电话",
    "现住址",
    "县区编码",
    "建档时间",
]


def county_his_patients() -> bytes:
    """zz-xy-county (profile county-his): 3 valid patients and one whose ID has a wrong check digit."""
    bad = rid(40)[:-1] + ("0" if rid(40)[-1] != "0" else "1")
    rows = [
        HIS_HEADER,
        [
            "zz-xy-county",
            "XY001",
            rid(11),
            "张伟",
            "男",
            "1980/01/01",
            "13912345678",
            "荥阳市\r\n索河路 1 号",
            "410181",
            "2025/01/02 08:30:00",
        ],
        [
            "zz-xy-county",
            "XY002",
            rid(12, "F"),
            "王芳",
            "女",
            "1980/01/01",
            "",
            "荥阳市, 京城路",
            "410181",
            "2025/01/03 09:00:00",
        ],
        [
            "zz-xy-county",
            "XY003",
            rid(13),
            "李强",
            "男",
            "1980/01/01",
            "",
            '"老" 城区',
            "410181",
            "20250104 10:15:00",
        ],
        ["zz-xy-county", "XY004", bad, "赵敏", "男", "1980/01/01", "", "", "410181", "2025/01/05 11:00:00"],
    ]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("gb18030")


def bom_patients() -> tuple[bytes, list[str]]:
    """zz-c1: 18 valid patients in UTF-8 with a BOM; the 8th address holds a quoted line break."""
    columns = [
        "hospital_id",
        "patient_mrn",
        "resident_id",
        "name",
        "sex",
        "birth_date",
        "phone",
        "address",
        "county_code",
        "registered_at",
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    mrns = []
    for i in range(18):
        mrn = f"C1-{i:04d}"
        mrns.append(mrn)
        address = "金水区\n农业路 8 号" if i == 7 else f"金水区 {i} 号"
        writer.writerow(
            [
                "zz-c1",
                mrn,
                rid(100 + i),
                f"患者{i}",
                "M",
                "1980-01-01",
                "",
                address,
                "410105",
                "2025-02-01T08:00:00",
            ]
        )
    return codecs.BOM_UTF8 + out.getvalue().encode(), mrns


def township_encounters(path: Path) -> bytes:
    """zz-zm-guandu (profile township-sheet): a workbook whose data sheet is 数据; 2 valid
    encounters and one admitted in the future."""
    book = Workbook()
    book.active.title = "封面"
    book.active.append(["官渡镇卫生院 就诊记录导出"])
    sheet = book.create_sheet("数据")
    sheet.append(["医院编码", "就诊号", "病案号", "身份证号", "就诊类型", "科室", "入院时间", "出院时间"])
    sheet.append(
        [
            "zz-zm-guandu",
            "GD-1",
            "G1",
            rid(21),
            "门诊",
            "全科",
            dt.datetime(2025, 3, 1, 9, 0),
            dt.datetime(2025, 3, 1, 9, 30),
        ]
    )
    sheet.append(
        ["zz-zm-guandu", "GD-2", "G2", rid(22, "F"), "急诊", "全科", dt.datetime(2025, 3, 2, 22, 5), None]
    )
    sheet.append(["zz-zm-guandu", "GD-3", "G3", rid(23), "门诊", "全科", dt.datetime(2027, 1, 1, 8, 0), None])
    book.save(path)
    return path.read_bytes()


def hl7_style_bundle() -> bytes:
    """zz-fahzu: a transaction Bundle as other HIS write it; the second Condition has no ICD-10."""
    patient, encounter = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    condition, other, lab = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))

    def entry(url: str, resource: dict) -> dict:
        return {
            "fullUrl": url,
            "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]},
        }

    resources = [
        entry(
            patient,
            {
                "resourceType": "Patient",
                "meta": {"lastUpdated": "2025-05-01T10:00:00+08:00"},
                "identifier": [
                    {
                        "use": "usual",
                        "type": {"coding": [{"system": V2, "code": "MR"}]},
                        "system": "http://his.fahzu.example.cn/mrn",
                        "value": "FA-778899",
                    },
                    {
                        "type": {"coding": [{"system": V2, "code": "NNCHN"}]},
                        "system": "http://www.nhc.gov.cn/fhir/sid/resident-id",
                        "value": rid(31, "F"),
                    },
                ],
                "name": [{"use": "official", "text": "陈静", "family": "陈", "given": ["静"]}],
                "gender": "female",
                "birthDate": "1980-01-01",
                "telecom": [{"system": "phone", "value": "13700001234", "use": "mobile"}],
                "address": [{"text": "郑州市二七区建设路 5 号"}],
            },
        ),
        entry(
            encounter,
            {
                "resourceType": "Encounter",
                "status": "finished",
                "identifier": [
                    {
                        "type": {"coding": [{"system": V2, "code": "VN"}]},
                        "system": "http://his.fahzu.example.cn/visit",
                        "value": "V-2025-0501",
                    }
                ],
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": patient},
                "period": {"start": "2025-05-01T09:00:00+08:00", "end": "2025-05-01T09:40:00+08:00"},
                "diagnosis": [
                    {"condition": {"reference": condition}, "rank": 1},
                    {"condition": {"reference": other}, "rank": 2},
                ],
            },
        ),
        entry(
            condition,
            {
                "resourceType": "Condition",
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]},
                "subject": {"reference": patient},
                "encounter": {"reference": encounter},
                "recordedDate": "2025-05-01T09:30:00+08:00",
            },
        ),
        entry(
            other,
            {
                "resourceType": "Condition",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                "subject": {"reference": patient},
                "encounter": {"reference": encounter},
                "recordedDate": "2025-05-01T09:31:00+08:00",
            },
        ),
        entry(
            lab,
            {
                "resourceType": "Observation",
                "status": "final",
                "identifier": [{"system": "http://his.fahzu.example.cn/lab", "value": "L-1"}],
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "laboratory",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                "subject": {"reference": patient},
                "encounter": {"reference": encounter},
                "effectiveDateTime": "2025-05-01T09:10:00+08:00",
                "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
            },
        ),
        entry(f"urn:uuid:{uuid.uuid4()}", {"resourceType": "Practitioner", "name": [{"text": "刘医生"}]}),
    ]
    return json.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": resources}, ensure_ascii=False
    ).encode()


def bulk_export() -> dict[str, bytes]:
    """zz-c1: a Bulk Data export — Patient.ndjson, Encounter.ndjson, Observation.ndjson — whose
    lines refer to each other by `Patient/<id>` and `Encounter/<id>`; one line is not JSON."""

    def ndjson(items: list) -> bytes:
        return (
            "\n".join(i if isinstance(i, str) else json.dumps(i, ensure_ascii=False) for i in items) + "\n"
        ).encode()

    mr = {"coding": [{"system": V2, "code": "MR"}]}
    nn = {"coding": [{"system": V2, "code": "NNCHN"}]}
    patients = [
        {
            "resourceType": "Patient",
            "id": f"p{i}",
            "meta": {"lastUpdated": "2025-06-01T08:00:00Z"},
            "identifier": [
                {"type": mr, "system": "urn:oid:1.2.156.99.1", "value": f"B-{i}"},
                {"type": nn, "value": rid(200 + i)},
            ],
            "name": [{"text": f"批量{i}"}],
            "gender": "male",
            "birthDate": "1980-01-01",
        }
        for i in range(3)
    ]
    encounters = [
        {
            "resourceType": "Encounter",
            "id": f"e{i}",
            "status": "finished",
            "identifier": [{"system": "urn:oid:1.2.156.99.2", "value": f"BE-{i}"}],
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/p{i}"},
            "period": {"start": "2025-06-02T08:00:00+08:00", "end": "2025-06-05T10:00:00+08:00"},
        }
        for i in range(3)
    ]
    labs = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "identifier": [{"system": "urn:oid:1.2.156.99.3", "value": f"BL-{i}"}],
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "subject": {"reference": f"Patient/p{i}"},
            "encounter": {"reference": f"Encounter/e{i}"},
            "effectiveDateTime": "2025-06-03T07:00:00+08:00",
            "valueQuantity": {"value": 130, "unit": "g/L"},
        }
        for i in range(3)
    ]
    return {
        "Patient.ndjson": ndjson(patients),
        "Encounter.ndjson": ndjson([*encounters, "{not json"]),
        "Observation.ndjson": ndjson(labs),
    }


PACS = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
PACS_PATIENTS = ("77654033", "98890234")  # PatientIDs (the MRNs)
PACS_FOLDERS = ("77654033", "98892001", "98892003")  # their folders on the CD (no DICOMDIR variants)


def pacs_studies() -> dict[str, set[str]]:
    """PatientID → StudyInstanceUIDs, read with pydicom directly from the export's files."""
    out: dict[str, set[str]] = {}
    for folder in PACS_FOLDERS:
        for path in (PACS / folder).rglob("*"):
            if path.is_file():
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                out.setdefault(str(ds.PatientID), set()).add(str(ds.StudyInstanceUID))
    return out


def registry(mrns: dict[str, int]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["hospital_id", "patient_mrn", "resident_id", "name", "sex", "birth_date", "registered_at"]
    )
    for mrn, n in mrns.items():
        writer.writerow(["zz-hpph", mrn, rid(n), f"影像{n}", "M", "1980-01-01", "2001-01-01 08:00"])
    return out.getvalue().encode()


# --- The test --------------------------------------------------------------------------------------
def test_every_dialect_ingests_exactly(city: City, tmp_path: Path) -> None:
    bom, bom_mrns = bom_patients()
    city.put("zz-xy-county/patients/患者信息.csv", county_his_patients())
    city.put("zz-c1/patients/patients-bom.csv", bom)
    city.put("zz-zm-guandu/encounters/就诊记录.xlsx", township_encounters(tmp_path / "t.xlsx"))
    city.put("zz-fahzu/fhir/transaction-0501.json", hl7_style_bundle())
    for name, content in bulk_export().items():
        city.put(f"zz-c1/fhir/bulk-20250601/{name}", content)
    # The PACS export lands whole; only the first patient is in the hospital's registry yet.
    for path in sorted(p for p in PACS.rglob("*") if p.is_file()):
        relative = path.relative_to(PACS).as_posix()
        if relative == "DICOMDIR" or relative.split("/")[0] in PACS_FOLDERS:
            city.put(f"zz-hpph/dicom/CD0001/{relative}", path.read_bytes())
    city.put("zz-hpph/patients/registry-1.csv", registry({PACS_PATIENTS[0]: 301}))

    first = city.ingest()
    assert_balanced(first)
    assert not first.files_rejected, first.files_rejected
    encodings = {f["key"]: f["encoding"] for f in first.files}
    assert encodings["zz-xy-county/patients/患者信息.csv"] == "gb18030"
    assert encodings["zz-c1/patients/patients-bom.csv"] == "utf-8-sig"
    patients = {(r["hospital_id"], r["patient_mrn"]): r for r in city.table("curated", "patients")}

    # County HIS, GB18030: three curated with their Chinese spellings and slashed dates understood.
    assert {m for h, m in patients if h == "zz-xy-county"} == {"XY001", "XY002", "XY003"}
    assert patients["zz-xy-county", "XY001"]["address"] == "荥阳市\r\n索河路 1 号"
    assert patients["zz-xy-county", "XY002"]["sex"] == "F"
    assert str(patients["zz-xy-county", "XY003"]["birth_date"]) == "1980-01-01"
    assert city.quarantined("patients")["zz-xy-county/patients/患者信息.csv", "resident_id_invalid"] == 1
    # UTF-8 with a BOM and a line break in a quoted field: 18 records, 18 patients.
    assert sorted(m for h, m in patients if h == "zz-c1" and m.startswith("C1-")) == bom_mrns
    assert patients["zz-c1", "C1-0007"]["address"] == "金水区\n农业路 8 号"
    # The workbook: two encounters curated, the future one quarantined.
    encounters = {(r["hospital_id"], r["encounter_id"]): r for r in city.table("curated", "encounters")}
    assert {e for h, e in encounters if h == "zz-zm-guandu"} == {"GD-1", "GD-2"}
    assert encounters["zz-zm-guandu", "GD-2"]["encounter_type"] == "emergency"
    assert city.quarantined("encounters")["zz-zm-guandu/encounters/就诊记录.xlsx", "admit_in_future"] == 1
    # The HL7-style bundle: patient, encounter, the ICD-10 condition and the lab curated; the
    # SNOMED-only condition quarantined with its reason; the Practitioner counted as not read.
    assert patients["zz-fahzu", "FA-778899"]["resident_id"] == rid(31, "F")
    assert encounters["zz-fahzu", "V-2025-0501"]["encounter_type"] == "outpatient"
    diagnoses = [r for r in city.table("curated", "diagnoses") if r["hospital_id"] == "zz-fahzu"]
    assert [(d["encounter_id"], d["icd10_code"], d["diagnosis_type"]) for d in diagnoses] == [
        ("V-2025-0501", "I10", "primary")
    ]
    bundle_rejects = city.quarantined("diagnoses")
    assert bundle_rejects["zz-fahzu/fhir/transaction-0501.json", "fhir_entry_invalid"] == 1
    labs = {(r["hospital_id"], r["lab_result_id"]): r for r in city.table("curated", "lab_results")}
    assert labs["zz-fahzu", "L-1"]["encounter_id"] == "V-2025-0501"
    bundle_file = next(f for f in first.files if f["key"].endswith("transaction-0501.json"))
    assert bundle_file.get("not_read") == {"Practitioner": 1}
    # Bulk Data: each line linked across files to its patient and encounter.
    for i in range(3):
        assert patients["zz-c1", f"B-{i}"]["resident_id"] == rid(200 + i)
        assert encounters["zz-c1", f"BE-{i}"]["resident_id"] == rid(200 + i)
        assert labs["zz-c1", f"BL-{i}"]["encounter_id"] == f"BE-{i}"
        assert labs["zz-c1", f"BL-{i}"]["resident_id"] == rid(200 + i)
    assert city.quarantined("encounters")["zz-c1/fhir/bulk-20250601/Encounter.ndjson", "malformed_line"] == 1

    # PACS: the first patient's studies linked through the registry, the second's waiting.
    studies = pacs_studies()
    curated = {r["study_instance_uid"]: r for r in city.table("curated", "imaging_studies")}
    assert set(curated) == studies[PACS_PATIENTS[0]]
    assert all(r["resident_id"] == rid(301) for r in curated.values())
    waiting = [r for r in city.table("quarantine", "waiting") if r["dataset"] == "imaging_studies"]
    assert {json.loads(r["record"])["study_instance_uid"] for r in waiting} == studies[PACS_PATIENTS[1]]
    assert all("MRN 98890234" in r["reason"] for r in waiting)
    assert first.datasets["imaging_studies"].waiting == len(studies[PACS_PATIENTS[1]])
    index = next(f for f in first.files if f["key"].endswith("CD0001/DICOMDIR"))
    assert index["status"] == "index"

    # The second patient registers a day later: its studies leave the waiting table, once.
    city.put("zz-hpph/patients/registry-2.csv", registry({PACS_PATIENTS[1]: 302}))
    second = city.ingest()
    assert_balanced(second)
    assert second.datasets["imaging_studies"].from_waiting == len(studies[PACS_PATIENTS[1]])
    assert second.datasets["imaging_studies"].waiting == 0
    curated = {r["study_instance_uid"]: r for r in city.table("curated", "imaging_studies")}
    assert set(curated) == studies[PACS_PATIENTS[0]] | studies[PACS_PATIENTS[1]]
    assert len(city.table("curated", "imaging_studies")) == len(curated)
    assert {curated[u]["resident_id"] for u in studies[PACS_PATIENTS[1]]} == {rid(302)}
    assert not [r for r in city.table("quarantine", "waiting") if r["dataset"] == "imaging_studies"]
