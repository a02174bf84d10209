"""The sharing API as a real process for tests and the benchmark: `python -m medshare serve` on a
free loopback port, with its own state folder, grants file, tables root and audit table."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lakehouse.settings import Settings


def audit_uri(settings: Settings, name: str) -> str:
    """A fresh audit table for one test server, in the audit bucket (where the API's audit
    identity may append)."""
    import uuid

    from lakehouse.topology import load_topology

    bucket = load_topology(settings.platform_dir).province.buckets.audit
    return f"s3://{bucket}/{name}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServer:
    """One API process. `env` holds its MEDSHARE_API_* settings, shared with in-process helpers
    (issuing tokens writes the same SQLite file the server reads)."""

    settings: Settings
    workdir: Path
    tables_root: str
    audit_table: str
    port: int = field(default_factory=free_port)
    instance: str = "api-test"
    # Where its Delta Sharing copies go (default: its own prefix of the shared bucket). They are
    # kept only when extra_env sets MEDSHARE_API_SHARE_SYNC_SECONDS: building them costs CPU.
    share_root: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    # Its own operations topic (credentials, consents… changes), so that test servers do not apply
    # each other's; made when the server starts. extra_env may name a shared one instead.
    operations_topic: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}.operations")
    process: subprocess.Popen[bytes] | None = None
    _operator: str | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.share_root:
            from lakehouse.topology import load_topology

            shared = load_topology(self.settings.platform_dir).province.buckets.shared
            self.share_root = f"s3://{shared}/{self.tables_root.rsplit('/', 1)[-1]}-{self.instance}"
        grants = self.workdir / "grants.yaml"
        if not grants.exists():
            shutil.copy(self.settings.platform_dir / "grants.yaml", grants)

    @property
    def grants_file(self) -> Path:
        return self.workdir / "grants.yaml"

    @property
    def log(self) -> Path:
        return self.workdir / "api.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "MEDSHARE_API_PORT": str(self.port),
            "MEDSHARE_API_STATE_DIR": str(self.workdir / "state"),
            "MEDSHARE_API_GRANTS_FILE": str(self.grants_file),
            "MEDSHARE_API_TABLES_ROOT": self.tables_root,
            "MEDSHARE_API_AUDIT_TABLE": self.audit_table,
            "MEDSHARE_API_INSTANCE": self.instance,
            "MEDSHARE_API_REFRESH_SECONDS": "0.5",
            "MEDSHARE_API_AUDIT_FLUSH_SECONDS": "0.5",
            "MEDSHARE_API_SHARE_ROOT": self.share_root,
            "MEDSHARE_API_SHARE_SYNC_SECONDS": "0",
            # Tests send bad tokens on purpose from one address; the limit has a test of its own.
            "MEDSHARE_API_LOGIN_FAILURE_BURST": "1000000",
            "MEDSHARE_API_OPERATIONS_TOPIC": self.operations_topic,
            **self.extra_env,
        }

    def api_settings(self):  # type: ignore[no-untyped-def]
        from sharing_api.settings import load_api_settings

        return load_api_settings(
            port=self.port,
            state_dir=self.workdir / "state",
            grants_file=self.grants_file,
            tables_root=self.tables_root,
            audit_table=self.audit_table,
            instance=self.instance,
        )

    def _make_operations_topic(self) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        from lakehouse import kafka
        from lakehouse.topology import load_topology

        topic = self.env["MEDSHARE_API_OPERATIONS_TOPIC"]
        replicas = kafka.replicas(self.settings, load_topology(self.settings.platform_dir))
        client = kafka.admin(self.settings)
        try:
            client.create_topics([NewTopic(topic, 1, replicas, topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            pass
        finally:
            client.close()

    def start(self, *, timeout: float = 120.0) -> None:
        self._make_operations_topic()
        # As deployed: the API never holds the object store's root secret.
        env = {k: v for k, v in os.environ.items() if k != "MEDSHARE_S3_ROOT_PASSWORD"} | self.env
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "medshare", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the API exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                health = httpx.get(f"{self.url}/healthz", timeout=2.0).json()
                if health["ready"]:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API was not ready in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def wait_for_copies(self, *, passes: int = 1, timeout: float = 300.0) -> None:
        """Until the Delta Sharing sync has finished `passes` passes since start, without error."""
        deadline = time.monotonic() + timeout
        health: dict[str, object] = {}
        while time.monotonic() < deadline:
            health = self.health()
            if int(str(health["sharedCopiesSynced"])) >= passes and not health["sharedCopiesError"]:
                return
            time.sleep(0.3)
        raise RuntimeError(f"shared copies not synced in {timeout:.0f} s: {health}")

    def health(self) -> dict[str, object]:
        """The instance's detailed health (operators' /v1/admin/health)."""
        if self._operator is None:
            self._operator = self.issue("health-check", operator=True)
        with self.client(self._operator) as c:
            body: dict[str, object] = c.get("/v1/admin/health").json()
        return body

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def kill(self) -> None:
        """kill -9: no chance to flush or close anything."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def issue(self, subject: str, *, operator: bool = False, days: float = 1.0) -> str:
        """A fresh credential's token, issued straight into the server's credential store."""
        from lakehouse.topology import load_topology
        from sharing_api.db import Database
        from sharing_api.identities import Identities

        store = Identities(
            Database(self.api_settings().db_path(self.settings)), load_topology(self.settings.platform_dir)
        )
        return store.issue("operator" if operator else "hospital", subject, days=days).token

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)
