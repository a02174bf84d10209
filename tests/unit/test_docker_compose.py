"""docker-compose.yml and infra/Dockerfile describe a deployment that cannot run here (no Docker
engine); these checks keep them self-consistent: builds point at real files, every COPY source
exists, dependencies and volumes are declared, and no secret has a working default."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "infra" / "Dockerfile"

# `${VAR:?message}`: compose refuses to start while VAR is unset or empty.
REQUIRED_VARIABLE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*:\?[^}]*\}$")
# Any interpolation with a default (`${VAR:-x}`, `${VAR-x}`) or an alternative (`${VAR:+x}`).
DEFAULTED_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?[-+]")
SECRET_WORDS = ("PASSWORD", "SECRET")
# Every variable the compose file requires, with a value good enough for `config`.
DUMMY_REQUIRED_ENV = {
    "MEDSHARE_S3_ROOT_USER": "compose-check-user",
    "MEDSHARE_S3_ROOT_PASSWORD": "compose-check-password",
    "MEDSHARE_PROVINCE_KEY": "compose-check-province-key",
    **{
        f"MEDSHARE_SITE_SECRET_{site}": f"compose-check-{site.lower()}"
        for site in ("PROVINCE", "API_READER", "AUDIT", "SHARING", "SHARING_SIGNER", "ANALYTICS")
    },
}


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    assert isinstance(data.get("services"), dict) and data["services"], "no services defined"
    return data


def environment_items(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(name, value) of a service's environment, in either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        for name, value in env.items():
            yield str(name), "" if value is None else str(value)
    else:
        for item in env:
            name, _, value = str(item).partition("=")
            yield name, value


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        yield keyword.upper(), args.strip()
        logical = ""
    if logical:
        keyword, _, args = logical.partition(" ")
        yield keyword.upper(), args.strip()


def copy_sources(dockerfile_text: str) -> list[str]:
    """Sources of every COPY that reads the build context (not `COPY --from=<stage>`)."""
    sources: list[str] = []
    for keyword, args in dockerfile_instructions(dockerfile_text):
        if keyword != "COPY":
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        assert len(paths) >= 2, f"COPY without a source and a destination: {args}"
        sources.extend(paths[:-1])
    return sources


def build_of(service: dict[str, Any]) -> tuple[Path, Path] | None:
    """(context folder, Dockerfile) of a service that builds, as paths in the repository."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    context_dir = (COMPOSE_FILE.parent / context).resolve()
    return context_dir, (context_dir / dockerfile).resolve()


def depends_on_names(service: dict[str, Any]) -> list[str]:
    deps = service.get("depends_on") or []
    return list(deps) if isinstance(deps, (list, dict)) else [deps]


def named_volumes(service: dict[str, Any]) -> list[str]:
    """Named volumes a service mounts (bind mounts and anonymous volumes are not named)."""
    names = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume" and volume.get("source"):
                names.append(volume["source"])
            continue
        source, sep, _ = str(volume).partition(":")
        if sep and not source.startswith(("/", ".", "~", "$")):
            names.append(source)
    return names


# --------------------------------------------------------------------------------------------


def test_every_service_has_an_image_or_a_build() -> None:
    services = load_compose()["services"]
    missing = [name for name, svc in services.items() if not (svc.get("image") or svc.get("build"))]
    assert not missing, f"services with neither image nor build: {missing}"


def test_build_contexts_and_dockerfiles_exist() -> None:
    for name, service in load_compose()["services"].items():
        build = build_of(service)
        if build is None:
            continue
        context_dir, dockerfile = build
        assert context_dir.is_dir(), f"{name}: build context {context_dir} does not exist"
        assert context_dir == REPO_ROOT or REPO_ROOT in context_dir.parents, (
            f"{name}: build context {context_dir} is outside the repository"
        )
        assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"


def test_build_targets_are_stages_of_the_dockerfile() -> None:
    for name, service in load_compose()["services"].items():
        build = service.get("build")
        if not isinstance(build, dict) or "target" not in build:
            continue
        built = build_of(service)
        assert built is not None
        dockerfile = built[1]
        if not dockerfile.is_file():
            continue  # reported by test_build_contexts_and_dockerfiles_exist
        stages = {
            args.split()[-1].lower()
            for keyword, args in dockerfile_instructions(dockerfile.read_text())
            if keyword == "FROM" and " as " in f" {args.lower()} "
        }
        assert build["target"].lower() in stages, (
            f"{name}: target {build['target']!r} is not a stage of {dockerfile} ({sorted(stages)})"
        )


def test_every_copy_source_in_the_dockerfile_exists() -> None:
    sources = copy_sources(DOCKERFILE.read_text())
    assert sources, "infra/Dockerfile copies nothing from the build context"
    # The compose file builds infra/Dockerfile with the repository root as its context.
    missing = [s for s in sources if not (REPO_ROOT / s).exists()]
    assert not missing, f"COPY sources missing from the repository: {missing}"


