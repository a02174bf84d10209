"""`medshare generate`: realistic, seeded hospital exports for the topology, with defects injected
at known rates and listed in a manifest (file, line, kind, the rule that must catch it).

Layout written under the output folder — the same keys `medshare land` uses in a city's
landing bucket:

    <city>/<hospital>/<dataset>/<dataset>-<batch>.csv|.jsonl|.xlsx   per-table extracts
    <city>/<hospital>/fhir/bundle-<batch>.json                  FHIR R4 bundles (one hospital a city)
    <city>/<hospital>/fhir/bulk-<batch>/<Resource>.ndjson       or a FHIR Bulk Data export
    <city>/<hospital>/dicom/<study uid>/s<k>/i<i>.dcm           DICOM files (the same hospital)
    <city>/<hospital>/dicom/<study uid>/IMG00001, DICOMDIR      or a study as a PACS exports it
    _crosscheck/<city>/<hospital>/<dataset>/...csv              the same records as plain CSV
    manifest.json                                               what was written and injected

Each extract is written in a dialect (ingestion.dialects): a hospital with a named source profile
(platform/sources.yaml) always writes what its profile says; the other hospitals' (hospital,
dataset) extracts get the dialects at `GenerateOptions.dialects` shares, drawn from the seed.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ingestion.defects import MALFORMED_LINE, DefectRates, inject
from ingestion.dialects import (
    CSV,
    DEFAULT_SHARES,
    DIALECTS,
    Dialect,
    Tagged,
    check_shares,
    for_file,
    multiline_free_text,
    write_table,
)
from ingestion.generate_media import FhirForm, media_hospital, write_media
from ingestion.profiles import DEFAULT, SourceProfiles, load_profiles
from ingestion.synthetic import Window, generate_batches
from lakehouse.contracts import Contract
from lakehouse.topology import City, Topology

RawRecord = dict[str, str | None]
Progress = Callable[[int], None]
MANIFEST = "manifest.json"
# Every visit writes a record of these: a dialect given to one of a hospital's extracts of them
# is sure to be written, so each dialect is handed to one of them first — patients and
# encounters (they have free text, for csv-bom-multiline) before diagnoses.
EVERY_VISIT = ("patients", "encounters", "diagnoses")


@dataclass(frozen=True, kw_only=True)
class GenerateOptions:
    seed: int = 7
    patients: int = 1_000
    cities: tuple[str, ...] = ()  # empty: every city of the topology
    rates: DefectRates = field(default_factory=DefectRates)
    window: Window = field(
        default_factory=lambda: Window(start=dt.date(2025, 1, 1), end=dt.date(2026, 10, 31))
    )
    batch_size: int = 5_000
    truncated_file: bool = True  # one CSV per city cut in the middle of a line
    media: bool = True  # one county hospital per city exports FHIR + DICOM
    corrupt_dicom: bool = True  # and one unreadable DICOM file per city
    dicom_studies: int = 200  # at most this many DICOM studies per city
    # Weights (normalised) of the dialects among the (hospital, dataset) extracts of hospitals
    # read with the default profile; every dialect with a weight appears in every city.
    dialects: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    # Rows per city in default-profile workbooks; past it their extracts are written as plain CSV
    # (workbooks are slow to read). Named profiles that declare a sheet always get workbooks.
    xlsx_max_rows: int = 200_000
    fhir_ndjson_share: float = 0.5  # of the media hospitals (by city): Bulk Data NDJSON, else Bundles
    pacs_share: float = 0.5  # of the DICOM studies of a city: PACS-style, with a DICOMDIR

    def __post_init__(self) -> None:
        check_shares(self.dialects)
        for name in ("fhir_ndjson_share", "pacs_share"):
            share = getattr(self, name)
            if not 0 <= share <= 1:
                raise ValueError(f"{name} must be between 0 and 1, not {share}")
        if self.xlsx_max_rows < 0:
            raise ValueError(f"xlsx_max_rows must be ≥ 0, not {self.xlsx_max_rows}")


@dataclass(kw_only=True)
class Defect:
    city: str
    file: str  # key relative to the city's folder (= the landing key)
    line: int
    dataset: str
    kind: str
    rule: str  # the quarantine rule, or "duplicate"


@dataclass(kw_only=True)
class Manifest:
    seed: int
    patients: int
    rates: dict[str, float]
    files: dict[str, dict[str, object]] = field(default_factory=dict)  # "<city>/<key>" → info
    defects: list[Defect] = field(default_factory=list)
    # Records exported as FHIR bundles and DICOM files: city → dataset → count.
    media_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    # Files made unreadable on purpose (a corrupt DICOM): "<city>/<key>".
    rejected_files: list[str] = field(default_factory=list)
    # The dialect shares asked for (files[...]["format"] says what each file is).
    dialects: dict[str, float] = field(default_factory=dict)
    # city → the media hospital, its FHIR form ("bundle" or "ndjson"), DICOM studies written and
    # how many of them PACS-style.
    media: dict[str, dict[str, object]] = field(default_factory=dict)

    def rows_written(self, city: str, dataset: str) -> int:
        tabular = sum(
            int(str(f["rows"]))
            for k, f in self.files.items()
            if k.startswith(f"{city}/") and f["dataset"] == dataset
        )
        return tabular + self.media_rows.get(city, {}).get(dataset, 0)

    def defect_counts(self) -> dict[str, int]:
        return dict(Counter(d.kind for d in self.defects))

    def save(self, path: Path) -> None:
        data = asdict(self)
        data["defect_counts"] = self.defect_counts()
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text())
        data.pop("defect_counts", None)
        data["defects"] = [Defect(**d) for d in data["defects"]]
        return cls(**data)


def _truncate(content: bytes, rng: random.Random) -> tuple[bytes, int]:
    """Cut a plain CSV (one line a record) inside a data line, after its second field: that line
    has too few fields and every line after it is gone. Returns the content and the cut line's
    number."""
    lines = content.decode().splitlines()
    cut = rng.randrange(2, len(lines) + 1) if len(lines) > 2 else len(lines)
    partial = ",".join(lines[cut - 1].split(",")[:2])
    return ("\n".join([*lines[: cut - 1], partial])).encode(), cut


def _shares(shares: dict[str, float], n: int, rng: random.Random) -> list[str]:
    """n dialect names in the proportions of `shares` (largest remainders), every dialect with a
    positive share at least once when n allows; one of each first, then the rest shuffled."""
    names = [d for d in DIALECTS if shares.get(d, 0) > 0]
    total = sum(shares[d] for d in names)
    exact = {d: shares[d] / total * n for d in names}
    counts = {d: math.floor(exact[d]) for d in names}
    by_remainder = sorted(names, key=lambda d: exact[d] - counts[d], reverse=True)
    for d in by_remainder[: n - sum(counts.values())]:
        counts[d] += 1
    if n >= len(names):
        for d in names:
            if counts[d] == 0:
                counts[max(names, key=lambda x: counts[x])] -= 1
                counts[d] = 1
    first = [d for d in names if counts[d] > 0]
    rest = [d for d in names for _ in range(counts[d] - 1)]
    rng.shuffle(first)
    rng.shuffle(rest)
    first.sort(key=lambda d: not DIALECTS[d].multiline)  # onto an extract with free text
    return first + rest


def plan_dialects(
    topology: Topology,
    cities: Sequence[City],
    contracts: dict[str, Contract],
    profiles: SourceProfiles,
    options: GenerateOptions,
    media_ids: set[str],
) -> dict[tuple[str, str], Dialect]:
    """The dialect of every (hospital, dataset) extract of `cities`. Extracts read with a named
    profile are written as it says; the others share the dialects per city, drawn from the seed
    (a city's draw does not depend on which other cities are generated)."""
    plan: dict[tuple[str, str], Dialect] = {}
    for city in cities:
        sure: dict[str, list[tuple[str, str]]] = {d: [] for d in EVERY_VISIT}
        others: list[tuple[str, str]] = []
        for hospital in topology.hospitals_of(city.id):
            for dataset in sorted(contracts):
                profile = profiles.for_file(hospital.id, dataset)
                if profile.name != DEFAULT:
                    plan[hospital.id, dataset] = for_file(CSV.name, profile)
                elif dataset in sure and hospital.id not in media_ids:
                    sure[dataset].append((hospital.id, dataset))
                else:
                    others.append((hospital.id, dataset))
        rng = random.Random(f"{options.seed}:dialects:{city.id}")
        with_text = sure["patients"] + sure["encounters"]
        rng.shuffle(with_text)
        rng.shuffle(sure["diagnoses"])
        rng.shuffle(others)
        pairs = with_text + sure["diagnoses"] + others
        for (hospital_id, dataset), name in zip(
            pairs, _shares(options.dialects, len(pairs), rng), strict=True
        ):
            plan[hospital_id, dataset] = for_file(name, profiles.for_file(hospital_id, dataset))
    return plan


def _fhir_form(topology: Topology, city: str, share: float) -> FhirForm:
    """NDJSON for `share` of the cities, evenly spread in topology order (with 0.5: the second,
    fourth… city), so that a city's form does not depend on which cities are generated."""
    k = [c.id for c in topology.cities].index(city)
    return "ndjson" if math.floor((k + 1) * share + 1e-9) > math.floor(k * share + 1e-9) else "bundle"


def generate(
    topology: Topology,
    contracts: dict[str, Contract],
    out: Path,
    options: GenerateOptions,
    progress: Progress = lambda _: None,
    *,
    profiles: SourceProfiles | None = None,
) -> Manifest:
    """Write the exports of `options` under `out` and return (and save) their manifest.
    `profiles`: the source profiles (default: platform/sources.yaml of the settings)."""
    if profiles is None:
        from lakehouse.settings import get_settings

        profiles = load_profiles(get_settings().platform_dir, topology, contracts)
    cities = [topology.city(c) for c in options.cities] if options.cities else list(topology.cities)
    rng = random.Random(options.seed + 2)
    manifest = Manifest(
        seed=options.seed,
        patients=options.patients,
        rates=asdict(options.rates),
        dialects=dict(options.dialects),
    )
    truncated: set[str] = set()
    batches = generate_batches(
        topology,
        seed=options.seed,
        patients=options.patients,
        cities=cities,
        window=options.window,
        batch_size=options.batch_size,
    )
    media = {c.id: media_hospital(topology, c.id) for c in topology.cities} if options.media else {}
    media_ids = {h.id for h in media.values() if h}
    # Every city: a visit may take a person to a provincial hospital of a city not asked for.
    plan = plan_dialects(topology, topology.cities, contracts, profiles, options, media_ids)
    dicom_written: dict[str, int] = {}
    xlsx_rows: Counter[str] = Counter()
    done = 0
    for number, batch in enumerate(batches):
        for hospital_id, datasets in batch.items():
            city = topology.hospital(hospital_id).city
            if hospital_id in media_ids:
                exported = write_media(
                    out,
                    city,
                    topology.hospital(hospital_id),
                    datasets,
                    contracts,
                    batch=number,
                    seed=options.seed,
                    corrupt=options.corrupt_dicom and number == 0,
                    dicom_budget=options.dicom_studies - dicom_written.get(city, 0),
                    fhir_form=_fhir_form(topology, city, options.fhir_ndjson_share),
                    pacs_share=options.pacs_share,
                    dicom_index=dicom_written.get(city, 0),
                )
                dicom_written[city] = dicom_written.get(city, 0) + exported.dicom_studies
                counts = manifest.media_rows.setdefault(city, {})
                for dataset, rows in exported.rows.items():
                    counts[dataset] = counts.get(dataset, 0) + rows
                info = manifest.media.setdefault(
                    city,
                    {
                        "hospital": hospital_id,
                        "fhir": exported.fhir_form,
                        "dicom_studies": 0,
                        "pacs_studies": 0,
                    },
                )
                info["dicom_studies"] = int(str(info["dicom_studies"])) + exported.dicom_studies
                info["pacs_studies"] = int(str(info["pacs_studies"])) + exported.pacs_studies
                manifest.rejected_files += [f"{city}/{k}" for k in exported.rejected_keys]
                # Teleconsultations have no FHIR mapping here: they stay a tabular extract.
                datasets = {d: r for d, r in datasets.items() if d not in exported.rows}
                datasets |= {d: r for d, r in exported.leftover.items() if r}
            for dataset, records in sorted(datasets.items()):
                contract = contracts[dataset]
                dialect = plan[hospital_id, dataset]
                if (
                    dialect.kind == "xlsx"
                    and dialect.profile == DEFAULT
                    and xlsx_rows[city] >= options.xlsx_max_rows
                ):
                    dialect = CSV
                key = f"{hospital_id}/{dataset}/{dataset}-{number:04d}.{dialect.extension}"
                if dialect.multiline:
                    records = multiline_free_text(
                        records, contract, random.Random(f"{options.seed}:multiline:{city}/{key}")
                    )
                injected = inject(records, contract, options.rates, rng)
                profile = profiles.for_file(hospital_id, dataset)
                path = out / city / key
                path.parent.mkdir(parents=True, exist_ok=True)
                if options.truncated_file and dialect == CSV and city not in truncated and len(injected) > 20:
                    buffer = io.BytesIO()
                    written = write_table(injected, contract=contract, dialect=dialect, out=buffer)
                    content, cut = _truncate(buffer.getvalue(), rng)
                    tagged: list[Tagged] = [(line, d) for line, d in written.tagged if line < cut]
                    tagged.append((cut, ("truncated_file", MALFORMED_LINE)))
                    rows = cut - 1
                    truncated.add(city)
                    path.write_bytes(content)
                else:
                    with path.open("wb") as sink:
                        written = write_table(
                            injected, contract=contract, dialect=dialect, profile=profile, out=sink
                        )
                    tagged, rows = written.tagged, written.rows
                if dialect.kind == "xlsx" and dialect.profile == DEFAULT:
                    xlsx_rows[city] += rows
                entry: dict[str, object] = {
                    "dataset": dataset,
                    "format": dialect.name,
                    "profile": dialect.profile,
                    "rows": rows,
                }
                if dialect.kind == "xlsx":
                    entry["sheet"] = dialect.sheet
                manifest.files[f"{city}/{key}"] = entry
                manifest.defects += [
                    Defect(city=city, file=key, line=line, dataset=dataset, kind=kind, rule=rule)
                    for line, (kind, rule) in tagged
                ]
        done = min(done + options.batch_size, options.patients)
        progress(done)
    out.mkdir(parents=True, exist_ok=True)
    manifest.save(out / MANIFEST)
    return manifest


def summary(manifest: Manifest) -> dict[str, dict[str, int]]:
    """rows and defects per dataset, for the command's report."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for info in manifest.files.values():
        table[str(info["dataset"])]["rows"] += int(str(info["rows"]))
    for counts in manifest.media_rows.values():
        for dataset, rows in counts.items():
            table[dataset]["rows"] += rows
    for d in manifest.defects:
        table[d.dataset][d.kind] += 1
    return {k: dict(v) for k, v in sorted(table.items())}
