"""The city ingestion job on generated exports with known defects, against real MinIO + Spark.

Each test module works under a private prefix (landing keys and table paths), so runs never see
each other's data."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from ingestion.defects import DUPLICATE, DefectRates
from ingestion.generate import GenerateOptions, Manifest, generate
from ingestion.job import IngestOptions, run_ingestion
from ingestion.landing import land
from ingestion.profiles import load_profiles
from ingestion.read import store_access
from ingestion.report import RunReport
from ingestion.shareable import shareable
from lakehouse.contracts import Contract, load_contracts
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.settings import Settings
from lakehouse.storage import delta_storage_options, s3_client, s3_uri, site_credentials
from lakehouse.topology import Topology

CITY = "zhengzhou"
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


@dataclass
class Ingested:
    root: str
    exports: Path
    manifest: Manifest
    report: RunReport
    settings: Settings
    contracts: dict[str, Contract]

    def table(self, bucket: str, name: str, root: str | None = None) -> DeltaTable:
        creds = site_credentials(self.settings, CITY)
        return DeltaTable(
            s3_uri(bucket, f"{self.root if root is None else root}{name}"),
            storage_options=delta_storage_options(self.settings, creds),
        )

    def options(self, root: str | None = None) -> IngestOptions:
        """Options of a run under this module's prefix, or under another private `root`."""
        root = self.root if root is None else root
        return IngestOptions(city=CITY, table_root=root, landing_prefix=root, now=NOW)


def _run(spark, ing: Ingested, topology: Topology, options: IngestOptions) -> RunReport:
    """A run of the job as `medshare ingest` makes it: the city's identity, the platform's profiles."""
    access = store_access(ing.settings, site_credentials(ing.settings, CITY))
    profiles = load_profiles(ing.settings.platform_dir, topology, ing.contracts)
    return run_ingestion(spark, access, topology, ing.contracts, options, profiles=profiles)


@pytest.fixture(scope="module")
def ingested(
    spark, stack: Settings, topology: Topology, tmp_path_factory: pytest.TempPathFactory
) -> Ingested:
    import uuid

    root = f"tests/{uuid.uuid4().hex[:10]}/"
    contracts = load_contracts(stack.platform_dir)
    out = tmp_path_factory.mktemp("exports")
    # Defect rates tripled so every kind occurs even in a small export.
    manifest = generate(
        topology,
        contracts,
        out,
        GenerateOptions(seed=11, patients=150, cities=(CITY,), rates=DefectRates().scaled(3)),
    )
    client = s3_client(stack, site_credentials(stack, CITY))
    land(client, topology.city(CITY).buckets.landing, out / CITY, prefix=root)
    ing = Ingested(
        root=root,
        exports=out / CITY,
        manifest=manifest,
        report=None,
        settings=stack,  # type: ignore[arg-type]
        contracts=contracts,
    )
    ing.report = _run(spark, ing, topology, ing.options())
    return ing


def test_every_row_is_accounted_for(ingested: Ingested) -> None:
    report, manifest = ingested.report, ingested.manifest
    assert report.status == "succeeded"
    city_defects = [d for d in manifest.defects if d.city == CITY]
    for name, ds in report.datasets.items():
        assert ds.rows_in == manifest.rows_written(CITY, name), name
        assert ds.rows_in == ds.curated + ds.quarantined_total + ds.duplicates, name
        expected_bad = Counter(d.rule for d in city_defects if d.dataset == name and d.rule != DUPLICATE)
        assert ds.quarantined_total == sum(expected_bad.values()), name
        assert ds.duplicates == sum(1 for d in city_defects if d.dataset == name and d.rule == DUPLICATE), (
            name
        )
        assert ds.quality_passed is True
    curated = {n: ingested.table(f"{CITY}-curated", n).to_pyarrow_table().num_rows for n in report.datasets}
    assert curated == {n: ds.curated for n, ds in report.datasets.items()}


