"""A Spark standalone cluster on loopback: one master and N single-core workers, started from the
pyspark wheel's own `bin/spark-class` (the wheel has no `start-master.sh`) as detached processes
with pid files and logs in the state folder, like MinIO and Kafka (see `infra.process`).

`medshare analytics run … --master spark://127.0.0.1:7077` then runs the same jobs with real
executors: separate JVMs that fetch the Delta/s3a jars from the driver and talk to MinIO.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra import process
from infra.process import ServiceError, ServiceSpec, ServiceStatus
from infra.services import service_dirs
from lakehouse.errors import ConfigError
from lakehouse.settings import Settings, describe_settings_error

Report = Callable[[str], None]

HOST = "127.0.0.1"
DEFAULT_WORKERS = 2
MASTER = "spark-master"
WORKER_PID = re.compile(r"spark-worker-(\d+)\.pid")


class ClusterSettings(BaseSettings):
    """Ports and sizes of the local cluster (MEDSHARE_SPARK_CLUSTER_*); the defaults suit a
    two-core development machine: one core per worker, so two workers give two executors."""

    model_config = SettingsConfigDict(env_prefix="MEDSHARE_SPARK_CLUSTER_", frozen=True, extra="ignore")

    master_port: int = 7077
    # Not Spark's 8080, which other development tools like to take.
    webui_port: int = 8090
    # Worker i listens on worker_port + i: a fixed port tells the master's list of workers which
    # entry is which of our processes (Spark's default is a random port).
    worker_port: int = 7078
    worker_cores: int = Field(default=1, ge=1)
    # What a worker may hand out to executors (the analysts' executor memory is 1g by default).
    worker_memory: str = "2g"
    # Heap of the master and worker daemons themselves; they only schedule (Spark's default: 1g).
    daemon_memory: str = "512m"
    start_timeout: float = 90.0


def load_cluster_settings(**overrides: object) -> ClusterSettings:
    try:
        return ClusterSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(
            f"invalid Spark cluster settings: {describe_settings_error(exc, 'MEDSHARE_SPARK_CLUSTER_')}"
        ) from exc


def spark_home() -> Path:
    """The pip-installed pyspark folder: it is a SPARK_HOME with bin/, sbin/ and jars/."""
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-class").is_file():
        raise ServiceError(f"{home}/bin/spark-class is missing: reinstall pyspark (`make venv`)")
    return home


def cluster_dir(settings: Settings) -> Path:
    return settings.state_dir / "spark-cluster"


def master_url(settings: Settings, cluster: ClusterSettings | None = None) -> str:
    cluster = cluster or load_cluster_settings()
    return f"spark://{HOST}:{cluster.master_port}"


def webui_url(cluster: ClusterSettings | None = None) -> str:
    cluster = cluster or load_cluster_settings()
    return f"http://{HOST}:{cluster.webui_port}"


def master_state(cluster: ClusterSettings | None = None) -> dict[str, Any] | None:
    """The master's own JSON view (workers, running and completed applications), or None when
    it does not answer."""
    try:
        with urllib.request.urlopen(f"{webui_url(cluster)}/json/", timeout=2) as resp:
            state = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def alive_worker_ports(cluster: ClusterSettings | None = None) -> set[int]:
    """Ports of the workers the master sees as ALIVE (a stopped one stays listed as DEAD)."""
    state = master_state(cluster) or {}
    return {int(w["port"]) for w in state.get("workers", []) if w.get("state") == "ALIVE"}


def _env(settings: Settings, cluster: ClusterSettings) -> dict[str, str]:
    return {
        "SPARK_HOME": str(spark_home()),
        # Every socket, the web UIs included, on loopback rather than the machine's interfaces.
        "SPARK_LOCAL_IP": HOST,
        # Executors start Python workers for UDFs: they must use the venv's interpreter and packages.
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_DAEMON_MEMORY": cluster.daemon_memory,
        # Keep spark-env.sh/spark-defaults.conf of some other installation out of ours.
        "SPARK_CONF_DIR": str(cluster_dir(settings) / "conf"),
    }


def _properties(path: Path, values: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {v}\n" for k, v in values.items()))
    return path


def master_spec(settings: Settings, cluster: ClusterSettings | None = None) -> ServiceSpec:
    cluster = cluster or load_cluster_settings()
    home = cluster_dir(settings)
    _, run, log = service_dirs(settings, MASTER)
    # The properties file lies in the state folder, so its path on the command line is the marker
    # that tells our master from an unrelated process that reused the pid.
    props = home / "conf" / "master.properties"

    def healthy() -> bool:
        return process.port_taken(HOST, cluster.master_port)

    return ServiceSpec(
        name=MASTER,
        argv=(
            str(spark_home() / "bin" / "spark-class"),
            "org.apache.spark.deploy.master.Master",
            "--host",
            HOST,
            "--port",
            str(cluster.master_port),
            "--webui-port",
            str(cluster.webui_port),
            "--properties-file",
            str(props),
        ),
        env=_env(settings, cluster),
        host=HOST,
        ports=(cluster.master_port, cluster.webui_port),
        run_dir=run,
        log_file=log,
        marker=str(props),
        healthy=healthy,
        start_timeout=cluster.start_timeout,
    )


def worker_spec(settings: Settings, index: int, cluster: ClusterSettings | None = None) -> ServiceSpec:
    cluster = cluster or load_cluster_settings()
    name = f"spark-worker-{index}"
    work = cluster_dir(settings) / f"worker-{index}"
    _, run, log = service_dirs(settings, name)
    port = cluster.worker_port + index

    def healthy() -> bool:
        # Running is not enough: the worker is useful once the master has accepted it.
        return port in alive_worker_ports(cluster)

    return ServiceSpec(
        name=name,
        argv=(
            str(spark_home() / "bin" / "spark-class"),
            "org.apache.spark.deploy.worker.Worker",
            master_url(settings, cluster),
            "--host",
            HOST,
            "--port",
            str(port),
            "--cores",
            str(cluster.worker_cores),
            "--memory",
            cluster.worker_memory,
            "--webui-port",
            "0",  # any free port: nobody needs the workers' pages, the master's links to them
            "--work-dir",
            str(work),
            "--properties-file",
            str(cluster_dir(settings) / "conf" / "worker.properties"),
        ),
        env=_env(settings, cluster),
        host=HOST,
        ports=(port,),
        run_dir=run,
        log_file=log,
        marker=str(work),
        healthy=healthy,
        start_timeout=cluster.start_timeout,
    )


def _worker_indices(settings: Settings) -> list[int]:
    """Workers that have a pid file (running or stale), whatever count they were started with."""
    _, run, _ = service_dirs(settings, MASTER)
    if not run.is_dir():
        return []
    return sorted(int(m.group(1)) for p in run.iterdir() if (m := WORKER_PID.fullmatch(p.name)))


def _write_conf(settings: Settings) -> None:
    conf = cluster_dir(settings) / "conf"
    _properties(conf / "master.properties", {"spark.master.rest.enabled": "false"})
    _properties(
        conf / "worker.properties",
        {
            # Each application leaves its executors' logs and fetched jars (~27 MB of Delta/s3a
            # jars) in the work folder; drop those of applications finished a day ago.
            "spark.worker.cleanup.enabled": "true",
            "spark.worker.cleanup.appDataTtl": str(24 * 3600),
        },
    )


def up(
    settings: Settings,
    workers: int = DEFAULT_WORKERS,
    report: Report = lambda _: None,
    cluster: ClusterSettings | None = None,
) -> list[str]:
    """Start the master and workers 0..workers-1 unless running (stopping any beyond that count),
    then wait until the master lists exactly that many ALIVE workers; returns what was started."""
    if workers < 1:
        raise ServiceError(f"a cluster needs at least one worker, not {workers}")
    cluster = cluster or load_cluster_settings()
    _write_conf(settings)
    started = []
    for extra in (i for i in _worker_indices(settings) if i >= workers):
        report(f"stopping spark-worker-{extra} (more than {workers} requested)")
        process.stop(worker_spec(settings, extra, cluster))
    report(f"starting {MASTER}")
    if process.start(master_spec(settings, cluster)):
        started.append(MASTER)
    report(f"starting {workers} worker(s)")
    # In parallel: each JVM takes seconds to start and register, and they do not depend on each other.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        specs = [worker_spec(settings, i, cluster) for i in range(workers)]
        started += [s.name for s, new in zip(specs, pool.map(process.start, specs), strict=True) if new]
    wanted = {cluster.worker_port + i for i in range(workers)}
    deadline = time.monotonic() + cluster.start_timeout
    while not wanted <= (alive := alive_worker_ports(cluster)):
        if time.monotonic() > deadline:
            raise ServiceError(
                f"the Spark master lists workers on ports {sorted(alive)}, expected {sorted(wanted)}, "
                f"after {cluster.start_timeout:.0f} s; see {webui_url(cluster)} and the logs in "
                f"{settings.state_dir / 'logs'}"
            )
        time.sleep(0.5)
    return started


def down(settings: Settings, cluster: ClusterSettings | None = None) -> list[str]:
    """Stop our workers (with their executors) and then the master; returns what was stopped."""
    cluster = cluster or load_cluster_settings()
    specs = [worker_spec(settings, i, cluster) for i in _worker_indices(settings)]
    specs.append(master_spec(settings, cluster))
    return [spec.name for spec in specs if process.stop(spec)]


def status(settings: Settings, cluster: ClusterSettings | None = None) -> list[ServiceStatus]:
    """The master and every worker with a pid file (the default two when none has)."""
    cluster = cluster or load_cluster_settings()
    indices = _worker_indices(settings) or list(range(DEFAULT_WORKERS))
    specs = [master_spec(settings, cluster), *(worker_spec(settings, i, cluster) for i in indices)]
    return [process.status(spec) for spec in specs]
