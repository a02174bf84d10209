"""Records that reach us without their patient: found through the hospital's own keys, or kept
waiting until their patient arrives.

A PACS file names the patient by the hospital's PatientID (the MRN), not by resident ID; a FHIR
Bulk Data line names its subject as `Patient/<id>`, a resource of another file. The readers leave
`resident_id` empty and say how to find it (`_link_mrn`, `_link_patient`, `_link_encounter`).
`link` fills what it can:

    _link_mrn       → the city's curated `patients` row of (hospital_id, patient_mrn)
    _link_patient   → the Patient resource with that logical id at the hospital (`_fhir_ids`)
    _link_encounter → the Encounter resource with that logical id at the hospital (`_fhir_ids`)

What stays unresolved gets `_waiting` (why) and goes to the `waiting` table instead of quarantine:
it is not wrong, only early. Every run takes the waiting rows back and links them again, so a
study whose patient is exported a day later is curated then — once, by its business key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F

from lakehouse.contracts import Contract

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

LINKS = ("_link_patient", "_link_encounter", "_link_mrn")
WAITING_REASON = "_waiting"


def _needs(contract: Contract) -> tuple[Column, Column]:
    columns = set(contract.column_names)
    patient = F.lit(False)
    if "resident_id" in columns:
        patient = F.col("resident_id").isNull() & (
            F.col("_link_patient").isNotNull() | F.col("_link_mrn").isNotNull()
        )
    encounter = F.lit(False)
    if "encounter_id" in columns:
        encounter = F.col("encounter_id").isNull() & F.col("_link_encounter").isNotNull()
    return patient, encounter


def link(
    rows: DataFrame,
    contract: Contract,
    *,
    registry: DataFrame | None,
    fhir_ids: DataFrame | None,
) -> DataFrame:
    """`rows` with what the link columns point at filled in, and `_waiting` set (to the reason)
    where something is still unknown. `registry`: (hospital_id, patient_mrn, resident_id) of the
    city's patients; `fhir_ids`: (hospital_id, resource_type, fhir_id, patient_mrn, resident_id,
    encounter_id) of the FHIR resources seen so far."""
    needs_patient, needs_encounter = _needs(contract)
    marked = rows.withColumn("__np", needs_patient).withColumn("__ne", needs_encounter)
    ready = marked.where(~F.col("__np") & ~F.col("__ne")).withColumn(
        WAITING_REASON, F.lit(None).cast("string")
    )
    pending = marked.where(F.col("__np") | F.col("__ne"))
    columns = set(contract.column_names)
    resolved = pending
    if fhir_ids is not None:
        patients = fhir_ids.where(F.col("resource_type") == "Patient").select(
            F.col("hospital_id").alias("__h"),
            F.col("fhir_id").alias("__pid"),
            F.col("resident_id").alias("__p_rid"),
            F.col("patient_mrn").alias("__p_mrn"),
        )
        resolved = resolved.join(
            patients,
            (F.col("hospital_id") == F.col("__h")) & (F.col("_link_patient") == F.col("__pid")),
            "left",
        ).drop("__h", "__pid")
        encounters = fhir_ids.where(F.col("resource_type") == "Encounter").select(
            F.col("hospital_id").alias("__h"),
            F.col("fhir_id").alias("__eid"),
            F.col("encounter_id").alias("__e_id"),
        )
        resolved = resolved.join(
            encounters,
            (F.col("hospital_id") == F.col("__h")) & (F.col("_link_encounter") == F.col("__eid")),
            "left",
        ).drop("__h", "__eid")
    else:
        resolved = resolved.select(
            "*", *[F.lit(None).cast("string").alias(c) for c in ("__p_rid", "__p_mrn", "__e_id")]
        )
    if registry is not None:
        by_mrn = registry.select(
            F.col("hospital_id").alias("__h"),
            F.col("patient_mrn").alias("__mrn"),
            F.col("resident_id").alias("__m_rid"),
        )
        resolved = resolved.join(
            by_mrn,
            (F.col("hospital_id") == F.col("__h")) & (F.col("_link_mrn") == F.col("__mrn")),
            "left",
        ).drop("__h", "__mrn")
    else:
        resolved = resolved.withColumn("__m_rid", F.lit(None).cast("string"))
    filled = {}
    if "resident_id" in columns:
        filled["resident_id"] = F.coalesce(F.col("resident_id"), F.col("__p_rid"), F.col("__m_rid"))
    if "patient_mrn" in columns:
        filled["patient_mrn"] = F.coalesce(F.col("patient_mrn"), F.col("__p_mrn"), F.col("_link_mrn"))
    if "encounter_id" in columns:
        filled["encounter_id"] = F.coalesce(F.col("encounter_id"), F.col("__e_id"))
    resolved = resolved.withColumns(filled)
    unknown_patient = (
        F.col("__np") & F.col("resident_id").isNull() if "resident_id" in columns else F.lit(False)
    )
    unknown_encounter = (
        F.col("__ne") & F.col("encounter_id").isNull() if "encounter_id" in columns else F.lit(False)
    )
    why = F.concat_ws(
        "; ",
        F.when(
            unknown_patient & F.col("_link_patient").isNotNull(),
            F.format_string(
                "patient Patient/%s not yet received from %s", F.col("_link_patient"), F.col("hospital_id")
            ),
        ),
        F.when(
            unknown_patient & F.col("_link_patient").isNull(),
            F.format_string("no patient with MRN %s at %s yet", F.col("_link_mrn"), F.col("hospital_id")),
        ),
        F.when(
            unknown_encounter,
            F.format_string(
                "encounter Encounter/%s not yet received from %s",
                F.col("_link_encounter"),
                F.col("hospital_id"),
            ),
        ),
    )
    resolved = resolved.withColumn(WAITING_REASON, F.when(why != "", why)).drop(
        "__p_rid", "__p_mrn", "__e_id", "__m_rid"
    )
    return ready.unionByName(resolved).drop("__np", "__ne")


def registry_of(curated_patients: DataFrame) -> DataFrame:
    """(hospital_id, patient_mrn, resident_id) of a city's curated patients table."""
    return curated_patients.select("hospital_id", "patient_mrn", "resident_id").dropDuplicates(
        ["hospital_id", "patient_mrn"]
    )


def fhir_ids_of(records: DataFrame, dataset: str, columns: Sequence[str]) -> DataFrame:
    """The FHIR resources among `records` of `dataset` (patients or encounters) as `_fhir_ids` rows."""
    kind = {"patients": "Patient", "encounters": "Encounter"}[dataset]

    def col(name: str) -> Column:
        return F.col(name) if name in columns else F.lit(None).cast("string")

    return records.where(F.col("_fhir_id").isNotNull() & F.col("_rule").isNull()).select(
        col("hospital_id").alias("hospital_id"),
        F.lit(kind).alias("resource_type"),
        F.col("_fhir_id").alias("fhir_id"),
        col("patient_mrn").alias("patient_mrn"),
        col("resident_id").alias("resident_id"),
        col("encounter_id").alias("encounter_id"),
    )
