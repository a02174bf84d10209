"""The test run's own stack: imported by tests/conftest.py before anything reads the settings, it
points every MEDSHARE_* endpoint and the state folder at free loopback ports and a temporary
folder. What the user's environment said is kept in `USER_ENV` (tests/utils/user_stack.py)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

# The user's own MEDSHARE_* variables, before this module replaces the stack's.
USER_ENV = {k: v for k, v in os.environ.items() if k.startswith("MEDSHARE_")}
_STACK_PREFIX = "medshare-test-stack-"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _remove_abandoned_stacks(root: Path) -> None:
    """Folders of earlier runs that were killed before they could delete their own."""
    for folder in root.glob(f"{_STACK_PREFIX}*"):
        try:
            owner = int((folder / "owner.pid").read_text())
            os.kill(owner, 0)
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)


def _private_stack_environment() -> Path:
    root = Path(tempfile.gettempdir())
    _remove_abandoned_stacks(root)
    state = Path(tempfile.mkdtemp(prefix=_STACK_PREFIX, dir=root))
    (state / "owner.pid").write_text(str(os.getpid()))
    s3, console, broker, controller, api = _free_ports(5)
    os.environ.update(
        {
            "MEDSHARE_STATE_DIR": str(state),
            "MEDSHARE_S3_ENDPOINT": f"http://127.0.0.1:{s3}",
            "MEDSHARE_S3_CONSOLE_PORT": str(console),
            "MEDSHARE_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker}",
            "MEDSHARE_KAFKA_CONTROLLER_PORT": str(controller),
            "MEDSHARE_API_PORT": str(api),
            # One provincial site: the two-site layout has a stack of its own (tests/utils/sites.py).
            "MEDSHARE_SITES": "henan-dc-a",
        }
    )
    return state


TEST_STATE_DIR = _private_stack_environment()
