"""`medshare generate`: realistic, seeded hospital exports for the topology, with defects injected
at known rates and listed in a manifest (file, line, kind, the rule that must catch it).

Layout written under the output folder — the same keys `medshare land` uses in a city's
landing bucket:

    <city>/<hospital>/<dataset>/<dataset>-<batch>.csv|.jsonl     per-table extracts
    <city>/<hospital>/fhir/bundle-<batch>.json                  FHIR R4 bundles (one hospital a city)
    <city>/<hospital>/dicom/<study uid>/s<k>/i<i>.dcm           DICOM files (the same hospital)
    _crosscheck/<city>/<hospital>/<dataset>/...csv              the same records as plain CSV
    manifest.json                                               what was written and injected
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ingestion.defects import DEFECT, MALFORMED_LINE, DefectRates, inject, untag
from ingestion.generate_media import media_hospital, write_media
from ingestion.sources.tabular import write_csv, write_jsonl
from ingestion.synthetic import Window, generate_batches
from lakehouse.contracts import Contract
from lakehouse.topology import Topology

RawRecord = dict[str, str | None]
Progress = Callable[[int], None]
MANIFEST = "manifest.json"


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


def _malformed(record: RawRecord, columns: tuple[str, ...], fmt: str) -> str:
    values = ["" if record.get(c) is None else str(record[c]) for c in columns[:3]]
    if fmt == "csv":
        return ",".join(values)  # too few fields
    return json.dumps(dict(zip(columns[:3], values, strict=True)), ensure_ascii=False)[:-1] + ', "'


def _render(
    records: list[RawRecord], contract: Contract, fmt: str
) -> tuple[bytes, list[tuple[int, tuple[str, str]]]]:
    """File content and the (line, defect) of every tagged record."""
    columns = contract.column_names
    first_line = 2 if fmt == "csv" else 1
    tagged: list[tuple[int, tuple[str, str]]] = []
    clean: list[RawRecord] = []
    malformed: dict[int, str] = {}
    for i, record in enumerate(records):
        tagged_as = record.pop(DEFECT, None)
        if tagged_as is not None:
            defect = untag(tagged_as)
            tagged.append((first_line + i, defect))
            if defect[1] == MALFORMED_LINE:
                malformed[i] = _malformed(record, columns, fmt)
        clean.append(record)
    writer = write_csv if fmt == "csv" else write_jsonl
    lines = writer(clean, columns=columns).decode().splitlines()
    for i, line in malformed.items():
        lines[first_line - 1 + i] = line
    return ("\n".join(lines) + "\n").encode(), tagged


def _truncate(content: bytes, rng: random.Random) -> tuple[bytes, int]:
    """Cut the file inside a data line, after its second field: that line has too few fields
    and every line after it is gone. Returns the content and the cut line's number."""
    lines = content.decode().splitlines()
    cut = rng.randrange(2, len(lines) + 1) if len(lines) > 2 else len(lines)
    partial = ",".join(lines[cut - 1].split(",")[:2])
    return ("\n".join([*lines[: cut - 1], partial])).encode(), cut


def generate(
    topology: Topology,
    contracts: dict[str, Contract],
    out: Path,
    options: GenerateOptions,
    progress: Progress = lambda _: None,
) -> Manifest:
    cities = [topology.city(c) for c in options.cities] if options.cities else list(topology.cities)
    rng = random.Random(options.seed + 2)
    manifest = Manifest(seed=options.seed, patients=options.patients, rates=asdict(options.rates))
    truncated: set[str] = set()
    hospital_index = {h.id: i for i, h in enumerate(topology.hospitals)}
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
    dicom_written: dict[str, int] = {}
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
                )
                dicom_written[city] = dicom_written.get(city, 0) + exported.dicom_studies
                counts = manifest.media_rows.setdefault(city, {})
                for dataset, rows in exported.rows.items():
                    counts[dataset] = counts.get(dataset, 0) + rows
                manifest.rejected_files += [f"{city}/{k}" for k in exported.rejected_keys]
                # Teleconsultations have no FHIR mapping here: they stay a CSV extract.
                datasets = {d: r for d, r in datasets.items() if d not in exported.rows}
                datasets |= {d: r for d, r in exported.leftover.items() if r}
            # Half of the hospitals export CSV, the other half JSON Lines.
            fmt = "csv" if hospital_index[hospital_id] % 2 == 0 else "jsonl"
            for dataset, records in sorted(datasets.items()):
                contract = contracts[dataset]
                content, tagged = _render(inject(records, contract, options.rates, rng), contract, fmt)
                key = f"{hospital_id}/{dataset}/{dataset}-{number:04d}.{fmt}"
                rows = len(records) + sum(1 for _, d in tagged if d[1] == "duplicate")
                if options.truncated_file and fmt == "csv" and city not in truncated and rows > 20:
                    content, cut = _truncate(content, rng)
                    tagged = [(line, d) for line, d in tagged if line < cut]
                    tagged.append((cut, ("truncated_file", MALFORMED_LINE)))
                    rows = cut - 1
                    truncated.add(city)
                path = out / city / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                manifest.files[f"{city}/{key}"] = {"dataset": dataset, "format": fmt, "rows": rows}
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
