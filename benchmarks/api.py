"""Benchmark of the sharing API's patient-history lookup on the running stack (`medshare up`).

    ~/.cache/medshare/venv/bin/python benchmarks/api.py --patients 1000000 --encounters 5000000 --seconds 60

1. Data: a synthetic provincial lakehouse (`tests.utils.province.build_province`, written with
   `write_province`) under `s3://<province lakehouse>/bench-api-<patients>-<encounters>-<cities>c`, written
   once and reused while its row counts match (`--rebuild` forces it). Beside it, `_bench_sample`
   holds the patients the load picks from (resident ID, person_key, expected number of entries):
   only patients with at least one encounter, so every lookup has an answer.
2. Floors, before the server starts: (a) the same lookup straight on the Delta tables with
   delta-rs (a filtered `to_table` per history dataset, tables opened once), and (b) the API's own
   read model in a separate process: `build_services` + `LakeView.refresh()`, then
   `history.patient_history` called directly (no HTTP, no auth, no audit), with and without
   orjson serialisation.
3. The API (`python -m medshare serve`, through `tests.utils.api.ApiServer`) over that root, rate
   limits lifted, refresh/flush intervals at the settings' defaults (5 s / 5 s) unless
   `--refresh-seconds`/`--flush-seconds` say otherwise. Startup time =
   until /healthz says ready (the read model loaded); VmRSS/VmHWM after loading and after the run.
4. Load from a separate process (this file with `--worker load`), uvloop, `--clients` client
   tasks, one connection and one credential each (spread over every hospital), each picking
   random sample patients in a break-glass lookup (`POST /v1/patients/emergency`, grant
   `emergency-all`: every city); `--resident-share` of the lookups send the resident ID in the
   body (hashed by the server), the rest the `person_key`. `--warmup` seconds first (not
   counted), then `--seconds` measured. Runs (`--runs`), one after the other against the same server:
   - closed: back to back (each client sends its next request when the answer arrives): the
     throughput. Latency there is queueing: by Little's law mean latency = clients / throughput,
     so p50 ≤ 20 ms at 32 such clients would take ≥ 1,600 req/s.
   - paced (one run per `--rate`, all clients together): each client on a fixed schedule;
     latency counts from the scheduled time (no coordinated omission), so a server that cannot
     keep up shows its growing backlog. The first rate is judged against the latency targets.
   - closed-httpx: closed loop with httpx.AsyncClient (a pool of `--clients` connections), to
     show what the client costs: httpx spends several ms of CPU per request on the same 2 cores.
   The raw client is a minimal keep-alive HTTP/1.1 client (~0.2 ms CPU per request).
   Errors = transport failures or any status but 200; an answer whose `total` differs from the
   expected count is counted as wrong. CPU of the server (per thread), of the client and of the
   rest of the machine is read from /proc over the measured window.
5. Audit completeness: after `stop()` (which flushes the journal), the run's audit Delta table
   must hold one `/v1/patients/emergency` record per request sent, warm-up included.

Every invocation is appended to benchmarks/results/api.json (`invocations`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

# The synthetic province builder and the API process fixture are shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine
from sharing_api.catalog import HISTORY

RESULTS = Path(__file__).parent / "results" / "api.json"
ROUTE = "/v1/patients/emergency"  # break-glass lookups: every city, the reason in the body
REASON = "benchmark: unconscious on arrival, allergies unknown"
SAMPLE = "_bench_sample"
# run name → (client, paced at --rate?)
RUNS = {
    "closed": ("raw", False),
    "paced": ("raw", True),
    "closed-httpx": ("httpx", False),
    "paced-httpx": ("httpx", True),
}
TARGETS = {"p50_ms": 20.0, "p99_ms": 100.0, "rps": 300.0, "errors": 0}


# -- machine and process facts ---------------------------------------------------------------------
def code_version() -> str:
    """The commit of the API code measured (and whether sharing_api/ had local changes)."""
    if os.environ.get("MEDSHARE_BENCH_CODE"):
        return os.environ["MEDSHARE_BENCH_CODE"]
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "sharing_api"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + local changes in sharing_api/" if dirty else "")


def family(pid: int) -> list[int]:
    """The process and its descendants (uvicorn's workers, their audit journal writers)."""
    parent_of: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent_of[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    pids = [pid]
    for member in pids:  # grows while it is walked: breadth first
        pids.extend(child for child, parent in parent_of.items() if parent == member)
    return pids


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process and its children, summed, in MB."""
    out: dict[str, float] = {"VmRSS": 0, "VmHWM": 0}
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            name = line.split(":", 1)[0]
            if name in out:
                out[name] += round(int(line.split()[1]) / 1024)
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _is_journal_writer(pid: int) -> bool:
    try:
        return b"sharing_api.journal" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of a process and its descendants: tid → (name, seconds)."""
    out: dict[int, tuple[str, float]] = {}
    tasks = [t for member in family(pid) for t in Path(f"/proc/{member}/task").iterdir()]
    for task in tasks:
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def machine_busy_seconds() -> float:
    """CPU seconds spent by every process on the machine (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# -- data ------------------------------------------------------------------------------------------
def _rows(uri: str, options: dict[str, str]) -> int | None:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
    actions = table.get_add_actions(flatten=True)
    import pyarrow as pa

    return int(pa.table(actions).column("num_records").to_numpy().sum())


def existing(root: str, options: dict[str, str], datasets: list[str], patients: int, encounters: int) -> bool:
    counts = {name: _rows(f"{root}/{name}", options) for name in [*datasets, SAMPLE]}
    print(f"existing tables under {root}: {counts}", flush=True)
    return (
        all(v is not None for v in counts.values())
        and counts["patients"] == patients
        and counts["encounters"] == encounters
    )


def build(args: argparse.Namespace, root: str, options: dict[str, str]) -> dict[str, object]:
    """Build and write the province and the sample of patients the load picks from."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import write_deltalake

    from lakehouse.contracts import load_contracts
    from lakehouse.pseudonyms import ProvinceKey
    from lakehouse.settings import get_settings
    from lakehouse.topology import load_topology
    from tests.utils.province import build_province, write_province

    settings = get_settings()
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"  build {time.perf_counter() - started:6.1f} s: {message}", flush=True)

    province = build_province(
        load_topology(settings.platform_dir),
        load_contracts(settings.platform_dir),
        ProvinceKey.from_settings(settings),
        patients=args.patients,
        encounters=args.encounters,
        seed=args.seed,
        progress=progress,
    )
    build_s = time.perf_counter() - started
    rows = {name: t.num_rows for name, t in province.tables.items()}
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"built {sum(rows.values()):,} rows in {build_s:.1f} s (peak RSS {peak_build:.0f} MB)", flush=True)
    started = time.perf_counter()
    write_province(province, root, options)
    write_s = time.perf_counter() - started
    print(f"written to {root} in {write_s:.1f} s", flush=True)

    # The sample: random patients, kept if they have any entry; expected entries per patient.
    rng = np.random.default_rng(args.seed + 1)
    pick = rng.choice(args.patients, size=min(args.patients, args.sample * 2), replace=False)
    keys = pa.array(province.person_keys[pick], pa.string())
    expected = np.zeros(len(pick), np.int64)
    for name in HISTORY:
        found = (
            province.tables[name]
            .column("person_key")
            .filter(pc.is_in(province.tables[name].column("person_key"), value_set=keys))
        )
        counts = pc.value_counts(found)
        where = pc.index_in(counts.field("values"), value_set=keys).to_numpy()
        np.add.at(expected, where, counts.field("counts").to_numpy())
    keep = np.flatnonzero(expected > 0)[: args.sample]
    sample = pa.table(
        {
            "resident_id": pa.array([province.resident_ids[i] for i in pick[keep]], pa.string()),
            "person_key": keys.take(pa.array(keep)),
            "expected": pa.array(expected[keep]),
        }
    )
    write_deltalake(f"{root}/{SAMPLE}", sample, mode="overwrite", storage_options=options)
    del province
    gc.collect()
    return {
        "built": True,
        "build_s": round(build_s, 1),
        "build_peak_rss_mb": round(peak_build),
        "write_s": round(write_s, 1),
        "rows": rows,
    }


