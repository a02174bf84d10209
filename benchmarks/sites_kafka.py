"""What the two-site design (docs/sites.md) rests on, measured: a Kafka cluster stretched over two
sites survives the loss of one with no acknowledged message lost, and the site catches up alone.

    ~/.cache/medshare/venv/bin/python benchmarks/sites_kafka.py --seconds 30 --kill-at 10

A private KRaft cluster on loopback (its own folder and free ports; nothing of the development
stack is touched): node 1 = broker + controller of site A (`broker.rack=a`), node 2 = the same
for site B, node 3 = a controller only, the witness (a two-voter quorum cannot elect a leader once
either voter is gone). One topic of 6 partitions, replication factor 2 (one replica a rack),
`min.insync.replicas=1`; the transaction and offsets topics likewise.

A transactional producer (our settings: `acks=all`, idempotent) commits one small transaction
every `--interval` seconds, each message numbered; at `--kill-at` every process of site A (node 1)
gets SIGKILL. Reported: the longest gap between two committed transactions around the kill (the
producer's failover), messages committed vs. found afterwards by a `read_committed` consumer
(lost must be 0), and, after node 1 starts again on its old folder, the seconds until every
partition's in-sync replicas are both sites again (catch-up).

Results go to benchmarks/results/sites-kafka.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from benchmarks.machine import machine
from infra.services import kafka_java
from lakehouse import kafka
from lakehouse.settings import Settings, get_settings, load_settings

RESULTS = Path(__file__).parent / "results" / "sites-kafka.json"
TOPIC = "sites.bench"
PARTITIONS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One KRaft process: `roles` broker,controller (a site) or controller (the witness)."""

    def __init__(
        self, node_id: int, rack: str | None, root: Path, voters: str, ports: dict[str, int], session_ms: int
    ) -> None:
        self.id = node_id
        self.session_ms = session_ms
        self.rack = rack
        self.dir = root / f"node-{node_id}"
        self.voters = voters
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def broker(self) -> bool:
        return self.rack is not None

    def properties(self) -> str:
        ctl = f"127.0.0.1:{self.ports['controller']}"
        lines = [
            f"node.id={self.id}",
            f"controller.quorum.voters={self.voters}",
            "controller.listener.names=CONTROLLER",
            f"log.dirs={self.dir / 'log'}",
            # How soon the controller fences a broker that stopped heartbeating (Kafka's default
            # 9 s): a producer's failover waits for it.
            f"broker.session.timeout.ms={self.session_ms}",
            "broker.heartbeat.interval.ms=1000",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
        if self.broker:
            plain = f"127.0.0.1:{self.ports['broker']}"
            lines += [
                "process.roles=broker,controller",
                f"listeners=PLAINTEXT://{plain},CONTROLLER://{ctl}",
                f"advertised.listeners=PLAINTEXT://{plain}",
                "inter.broker.listener.name=PLAINTEXT",
                f"broker.rack={self.rack}",
                "default.replication.factor=2",
                "min.insync.replicas=1",
                "offsets.topic.replication.factor=2",
                "transaction.state.log.replication.factor=2",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=2",
                "share.coordinator.state.topic.min.isr=1",
                "auto.create.topics.enable=false",
                "group.initial.rebalance.delay.ms=0",
                # Unclean election stays off: a replica that fell out of sync never leads.
                "unclean.leader.election.enable=false",
            ]
        else:
            lines += ["process.roles=controller", f"listeners=CONTROLLER://{ctl}"]
        return "\n".join(lines) + "\n"

    def format(self, settings: Settings, cluster_id: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "server.properties"
        config.write_text(self.properties())
        argv = kafka_java(
            settings, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config)
        )
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"formatting node {self.id} failed:\n{proc.stdout}{proc.stderr}")

    def start(self, settings: Settings) -> None:
        argv = kafka_java(settings, "kafka.Kafka", str(self.dir / "server.properties"))
        log = (self.dir / "kafka.log").open("ab")
        env = {**os.environ, "LOG_DIR": str(self.dir)}
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


