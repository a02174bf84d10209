"""`make demo`: the platform end to end on the running stack. Grows with every capability.

1. Foundation: Spark writes a partitioned Delta table into a city's bucket through s3a, delta-rs
   reads it back, a message makes the round trip through Kafka.
2. City ingestion: seeded exports (CSV, JSON Lines, FHIR, DICOM, with defects) are generated
   for two cities (more with `--cities`, `all` for the province), landed in their landing
   buckets and ingested by each city's Spark job; the run reports prove every row is curated,
   quarantined or a removed duplicate.
3. Replication: each city's publisher ships its curated commits (shareable form) through Kafka,
   the provincial replicator applies them to the federated provincial tables, and `verify`
   proves the province holds exactly each city's shareable data.
4. Sharing: the sharing API starts over the provincial tables; a county hospital breaks the
   glass for a patient in an emergency (their history across both cities, with the reason
   audited), then asks to look them up for research (denied: research never names a patient),
   and an operator reads the audit entries the two lookups left.
5. Delta Sharing: profile files for a provincial and a county hospital; the official
   `delta-sharing` client (its own environment) lists what each may read and loads a table —
   the provincial hospital's research copy (every city, person keys masked), the county
   hospital's own rows — and the audit names the files each read was given.
6. Analytics: the standard provincial jobs into gold tables, and the analysts' report.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from lakehouse import kafka
from lakehouse.errors import MedshareError
from lakehouse.settings import Settings
from lakehouse.storage import delta_storage_options, s3_uri, s3a_uri, site_credentials
from lakehouse.topology import load_topology

if TYPE_CHECKING:
    from sharing_api.identities import Identities

Report = Callable[[str], None]
DEMO_TABLE = "demo/encounters_smoke"


def _spark_to_delta_rs(settings: Settings, city: str, bucket: str, report: Report) -> dict[str, object]:
    from deltalake import DeltaTable
    from pyspark.sql import functions as F

    from lakehouse.spark import build_spark_session

    creds = site_credentials(settings, city)
    report("starting Spark (Delta + s3a)")
    started = time.monotonic()
    spark = build_spark_session(settings, creds, app_name="medshare-demo")
    try:
        hospitals = [h.id for h in load_topology(settings.platform_dir).hospitals_of(city)]
        df = (
            spark.range(10_000)
            .withColumn(
                "hospital_id",
                F.element_at(F.array(*map(F.lit, hospitals)), (F.col("id") % len(hospitals) + 1).cast("int")),
            )
            .withColumn("visit_date", F.date_add(F.lit("2026-01-01"), (F.col("id") % 180).cast("int")))
            .withColumn("month", F.date_format("visit_date", "yyyy-MM"))
        )
        report(f"Spark writes {DEMO_TABLE} to s3a://{bucket}, partitioned by hospital and month")
        df.write.format("delta").mode("overwrite").partitionBy("hospital_id", "month").save(
            s3a_uri(bucket, DEMO_TABLE)
        )
        written = df.count()
    finally:
        spark.stop()
    spark_seconds = time.monotonic() - started

    report("delta-rs reads it back")
    table = DeltaTable(s3_uri(bucket, DEMO_TABLE), storage_options=delta_storage_options(settings, creds))
    read = table.to_pyarrow_table()
    if read.num_rows != written:
        raise MedshareError(f"delta-rs read {read.num_rows} rows, Spark wrote {written}")
    return {
        "rows written (Spark)": written,
        "rows read (delta-rs)": read.num_rows,
        "partitions": len(
            {(h, m) for h, m in zip(read["hospital_id"].to_pylist(), read["month"].to_pylist(), strict=True)}
        ),
        "Delta version": table.version(),
        "Spark seconds": f"{spark_seconds:.1f}",
    }


def _kafka_round_trip(settings: Settings, city: str, report: Report) -> dict[str, object]:
    topic = "medshare.smoke"
    token = uuid.uuid4().hex
    report(f"Kafka round trip on {topic}")
    producer = kafka.producer(settings)
    started = time.monotonic()
    with kafka.transport_errors(f"produce to {topic}"):
        meta = producer.send(topic, key=city.encode(), value=json.dumps({"token": token}).encode()).get(30)
        producer.close()
    consumer = kafka.consumer(settings, group_id=None, consumer_timeout_ms=15_000)
    from kafka import TopicPartition

    tp = TopicPartition(topic, meta.partition)
    consumer.assign([tp])
    consumer.seek(tp, meta.offset)
    got = next(iter(consumer), None)
    consumer.close()
    if got is None or json.loads(got.value)["token"] != token:
        raise MedshareError(f"the message sent to {topic} did not come back")
    return {
        "topic": topic,
        "offset": meta.offset,
        "round trip ms": f"{(time.monotonic() - started) * 1000:.0f}",
    }


DEMO_CITIES = ("zhengzhou", "luoyang")
DEMO_PATIENTS_PER_CITY = 200


def _ingest_cities(settings: Settings, report: Report, cities: Sequence[str]) -> Table:
    from ingestion.generate import GenerateOptions, generate
    from ingestion.profiles import load_profiles
    from lakehouse.contracts import load_contracts
    from medshare.pipeline import ingest_city, land_city

    topology = load_topology(settings.platform_dir)
    contracts = load_contracts(settings.platform_dir)
    profiles = load_profiles(settings.platform_dir, topology, contracts)
    exports = settings.state_dir / "demo-exports"
    patients = DEMO_PATIENTS_PER_CITY * len(cities)
    report(f"generating exports of {patients} patients for {', '.join(cities)} in {exports}")
    generate(
        topology, contracts, exports, GenerateOptions(seed=2026, patients=patients, cities=tuple(cities))
    )
    table = Table(
        "city",
        "dataset",
        "rows in",
        "curated",
        "quarantined",
        "duplicates",
        "balanced",
        title="city ingestion",
    )
    for city_id in cities:
        landed = land_city(settings, topology, city_id, exports / city_id)
        report(f"{city_id}: landed {landed} new or changed file(s); running the ingestion job")
        run = ingest_city(settings, topology, contracts, profiles, city_id)
        if not run.datasets:
            table.add_row(city_id, "(all files unchanged since the last run)", "", "", "", "", "")
        for ds in run.datasets.values():
            table.add_row(
                city_id,
                ds.dataset,
                str(ds.rows_in),
                str(ds.curated),
                str(ds.quarantined_total),
                str(ds.duplicates),
                "yes" if ds.balanced else "NO",
            )
        if not all(ds.balanced for ds in run.datasets.values()):
            raise MedshareError(f"{city_id}: row accounting does not balance (run {run.run_id})")
        report(f"{city_id}: files read as " + ", ".join(f"{n} × {how}" for how, n in run.read_as()))
    return table


def _replicate(settings: Settings, report: Report, cities: Sequence[str]) -> Table:
    import threading

    from lakehouse.contracts import load_contracts
    from lakehouse.pseudonyms import ProvinceKey
    from lakehouse.replication.layout import ReplicationLayout
    from lakehouse.replication.replicator import Replicator
    from lakehouse.replication.verify import verify
    from medshare.pipeline import publish_city

    layout = ReplicationLayout(load_topology(settings.platform_dir))
    contracts = load_contracts(settings.platform_dir)
    key = ProvinceKey.from_settings(settings)
    for city_id in cities:
        published = publish_city(settings, layout, contracts, key, city_id)
        units = sum(d.units for d in published.datasets.values())
        report(f"{city_id}: published {published.rows:,} rows in {units} unit(s) through Kafka")
    # One replicator per provincial site, each writing its own site's store.
    sites = settings.each_site()
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=Replicator(site, layout, contracts).run, args=(stop,), name=f"replicator-{site.site_id}"
        )
        for site in sites
    ]
    where = f"{len(sites)} provincial sites" if len(sites) > 1 else "the province"
    report(f"replicators applying the units in {where}; verify compares each with the cities")
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 180
        while not (result := verify(settings, layout, contracts, key, cities=cities, sites=sites)).ok:
            if time.monotonic() > deadline:
                raise MedshareError(f"the province still differs after 180 s: {result.differences[:5]}")
            time.sleep(1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    table = Table(
        "city",
        "dataset",
        "partitions",
        "rows",
        "city version",
        "site",
        "province reflects",
        title="replication",
    )
    for c in result.compared:
        versions = (str(c.city_version), c.site or "-", str(c.province_version))
        table.add_row(c.city, c.dataset, str(c.partitions), str(c.rows), *versions)
    table.caption = f"verify: no difference — {where} hold(s) exactly each city's shareable data"
    return table


DEMO_CLINIC = "ly-yc-county"


def _demo_patient(settings: Settings, cities: Sequence[str]) -> str:
    """A resident ID with encounters in both demo cities if there is one (else the busiest)."""
    from deltalake import DeltaTable

    seen: dict[str, set[str]] = {}
    visits: Counter[str] = Counter()
    topology = load_topology(settings.platform_dir)
    for city_id in cities:
        creds = site_credentials(settings, city_id)
        uri = s3_uri(topology.city(city_id).buckets.curated, "encounters")
        ids = (
            DeltaTable(uri, storage_options=delta_storage_options(settings, creds))
            .to_pyarrow_table(columns=["resident_id"])["resident_id"]
            .to_pylist()
        )
        for rid in ids:
            seen.setdefault(rid, set()).add(city_id)
            visits[rid] += 1
    return max(visits, key=lambda rid: (len(seen[rid]), visits[rid], rid))


def _share(settings: Settings, report: Report, cities: Sequence[str]) -> list[Table]:
    import datetime as dt
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    from lakehouse.identity import resident_id_problem
    from sharing_api.services import identities
    from sharing_api.settings import load_api_settings

    state = settings.state_dir / "demo-api"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {**os.environ, "MEDSHARE_API_STATE_DIR": str(state), "MEDSHARE_API_PORT": str(port)}
    api = load_api_settings(state_dir=state, port=port)
    store = identities(settings, api)
    clinic = store.issue("hospital", DEMO_CLINIC, days=1, label="make demo").token
    operator = store.issue("operator", "demo-operator", days=1, label="make demo").token
    resident_id = _demo_patient(settings, cities)
    if resident_id_problem(resident_id, today=dt.date.today()) is not None:
        raise MedshareError("the demo patient's resident ID is not valid")

    log = state / "api.log"
    report(f"starting the sharing API on http://127.0.0.1:{port} (log {log})")
    with log.open("ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "medshare", "serve"], env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise MedshareError(f"the sharing API exited with {server.returncode}; see {log}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).json()["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise MedshareError(f"the sharing API was not ready in 120 s; see {log}")
            time.sleep(0.3)
        hospital = load_topology(settings.platform_dir).hospital(DEMO_CLINIC)
        lookups = Table("who", "purpose", "status", "answer", title="sharing API: two lookups of one patient")
        with httpx.Client(base_url=base, timeout=30, headers={"X-Resident-Id": resident_id}) as c:
            c.headers["Authorization"] = f"Bearer {clinic}"
            # An emergency breaks the glass: the resident ID and the reason go in the body.
            allowed = c.post(
                "/v1/patients/emergency",
                json={"resident_id": resident_id, "reason": DEMO_REASON, "limit": 1000},
            )
            if allowed.status_code != 200:
                raise MedshareError(f"the emergency lookup was refused: {allowed.text}")
            body = allowed.json()
            types = Counter(e["type"] for e in body["entries"])
            cities = sorted({e["city"] for e in body["entries"]})
            lookups.add_row(
                hospital.name,
                "emergency (break-glass)",
                "200",
                f"{body['total']} entries from {', '.join(cities)}: "
                + ", ".join(f"{n} {t}" for t, n in types.most_common())
                + f" (grant {body['datasets'][0]['grant']})",
            )
            # Research never looks up a named patient.
            denied = c.get("/v1/patients/history", params={"purpose": "research"})
            if denied.status_code != 403:
                raise MedshareError(f"the research lookup was not denied: {denied.status_code} {denied.text}")
            lookups.add_row(
                hospital.name, "research", "403", f"{denied.json()['errorCode']}: {denied.json()['message']}"
            )
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {operator}"}) as c:
            records = c.get("/v1/audit", params={"resident_id": resident_id}).json()["records"]
        audit = Table(
            "time",
            "hospital",
            "purpose",
            "decision",
            "status",
            "grant",
            "rows",
            title="audit: who accessed this patient",
        )
        for r in sorted(records, key=lambda r: r["time"]):
            audit.add_row(
                r["time"][11:19],
                r["hospital_id"] or "",
                r["purpose"] or "",
                r["decision"],
                str(r["status"]),
                r["grants"] or r["error_code"] or "",
                str(r["rows_returned"]),
            )
        audit.caption = (
            f"person_key {body['personKey'][:16]}… — the resident ID was hashed on arrival and is in no log. "
            "Clinician page: `medshare serve`, then http://127.0.0.1:8040/ui"
        )
        sharing = _delta_sharing(settings, base, store, operator, report)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    return [lookups, audit, sharing]


DEMO_REASON = "brought in unconscious after a road accident; allergies and medication unknown"

# A provincial hospital reads research data from every city; a county hospital its own rows.
SHARING_READS = (("zz-fahzu", "research.province.diagnoses"), (DEMO_CLINIC, "operations.province.encounters"))


def _delta_sharing(settings: Settings, base: str, store: Identities, operator: str, report: Report) -> Table:
    """Profiles for two hospitals, then the official client lists and loads what each may read."""
    import httpx
    import pyarrow.parquet as pq

    from infra.recipient import read_share
    from sharing_api.profile import profile_document, write_profile

    deadline = time.monotonic() + 300
    while not httpx.get(f"{base}/healthz", timeout=5).json()["sharedCopiesSynced"]:
        if time.monotonic() > deadline:
            raise MedshareError("the shared copies were not ready in 300 s")
        time.sleep(0.5)
    folder = settings.state_dir / "demo-api" / "profiles"
    table = Table("hospital", "may read", "loaded", "rows", "cities", "person_key", title="Delta Sharing")
    for hospital, name in SHARING_READS:
        profile = folder / f"{hospital}.share"
        issued = store.issue("hospital", hospital, days=1, label="make demo: Delta Sharing")
        write_profile(profile, profile_document(f"{base}/delta-sharing/", issued))
        listed = read_share(settings, profile, "list")["tables"]
        out = folder / f"{hospital}.parquet"
        read_share(settings, profile, "load", name, "--out", str(out))
        frame = pq.read_table(out)
        shares = Counter(t.split(".")[0] for t in listed)
        key = str(frame["person_key"][0]) if frame.num_rows else ""
        table.add_row(
            hospital,
            ", ".join(f"{share} ({n} tables)" for share, n in shares.items()),
            name,
            str(frame.num_rows),
            ", ".join(sorted(set(frame["city"].to_pylist()))),
            key[:14] + "…",
        )
        report(f"delta sharing: {hospital} loaded {name} ({frame.num_rows} rows) with the official client")
    time.sleep(6)  # the audit flush (5 s)
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {operator}"}) as c:
        records = c.get("/v1/audit", params={"decision": "allow", "limit": 1000}).json()["records"]
    reads = [r for r in records if r["route"].endswith("/query")]
    table.caption = (
        f"{len(reads)} file listings audited with the ids of the files signed: only the caller's city or"
        f" hospital, from per-grant copies (`~…` = masked); profiles in {folder}"
    )
    return table


def _analytics(settings: Settings, report: Report) -> Table:
    """The standard jobs over the replicated provincial tables, then the analysts' report."""
    from lakehouse.analytics.jobs import JOBS, run_job
    from lakehouse.analytics.report import write_report
    from lakehouse.analytics.session import Locations, analyst_session
    from lakehouse.analytics.settings import load_analytics_settings

    config = load_analytics_settings()
    topology = load_topology(settings.platform_dir)
    where = Locations.of(config, topology)
    report(f"analytics: Spark session with province.* tables from {where.tables_root}")
    spark = analyst_session(settings, config, app_name="medshare-demo-analytics")
    table = Table("job", "gold table", "rows", "suppressed", "seconds", title="provincial analytics")
    for name in JOBS:
        result = run_job(spark, topology, where, name, k=config.k)
        report(f"analytics: {name} → {result.table} ({result.rows} rows)")
        table.add_row(name, result.table, str(result.rows), str(result.suppressed), f"{result.seconds:.1f}")
    path = write_report(settings, config, config.report_file(settings))
    table.caption = (
        f"cells of fewer than {config.k} patients suppressed; report: {path} "
        "(`medshare analytics report --open`); SQL: `medshare spark-sql`"
    )
    return table


def run(settings: Settings, report: Report, cities: Sequence[str] = DEMO_CITIES) -> None:
    topology = load_topology(settings.platform_dir)
    city = topology.cities[0]
    summary: dict[str, object] = {"city": city.id, "bucket": city.buckets.curated}
    summary |= _spark_to_delta_rs(settings, city.id, city.buckets.curated, report)
    summary |= _kafka_round_trip(settings, city.id, report)
    ingestion = _ingest_cities(settings, report, cities)
    replication = _replicate(settings, report, cities)
    sharing = _share(settings, report, cities)
    analytics = _analytics(settings, report)

    table = Table("step", "result", title="medshare demo: foundation")
    for key, value in summary.items():
        table.add_row(key, str(value))
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print(ingestion)
    console.print(replication)
    for table in sharing:
        console.print(table)
    console.print(analytics)