def test_each_injected_defect_is_quarantined_under_its_rule(ingested: Ingested) -> None:
    rows = ingested.table(f"{CITY}-quarantine", "rows").to_pyarrow_table().to_pylist()
    by_place = {(r["source_file"], r["line"]): r for r in rows}
    defects = [d for d in ingested.manifest.defects if d.city == CITY and d.rule != DUPLICATE]
    kinds = {d.kind for d in defects}
    assert kinds >= {
        "bad_check_digit",
        "id_mismatch",
        "future_date",
        "impossible_date",
        "unknown_code",
        "missing_required",
        "wrong_type",
        "malformed_line",
        "truncated_file",
    }
    for d in defects:
        row = by_place.get((d.file, d.line))
        assert row is not None, f"{d.kind} at {d.file}:{d.line} was not quarantined"
        assert d.rule in row["rules"], f"{d.kind} at {d.file}:{d.line}: {row['rules']} lacks {d.rule}"
        assert row["reason"] and row["raw"] and row["run_id"] == ingested.report.run_id
    # Nothing clean was quarantined.
    assert len(rows) == len(defects)


def test_same_files_again_change_nothing(spark, ingested: Ingested, topology: Topology) -> None:
    versions = {n: ingested.table(f"{CITY}-curated", n).version() for n in ingested.report.datasets}
    client = s3_client(ingested.settings, site_credentials(ingested.settings, CITY))
    assert land(client, f"{CITY}-landing", ingested.exports, prefix=ingested.root) == []
    again = _run(spark, ingested, topology, ingested.options())
    assert again.status == "succeeded"
    assert again.files_unchanged == ingested.report.files_seen
    assert again.datasets == {}
    assert {n: ingested.table(f"{CITY}-curated", n).version() for n in versions} == versions


def test_no_direct_identifier_in_shareable_data(spark, ingested: Ingested) -> None:
    from lakehouse.storage import s3a_uri

    # Every identifier value the exports contain, read independently from the files.
    secrets: set[str] = set()
    for path in ingested.exports.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            secrets |= set(re.findall(r"\b\d{17}[\dX]\b", text))  # resident IDs
            secrets |= set(re.findall(r"\b1[3-9]\d{9}\b", text))  # phone numbers
            secrets |= set(re.findall(r"[A-Z]{2}-[A-Z0-9-]+-\d{7}", text))  # MRNs
    names_and_addresses = set()
    for name, contract in ingested.contracts.items():
        curated = spark.read.format("delta").load(s3a_uri(f"{CITY}-curated", f"{ingested.root}{name}"))
        columns = contract.direct_identifiers + contract.identifiers("uid")
        if columns:  # one Spark job per table, not one per column
            for row in curated.select(*columns).collect():
                names_and_addresses |= {v for v in row if v}
    assert len(secrets) > 100 and len(names_and_addresses) > 100
    forbidden = secrets | names_and_addresses
    key = ProvinceKey.from_settings(ingested.settings)
    for name, contract in ingested.contracts.items():
        curated = spark.read.format("delta").load(s3a_uri(f"{CITY}-curated", f"{ingested.root}{name}"))
        shared = shareable(curated, contract, key)
        assert "resident_id" not in shared.columns and "person_key" in shared.columns
        for row in shared.collect():
            for column, value in row.asDict().items():
                text = str(value)
                assert text not in forbidden, f"{name}.{column} holds an identifier"
                # Also inside longer text (a reason, a JSON blob): no resident ID of the exports.
                assert not set(re.findall(r"\d{17}[\dX]", text)) & secrets, f"{name}.{column}: {text}"


def _curated_rows(ing: Ingested, root: str, dataset: str, hospital: str) -> list[tuple[object, ...]]:
    contract = ing.contracts[dataset]
    creds = site_credentials(ing.settings, CITY)
    try:
        table = DeltaTable(
            s3_uri(f"{CITY}-curated", f"{root}{dataset}"),
            storage_options=delta_storage_options(ing.settings, creds),
        )
    except TableNotFoundError:
        return []  # nothing of the dataset was delivered there (a small export: no pathology)
    rows = (
        table.to_pyarrow_table(filters=[("hospital_id", "=", hospital)])
        .select([*contract.column_names, "month"])
        .to_pylist()
    )
    return sorted(tuple(r.values()) for r in rows)


