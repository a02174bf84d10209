"""`make demo`: the platform end to end on the running stack. Grows with every capability.

1. Foundation: Spark writes a partitioned Delta table into a city's bucket through s3a, delta-rs
   reads it back, a message makes the round trip through Kafka.
2. City ingestion: seeded exports (CSV, JSON Lines, FHIR, DICOM, with defects) are generated
   for two cities, landed in their landing buckets and ingested by each city's Spark job; the
   run reports prove every row is curated, quarantined or a removed duplicate.
3. Replication: each city's publisher ships its curated commits (shareable form) through Kafka,
   the provincial replicator applies them to the federated provincial tables, and `verify`
   proves the province holds exactly each city's shareable data.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from lakehouse import kafka
from lakehouse.errors import MedshareError
from lakehouse.settings import Settings
from lakehouse.storage import delta_storage_options, s3_uri, s3a_uri, site_credentials
from lakehouse.topology import load_topology

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
DEMO_PATIENTS = 400


def _ingest_cities(settings: Settings, report: Report) -> Table:
    from ingestion.generate import GenerateOptions, generate
    from ingestion.job import IngestOptions, run_ingestion
    from ingestion.landing import land
    from lakehouse.contracts import load_contracts
    from lakehouse.spark import build_spark_session
    from lakehouse.storage import s3_client

    topology = load_topology(settings.platform_dir)
    contracts = load_contracts(settings.platform_dir)
    exports = settings.state_dir / "demo-exports"
    report(f"generating exports of {DEMO_PATIENTS} patients for {', '.join(DEMO_CITIES)} in {exports}")
    generate(
        topology,
        contracts,
        exports,
        GenerateOptions(seed=2026, patients=DEMO_PATIENTS, cities=DEMO_CITIES),
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
    for city_id in DEMO_CITIES:
        city = topology.city(city_id)
        creds = site_credentials(settings, city_id)
        client = s3_client(settings, creds)
        landed = land(client, city.buckets.landing, exports / city_id)
        report(f"{city_id}: landed {len(landed)} new or changed file(s); running the ingestion job")
        spark = build_spark_session(settings, creds, app_name=f"medshare-demo-ingest-{city_id}")
        try:
            run = run_ingestion(spark, client, topology, contracts, IngestOptions(city=city_id))
        finally:
            spark.stop()
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
    return table


def _replicate(settings: Settings, report: Report) -> Table:
    import threading

    from lakehouse.contracts import load_contracts
    from lakehouse.pseudonyms import ProvinceKey
    from lakehouse.replication.layout import ReplicationLayout
    from lakehouse.replication.publisher import Publisher
    from lakehouse.replication.replicator import Replicator
    from lakehouse.replication.verify import verify

    layout = ReplicationLayout(load_topology(settings.platform_dir))
    contracts = load_contracts(settings.platform_dir)
    key = ProvinceKey.from_settings(settings)
    for city_id in DEMO_CITIES:
        publisher = Publisher(settings, layout, city_id, contracts, key)
        try:
            published = publisher.run_once()
        finally:
            publisher.close()
        units = sum(d.units for d in published.datasets.values())
        report(f"{city_id}: published {published.rows:,} rows in {units} unit(s) through Kafka")
    replicator = Replicator(settings, layout, contracts)
    stop = threading.Event()
    worker = threading.Thread(target=replicator.run, args=(stop,), name="replicator")
    report("provincial replicator applying the units; verify compares province and cities")
    worker.start()
    try:
        deadline = time.monotonic() + 180
        while not (result := verify(settings, layout, contracts, key, cities=DEMO_CITIES)).ok:
            if time.monotonic() > deadline:
                raise MedshareError(f"the province still differs after 180 s: {result.differences[:5]}")
            time.sleep(1)
    finally:
        stop.set()
        worker.join(60)
    table = Table(
        "city", "dataset", "partitions", "rows", "city version", "province reflects", title="replication"
    )
    for c in result.compared:
        versions = (str(c.city_version), str(c.province_version))
        table.add_row(c.city, c.dataset, str(c.partitions), str(c.rows), *versions)
    table.caption = "verify: no difference — the province holds exactly each city's shareable data"
    return table


def run(settings: Settings, report: Report) -> None:
    topology = load_topology(settings.platform_dir)
    city = topology.cities[0]
    summary: dict[str, object] = {"city": city.id, "bucket": city.buckets.curated}
    summary |= _spark_to_delta_rs(settings, city.id, city.buckets.curated, report)
    summary |= _kafka_round_trip(settings, city.id, report)
    ingestion = _ingest_cities(settings, report)
    replication = _replicate(settings, report)

    table = Table("step", "result", title="medshare demo: foundation")
    for key, value in summary.items():
        table.add_row(key, str(value))
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print(ingestion)
    console.print(replication)