def read_sample(root: str, options: dict[str, str]) -> dict[str, list[Any]]:
    from deltalake import DeltaTable

    table = DeltaTable(f"{root}/{SAMPLE}", storage_options=options).to_pyarrow_dataset().to_table()
    return {name: table.column(name).to_pylist() for name in ("resident_id", "person_key", "expected")}


def table_rows(root: str, options: dict[str, str], datasets: list[str]) -> dict[str, int]:
    return {name: int(_rows(f"{root}/{name}", options) or 0) for name in datasets}


# -- floors ----------------------------------------------------------------------------------------
def delta_floor(
    root: str, options: dict[str, str], keys: list[str], budget_s: float, expected: list[int]
) -> dict[str, object]:
    """The lookup straight on the Delta tables: one filtered scan per history dataset."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    started = time.perf_counter()
    datasets = {
        name: DeltaTable(f"{root}/{name}", storage_options=options).to_pyarrow_dataset() for name in HISTORY
    }
    open_s = time.perf_counter() - started
    times: list[float] = []
    wrong = 0
    deadline = time.monotonic() + budget_s
    for key, want in zip(keys, expected, strict=True):
        if times and time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        got = 0
        for data in datasets.values():
            got += data.to_table(filter=pc.field("person_key") == key).num_rows  # consumed fully
        times.append(time.perf_counter() - t0)
        wrong += got != want
    lat = np.array(times)
    return {
        "lookups": len(times),
        "open_s": round(open_s, 2),
        "p50_ms": ms(pct(lat, 50)),
        "p99_ms": ms(pct(lat, 99)),
        "max_ms": ms(float(lat.max())),
        "wrong": int(wrong),
    }


def run_worker(
    kind: str, spec: dict[str, object], logs: Path, name: str | None = None
) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    """Start this file as a worker process; returns (its files, the process)."""
    name = name or kind
    spec_path = logs / f"{name}-spec.json"
    out_path = logs / f"{name}-out.json"
    spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
    with (logs / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    return {"out": out_path, "log": logs / f"{name}.log"}, proc


def worker_result(paths: dict[str, Any], proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    code = proc.wait()
    if code != 0 or not Path(paths["out"]).exists():
        raise SystemExit(
            f"worker failed ({code}): see {paths['log']}\n{Path(paths['log']).read_text()[-3000:]}"
        )
    result: dict[str, Any] = json.loads(Path(paths["out"]).read_text())
    return result


def read_model_worker(spec: dict[str, Any]) -> None:
    """Floor (b), in its own process: the read model loaded here, `patient_history` called directly."""
    import orjson

    from lakehouse.settings import get_settings
    from sharing_api.audit import AuditRecord
    from sharing_api.history import HistoryQuery, patient_history
    from sharing_api.services import build_services
    from sharing_api.settings import load_api_settings
    from tests.utils.api import audit_uri

    settings = get_settings()
    state = Path(spec["state_dir"])
    api = load_api_settings(
        state_dir=state,
        tables_root=spec["root"],
        audit_table=audit_uri(settings, "bench-floor-unused"),
        grants_file=settings.platform_dir / "grants.yaml",
        instance="bench-floor",
    )
    services = build_services(settings, api)
    started = time.perf_counter()
    services.lake.refresh()
    load_s = time.perf_counter() - started
    memory = proc_status(os.getpid())
    generation = services.lake.current
    assert not generation.missing, generation.missing
    hospitals = list(services.topology.hospitals)
    bare: list[float] = []
    dumped: list[float] = []
    entries = 0
    wrong = 0
    for i, (key, want) in enumerate(zip(spec["keys"], spec["expected"], strict=True)):
        audit = AuditRecord(request_id=f"floor-{i}", method="POST", route=ROUTE, client_address="127.0.0.1")
        query = HistoryQuery(person_key=key, purpose="emergency", reason=REASON)
        t0 = time.perf_counter()
        body = patient_history(services, hospitals[i % len(hospitals)], query, audit)
        t1 = time.perf_counter()
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        t2 = time.perf_counter()
        bare.append(t1 - t0)
        dumped.append(t2 - t0)
        entries += len(body["entries"])
        wrong += body["total"] != want
    services.journal.close()
    a, b = np.array(bare), np.array(dumped)
    result = {
        "lookups": len(bare),
        "load_s": round(load_s, 1),
        "rss_after_load_mb": memory,
        "rows_loaded": sum(s.table.num_rows for s in generation.segments.values()),
        "p50_ms": ms(pct(a, 50)),
        "p99_ms": ms(pct(a, 99)),
        "max_ms": ms(float(a.max())),
        "with_json_p50_ms": ms(pct(b, 50)),
        "with_json_p99_ms": ms(pct(b, 99)),
        "mean_entries": round(entries / len(bare), 2),
        "wrong": int(wrong),
    }
    Path(spec["out"]).write_text(json.dumps(result))


# -- load ------------------------------------------------------------------------------------------
def load_worker(spec: dict[str, Any]) -> None:
    import uvloop

    result = uvloop.run(_load(spec))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    Path(spec["out"]).write_text(json.dumps(result))


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client over one asyncio stream: POST, Content-Length bodies.
    Light enough that the load generator leaves the 2 cores to the server (httpx spends several
    ms of CPU per request, as much as the server: see the docs)."""

    def __init__(self, url: str):
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, target: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(f"POST {target} HTTP/1.1\r\nHost: {self.host}\r\n{lines}\r\n".encode() + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            raise
        if b"\r\nconnection: close" in head.lower():
            await self.close()
        return int(head[9:12]), body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx
    import orjson

    rids: list[str] = spec["resident_ids"]
    keys: list[str] = spec["keys"]
    expected: list[int] = spec["expected"]
    tokens: list[str] = spec["tokens"]
    clients = int(spec["clients"])
    server_pid = int(spec["server_pid"])
    # One row per request: start (s from the measured window's start; negative = warm-up),
    # latency (s), status (-1 = transport error), entries returned, wrong total, resident-ID path.
    starts: list[float] = []
    latencies: list[float] = []
    service: list[float] = []  # from the moment the request was sent (= latencies when closed loop)
    statuses: list[int] = []
    entries: list[int] = []
    wrongs: list[bool] = []
    by_rid: list[bool] = []
    failures: dict[str, int] = {}
    begin = time.perf_counter()
    measured_from = begin + float(spec["warmup"])
    until = measured_from + float(spec["seconds"])
    marks: dict[str, float] = {}
    threads0: dict[int, tuple[str, float]] = {}
    threads1: dict[int, tuple[str, float]] = {}
    http: httpx.AsyncClient | None = None
    if spec.get("impl", "httpx") == "httpx":
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        http = httpx.AsyncClient(base_url=spec["url"], limits=limits, timeout=30.0)

    # Paced (rate > 0): each client sends on its own fixed schedule (rate / clients per second,
    # random phase), and latency counts from the scheduled time, so a slow answer that delays the
    # next request is not hidden (no coordinated omission). Closed loop (rate 0): back to back.
    interval = clients / float(spec["rate"]) if float(spec["rate"]) > 0 else 0.0

    async def client(n: int) -> None:
        rng = random.Random(int(spec["seed"]) * 1000 + n)
        auth = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
        raw = RawHttp(spec["url"])
        next_at = begin + rng.random() * interval
        while True:
            if interval:
                if next_at > time.perf_counter():
                    await asyncio.sleep(next_at - time.perf_counter())
                t0, next_at = next_at, next_at + interval
            else:
                t0 = time.perf_counter()
            if t0 >= until:
                await raw.close()
                return
            sent = time.perf_counter()
            i = rng.randrange(len(keys))
            rid = rng.random() < float(spec["resident_share"])
            patient = {"resident_id": rids[i]} if rid else {"person_key": keys[i]}
            request = orjson.dumps({**patient, "reason": REASON, "limit": 50})
            status, got, wrong, body = -1, 0, False, b""
            try:
                if http is not None:
                    headers = {**auth, "Content-Type": "application/json"}
                    response = await http.post(ROUTE, content=request, headers=headers)
                    status, body = response.status_code, response.content
                else:
                    status, body = await asyncio.wait_for(raw.post(ROUTE, auth, request), 30.0)
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            t1 = time.perf_counter()
            if status == 200:
                data = orjson.loads(body)
                got = len(data["entries"])
                wrong = data["total"] != expected[i]
            elif status > 0:
                code = orjson.loads(body).get("errorCode", "?") if body[:1] == b"{" else "?"
                failures[f"{status} {code}"] = failures.get(f"{status} {code}", 0) + 1
            starts.append(t0 - measured_from)
            latencies.append(t1 - t0)
            service.append(t1 - sent)
            statuses.append(status)
            entries.append(got)
            wrongs.append(wrong)
            by_rid.append(rid)

    async def mark() -> None:
        await asyncio.sleep(max(0.0, measured_from - time.perf_counter()))
        marks["cpu0"], marks["t0"] = cpu_seconds(server_pid), time.perf_counter()
        marks["self0"], marks["all0"] = time.process_time(), machine_busy_seconds()
        threads0.update(thread_cpu(server_pid))
        await asyncio.sleep(max(0.0, until - time.perf_counter()))
        marks["cpu1"], marks["t1"] = cpu_seconds(server_pid), time.perf_counter()
        marks["self1"], marks["all1"] = time.process_time(), machine_busy_seconds()
        threads1.update(thread_cpu(server_pid))

    await asyncio.gather(mark(), *(client(n) for n in range(clients)))
    if http is not None:
        await http.aclose()
    window = marks["t1"] - marks["t0"]
    # The server's threads: each process's main thread apart (the supervisor's, and each worker's
    # event loop: how evenly the connections landed), the rest summed by thread name.
    processes = set(family(server_pid))
    by_thread: dict[str, float] = {}
    for tid, (name, seconds) in threads1.items():
        used = seconds - threads0.get(tid, (name, 0.0))[1]
        if tid == server_pid:
            label = "supervisor main"
        elif tid in processes and _is_journal_writer(tid):
            label = "journal writers"
        elif tid in processes:
            label = f"worker {tid} event loop"
        else:
            label = name
        by_thread[label] = round(by_thread.get(label, 0.0) + used / window, 3)
    return {
        "server_threads_cores": dict(sorted(by_thread.items(), key=lambda kv: -kv[1])),
        "starts": starts,
        "latencies": latencies,
        "service": service,
        "statuses": statuses,
        "entries": entries,
        "wrong": wrongs,
        "by_resident_id": by_rid,
        "failures": failures,
        "server_cpu_s": round(marks["cpu1"] - marks["cpu0"], 2),
        "client_cpu_window_s": round(marks["self1"] - marks["self0"], 2),
        "machine_cpu_window_s": round(marks["all1"] - marks["all0"], 2),
        "window_s": round(window, 3),
    }


def summarise(raw: dict[str, Any], seconds: float) -> dict[str, Any]:
    starts = np.array(raw["starts"])
    lat = np.array(raw["latencies"])
    sent = np.array(raw["service"])
    status = np.array(raw["statuses"])
    entries = np.array(raw["entries"])
    wrong = np.array(raw["wrong"], bool)
    rid = np.array(raw["by_resident_id"], bool)
    # Every request scheduled in the window counts, however late its answer came: dropping the
    # ones that finish after the window would hide the slowest answers of its last seconds.
    measured = (starts >= 0) & (starts < seconds)
    m_lat, m_status = lat[measured], status[measured]
    ok = m_status == 200
    per_10s = [
        int(((starts + lat >= a) & (starts + lat < a + 10) & (starts >= 0)).sum()) / 10
        for a in range(0, int(seconds), 10)
    ]
    return {
        "requests_total": len(lat),  # warm-up included: what the audit must hold
        "requests_warmup": int((starts < 0).sum()),
        "requests_measured": int(measured.sum()),
        "rps": round(float(measured.sum()) / seconds, 1),
        "rps_per_10s": per_10s,
        "p50_ms": ms(pct(m_lat, 50)),
        "p90_ms": ms(pct(m_lat, 90)),
        "p99_ms": ms(pct(m_lat, 99)),
        "max_ms": ms(float(m_lat.max()) if len(m_lat) else float("nan")),
        "mean_ms": ms(float(m_lat.mean()) if len(m_lat) else float("nan")),
        "p50_ms_from_send": ms(pct(sent[measured], 50)),
        "p99_ms_from_send": ms(pct(sent[measured], 99)),
        "p50_ms_resident_id": ms(pct(m_lat[rid[measured]], 50)),
        "p50_ms_person_key": ms(pct(m_lat[~rid[measured]], 50)),
        "resident_id_share": round(float(rid[measured].mean()), 3),
        "errors": int((~ok).sum()),
        "errors_total_incl_warmup": int((status != 200).sum()),
        "wrong_totals": int(wrong.sum()),
        "mean_entries": round(float(entries[measured][ok].mean()), 2) if ok.any() else 0.0,
        "failures": raw["failures"],
        "server_cpu_s": raw["server_cpu_s"],
        "server_cpu_cores": round(raw["server_cpu_s"] / raw["window_s"], 2),
        "server_cpu_ms_per_request": round(raw["server_cpu_s"] * 1000 / max(1, int(measured.sum())), 2),
        "client_cpu_cores": round(raw["client_cpu_window_s"] / raw["window_s"], 2),
        # Everything else on the (shared) machine during the window: other users' work, MinIO.
        "other_cpu_cores": round(
            (raw["machine_cpu_window_s"] - raw["server_cpu_s"] - raw["client_cpu_window_s"])
            / raw["window_s"],
            2,
        ),
        "server_threads_cores": raw["server_threads_cores"],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def audit_check(table_uri: str, options: dict[str, str], sent: int, ok_sent: int) -> dict[str, object]:
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    table = DeltaTable(table_uri, storage_options=options)
    rows = table.to_pyarrow_dataset().to_table(columns=["route", "status", "request_id", "person_key"])
    history = rows.filter(pc.equal(rows["route"], ROUTE))
    ok = int(pc.sum(pc.equal(history["status"], 200)).as_py() or 0)
    return {
        "table": table_uri,
        "records_history_route": history.num_rows,
        "records_all": rows.num_rows,
        "records_status_200": ok,
        "unique_request_ids": len(pc.unique(history["request_id"])),
        "requests_sent": sent,
        "requests_200": ok_sent,
        "complete": history.num_rows == sent and ok == ok_sent,
    }


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--encounters", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rebuild", action="store_true", help="write the tables even if they exist")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--sample", type=int, default=20_000, help="patients the load picks from")
    parser.add_argument(
        "--runs",
        default="closed,paced,closed-httpx",
        help=f"load runs, one after the other, of {', '.join(RUNS)}: closed = back to back, paced = "
        "--rate req/s in all; raw = a minimal keep-alive HTTP/1.1 client, httpx = httpx.AsyncClient. "
        "Throughput is judged on `closed`, latency on `paced`",
    )
    parser.add_argument(
        "--rate",
        default="300,150",
        help="req/s of the paced runs, all clients together; several (comma-separated) = one paced run "
        "each, the first judged against the latency targets",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="API worker processes (MEDSHARE_API_WORKERS); 2 on 2 cores"
    )
    parser.add_argument(
        "--refresh-seconds", type=float, help="read-model poll interval of the server (default: setting's)"
    )
    parser.add_argument(
        "--flush-seconds", type=float, help="audit flush interval of the server (default: the setting's)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run each load run this many times; latency targets are judged on the worst run, and the "
        "pooled p99 of all runs is reported beside it",
    )
    parser.add_argument("--resident-share", type=float, default=0.5, help="lookups by X-Resident-Id")
    parser.add_argument("--floor-lookups", type=int, default=300)
    parser.add_argument(
        "--delta-floor-seconds", type=float, default=180, help="time budget of the delta-rs floor"
    )
    parser.add_argument("--skip-floors", action="store_true")
    parser.add_argument("--startup-timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=["load", "read-model"], help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        (load_worker if args.worker == "load" else read_model_worker)(spec)
        return

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from lakehouse.contracts import load_contracts
    from lakehouse.settings import get_settings
    from lakehouse.storage import AUDIT_SITE, PROVINCE_SITE, delta_storage_options, s3_uri, site_credentials
    from lakehouse.topology import load_topology
    from tests.utils.api import ApiServer, audit_uri

    console = Console(width=150)
    settings = get_settings()
    topology = load_topology(settings.platform_dir)
    options = delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE))
    # Named by the number of cities: a province of 3 cities (earlier runs) stays beside one of 18.
    name = f"bench-api-{args.patients}-{args.encounters}-{len(topology.cities)}c"
    root = s3_uri(topology.province.buckets.lakehouse, name)
    datasets = sorted(n for n, c in load_contracts(settings.platform_dir).items() if c.shareable)
    run = uuid.uuid4().hex[:8]
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"medshare-bench-api-{run}"
    logs.mkdir(parents=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "code": code_version(),
        "logs": str(logs),
        "params": {k: v for k, v in vars(args).items() if k not in ("worker", "spec", "out")},
        "root": root,
        "targets": TARGETS,
        "runs": {},
    }
    raws: dict[str, dict[str, Any]] = {}

    # 1. Data
    console.rule("data")
    if args.rebuild or not existing(root, options, datasets, args.patients, args.encounters):
        results["data"] = build(args, root, options)
    else:
        results["data"] = {"built": False, "rows": table_rows(root, options, datasets)}
        console.print(f"reusing {root}")
    sample = read_sample(root, options)
    results["data"]["sample_patients"] = len(sample["person_key"])
    console.print(results["data"])

    # 2. Floors (no server running)
    n = min(args.floor_lookups, len(sample["person_key"]))
    if not args.skip_floors:
        console.rule("floors")
        floor_keys, floor_expected = sample["person_key"][:n], sample["expected"][:n]
        results["floor_delta_rs"] = delta_floor(
            root, options, floor_keys, args.delta_floor_seconds, floor_expected
        )
        console.print("delta-rs:", results["floor_delta_rs"])
        paths, proc = run_worker(
            "read-model",
            {
                "root": root,
                "keys": floor_keys,
                "expected": floor_expected,
                "state_dir": tempfile.mkdtemp(prefix="floor-", dir=logs),
            },
            logs,
        )
        results["floor_read_model"] = worker_result(paths, proc)
        console.print("read model:", results["floor_read_model"])

    # 3. The API
    console.rule("API")
    from sharing_api.settings import ApiSettings

    defaults = {name: field.default for name, field in ApiSettings.model_fields.items()}
    server = ApiServer(
        settings=settings,
        workdir=logs / "api",
        tables_root=root,
        audit_table=audit_uri(settings, f"bench-api-{run}"),
        instance=f"bench-{run}",
        extra_env={
            "MEDSHARE_API_RATE_PER_SECOND": "100000",
            "MEDSHARE_API_RATE_BURST": "100000",
            "MEDSHARE_API_REFRESH_SECONDS": str(args.refresh_seconds or defaults["refresh_seconds"]),
            "MEDSHARE_API_AUDIT_FLUSH_SECONDS": str(args.flush_seconds or defaults["audit_flush_seconds"]),
            "MEDSHARE_API_WORKERS": str(args.workers),
        },
    )
    tokens = [server.issue(h.id) for h in (topology.hospitals * args.clients)[: args.clients]]
    started = time.perf_counter()
    try:
        server.start(timeout=args.startup_timeout)
        assert server.process is not None
        pid = server.process.pid
        startup_s = time.perf_counter() - started
        health = server.health()  # the operators' detailed view: /healthz no longer names parts
        if health["missing"] or health["stale"]:
            raise SystemExit(f"the read model is incomplete: {health}")
        time.sleep(3)  # let the first refresh settle before reading memory
        results["server"] = {"startup_s": round(startup_s, 1), "after_load": proc_status(pid)}
        console.print(results["server"])

        # 4. Load: the runs one after the other against the same server.
        rates = [float(r) for r in args.rate.split(",")]
        plan = [
            (_run_name(kind, rate if paced else None, i, repeat), impl, rate if paced else 0.0)
            for kind in args.runs.split(",")
            for impl, paced in [RUNS[kind]]
            for i, rate in enumerate(rates if paced else [0.0])
            for repeat in range(args.repeats)
        ]
        for name, impl, rate in plan:
            what = f"{rate:.0f} req/s paced" if rate else "closed loop"
            console.rule(
                f"{name}: {args.clients} {impl} clients, {what}, {args.warmup:.0f} s + {args.seconds:.0f} s"
            )
            paths, proc = run_worker(
                "load",
                {
                    "url": server.url,
                    "server_pid": pid,
                    "impl": impl,
                    "rate": rate,
                    "tokens": tokens,
                    "keys": sample["person_key"],
                    "resident_ids": sample["resident_id"],
                    "expected": sample["expected"],
                    "clients": args.clients,
                    "warmup": args.warmup,
                    "seconds": args.seconds,
                    "resident_share": args.resident_share,
                    "seed": args.seed,
                },
                logs,
                name=f"load-{name}",
            )
            total = args.warmup + args.seconds
            with Progress(TextColumn(name), BarColumn(), TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task(name, total=total)
                began = time.monotonic()
                while proc.poll() is None:
                    bar.update(task, completed=min(total, time.monotonic() - began))
                    time.sleep(0.5)
            raws[name] = worker_result(paths, proc)
            summary = {"client": impl, "rate": rate or "closed loop", **summarise(raws[name], args.seconds)}
            results["runs"][name] = summary
            console.print({k: v for k, v in summary.items() if not isinstance(v, list)})
            results["server"][f"after_{name}"] = proc_status(pid)
    finally:
        code = server.stop()
    results["server"]["exit_code"] = code

    # 5. Audit: every request of every run, warm-ups included.
    results["audit"] = audit_check(
        server.audit_table,
        delta_storage_options(settings, site_credentials(settings, AUDIT_SITE)),
        sum(len(r["statuses"]) for r in raws.values()),
        sum(1 for r in raws.values() for s in r["statuses"] if s == 200),
    )
    runs = results["runs"]
    results["repeats"] = repeat_summary(runs, raws, args.seconds)
    throughput = results["repeats"].get("closed") or next(iter(results["repeats"].values()))
    latency = results["repeats"].get("paced") or throughput
    # Latency is judged on the worst run of its kind: a target met "on the median" can still be
    # missed one run in three.
    results["targets_met"] = {
        "p50": bool(latency["p50_ms_worst"] <= TARGETS["p50_ms"]),
        "p99": bool(latency["p99_ms_worst"] <= TARGETS["p99_ms"]),
        # Throughput is the closed loop's; a paced run only does the rate it was given.
        "rps": bool(throughput["rps"] >= TARGETS["rps"]) if "closed" in runs else None,
        "errors": bool(all(r["errors"] == 0 for r in runs.values())),
        "audit_complete": bool(results["audit"]["complete"]),
    }
    save(args.out, results)
    report(console, results, args)


def save(path: Path, results: dict[str, Any]) -> None:
    """Append this invocation to the results file: every invocation is kept, not only the last."""
    invocations: list[dict[str, Any]] = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict):
            invocations = old.get("invocations", [old])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"invocations": [*invocations, results]}, indent=1) + "\n")