def test_fhir_and_dicom_yield_the_same_curated_rows_as_csv(
    spark, ingested: Ingested, topology: Topology
) -> None:
    from ingestion.generate_media import CROSSCHECK, media_hospital

    hospital = media_hospital(topology, CITY)
    assert hospital is not None
    assert list((ingested.exports / hospital.id / "fhir").glob("*.json"))
    assert list((ingested.exports / hospital.id / "dicom").rglob("*.dcm"))
    root = ingested.root.rstrip("/") + "-csv/"
    client = s3_client(ingested.settings, site_credentials(ingested.settings, CITY))
    land(client, f"{CITY}-landing", ingested.exports.parent / CROSSCHECK / CITY, prefix=root)
    report = _run(spark, ingested, topology, ingested.options(root))
    assert report.status == "succeeded" and not report.files_rejected
    compared = 0
    for dataset in (
        "patients",
        "encounters",
        "diagnoses",
        "lab_results",
        "medications",
        "imaging_studies",
        "imaging_series",
        "ecg_reports",
        "pathology_reports",
    ):
        from_media = _curated_rows(ingested, ingested.root, dataset, hospital.id)
        from_csv = _curated_rows(ingested, root, dataset, hospital.id)
        assert from_media == from_csv, dataset
        compared += len(from_csv)
    assert compared > 100


def test_bad_files_are_rejected_with_reasons_and_never_crash(
    spark, ingested: Ingested, topology: Topology
) -> None:
    import io

    root = ingested.root.rstrip("/") + "-bad/"
    hospital = topology.hospitals_of(CITY)[0].id
    header = ",".join(ingested.contracts["encounters"].column_names)
    files = {
        f"{hospital}/encounters/binary.csv": bytes(range(256)) * 4,
        f"{hospital}/encounters/empty.csv": b"",
        f"{hospital}/encounters/truncated.csv": (header + "\n" + f"{hospital},E1,MRN").encode(),
        f"{hospital}/encounters/no-header.csv": b"a,b,c\n1,2,3\n",
        f"{hospital}/dicom/corrupt.dcm": b"\x00" * 128 + b"DICM" + b"\x02\x00",
        f"{hospital}/encounters/export.xlsx": b"PK\x03\x04 not a csv",
        f"{hospital}/fhir/bundle.json": b"{not json",
        "kaifeng-c1/encounters/e.csv": header.encode() + b"\n",
    }
    client = s3_client(ingested.settings, site_credentials(ingested.settings, CITY))
    for key, content in files.items():
        client.put_object(f"{CITY}-landing", root + key, io.BytesIO(content), len(content))
    report = _run(spark, ingested, topology, ingested.options(root))
    assert report.status == "succeeded"
    rejected = {r["key"]: r["reason"] for r in report.files_rejected}
    expected = {
        "binary.csv": "binary",
        "empty.csv": "empty",
        "no-header.csv": "lacks required",
        "corrupt.dcm": "DICOM",
        "export.xlsx": "not an Excel workbook",
        "bundle.json": "JSON",
        "kaifeng-c1/encounters/e.csv": "not a hospital of this city",
    }
    for suffix, phrase in expected.items():
        matches = [reason for key, reason in rejected.items() if key.endswith(suffix)]
        assert matches and phrase.lower() in matches[0].lower(), (suffix, rejected)
    # The truncated CSV is read: its cut line is quarantined, not lost.
    assert report.datasets["encounters"].quarantined == {"malformed_line": 1}
    stored = ingested.table(f"{CITY}-quarantine", "files", root).to_pyarrow_table().to_pylist()
    assert {r["key"] for r in stored if r["run_id"] == report.run_id} == set(rejected)
    assert all(r["reason"] for r in stored)


