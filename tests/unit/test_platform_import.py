"""platform/ is declarative YAML: it must never shadow the standard library's `platform`."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_platform_from_repo_root_is_the_standard_library() -> None:
    code = "import platform, sysconfig; print(platform.__file__); print(platform.python_version())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    stdlib = Path(
        subprocess.run(
            [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    assert Path(out[0]).resolve().parent == stdlib.resolve()
    assert out[1] == ".".join(map(str, sys.version_info[:3]))


def test_platform_folder_holds_no_python() -> None:
    assert (REPO / "platform" / "topology.yaml").is_file()
    assert not list((REPO / "platform").rglob("*.py"))