def test_copied_packages_are_importable_packages() -> None:
    """Every package the image installs has its __init__.py (setuptools skips it otherwise)."""
    for source in copy_sources(DOCKERFILE.read_text()):
        path = REPO_ROOT / source
        if path.is_dir() and any(path.glob("*.py")):
            assert (path / "__init__.py").is_file(), f"{source} has Python files but no __init__.py"
    for package in ("lakehouse", "ingestion", "sharing_api", "medshare", "infra"):
        assert (REPO_ROOT / package / "__init__.py").is_file(), f"{package}/__init__.py is missing"


def test_depends_on_refers_to_defined_services() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        for dep in depends_on_names(service):
            assert dep in services, f"{name} depends on undefined service {dep!r}"
            assert dep != name, f"{name} depends on itself"


def test_service_healthy_conditions_have_a_healthcheck() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        if not isinstance(deps, dict):
            continue
        for dep, spec in deps.items():
            if (spec or {}).get("condition") == "service_healthy":
                assert services.get(dep, {}).get("healthcheck"), (
                    f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                )


def test_named_volumes_are_declared() -> None:
    data = load_compose()
    declared = set(data.get("volumes") or {})
    for name, service in data["services"].items():
        for volume in named_volumes(service):
            assert volume in declared, f"{name} mounts volume {volume!r}, not declared in volumes:"


def test_no_secret_has_a_default() -> None:
    services = load_compose()["services"]
    checked = 0
    for name, service in services.items():
        for var, value in environment_items(service):
            if not any(word in f"{var} {value}".upper() for word in SECRET_WORDS):
                continue
            checked += 1
            assert REQUIRED_VARIABLE.match(value.strip()), (
                f"{name}: {var} must be a required variable (${{VAR:?message}}), not {value!r}"
            )
    assert checked, "no password is passed to any service: the check checked nothing"
    # Nor anywhere else in the file, e.g. a defaulted secret in a command.
    for line in COMPOSE_FILE.read_text().splitlines():
        if any(word in line.upper() for word in SECRET_WORDS) and DEFAULTED_VARIABLE.search(line):
            raise AssertionError(f"a secret with a default value: {line.strip()}")


def test_components_run_without_the_root_secret() -> None:
    """Only MinIO and the one-shot provisioning hold the store's root password; each component
    gets the secrets of its own identities and nothing else."""
    services = load_compose()["services"]
    for name, service in services.items():
        names = {var for var, _ in environment_items(service)}
        if not name.startswith(("minio", "provision")):
            assert not {"MEDSHARE_S3_ROOT_PASSWORD", "MINIO_ROOT_PASSWORD"} & names, name
    apis = [name for name in services if name.startswith("sharing-api")]
    replicators = [name for name in services if name.startswith("replicator")]
    assert apis and replicators
    for name in apis:
        api = {var for var, _ in environment_items(services[name])}
        assert {v for v in api if v.startswith("MEDSHARE_SITE_SECRET_")} == {
            "MEDSHARE_SITE_SECRET_API_READER",
            "MEDSHARE_SITE_SECRET_AUDIT",
            "MEDSHARE_SITE_SECRET_SHARING",
            "MEDSHARE_SITE_SECRET_SHARING_SIGNER",
        }, name
    for name in replicators:
        replicator = {var for var, _ in environment_items(services[name])}
        assert {v for v in replicator if "SECRET" in v or "PASSWORD" in v or "KEY" in v} == {
            "MEDSHARE_SITE_SECRET_PROVINCE"
        }, name


def test_required_variables_of_the_compose_file_are_known() -> None:
    """DUMMY_REQUIRED_ENV (used for `docker compose config`) lists every required variable."""
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", COMPOSE_FILE.read_text()))
    assert required == set(DUMMY_REQUIRED_ENV)


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """The real compose parser, when the docker CLI and its compose plugin are installed.

    `docker compose config` needs no engine: it only reads, interpolates and validates.
    """
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MEDSHARE_", "COMPOSE_"))
    } | DUMMY_REQUIRED_ENV
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, env=env, check=False
    )
    if version.returncode != 0:
        reason = (version.stderr or version.stdout).strip().splitlines()[:1]
        pytest.skip(f"the docker compose plugin is not installed: {' '.join(reason)}")
    compose = [docker, "compose", "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE)]
    proc = subprocess.run(
        [*compose, "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, f"docker compose config failed:\n{proc.stdout}{proc.stderr}"
    # And it refuses to interpolate without the secret.
    del env["MEDSHARE_S3_ROOT_PASSWORD"]
    proc = subprocess.run(
        [*compose, "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0 and "MEDSHARE_S3_ROOT_PASSWORD" in proc.stderr, proc.stderr
