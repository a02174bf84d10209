"""Obtaining the services, pinned, into the cache outside the clone; never rebuilt when present.

- MinIO: `go install` from the Go module proxy at a pinned pseudo-version.
- Kafka: the broker's jars from Maven Central (infra/maven/kafka/pom.xml).
- Spark: Delta Lake and s3a jars from Maven Central (infra/maven/spark/pom.xml), minus every jar
  pyspark already ships (a second hadoop/jackson/netty copy on the classpath breaks Spark).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from infra.process import ServiceError
from lakehouse.settings import Settings

# The newest MinIO source the Go module proxy serves (the community edition is source-only).
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"

INFRA_DIR = Path(__file__).resolve().parent
STAMP = ".complete"

Report = Callable[[str], None]


def minio_binary(settings: Settings) -> Path:
    return settings.bin_dir / f"minio-{MINIO_VERSION}"


def _run(argv: list[str], *, what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    if shutil.which(argv[0]) is None:
        raise ServiceError(f"{what}: `{argv[0]}` is not installed on this machine")
    proc = subprocess.run(
        argv,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise ServiceError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def ensure_minio(settings: Settings, report: Report) -> Path:
    target = minio_binary(settings)
    if target.exists():
        return target
    report(f"building MinIO {MINIO_VERSION} with go install (a few minutes, once)")
    settings.bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.bin_dir) as tmp:
        _run(
            ["go", "install", f"{MINIO_MODULE}@{MINIO_VERSION}"],
            what="building MinIO",
            env={"GOBIN": tmp, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"},
            cwd=Path(tmp),
        )
        # Rename within one folder: a half-built binary never appears under the final name.
        os.replace(Path(tmp) / "minio", target)
    return target


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:16]


def _artifact_name(jar: str) -> str:
    """`hadoop-client-api-3.5.0.jar` → `hadoop-client-api` (the part before the version)."""
    match = re.match(r"^(.+?)-\d[^-]*(?:-.*)?\.jar$", jar)
    return match.group(1) if match else jar.removesuffix(".jar")


def pyspark_jar_names() -> set[str]:
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    return {_artifact_name(j.name) for j in jars.glob("*.jar")}


def _ensure_jars(target: Path, pom: Path, report: Report, *, what: str, skip: set[str] | None = None) -> Path:
    stamp = target / STAMP
    digest = _pom_digest(pom)
    if stamp.exists() and stamp.read_text().strip() == digest:
        return target
    report(f"resolving {what} jars with Maven (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / "jars"
        _run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={out}",
                "-DincludeScope=runtime",
            ],
            what=f"resolving {what} jars",
        )
        for jar in out.glob("*.jar"):
            if skip and _artifact_name(jar.name) in skip:
                jar.unlink()
        (out / STAMP).write_text(digest + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return target


def ensure_kafka_jars(settings: Settings, report: Report) -> Path:
    return _ensure_jars(
        settings.kafka_jars_dir,
        INFRA_DIR / "maven" / "kafka" / "pom.xml",
        report,
        what="Kafka broker",
    )


def ensure_spark_jars(settings: Settings, report: Report) -> Path:
    return _ensure_jars(
        settings.spark_jars_dir,
        INFRA_DIR / "maven" / "spark" / "pom.xml",
        report,
        what="Spark Delta/s3a",
        skip=pyspark_jar_names(),
    )


def ensure_all(settings: Settings, report: Report) -> None:
    """Everything the stack and Spark need; a no-op when all is cached."""
    ensure_minio(settings, report)
    ensure_kafka_jars(settings, report)
    ensure_spark_jars(settings, report)