def _run_name(kind: str, rate: float | None, index: int, repeat: int) -> str:
    """`paced`, `paced@150` for the second rate, `paced#2` for the second repeat of a run."""
    name = f"{kind}@{rate:g}" if rate is not None and index else kind
    return f"{name}#{repeat + 1}" if repeat else name


def repeat_summary(
    runs: dict[str, dict[str, Any]], raws: dict[str, dict[str, Any]], seconds: float
) -> dict[str, dict[str, Any]]:
    """Per run kind: the worst run's figures, the median of the runs, and the latencies of every
    run pooled (each request scheduled in a measured window once)."""
    groups: dict[str, list[str]] = {}
    for name in runs:
        groups.setdefault(name.split("#")[0], []).append(name)
    out = {}
    for base, names in groups.items():
        rs = [runs[n] for n in names]
        summary: dict[str, Any] = {"client": rs[0]["client"], "rate": rs[0]["rate"]}
        for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "rps"):
            values = sorted(float(r[key]) for r in rs)
            summary[key] = round(float(np.median(values)), 1)
            summary[f"{key}_all"] = values
            summary[f"{key}_worst"] = values[0] if key == "rps" else values[-1]
        pooled = np.concatenate(
            [
                np.array(raws[n]["latencies"])[
                    (np.array(raws[n]["starts"]) >= 0) & (np.array(raws[n]["starts"]) < seconds)
                ]
                for n in names
            ]
        )
        summary["p99_ms_pooled"] = ms(pct(pooled, 99))
        summary["errors"] = sum(int(r["errors"]) for r in rs)
        summary["wrong_totals"] = sum(int(r["wrong_totals"]) for r in rs)
        summary["mean_entries"] = round(float(np.mean([r["mean_entries"] for r in rs])), 1)
        summary["repeats"] = len(rs)
        out[base] = summary
    return out


