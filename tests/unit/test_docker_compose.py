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
from urllib.parse import urlsplit

import pytest
import yaml

from infra.provision import store_contents
from infra.services import _kafka_properties, _witness_properties, node_id, quorum_voters
from lakehouse.settings import Settings, load_settings
from lakehouse.topology import load_topology
from sharing_api.settings import load_api_settings

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


# The two provincial sites (docs/sites.md) and the letter their services are suffixed with.
SITES = {"henan-dc-a": "a", "henan-dc-b": "b"}
WITNESS = "kafka-witness"
# Kafka settings that name hosts, ports or folders: compared by structure, not by value.
KAFKA_PLACES = {"listeners", "advertised.listeners", "log.dirs", "controller.quorum.voters"}


def kafka_settings(service: dict[str, Any]) -> dict[str, str]:
    """A Kafka node's server.properties as the apache/kafka image writes them (KAFKA_FOO_BAR is
    foo.bar)."""
    return {
        name.removeprefix("KAFKA_").lower().replace("_", "."): value
        for name, value in environment_items(service)
        if name.startswith("KAFKA_")
    }


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def host_port(address: str) -> tuple[str, int]:
    """("kafka-a", 9092) of kafka-a:9092, PLAINTEXT://kafka-a:9092 or http://kafka-a:9092."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    assert parts.hostname and parts.port, address
    return parts.hostname, parts.port


def listener_ports(service: dict[str, Any]) -> dict[str, int]:
    """Listener name -> port of a Kafka node (PLAINTEXT://:9092,CONTROLLER://:9093)."""
    listeners = kafka_settings(service)["listeners"].split(",")
    return {name: int(rest.rsplit(":", 1)[1]) for name, _, rest in (s.partition("://") for s in listeners)}


def two_site_stack(tmp_path: Path) -> Settings:
    """The platform's own two-site development stack, whose Kafka settings the file must match."""
    return load_settings(
        state_dir=tmp_path,
        sites=",".join(SITES),
        s3_endpoint="http://127.0.0.1:19000",
        s3_console_port=19001,
        kafka_bootstrap="127.0.0.1:19092",
        kafka_controller_port=19093,
    )


def test_the_kafka_cluster_is_stretched_over_both_sites_with_a_witness(tmp_path: Path) -> None:
    """A broker+controller per site with its rack, a controller-only witness, one voters list and
    one cluster id, and the settings infra/services.py gives a two-site stack (RF 2 and the rest)."""
    services = load_compose()["services"]
    topology = load_topology(REPO_ROOT / "platform")
    assert tuple(SITES) == tuple(dc.id for dc in topology.province.data_centres)
    stack = two_site_stack(tmp_path)
    nodes = [f"kafka-{letter}" for letter in SITES.values()] + [WITNESS]
    assert all(node in services for node in nodes), f"Kafka nodes missing: {nodes}"
    for site, letter in SITES.items():
        mine = stack.for_site(site)
        rack = topology.data_centre(site).rack
        wanted = parse_properties(_kafka_properties(mine, tmp_path, rack))
        given = kafka_settings(services[f"kafka-{letter}"])
        assert set(given) == set(wanted), f"kafka-{letter}: {set(given) ^ set(wanted)}"
        for key in set(wanted) - KAFKA_PLACES:
            assert given[key] == wanted[key], f"kafka-{letter}: {key}={given[key]}, not {wanted[key]}"
        assert given["broker.rack"] == rack and given["node.id"] == str(node_id(mine))
        assert given["process.roles"] == "broker,controller"
        assert host_port(given["advertised.listeners"]) == (
            f"kafka-{letter}",
            listener_ports(services[f"kafka-{letter}"])["PLAINTEXT"],
        )
        # The replication the design rests on (docs/sites.md), stated once more in plain words.
        for key, value in {
            "default.replication.factor": "2",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "2",
            "transaction.state.log.replication.factor": "2",
            "transaction.state.log.min.isr": "1",
            "unclean.leader.election.enable": "false",
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "1000",
            "auto.create.topics.enable": "false",
        }.items():
            assert given[key] == value, f"kafka-{letter}: {key}={given[key]}, not {value}"
    witness = kafka_settings(services[WITNESS])
    wanted = parse_properties(_witness_properties(stack.for_site(next(iter(SITES))), tmp_path))
    assert set(witness) == set(wanted), f"{WITNESS}: {set(witness) ^ set(wanted)}"
    for key in set(wanted) - KAFKA_PLACES:
        assert witness[key] == wanted[key], f"{WITNESS}: {key}={witness[key]}, not {wanted[key]}"
    assert witness["process.roles"] == "controller" and "broker.rack" not in witness
    # Every node has the same voters and cluster id; voter n is node n at its controller port, in
    # the platform's order: each site's broker, then the witness.
    voters = {kafka_settings(services[n])["controller.quorum.voters"] for n in nodes}
    assert len(voters) == 1, f"the Kafka nodes disagree on the voters: {voters}"
    cluster_ids = {dict(environment_items(services[n])).get("CLUSTER_ID") for n in nodes}
    assert len(cluster_ids) == 1 and None not in cluster_ids, f"cluster ids: {cluster_ids}"
    listed = [voter.partition("@") for voter in voters.pop().split(",")]
    platform_ids = [v.partition("@")[0] for v in quorum_voters(stack.for_site(next(iter(SITES)))).split(",")]
    assert [voter_id for voter_id, _, _ in listed] == platform_ids
    assert [host_port(address)[0] for _, _, address in listed] == nodes
    for (voter_id, _, address), node in zip(listed, nodes, strict=True):
        assert kafka_settings(services[node])["node.id"] == voter_id
        assert listener_ports(services[node])["CONTROLLER"] == host_port(address)[1]


def test_each_site_runs_its_own_store_broker_replicator_and_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each site's components are told their site, their own store first (the other's as the
    peer), the cities' store, their own broker first; the APIs are listed for failover."""
    services = load_compose()["services"]
    topology = load_topology(REPO_ROOT / "platform")
    stores = {letter: f"minio-{letter}" for letter in SITES.values()}
    brokers = {
        letter: host_port(kafka_settings(services[f"kafka-{letter}"])["advertised.listeners"])
        for letter in SITES.values()
    }
    assert "minio-cities" in services
    store_volumes = [named_volumes(services[name]) for name in [*stores.values(), "minio-cities"]]
    assert all(len(v) == 1 for v in store_volumes) and len({v[0] for v in store_volumes}) == 3, (
        f"each object store needs a volume of its own: {store_volumes}"
    )
    api_urls = [f"http://sharing-api-{letter}:8040" for letter in SITES.values()]
    host_ports, api_volumes, instances = set(), set(), set()
    for site, letter in SITES.items():
        others = [other for other in SITES.values() if other != letter]
        for name in (f"provision-{letter}", f"replicator-{letter}", f"sharing-api-{letter}"):
            assert name in services, f"site {site} has no {name}"
            env = dict(environment_items(services[name]))
            assert env.get("MEDSHARE_SITE") == site, name
            assert env.get("MEDSHARE_SITES") == ",".join(SITES), name
            assert env.get("MEDSHARE_ENV") == "production", name
            # As the platform reads them: the plain (non-secret, non-interpolated) variables.
            for var in [v for v in os.environ if v.startswith("MEDSHARE_")]:
                monkeypatch.delenv(var)
            for var, value in env.items():
                if var.startswith("MEDSHARE_") and "${" not in value:
                    monkeypatch.setenv(var, value)
            seen = load_settings()
            assert seen.site_id == site, name
            assert host_port(seen.s3_endpoint)[0] == stores[letter], f"{name} must use its own store"
            assert [host_port(e)[0] for e in seen.peer_endpoints] == [stores[o] for o in others], name
            assert host_port(seen.cities_endpoint)[0] == "minio-cities", name
            bootstrap = [host_port(b) for b in seen.kafka_bootstrap.split(",")]
            assert bootstrap == [brokers[letter], *(brokers[o] for o in others)], (
                f"{name} must list its own broker first, then the other site's: {bootstrap}"
            )
            # What it provisions or writes is its own store (and, provisioning, the cities').
            assert {host_port(e)[0] for e in store_contents(seen, topology)} == {
                stores[letter],
                "minio-cities",
            }
            assert [u.rstrip("/") for u in load_api_settings().site_urls(seen)] == api_urls, name
            deps = set(depends_on_names(services[name]))
            assert {stores[letter], f"kafka-{letter}"} <= deps, f"{name} waits for {deps}"
            assert not {stores[o] for o in others} & deps, f"{name} waits for the other site: {deps}"
        api = services[f"sharing-api-{letter}"]
        env = dict(environment_items(api))
        # The URL the clients are given reaches this API: its host name and the port it listens on.
        assert host_port(api_urls[list(SITES).index(site)])[0] == f"sharing-api-{letter}"
        command = shlex.split(api["command"]) if isinstance(api["command"], str) else api["command"]
        assert command[command.index("--port") + 1] == "8040", command
        (published,) = api["ports"]
        host_side, _, container_side = str(published).rpartition(":")
        assert container_side == "8040", published
        host_ports.add(host_side)
        (volume,) = named_volumes(api)
        assert any(str(v).endswith(":" + env["MEDSHARE_API_STATE_DIR"]) for v in api["volumes"])
        api_volumes.add(volume)
        instances.add(env.get("MEDSHARE_API_INSTANCE"))
    assert len(host_ports) == len(SITES), f"the APIs need distinct host ports: {host_ports}"
    assert len(api_volumes) == len(SITES), f"each API needs its own state volume: {api_volumes}"
    assert len(instances) == len(SITES) and None not in instances, instances
    # The analysts' one Spark cluster reads site A's lakehouse by default.
    spark = dict(environment_items(services["spark-master"]))
    assert host_port(spark["MEDSHARE_S3_ENDPOINT"])[0] == stores["a"]


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
