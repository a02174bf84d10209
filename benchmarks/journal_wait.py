"""How long a request waits for its audit record to be durable while the event loop is busy.

    ~/.cache/medshare/venv/bin/python benchmarks/journal_wait.py [--rate 150] [--seconds 15]
        [--busy-ms 3] [--module path/to/journal.py ...]

One asyncio loop, as in an API worker: requests arrive at `--rate` a second (Poisson), each
holds the loop for `--busy-ms` of Python (a lookup's CPU), then awaits `Journal.append` — the
wait that the audit middleware puts between a response and its first byte. Reported: that wait
and the request's latency from its arrival, per journal implementation. `--module` loads
`Journal` from other files (`git show <rev>:sharing_api/journal.py > /tmp/old.py`; before c8448a4
it lived in `sharing_api/audit.py`) to compare designs side by side; the runs alternate,
`--repeats` times each. The journals are written under
the platform's state folder (the disk the API uses), in a temporary folder removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECORD = {
    "request_id": "0" * 32,
    "method": "GET",
    "route": "/v1/patients/history",
    "status": 200,
    "decision": "allow",
    "principal_kind": "hospital",
    "hospital_id": "zz-h001",
    "purpose": "emergency",
    "person_key": "a" * 64,
    "grants": "emergency-all",
    "rows_returned": 15,
    "client_address": "127.0.0.1",
}


def _journal_class(module: str) -> Any:
    if module == "current":
        from sharing_api.journal import Journal

        return Journal
    spec = importlib.util.spec_from_file_location("journal_under_test", module)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules["journal_under_test"] = loaded  # dataclasses look their module up
    spec.loader.exec_module(loaded)
    return loaded.Journal


def _busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        sum(range(50))


async def _load(journal: Any, rate: float, seconds: float, busy_ms: float, seed: int) -> dict[str, Any]:
    waits: list[float] = []
    latencies: list[float] = []

    async def request(arrived: float) -> None:
        _busy(busy_ms)
        started = time.perf_counter()
        await journal.append({**RECORD, "time": time.time()})
        done = time.perf_counter()
        waits.append(done - started)
        latencies.append(done - arrived)

    rng = random.Random(seed)
    tasks = []
    at = time.perf_counter() + 0.1
    for _ in range(int(rate * seconds)):
        at += rng.expovariate(rate)
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(request(at)))
    await asyncio.gather(*tasks)
    w, lat = np.array(waits) * 1000, np.array(latencies) * 1000
    return {
        "requests": len(waits),
        "commits": journal.commits,
        "wait_p50_ms": round(float(np.percentile(w, 50)), 2),
        "wait_p90_ms": round(float(np.percentile(w, 90)), 2),
        "wait_p99_ms": round(float(np.percentile(w, 99)), 2),
        "latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "latency_p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


def run_one(module: str, rate: float, seconds: float, busy_ms: float, seed: int) -> dict[str, Any]:
    """In this process (called through `--worker`: each run gets a fresh interpreter)."""
    from lakehouse.settings import get_settings

    state = get_settings().state_dir
    state.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="journal-wait-", dir=state))
    try:
        journal = _journal_class(module)(folder / "journal.db")
        result = asyncio.run(_load(journal, rate, seconds, busy_ms, seed))
        journal.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=150.0, help="requests a second (one worker's share)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--busy-ms", type=float, default=3.0, help="Python work per request before its record"
    )
    parser.add_argument("--module", action="append", default=[], help="other audit.py files to compare")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args.worker, args.rate, args.seconds, args.busy_ms, seed=1)))
        return
    modules = ["current", *args.module]
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modules}
    for repeat in range(args.repeats):
        for module in modules:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", module, "--rate", str(args.rate),
                 "--seconds", str(args.seconds), "--busy-ms", str(args.busy_ms)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[module].append(result)
            print(f"#{repeat + 1} {module}: {result}", flush=True)
    print("medians:")
    for module, runs in results.items():
        keys = [k for k in runs[0] if k.endswith("_ms")]
        print(f"  {module}: " + ", ".join(f"{k} {np.median([r[k] for r in runs]):.2f}" for k in keys))


if __name__ == "__main__":
    main()
