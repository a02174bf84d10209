"""Benchmark of city → province replication on the running stack (`make up`).

    ~/.cache/medshare/venv/bin/python benchmarks/replicate.py --rows 5000000 --trickle-seconds 60
    ~/.cache/medshare/venv/bin/python benchmarks/replicate.py --cities all --big-unit-rows 0

1. Throughput: curated `encounters` tables of `--rows` rows in total across the cities
   (`--cities`: the first three by default, `all` for the 18; written with delta-rs beforehand,
   not timed); then one publisher per city (`medshare publish`, one
   process each) and one replicator (`medshare replicator`, its own process) start together. Timed
   from their start until the provincial table records every city's version; rows/s = rows / time.
   The replicator's peak RSS (VmHWM) is read from /proc before it stops.
2. Lag: publishers in `--follow` mode and the replicator running; every city commits a small batch
   (`--trickle-rows` rows) about once per `--trickle-interval` seconds for `--trickle-seconds`.
   Each city commit's lag = time of the first provincial commit whose `txn` for that city reaches
   its version − the city commit's time (both from the Delta logs' commitInfo, one clock).
   A city commit that never reaches the province fails the benchmark.
3. Each part ends with `medshare verify` over its cities and a row count of the provincial table:
   a difference fails the benchmark instead of giving figures for data that did not arrive.

Everything lives under a fresh namespace (tables, topics, consumer group), so runs never mix.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

# The curated-shaped table generator is shared with the replication tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import TopicPartition

from lakehouse import kafka
from lakehouse.contracts import load_contracts
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.settings import Settings, get_settings
from lakehouse.storage import PROVINCE_SITE, s3_client, site_credentials
from lakehouse.topology import load_topology
from tests.utils.replication import (
    CITIES,
    curated_rows,
    discard,
    make_topics,
    medshare,
    province_table,
    write_city,
)

DATASET = "encounters"
RESULTS = Path(__file__).parent / "results" / "replicate.json"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(120)


def city_versions(
    settings: Settings, layout: ReplicationLayout, cities: tuple[str, ...] = CITIES
) -> dict[str, int]:
    from tests.utils.replication import city_table

    return {c: int(city_table(settings, layout, c, DATASET).version()) for c in cities}


def applied(
    settings: Settings, layout: ReplicationLayout, cities: tuple[str, ...] = CITIES
) -> dict[str, int | None]:
    try:
        table = province_table(settings, layout, DATASET)
    except Exception:  # not created yet
        return dict.fromkeys(cities)
    return {c: table.transaction_version(layout.app_id(c, DATASET)) for c in cities}


def throughput(
    settings: Settings, layout: ReplicationLayout, rows: int, logs: Path, cities: tuple[str, ...] = CITIES
) -> dict[str, object]:
    contract = load_contracts(settings.platform_dir)[DATASET]
    per_city = rows // len(cities)
    started = time.perf_counter()
    for n, city in enumerate(cities):
        hospitals = [h.id for h in layout.topology.hospitals_of(city)]
        for part in range(0, per_city, 500_000):  # bounded memory while preparing
            size = min(500_000, per_city - part)
            table = curated_rows(
                contract, hospitals, size, months=24, salt=f"{city}{part}", seed=n * 100 + part
            )
            write_city(settings, layout, city, contract, table)
    print(f"prepared {per_city * len(cities):,} rows in {time.perf_counter() - started:.0f} s", flush=True)
    target = city_versions(settings, layout, cities)

    started = time.perf_counter()
    replicator = medshare(
        logs / "replicator.log", "replicator", "--namespace", layout.namespace, "--metrics-port", "0"
    )
    publishers = [
        medshare(logs / f"publish-{c}.log", "publish", "--city", c, "--namespace", layout.namespace)
        for c in cities
    ]
    publish_s: dict[str, float] = {}
    while True:
        for c, p in zip(cities, publishers, strict=True):
            if c not in publish_s and p.poll() is not None:
                publish_s[c] = round(time.perf_counter() - started, 2)
                if p.returncode != 0:
                    raise SystemExit(f"publisher {c} failed: see {logs}")
        done = applied(settings, layout, cities)
        if all(done[c] is not None and done[c] >= target[c] for c in cities):  # type: ignore[operator]
            break
        if replicator.poll() is not None:
            raise SystemExit(f"replicator exited: see {logs / 'replicator.log'}")
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    rss = peak_rss_mb(replicator.pid)
    stop(replicator)
    for p in publishers:
        p.wait(60)
    total = per_city * len(cities)
    # A throughput counts only if the province then holds exactly what the cities do.
    checked = check_province(settings, layout, cities, total)
    return {
        "cities": len(cities),
        "rows": total,
        "unit_rows": per_city,
        "seconds": round(seconds, 2),
        "rows_per_s": round(total / seconds),
        "publishers_done_s": publish_s,
        "replicator_peak_rss_mb": round(rss),
        **checked,
    }


def check_province(
    settings: Settings, layout: ReplicationLayout, cities: tuple[str, ...], rows: int
) -> dict[str, object]:
    """`verify` over the benchmark's cities and the provincial table's row count; a difference
    fails the benchmark (its figures would describe data that did not arrive)."""
    from lakehouse.pseudonyms import ProvinceKey
    from lakehouse.replication.verify import verify
    from tests.utils.replication import read_all

    result = verify(
        settings,
        layout,
        load_contracts(settings.platform_dir),
        ProvinceKey.from_settings(settings),
        cities=list(cities),
        datasets=[DATASET],
    )
    province_rows = read_all(province_table(settings, layout, DATASET), columns=["city"]).num_rows
    out = {"verify_differences": len(result.differences), "province_rows": province_rows}
    if result.differences or province_rows != rows:
        print(json.dumps(out, indent=1), *result.differences[:20], sep="\n", flush=True)
        raise SystemExit(f"the province does not hold the {rows:,} rows the cities committed")
    return out


def read_rows(settings: Settings, layout: ReplicationLayout, city: str) -> int:
    from tests.utils.replication import city_table, read_all

    return int(read_all(city_table(settings, layout, city, DATASET), columns=["hospital_id"]).num_rows)


def _commit_times(client, bucket: str, path: str) -> list[tuple[int, int, dict[str, int]]]:  # type: ignore[no-untyped-def]
    """(version, commit ms, {txn app id: version}) of every commit of one table."""
    out = []
    for obj in client.list_objects(bucket, prefix=f"{path}/_delta_log/"):
        name = obj.object_name or ""
        if not name.endswith(".json"):
            continue
        version = int(name.rsplit("/", 1)[1].split(".")[0])
        response = client.get_object(bucket, name)
        ts, txns = 0, {}
        for line in response.read().decode().splitlines():
            action = json.loads(line)
            if "commitInfo" in action:
                ts = int(action["commitInfo"]["timestamp"])
            if "txn" in action:
                txns[action["txn"]["appId"]] = int(action["txn"]["version"])
        response.close()
        response.release_conn()
        out.append((version, ts, txns))
    return sorted(out)


def _published_times(settings: Settings, layout: ReplicationLayout) -> dict[str, list[tuple[int, int]]]:
    """(version, published_ms) of every unit each city's publisher committed, by city: the
    publishers' progress records, read back from the layout's progress topic."""
    consumer = kafka.consumer(settings, group_id=None)
    try:
        topic = layout.progress_topic
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out: dict[str, list[tuple[int, int]]] = {}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in parts) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    city, _, dataset = (record.key or b"").decode().partition("/")
                    if dataset == DATASET and record.value:
                        value = json.loads(record.value)
                        out.setdefault(city, []).append((int(value["version"]), int(value["published_ms"])))
        return out
    finally:
        consumer.close()


def _quantiles(values: list[float], prefix: str) -> dict[str, float]:
    values = sorted(values)
    return {
        f"{prefix}_p50_s": round(statistics.median(values), 3),
        f"{prefix}_p99_s": round(values[min(len(values) - 1, int(len(values) * 0.99))], 3),
    }


def trickle(
    settings: Settings,
    layout: ReplicationLayout,
    seconds: float,
    rows: int,
    interval: float,
    logs: Path,
    cities: tuple[str, ...] = CITIES,
) -> dict[str, object]:
    contract = load_contracts(settings.platform_dir)[DATASET]
    replicator = medshare(
        logs / "replicator-lag.log", "replicator", "--namespace", layout.namespace, "--metrics-port", "0"
    )
    publishers = [
        medshare(
            logs / f"follow-{c}.log", "publish", "--city", c, "--follow", "--namespace", layout.namespace
        )
        for c in cities
    ]
    try:
        # Version 0 of every city first: lags are measured once all processes are up and caught up.
        for n, city in enumerate(cities):
            hospitals = [h.id for h in layout.topology.hospitals_of(city)]
            first = curated_rows(contract, hospitals, rows, months=1, seed=n)
            write_city(settings, layout, city, contract, first)
        ready_by = time.monotonic() + 120
        while not all(v is not None for v in applied(settings, layout, cities).values()):
            if time.monotonic() > ready_by:
                raise SystemExit(f"replication did not start within 120 s: see {logs}")
            time.sleep(0.5)
        commits = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for n, city in enumerate(cities):
                hospitals = [h.id for h in layout.topology.hospitals_of(city)]
                table = curated_rows(
                    contract, hospitals, rows, months=1, salt=f"t{commits}", seed=commits + n
                )
                write_city(settings, layout, city, contract, table)
                commits += 1
            time.sleep(interval)
        target = city_versions(settings, layout, cities)
        wait_until = time.monotonic() + 120
        while time.monotonic() < wait_until:
            done = applied(settings, layout, cities)
            if all(done[c] is not None and done[c] >= target[c] for c in cities):  # type: ignore[operator]
                break
            time.sleep(0.5)
        total_rows = sum(read_rows(settings, layout, c) for c in cities)
        rss = peak_rss_mb(replicator.pid)
    finally:  # a failed run leaves no process behind to load the next one
        stop(replicator)
        codes = [stop(p) for p in publishers]

    province = layout.province_table(DATASET)
    province_commits = _commit_times(
        s3_client(settings, site_credentials(settings, PROVINCE_SITE)), province.bucket, province.path
    )
    published = _published_times(settings, layout)
    lags: list[float] = []
    # Where the lag is spent: city commit → its unit committed to Kafka (the publisher), and
    # from there → the provincial commit (Kafka to the replicator, its queue and its apply).
    to_kafka: list[float] = []
    from_kafka: list[float] = []
    never: list[str] = []
    for city in cities:
        app_id = layout.app_id(city, DATASET)
        location = layout.city_table(city, DATASET)
        for version, ts, _ in _commit_times(
            s3_client(settings, site_credentials(settings, city)), location.bucket, location.path
        ):
            if version == 0:  # existed before the processes started
                continue
            reached = [p_ts for _, p_ts, txns in province_commits if txns.get(app_id, -1) >= version]
            if not reached:
                never.append(f"{city} v{version}")
                continue
            lags.append((min(reached) - ts) / 1000)
            sent = [p_ms for v, p_ms in published.get(city, []) if v >= version]
            if sent:
                to_kafka.append((min(sent) - ts) / 1000)
                from_kafka.append((min(reached) - min(sent)) / 1000)
    lags.sort()
    if never or not lags:
        raise SystemExit(f"{len(never)} city commit(s) never reached the province: {never[:10]}")
    checked = check_province(settings, layout, cities, total_rows)
    return {
        "city_commits": commits,
        "rows_per_commit": rows,
        "commits_never_applied": len(never),
        **checked,
        "lags_measured": len(lags),
        **_quantiles(lags, "lag"),
        "lag_max_s": round(lags[-1], 3),
        **(_quantiles(to_kafka, "to_kafka") if to_kafka else {}),
        **(_quantiles(from_kafka, "kafka_to_province") if from_kafka else {}),
        "replicator_peak_rss_mb": round(rss),
        "publisher_exit_codes": codes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5_000_000, help="throughput phase's rows; 0 = skip")
    parser.add_argument("--big-unit-rows", type=int, default=5_000_000, help="one city, one unit; 0 = skip")
    parser.add_argument("--trickle-seconds", type=float, default=60)
    parser.add_argument("--trickle-rows", type=int, default=50)
    parser.add_argument("--trickle-interval", type=float, default=1.0)
    parser.add_argument(
        "--cities", default="3", help="how many of the topology's cities publish (first N), or `all` (18)"
    )
    parser.add_argument("--out", type=Path, help="results file (default: by the number of cities)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' topics and tables")
    args = parser.parse_args()
    settings = get_settings()
    topology = load_topology(settings.platform_dir)
    every = tuple(c.id for c in topology.cities)
    cities = every if args.cities == "all" else every[: int(args.cities)]
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"medshare-bench-replicate-{uuid.uuid4().hex[:6]}"
    logs.mkdir(parents=True)
    results: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "logs": str(logs),
    }
    layouts: list[ReplicationLayout] = []

    def new_layout() -> ReplicationLayout:
        layout = ReplicationLayout(topology, f"bench{uuid.uuid4().hex[:6]}")
        make_topics(settings, layout)
        layouts.append(layout)
        return layout

    try:
        if args.rows:
            results["throughput"] = throughput(settings, new_layout(), args.rows, logs, cities)
            print(json.dumps(results["throughput"], indent=1), flush=True)
        if args.big_unit_rows:
            # The replicator's memory must not follow the size of a version: one unit of all rows.
            big = throughput(settings, new_layout(), args.big_unit_rows, logs, cities=("zhengzhou",))
            results["big_unit"] = big
            print(json.dumps(big, indent=1), flush=True)
        lag_layout = new_layout()
        results["lag"] = trickle(
            settings, lag_layout, args.trickle_seconds, args.trickle_rows, args.trickle_interval, logs, cities
        )
    finally:
        if not args.keep:  # the benchmark's topics and tables, out of the user's stack
            for layout in layouts:
                discard(settings, layout)
    print(json.dumps(results["lag"], indent=1), flush=True)
    out = args.out or (
        RESULTS if len(cities) == len(CITIES) else RESULTS.with_name(f"replicate-{len(cities)}-cities.json")
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