def wait_for(what: str, ok: Any, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if ok():
                return time.monotonic() - started
        except (KafkaError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what}: not within {timeout:.0f} s")


def connect_admin(settings: Settings, timeout: float) -> KafkaAdminClient:
    """An admin client once a broker answers (the cluster is still starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return kafka.admin(settings)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def isr_sizes(admin: KafkaAdminClient) -> list[int]:
    (topic,) = admin.describe_topics([TOPIC])
    return [len(p.get("isr_nodes", p.get("isr")) or []) for p in topic["partitions"]]


def produce(settings: Settings, seconds: float, interval: float, kill_at: float, kill: Any) -> dict[str, Any]:
    """Commit numbered messages one transaction at a time; kill site A at `kill_at`."""
    producer = kafka.producer(settings, transactional_id=f"sites-bench-{uuid.uuid4().hex[:6]}")
    producer.init_transactions()
    committed: list[int] = []
    commit_times: list[float] = []
    failures = 0
    killed_at = None
    killed_after = -1  # the number of the first message sent after the kill
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        if killed_at is None and time.monotonic() - started >= kill_at:
            kill()
            killed_at = time.monotonic()
            killed_after = n
        try:
            producer.begin_transaction()
            producer.send(TOPIC, key=str(n % PARTITIONS).encode(), value=str(n).encode())
            producer.commit_transaction()
            committed.append(n)
            commit_times.append(time.monotonic())
        except KafkaError as exc:
            failures += 1
            print(
                f"  transaction {n} failed ({type(exc).__name__}: {exc}); aborting and going on", flush=True
            )
            try:
                producer.abort_transaction()
            except KafkaError:
                producer.close(timeout=5)
                producer = kafka.producer(settings, transactional_id=f"sites-bench-{uuid.uuid4().hex[:6]}")
                producer.init_transactions()
        n += 1
        time.sleep(interval)
    producer.close(timeout=10)
    gaps = [b - a for a, b in itertools.pairwise(commit_times)]
    around = [b - a for a, b in itertools.pairwise(commit_times) if killed_at and b >= killed_at]
    first_after = next((t for t in commit_times if killed_at and t >= killed_at), None)
    return {
        "attempted": n,
        "killed_before_message": killed_after,
        "committed": committed,
        "failed_transactions": failures,
        "normal_gap_s": round(sorted(gaps)[len(gaps) // 2], 3) if gaps else None,
        "failover_gap_s": round(max(around[:50]), 3) if around else None,
        "first_commit_after_kill_s": round(first_after - killed_at, 3) if first_after and killed_at else None,
    }


def read_back(settings: Settings) -> list[int]:
    consumer = kafka.consumer(settings, group_id=None, isolation_level="read_committed")
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    end = consumer.end_offsets(partitions)
    found: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(consumer.position(tp) < end[tp] for tp in partitions):
        for records in consumer.poll(timeout_ms=500).values():
            found.extend(int(r.value) for r in records)
    consumer.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the producer commits")
    parser.add_argument("--kill-at", type=float, default=10.0, help="when site A is killed (s)")
    parser.add_argument("--interval", type=float, default=0.05, help="pause between transactions (s)")
    parser.add_argument("--session-ms", type=int, default=9000, help="broker.session.timeout.ms")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the cluster's folder")
    args = parser.parse_args()

    base = get_settings()
    root = Path(tempfile.mkdtemp(prefix="medshare-sites-kafka-"))
    ports = [{"broker": free_port(), "controller": free_port()} for _ in range(3)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{p['controller']}" for i, p in enumerate(ports))
    nodes = [
        Node(1, "a", root, voters, ports[0], args.session_ms),
        Node(2, "b", root, voters, ports[1], args.session_ms),
        Node(3, None, root, voters, ports[2], args.session_ms),
    ]
    a = nodes[0]
    bootstrap = f"127.0.0.1:{ports[0]['broker']},127.0.0.1:{ports[1]['broker']}"
    settings = load_settings(kafka_bootstrap=bootstrap)
    only_b = load_settings(kafka_bootstrap=f"127.0.0.1:{ports[1]['broker']}")
    cluster_id = uuid.uuid4().hex[:22]
    results: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "params": {**vars(args), "out": str(args.out)},
    }
    try:
        for node in nodes:
            node.format(base, cluster_id)
            node.start(base)
        admin = connect_admin(settings, 120)
        up = wait_for("both brokers registered", lambda: len(admin.describe_cluster()["brokers"]) == 2, 120)
        print(f"cluster up in {up:.1f} s: {root}", flush=True)
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 2)])
        wait_for("topic fully replicated", lambda: isr_sizes(admin) == [2] * PARTITIONS, 60)
        at_kill: dict[str, Any] = {}

        def kill_site_a() -> None:
            # What the partitions looked like the moment site A died: an ISR of A alone means
            # acks=all was satisfied by A alone (min.insync.replicas=1).
            (topic,) = admin.describe_topics([TOPIC])
            at_kill["isr"] = [p.get("isr_nodes", p.get("isr")) for p in topic["partitions"]]
            at_kill["leaders"] = [p.get("leader_id", p.get("leader")) for p in topic["partitions"]]
            a.kill9()

        print(f"producing for {args.seconds:.0f} s; site A killed at {args.kill_at:.0f} s", flush=True)
        produced = produce(settings, args.seconds, args.interval, args.kill_at, kill_site_a)
        admin.close()
        produced["at_kill"] = at_kill
        found = read_back(only_b)
        committed = produced.pop("committed")
        lost = sorted(set(committed) - set(found))
        results["failover"] = {
            **produced,
            "committed": len(committed),
            "found_at_b": len(found),
            "lost": len(lost),
            "lost_numbers": lost[:20],
            "duplicates": len(found) - len(set(found)),
        }
        print(json.dumps(results["failover"], indent=1), flush=True)

        a.start(base)
        admin_b = connect_admin(only_b, 60)
        caught = wait_for("site A back in sync", lambda: isr_sizes(admin_b) == [2] * PARTITIONS, 300)
        admin_b.close()
        results["catch_up_s"] = round(caught, 1)
        print(f"site A back in every ISR {caught:.1f} s after its restart", flush=True)
    finally:
        for node in nodes:
            node.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
