"""The recipient side of Delta Sharing: the official client in its own environment.

`delta-sharing` (PyPI) pins pyarrow, fsspec and requests below what the platform uses, so it lives
in `<cache>/recipient-venv` (made by infra/bootstrap.sh), as it would on a hospital's own machine;
`read_share.py` is run there through a subprocess.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from lakehouse.errors import ConfigError, MedshareError
from lakehouse.settings import Settings

SCRIPT = Path(__file__).with_name("read_share.py")


def recipient_python(settings: Settings) -> Path:
    python = settings.cache_dir / "recipient-venv" / "bin" / "python"
    if not python.exists():
        raise ConfigError(
            f"no recipient environment at {python.parent.parent}: run `make setup` (infra/bootstrap.sh)"
        )
    return python


def read_share(settings: Settings, profile: Path, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run one read_share.py command as a recipient; its JSON answer, or MedshareError with its stderr."""
    command = [str(recipient_python(settings)), str(SCRIPT), str(profile), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise MedshareError(
            f"the Delta Sharing client failed ({' '.join(args[:2])}, exit {done.returncode}):\n"
            f"{done.stderr[-3000:]}{done.stdout[-500:]}"
        )
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer
