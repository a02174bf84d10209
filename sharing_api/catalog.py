"""What the API serves of each federated dataset: the provincial table's columns minus lineage,
and, for the datasets of a patient's history, the column that dates an entry."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from lakehouse.contracts import Contract
from lakehouse.shareable import LINEAGE, PERSON_KEY, shareable_schema

CITY = "city"
HOSPITAL = "hospital_id"
# The datasets of a patient's timeline (IHE XCA-style: every entry stamped with city and hospital).
HISTORY = (
    "encounters",
    "diagnoses",
    "lab_results",
    "medications",
    "imaging_studies",
    "teleconsultations",
    "ecg_reports",
    "pathology_reports",
)


@dataclass(frozen=True)
class DatasetView:
    name: str
    description: str
    schema: pa.Schema  # the columns callers can ask for (before their grant's column policy)
    time_column: str  # the date/timestamp that places a row in time (the contract's month source)
    in_history: bool

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)

    def type_of(self, column: str) -> pa.DataType:
        return self.schema.field(column).type


def dataset_view(contract: Contract) -> DatasetView:
    shareable = shareable_schema(contract)
    # Lineage names files and runs, not people, but callers have no use for it.
    fields = [pa.field(CITY, pa.string())] + [f for f in shareable if f.name not in LINEAGE]
    return DatasetView(
        name=contract.name,
        description=contract.description,
        schema=pa.schema(fields),
        time_column=contract.partition_by.month,
        in_history=contract.name in HISTORY,
    )


def catalog(contracts: dict[str, Contract]) -> dict[str, DatasetView]:
    views = {name: dataset_view(c) for name, c in sorted(contracts.items()) if c.shareable}
    for name in HISTORY:
        if name not in views:
            raise ValueError(f"the patient history needs the shareable dataset {name!r}")
    for view in views.values():
        if PERSON_KEY not in view.columns:
            raise ValueError(f"dataset {view.name!r} has no person_key: it cannot be scoped to patients")
    return views
