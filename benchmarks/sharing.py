"""Benchmark: the official Delta Sharing client's `load_as_pandas` of a 1,000,000-row shared table
against reading the same Delta table directly with delta-rs, side by side in one run.

    ~/.cache/medshare/venv/bin/python benchmarks/sharing.py [--rows 1000000] [--repeats 5]

The provincial `encounters` table of the analytics benchmark's synthetic province (`--rows`
encounters, written once under `s3://<lakehouse>/bench-analytics-<rows>` and reused) is served by
a real API process (`medshare serve`) with one grant: a provincial hospital, research, every city,
no masked or hidden column — so the shared copy holds the same rows and columns a direct reader
gets. The API's sync builds the copy (timed when it is built fresh); then, alternating, each
repeat runs

- the recipient: `load_as_pandas(profile#research.province.encounters)` with `delta-sharing` 1.4.2
  in the recipient environment (a fresh process; the client's own timing of the call);
- delta-rs: `DeltaTable(copy).to_pandas()` in a fresh process of the platform's environment (the
  same timing around the read only).

Both must return the same rows and columns. Reported: medians, min/max, and the ratio of medians
(target ≤ 1.5). Results go to benchmarks/results/sharing.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine

RESULTS = Path(__file__).parent / "results" / "sharing.json"
TARGET_RATIO = 1.5
HOSPITAL = "zz-fahzu"
TABLE = "research.province.encounters"
GRANTS = """grants:
  - id: bench-research
    description: The benchmark's reader gets every city's encounters, unmasked.
    recipient: {hospitals: [zz-fahzu]}
    datasets: [encounters]
    purposes: [research]
    scope: all_cities
