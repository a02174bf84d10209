"""Source profiles (platform/sources.yaml): how each hospital writes its exports.

A profile says how to read a file — its text encoding, CSV delimiter and quote, the sheet of a
workbook — and how to understand what is in it: header names → contract columns, date and time
formats, spellings of coded values, FHIR identifier systems. `SourceProfiles.for_file` picks the
profile of a (hospital, dataset); every named profile is `default` with its own settings on top.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from lakehouse.contracts import Contract
from lakehouse.errors import TopologyError
from lakehouse.topology import Topology

SOURCES_FILE = "sources.yaml"
DEFAULT = "default"

Encoding = Literal["auto", "utf-8", "utf-8-sig", "gb18030", "gbk"]
OneChar = Annotated[str, StringConstraints(min_length=1, max_length=1)]
ProfileName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*$", max_length=60)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FhirSystems(_Frozen):
    mrn_systems: tuple[str, ...] = ()
    resident_id_systems: tuple[str, ...] = ()


class _ProfileFields(_Frozen):
    """What a profile may set; None = as in `default`."""

    encoding: Encoding | None = None
    delimiter: OneChar | None = None
    quote: OneChar | None = None
    sheet: str | None = None
    date_formats: tuple[str, ...] | None = Field(default=None, min_length=1)
    timestamp_formats: tuple[str, ...] | None = Field(default=None, min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    fhir: FhirSystems = FhirSystems()


class _DefaultFields(_ProfileFields):
    encoding: Encoding = "auto"
    delimiter: OneChar = ","
    quote: OneChar = '"'
    date_formats: tuple[str, ...] = Field(default=("yyyy-MM-dd",), min_length=1)
    timestamp_formats: tuple[str, ...] = Field(
        default=("yyyy-MM-dd'T'HH:mm[:ss][.SSSSSS]", "yyyy-MM-dd HH:mm[:ss][.SSSSSS]"), min_length=1
    )


class DatasetSource(_Frozen):
    profile: ProfileName | None = None
    sheet: str | None = None


class HospitalSources(_Frozen):
    profile: ProfileName | None = None
    datasets: dict[str, DatasetSource] = Field(default_factory=dict)


class _SourcesFile(_Frozen):
    default: _DefaultFields = _DefaultFields()
    profiles: dict[ProfileName, _ProfileFields] = Field(default_factory=dict)
    hospitals: dict[str, HospitalSources] = Field(default_factory=dict)


class Profile(_Frozen):
    """Everything needed to read one file, resolved (no field left to `default`)."""

    name: str
    encoding: Encoding
    delimiter: OneChar
    quote: OneChar
    sheet: str | None
    date_formats: tuple[str, ...]
    timestamp_formats: tuple[str, ...]
    headers: dict[str, str]
    values: dict[str, dict[str, str]]
    fhir: FhirSystems

    def column_for(self, header: str, columns: Iterable[str]) -> str | None:
        """The contract column an export header names: the column itself (case and surrounding
        space ignored), else the profile's mapping."""
        wanted = header.strip().lstrip("\ufeff")
        names = {c.lower(): c for c in columns}
        if wanted.lower() in names:
            return names[wanted.lower()]
        mapped = self.headers.get(wanted)
        return mapped if mapped is not None and mapped.lower() in names else None


def _resolve(name: str, base: _DefaultFields, own: _ProfileFields, sheet: str | None = None) -> Profile:
    return Profile(
        name=name,
        encoding=own.encoding or base.encoding,
        delimiter=own.delimiter or base.delimiter,
        quote=own.quote or base.quote,
        sheet=sheet or own.sheet or base.sheet,
        date_formats=own.date_formats or base.date_formats,
        timestamp_formats=own.timestamp_formats or base.timestamp_formats,
        headers={**base.headers, **own.headers},
        values={
            col: {**base.values.get(col, {}), **own.values.get(col, {})}
            for col in {*base.values, *own.values}
        },
        fhir=FhirSystems(
            mrn_systems=tuple(dict.fromkeys((*base.fhir.mrn_systems, *own.fhir.mrn_systems))),
            resident_id_systems=tuple(
                dict.fromkeys((*base.fhir.resident_id_systems, *own.fhir.resident_id_systems))
            ),
        ),
    )


class SourceProfiles:
    """The profiles of platform/sources.yaml, checked against the topology and the contracts."""

    def __init__(self, data: _SourcesFile) -> None:
        self._data = data
        self.default = _resolve(DEFAULT, data.default, _ProfileFields())
        self._named = {n: _resolve(n, data.default, p) for n, p in data.profiles.items()}

    @property
    def names(self) -> list[str]:
        return [DEFAULT, *self._named]

    def profile(self, name: str) -> Profile:
        return self.default if name == DEFAULT else self._named[name]

    def for_file(self, hospital_id: str, dataset: str | None) -> Profile:
        """The profile of a hospital's export of `dataset` (None: a file of several datasets,
        such as a FHIR bundle or a DICOM folder)."""
        hospital = self._data.hospitals.get(hospital_id)
        if hospital is None:
            return self.default
        own = hospital.datasets.get(dataset) if dataset is not None else None
        name = (own.profile if own else None) or hospital.profile or DEFAULT
        sheet = own.sheet if own else None
        base = self.profile(name)
        return base if sheet is None else base.model_copy(update={"sheet": sheet})