def test_corrected_file_replaces_the_rows_of_the_earlier_delivery(
    spark, ingested: Ingested, topology: Topology
) -> None:
    import csv
    import io

    # A CSV encounters export that was not truncated; only its defect-free lines are touched.
    defects = [d for d in ingested.manifest.defects if d.city == CITY]
    truncated = {d.file for d in defects if d.kind == "truncated_file"}
    key = next(
        k.removeprefix(f"{CITY}/")
        for k, f in ingested.manifest.files.items()
        if k.startswith(f"{CITY}/")
        and f["dataset"] == "encounters"
        and f["format"] == "csv"
        and k.removeprefix(f"{CITY}/") not in truncated
        and int(str(f["rows"])) >= 5
    )
    bad_lines = {d.line for d in defects if d.file == key}
    path = ingested.exports / key
    lines = path.read_text().splitlines()
    header = next(csv.reader([lines[0]]))
    parsed = {
        n: dict(zip(header, next(csv.reader([lines[n - 1]])), strict=True))
        for n in range(2, len(lines) + 1)
        if n not in bad_lines
    }
    ids = [r["encounter_id"] for r in parsed.values()]
    clean = [n for n, r in parsed.items() if ids.count(r["encounter_id"]) == 1]
    drop_line, change_line = clean[-1], clean[0]
    dropped, changed = parsed[drop_line], parsed[change_line]
    changed["department"] = "corrected department"
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([changed[h] for h in header])
    lines[change_line - 1] = out.getvalue()
    del lines[drop_line - 1]
    path.write_text("\n".join(lines) + "\n")
    corrected = [r for n, r in parsed.items() if n != drop_line]

    client = s3_client(ingested.settings, site_credentials(ingested.settings, CITY))
    assert land(client, f"{CITY}-landing", ingested.exports, prefix=ingested.root) == [ingested.root + key]
    report = _run(spark, ingested, topology, ingested.options())
    assert report.status == "succeeded" and report.files_corrected == 1
    assert report.datasets["encounters"].replaced_files == 1

    table = ingested.table(f"{CITY}-curated", "encounters")
    hospital = key.split("/")[0]
    current = {
        r["encounter_id"]: r
        for r in table.to_pyarrow_table(filters=[("hospital_id", "=", hospital)]).to_pylist()
    }
    assert dropped["encounter_id"] not in current
    assert current[changed["encounter_id"]]["department"] == "corrected department"
    assert all(current[r["encounter_id"]]["_source_file"] == key for r in corrected)
    operations = [h["operation"] for h in table.history(3)]
    assert operations[:2] == ["MERGE", "DELETE"]


def test_a_hospital_export_carries_its_own_rows_only(spark, ingested: Ingested, topology: Topology) -> None:
    """Issue 17, finding 9: an encounter is a care relationship, and a care relationship opens the
    patient's history (treatment, under_care). A hospital's export with another hospital's rows,
    or a referral from a hospital that does not exist, is quarantined, never curated."""
    import io

    from lakehouse.identity import make_resident_id

    root = ingested.root.rstrip("/") + "-provenance/"
    sender, other = (h.id for h in topology.hospitals_of(CITY)[:2])
    rid = make_resident_id(region="410102", birth_date=dt.date(1980, 5, 1), sequence=17, sex="F")
    columns = ingested.contracts["encounters"].column_names
    rows = [
        # in the order below: hospital, encounter, MRN, resident ID, type, department, times, referral
        [sender, "E-own", "M1", rid, "outpatient", "cardiology", "2025-03-01T09:00:00", "", ""],
        [other, "E-forged", "M2", rid, "outpatient", "cardiology", "2025-03-02T09:00:00", "", ""],
        [sender, "E-referral", "M3", rid, "inpatient", "neurology", "2025-03-03T09:00:00", "", "zz-nowhere"],
        [sender, "E-real-ref", "M4", rid, "inpatient", "neurology", "2025-03-04T09:00:00", "", other],
    ]
    order = [
        "hospital_id",
        "encounter_id",
        "patient_mrn",
        "resident_id",
        "encounter_type",
        "department",
        "admit_time",
        "discharge_time",
        "referred_from_hospital_id",
    ]
    assert sorted(order) == sorted(columns)
    text = ",".join(order) + "\n" + "\n".join(",".join(r) for r in rows) + "\n"
    client = s3_client(ingested.settings, site_credentials(ingested.settings, CITY))
    key = f"{root}{sender}/encounters/forged.csv"
    client.put_object(f"{CITY}-landing", key, io.BytesIO(text.encode()), len(text))
    report = _run(spark, ingested, topology, ingested.options(root))
    encounters = report.datasets["encounters"]
    assert encounters.rows_in == 4 and encounters.curated == 2
    assert encounters.quarantined == {"hospital_not_sender": 1, "referral_hospital_unknown": 1}
    curated = ingested.table(f"{CITY}-curated", "encounters", root).to_pyarrow_table()
    assert sorted(curated["encounter_id"].to_pylist()) == ["E-own", "E-real-ref"]
