"""Dataset contracts (platform/datasets/*.yaml): columns, keys, partitioning, rules, identifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from lakehouse.errors import TopologyError

DATASETS_DIR = "datasets"

ColumnType = Literal["string", "int", "long", "double", "date", "timestamp", "bool"]
IdentifierKind = Literal["resident_id", "direct", "uid"]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Column(_Frozen):
    name: Name
    type: ColumnType
    required: bool = False
    identifier: IdentifierKind | None = None
    allowed: tuple[str, ...] | None = None
    pattern: str | None = None


class Partitioning(_Frozen):
    hospital: Name
    # The date or timestamp column whose yyyy-MM is the `month` partition value.
    month: Name


class Rule(_Frozen):
    """A row rule: a row that breaks it goes to quarantine under the rule's name."""

    name: Name
    kind: Literal[
        "resident_id",
        "resident_id_matches",
        "not_future",
        "date_range",
        "ordered",
        "code_in",
        "hospital_known",
    ]
    column: Name | None = None
    columns: tuple[Name, Name] | None = None
    min: str | None = None
    code_list: Name | None = None
    birth_date: Name | None = None
    sex: Name | None = None

    @model_validator(mode="after")
    def _arguments_fit_the_kind(self) -> Rule:
        needs = {
            "ordered": ("columns",),
            "code_in": ("column", "code_list"),
            "date_range": ("column", "min"),
            "resident_id_matches": ("column", "birth_date", "sex"),
        }.get(self.kind, ("column",))
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            raise ValueError(f"rule kind {self.kind!r} needs {', '.join(missing)}")
        return self

    def referenced(self) -> tuple[str, ...]:
        names = [self.column, self.birth_date, self.sex, *(self.columns or ())]
        return tuple(n for n in names if n is not None)


class Contract(_Frozen):
    name: Name
    description: str
    shareable: bool
    business_key: tuple[Name, ...] = Field(min_length=1)
    partition_by: Partitioning
    columns: tuple[Column, ...] = Field(min_length=1)
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _references_exist(self) -> Contract:
        names = [c.name for c in self.columns]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate columns: {', '.join(sorted(dupes))}")
        known = set(names)
        for where, refs in [
            ("business_key", self.business_key),
            ("partition_by", (self.partition_by.hospital, self.partition_by.month)),
            *[(f"rules.{r.name}", r.referenced()) for r in self.rules],
        ]:
            unknown = [r for r in refs if r not in known]
            if unknown:
                raise ValueError(f"{where} names unknown column(s): {', '.join(unknown)}")
        month = self.column(self.partition_by.month)
        if month.type not in ("date", "timestamp"):
            raise ValueError(f"partition_by.month column {month.name!r} must be a date or timestamp")
        return self

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    @property
    def direct_identifiers(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.identifier == "direct")

    def identifiers(self, kind: IdentifierKind) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.identifier == kind)


def _loc(parts: tuple[int | str, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_contract(path: Path) -> Contract:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read the contract: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from exc
    try:
        contract = Contract.model_validate(data)
    except ValidationError as exc:
        problems = [f"{path}: {_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise TopologyError("\n".join(problems)) from exc
    if contract.name != path.stem:
        raise TopologyError(f"{path}: name: {contract.name!r} differs from the file name {path.stem!r}")
    return contract


def load_contracts(platform_dir: Path) -> dict[str, Contract]:
    """Every contract in platform/datasets, by dataset name."""
    folder = platform_dir / DATASETS_DIR
    paths = sorted(folder.glob("*.yaml"))
    if not paths:
        raise TopologyError(f"{folder}: no dataset contracts (*.yaml) found")
    return {c.name: c for c in map(load_contract, paths)}
