"""Benchmark of the standard analytics suite (`medshare analytics run all`) at two sizes.

    ~/.cache/medshare/venv/bin/python benchmarks/analytics.py --sizes 1000000,5000000

For each size (encounters; patients = encounters / 5, three years of care, the synthetic province
of `tests.utils.province`, written once under `s3://<province lakehouse>/bench-analytics-<n>-<cities>c` and
reused while its row counts match), a separate driver process (this file with `--worker`) starts
the analysts' session (`analyst_session`, local[*]) on those tables, runs the whole suite once to
warm the JVM and the object-store connections, then `--repeats` more times, timing each job.
Reported: the median suite wall time per size, per job, and the per-row cost (suite seconds per
encounter); the target is per-row cost at the largest size ≤ 1.2× that at the smallest. Both
sizes run in one invocation, one after the other, on the same machine.

Results go to benchmarks/results/analytics.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine

RESULTS = Path(__file__).parent / "results" / "analytics.json"
TARGET_RATIO = 1.2


def rows(uri: str, options: dict[str, str]) -> int | None:
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
    return int(pa.table(table.get_add_actions(flatten=True)).column("num_records").to_numpy().sum())


def ensure_data(encounters: int, seed: int) -> tuple[str, dict[str, int]]:
    """The province of this size, written if absent; its root and row counts."""
    from lakehouse.contracts import load_contracts
    from lakehouse.pseudonyms import ProvinceKey
    from lakehouse.settings import get_settings
    from lakehouse.storage import PROVINCE_SITE, delta_storage_options, s3_uri, site_credentials
    from lakehouse.topology import load_topology
    from tests.utils.province import build_province, write_province

    settings = get_settings()
    topology = load_topology(settings.platform_dir)
    contracts = load_contracts(settings.platform_dir)
    options = delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE))
    # Named by the number of cities: a province of 3 cities (earlier runs) stays beside one of 18.
    root = s3_uri(
        topology.province.buckets.lakehouse, f"bench-analytics-{encounters}-{len(topology.cities)}c"
    )
    names = [
        "encounters",
        "diagnoses",
        "imaging_studies",
        "teleconsultations",
        "ecg_reports",
        "pathology_reports",
    ]
    counts = {n: rows(f"{root}/{n}", options) for n in names}
    if counts["encounters"] != encounters or any(v is None for v in counts.values()):
        started = time.perf_counter()
        print(f"building {encounters:,} encounters under {root}", flush=True)
        province = build_province(
            topology,
            contracts,
            ProvinceKey.from_settings(settings),
            patients=encounters // 5,
            encounters=encounters,
            seed=seed,
            progress=lambda m: print(f"  {time.perf_counter() - started:6.1f} s: {m}", flush=True),
        )
        write_province(province, root, options)
        print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
        counts = {n: province.tables[n].num_rows for n in names}
    return root, {n: int(v or 0) for n, v in counts.items()}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One driver process: session on one size's tables, warm-up suite, then timed suites."""
    from lakehouse.analytics.jobs import JOBS, run_job
    from lakehouse.analytics.session import Locations, analyst_session
    from lakehouse.analytics.settings import load_analytics_settings
    from lakehouse.settings import get_settings
    from lakehouse.topology import load_topology

    settings = get_settings()
    config = load_analytics_settings(tables_root=spec["root"], gold_root=spec["gold"])
    topology = load_topology(settings.platform_dir)
    where = Locations.of(config, topology)
    started = time.perf_counter()
    spark = analyst_session(settings, config, app_name="medshare-bench-analytics")
    session_s = time.perf_counter() - started
    suites: list[dict[str, float]] = []
    for i in range(spec["repeats"] + 1):
        timings = {}
        for name in JOBS:
            t0 = time.perf_counter()
            run_job(spark, topology, where, name, k=config.k)
            timings[name] = time.perf_counter() - t0
        timings["suite"] = sum(timings.values())
        print(f"  {'warm-up' if i == 0 else f'run {i}'}: {timings['suite']:.1f} s", flush=True)
        suites.append(timings)
    spark.stop()
    return {"session_s": round(session_s, 1), "warmup": suites[0], "runs": suites[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000000,5000000", help="encounter counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed suites per size (after one warm-up)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        Path(spec["out"]).write_text(json.dumps(worker(spec)))
        return

    from lakehouse.settings import get_settings
    from lakehouse.storage import s3_uri
    from lakehouse.topology import load_topology

    settings = get_settings()
    gold_bucket = load_topology(settings.platform_dir).province.buckets.gold
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "params": {"sizes": sizes, "repeats": args.repeats, "master": settings.spark_master},
        "sizes": {},
    }
    data = {n: ensure_data(n, args.seed) for n in sizes}
    for n in sizes:
        root, counts = data[n]
        print(f"suite on {n:,} encounters ({counts})", flush=True)
        spec_file = Path(f"/tmp/medshare-bench-analytics-{n}.json")
        out_file = spec_file.with_suffix(".out.json")
        spec = {"root": root, "gold": s3_uri(gold_bucket, f"bench-analytics-{n}"), "repeats": args.repeats}
        spec_file.write_text(json.dumps({**spec, "out": str(out_file)}))
        subprocess.run([sys.executable, __file__, "--worker", str(spec_file)], check=True)
        raw = json.loads(out_file.read_text())
        jobs = {j: round(statistics.median(r[j] for r in raw["runs"]), 2) for j in raw["runs"][0]}
        results["sizes"][str(n)] = {
            "rows": counts,
            "session_s": raw["session_s"],
            "warmup_suite_s": round(raw["warmup"]["suite"], 1),
            "median_s": jobs,
            "suite_runs_s": [round(r["suite"], 1) for r in raw["runs"]],
            "us_per_encounter": round(jobs["suite"] / n * 1e6, 2),
        }
    small, large = str(sizes[0]), str(sizes[-1])
    ratio = results["sizes"][large]["us_per_encounter"] / results["sizes"][small]["us_per_encounter"]
    results["per_row_cost_ratio"] = round(ratio, 3)
    results["target_met"] = ratio <= TARGET_RATIO
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