def report(console: Any, results: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.table import Table

    table = Table(title=f"sharing API: {args.patients:,} patients, {args.encounters:,} encounters")
    for column in (
        "run",
        "client",
        "load",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "req/s",
        "errors",
        "entries",
    ):
        table.add_column(column)
    for name, r in results["runs"].items():
        table.add_row(
            name,
            r["client"],
            f"{r['rate']} req/s" if r["rate"] != "closed loop" else "closed loop",
            str(r["p50_ms"]),
            str(r["p90_ms"]),
            str(r["p99_ms"]),
            str(r["max_ms"]),
            str(r["rps"]),
            f"{r['errors']} (+{r['wrong_totals']} wrong)",
            str(r["mean_entries"]),
        )
    for name in ("floor_read_model", "floor_delta_rs"):
        if name in results:
            f = results[name]
            table.add_row(
                name,
                "in-process",
                f"{f['lookups']} lookups",
                str(f["p50_ms"]),
                "",
                str(f["p99_ms"]),
                str(f["max_ms"]),
                "",
                str(f["wrong"]),
                "",
            )
    console.print(table)
    for base, r in results.get("repeats", {}).items():
        console.print(
            f"{base}, {r['repeats']} run(s): p99 worst {r['p99_ms_worst']} ms, pooled {r['p99_ms_pooled']} "
            f"ms (all: {r['p99_ms_all']}); p50 worst {r['p50_ms_worst']} ms; {r['rps']} req/s median; "
            f"{r['errors']} errors"
        )
    met = results["targets_met"]
    console.print(f"targets met: {met}")
    server, audit = results["server"], results["audit"]
    console.print(
        f"startup {server['startup_s']} s; RSS after load {server['after_load']}; "
        f"audit {audit['records_history_route']} records for {audit['requests_sent']} requests"
    )
    console.print(f"written {args.out}; logs in {results['logs']}")


if __name__ == "__main__":
    main()