def default_profile() -> Profile:
    """The profile of a platform without sources.yaml (and of tests that need no other)."""
    return _resolve(DEFAULT, _DefaultFields(), _ProfileFields())


# --- Datetime patterns --------------------------------------------------------------------------
# The letters a format may use, with the digits they take. Anything else is refused when loading,
# so a typo cannot silently accept everything or nothing.
_FIELDS = {"y": (4, 4), "M": (2, 2), "d": (2, 2), "H": (2, 2), "m": (2, 2), "s": (2, 2), "S": (1, 9)}


def pattern_regex(pattern: str) -> str:
    """A regular expression matching exactly what the Spark datetime `pattern` parses; raises
    ValueError for a letter or construct it does not support."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "'":
            end = pattern.find("'", i + 1)
            if end < 0:
                raise ValueError(f"unclosed quote in {pattern!r}")
            out.append(re.escape(pattern[i + 1 : end] or "'"))
            i = end + 1
            continue
        if ch == "[":
            depth += 1
            out.append("(?:")
        elif ch == "]":
            if depth == 0:
                raise ValueError(f"unbalanced ']' in {pattern!r}")
            depth -= 1
            out.append(")?")
        elif ch.isalpha():
            run = len(pattern) - i - len(pattern[i:].lstrip(ch))
            if ch not in _FIELDS:
                raise ValueError(f"unsupported letter {ch!r} in {pattern!r} (use {' '.join(_FIELDS)})")
            low, high = _FIELDS[ch]
            if ch == "S":
                out.append(rf"\d{{1,{run}}}")
            elif run != low:
                raise ValueError(f"{ch * run!r} in {pattern!r}: write {ch * low}")
            else:
                out.append(rf"\d{{{high}}}")
            i += run
            continue
        else:
            out.append(re.escape(ch))
        i += 1
    if depth:
        raise ValueError(f"unclosed '[' in {pattern!r}")
    return "^" + "".join(out) + "$"


# --- Loading ------------------------------------------------------------------------------------
def _loc(parts: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _check(data: _SourcesFile, path: Path, topology: Topology, contracts: Mapping[str, Contract]) -> None:
    problems: list[str] = []
    columns = {c for contract in contracts.values() for c in contract.column_names}
    profiles = {DEFAULT, *data.profiles}
    named: list[tuple[str, _ProfileFields]] = [(DEFAULT, data.default), *data.profiles.items()]
    for name, fields in named:
        where = DEFAULT if name == DEFAULT else f"profiles.{name}"
        for header, column in fields.headers.items():
            if column not in columns:
                problems.append(f"{where}.headers.{header}: {column!r} is not a column of any dataset")
        for column in fields.values:
            if column not in columns:
                problems.append(f"{where}.values.{column}: not a column of any dataset")
        for key in ("date_formats", "timestamp_formats"):
            for fmt in getattr(fields, key) or ():
                try:
                    pattern_regex(fmt)
                except ValueError as exc:
                    problems.append(f"{where}.{key}: {exc}")
        delimiter = fields.delimiter or data.default.delimiter
        if delimiter == (fields.quote or data.default.quote):
            problems.append(f"{where}: delimiter and quote are the same character ({delimiter!r})")
    known = {h.id for h in topology.hospitals}
    for hospital_id, hospital in data.hospitals.items():
        where = f"hospitals.{hospital_id}"
        if hospital_id not in known:
            problems.append(f"{where}: not a hospital of the topology")
        if hospital.profile is not None and hospital.profile not in profiles:
            problems.append(f"{where}.profile: no profile named {hospital.profile!r}")
        for dataset, source in hospital.datasets.items():
            if dataset not in contracts:
                problems.append(f"{where}.datasets.{dataset}: not a dataset")
            if source.profile is not None and source.profile not in profiles:
                problems.append(f"{where}.datasets.{dataset}.profile: no profile named {source.profile!r}")
    if problems:
        raise TopologyError("\n".join(f"{path}: {p}" for p in problems))


def parse_profiles(
    data: Any, *, path: Path, topology: Topology, contracts: Mapping[str, Contract]
) -> SourceProfiles:
    try:
        model = _SourcesFile.model_validate(data or {})
    except ValidationError as exc:
        problems = [f"{path}: {_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise TopologyError("\n".join(problems)) from exc
    _check(model, path, topology, contracts)
    return SourceProfiles(model)


def load_profiles(
    platform_dir: Path, topology: Topology, contracts: Mapping[str, Contract]
) -> SourceProfiles:
    """platform/sources.yaml, checked; a platform without the file reads everything by `default`."""
    path = platform_dir / SOURCES_FILE
    if not path.exists():
        return parse_profiles({}, path=path, topology=topology, contracts=contracts)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read the source profiles: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from exc
    return parse_profiles(data, path=path, topology=topology, contracts=contracts)