"""


def delta_rs_worker(uri: str) -> None:
    """Runs in its own process: read the whole copy with delta-rs, as pandas."""
    from deltalake import DeltaTable

    from lakehouse.settings import get_settings
    from lakehouse.storage import SHARING_SITE, delta_storage_options, site_credentials

    settings = get_settings()
    options = delta_storage_options(settings, site_credentials(settings, SHARING_SITE))
    started = time.perf_counter()
    frame = DeltaTable(uri, storage_options=options).to_pandas()
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": len(frame), "columns": list(frame.columns), "seconds": seconds}))


def _delta_rs(uri: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", uri], capture_output=True, text=True, check=True, timeout=1800
    )
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def _copy_info(uri: str) -> dict[str, Any]:
    import pyarrow as pa
    from deltalake import DeltaTable

    from lakehouse.settings import get_settings
    from lakehouse.storage import SHARING_SITE, delta_storage_options, site_credentials

    settings = get_settings()
    table = DeltaTable(
        uri, storage_options=delta_storage_options(settings, site_credentials(settings, SHARING_SITE))
    )
    actions = pa.table(table.get_add_actions(flatten=True))
    return {
        "version": table.version(),
        "files": actions.num_rows,
        "rows": int(actions["num_records"].to_numpy().sum()),
        "bytes": int(actions["size_bytes"].to_numpy().sum()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.analytics import ensure_data
    from infra.recipient import read_share
    from lakehouse.settings import get_settings
    from lakehouse.topology import load_topology
    from sharing_api.db import Database
    from sharing_api.identities import Identities
    from sharing_api.profile import profile_document, write_profile
    from tests.utils.api import ApiServer, audit_uri

    settings = get_settings()
    topology = load_topology(settings.platform_dir)
    root, counts = ensure_data(args.rows, args.seed)
    share_root = f"s3://{topology.province.buckets.shared}/bench-sharing-{args.rows}"
    copy_uri = f"{share_root}/bench-research/encounters"
    workdir = Path(tempfile.mkdtemp(prefix="medshare-bench-sharing-"))
    (workdir / "api").mkdir()
    (workdir / "api" / "grants.yaml").write_text(GRANTS)
    server = ApiServer(
        settings=settings,
        workdir=workdir / "api",
        tables_root=root,
        audit_table=audit_uri(settings, "bench-sharing"),
        instance="bench-sharing",
        share_root=share_root,
        extra_env={"MEDSHARE_API_SHARE_SYNC_SECONDS": "1"},
    )
    print(f"starting the API over {root} (log {server.log})", flush=True)
    server.start(timeout=args.startup_timeout)
    try:
        # The first sync pass runs beside the read model's load, which start() waits for: the copy
        # is usually ready by now, and its build time is in the server's log line.
        server.wait_for_copies(timeout=args.startup_timeout)
        built = [line for line in server.log.read_text().splitlines() if "shared copy bench-research" in line]
        copy = _copy_info(copy_uri)
        if copy["rows"] != counts["encounters"]:
            raise SystemExit(
                f"the copy holds {copy['rows']:,} rows, the provincial table {counts['encounters']:,}"
            )
        print(f"copy: {copy} ({built[-1] if built else 'an existing copy reused'})", flush=True)

        store = Identities(Database(server.api_settings().db_path(settings)), topology)
        profile = workdir / f"{HOSPITAL}.share"
        write_profile(
            profile,
            profile_document(f"{server.url}/delta-sharing/", store.issue("hospital", HOSPITAL, days=1)),
        )
        out = workdir / "client.parquet"
        client: list[dict[str, Any]] = []
        direct: list[dict[str, Any]] = []
        for i in range(args.repeats):
            wall = time.perf_counter()
            answer = read_share(settings, profile, "load", TABLE, "--out", str(out))
            answer["wall_seconds"] = time.perf_counter() - wall
            out.unlink(missing_ok=True)
            client.append(answer)
            wall = time.perf_counter()
            answer = _delta_rs(copy_uri)
            answer["wall_seconds"] = time.perf_counter() - wall
            direct.append(answer)
            print(
                f"repeat {i + 1}/{args.repeats}: client {client[-1]['seconds']:.2f} s "
                f"({client[-1]['rows']:,} rows), delta-rs {direct[-1]['seconds']:.2f} s "
                f"({direct[-1]['rows']:,} rows)",
                flush=True,
            )
            if client[-1]["rows"] != direct[-1]["rows"] or set(client[-1]["columns"]) != set(
                direct[-1]["columns"]
            ):
                raise SystemExit(f"the client and delta-rs disagree: {client[-1]} vs {direct[-1]}")
        health = server.health()  # the operators' detailed view: /healthz no longer names the audit
    finally:
        server.stop()

    def summary(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {
        "rows": args.rows,
        "provincial_rows": counts["encounters"],
        "copy": copy,
        "copy_log": built[-1] if built else None,
        "repeats": args.repeats,
        "client_seconds": summary(client, "seconds"),
        "client_wall_seconds": summary(client, "wall_seconds"),
        "delta_rs_seconds": summary(direct, "seconds"),
        "delta_rs_wall_seconds": summary(direct, "wall_seconds"),
        "columns": len(client[0]["columns"]),
        "audit_flushed": health["auditFlushed"],
        "machine": machine(),
    }
    result["ratio"] = round(result["client_seconds"]["median"] / result["delta_rs_seconds"]["median"], 2)
    result["ratio_wall"] = round(
        result["client_wall_seconds"]["median"] / result["delta_rs_wall_seconds"]["median"], 2
    )
    result["target_met"] = result["ratio"] <= TARGET_RATIO
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="encounters in the shared table")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--startup-timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        delta_rs_worker(args.worker)
        return
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    c, d = result["client_seconds"], result["delta_rs_seconds"]
    print(
        f"\nload_as_pandas of {result['copy']['rows']:,} rows ({result['copy']['files']} files, "
        f"{result['copy']['bytes'] / 2**20:.0f} MiB), {result['repeats']} repeats alternating:\n"
        f"  official client  median {c['median']:.2f} s (min {c['min']:.2f}, max {c['max']:.2f})\n"
        f"  delta-rs direct  median {d['median']:.2f} s (min {d['min']:.2f}, max {d['max']:.2f})\n"
        f"  ratio {result['ratio']} (target ≤ {TARGET_RATIO}: "
        f"{'met' if result['target_met'] else 'NOT met'}); "
        f"with process start {result['ratio_wall']}\nwritten {args.out}"
    )


if __name__ == "__main__":
    main()
