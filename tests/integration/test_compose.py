"""docker-compose.yml and deploy/Dockerfile, checked without a Docker engine (issue 3, item 6).

No engine runs where the tests run, so nothing here builds or starts a container. Instead the
files are held to what the engine would hold them to, and to what cemesh needs of them:

- the compose file validates against the Compose Specification's JSON schema (vendored in
  tests/data/compose-spec.json, see tests/data/README.md), before and after interpolation;
- every ``CEMESH_*`` variable it or the Dockerfile sets is a field of
  ``broker.core.config.Settings`` (Settings ignores unknown environment names silently, so the names
  are checked explicitly) and the values, with their ``${VAR:-default}`` defaults, build a valid
  Settings;
- each channel kind that CEMESH_DEFAULT_CHANNEL can name has its bus's connection setting
  pointing at a service of the stack, so switching that one variable is enough;
- ports are published on 127.0.0.1 only, every service has a healthcheck, stateful services
  keep their data in declared named volumes, cemesh waits for every backend to be healthy;
- the Dockerfile copies only paths that exist and that .dockerignore lets through, installs
  extras that pyproject.toml declares, runs as a non-root user, and its CMD is the ``cemesh``
  console script with arguments that ``cemesh serve`` accepts.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft7Validator
from sqlalchemy.engine import make_url

from broker.controlplane.eventing.types import bus_of_channel
from broker.core.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SCHEMA_FILE = REPO / "tests" / "data" / "compose-spec.json"

CEMESH = "cemesh"  # the compose service built from deploy/Dockerfile
STATEFUL = ("postgres", "kafka", "nats", "redis")  # each keeps its data in a named volume
ENV_PREFIX = "CEMESH_"

# How cemesh reaches each bus, given its Settings and its container environment. A bus missing
# here (a new adapter) fails test_every_channel_kind_is_one_variable_away until it is wired in.
BUS_ADDRESS: dict[str, Callable[[Settings, Mapping[str, str]], str] | None] = {
    "memory": None,
    "kafka": lambda s, env: s.kafka_bootstrap_servers,
    "nats": lambda s, env: s.nats_url,
    "redis": lambda s, env: s.redis_url,
    # The Pub/Sub client library reads the emulator's address itself.
    "pubsub": lambda s, env: env["PUBSUB_EMULATOR_HOST"],
}


# --- the files, parsed ----------------------------------------------------------------------


_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` with Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}`` ... resolved from ``env``.

    Only the forms the Compose Specification defines; an unresolvable ``${VAR:?message}``
    raises, as ``docker compose`` refuses to start then.
    """
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset_or_empty = not current
        missing = unset_or_empty if op and op.startswith(":") else current is None
        if op in (":-", "-"):
            return arg if missing else str(current)
        if op in (":?", "?"):
            if missing:
                raise ValueError(f"${{{name}}} must be set: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if missing else arg
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Every variable the Dockerfile's ENV instructions set (``k=v ...`` and ``k v`` forms)."""
    env: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword != "ENV":
            continue
        tokens = shlex.split(arguments)
        if "=" in tokens[0]:
            for token in tokens:
                name, _, value = token.partition("=")
                env[name] = value
        else:
            env[tokens[0]] = " ".join(tokens[1:])
    return env


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore ``patterns`` keep ``path`` (relative, POSIX) out of the context.

    Docker's rules: the last matching pattern wins, ``!`` re-includes, a pattern matching a
    directory matches everything below it, ``*`` and ``?`` stay within one path segment and
    ``**`` spans any number of them.
    """
    candidates = [path, *(str(parent) for parent in PurePosixPath(path).parents if parent.parts)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _dockerignore_regex(pattern[1:] if negated else pattern)
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip().lstrip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def read_dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def published_ports(service: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """(host IP, container port) of each port the service publishes; IP None when unbound."""
    result: list[tuple[str | None, str]] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            result.append((entry.get("host_ip"), str(entry["target"])))
            continue
        text = str(entry).split("/")[0]  # drop /tcp, /udp
        if text.startswith("["):  # [::1]:8080:8080
            host_ip, _, rest = text[1:].partition("]:")
            result.append((host_ip, rest.rsplit(":", 1)[-1]))
            continue
        parts = text.split(":")
        result.append((parts[0] if len(parts) == 3 else None, parts[-1]))
    return result


def host_and_port(address: str) -> tuple[str, int | None]:
    """Host and port of a URL (``nats://nats:4222``) or a bare ``host:port``."""
    split = urlsplit(address if "://" in address else f"//{address}")
    assert split.hostname, f"no host in {address!r}"
    return split.hostname, split.port


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    """The compose file as the engine would run it with nothing set in the environment."""
    interpolated: dict[str, Any] = interpolate(raw_compose, {})
    return interpolated


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def cemesh_environment(
    compose: Mapping[str, Any], dockerfile: list[tuple[str, str]]
) -> dict[str, str]:
    """What cemesh's process sees: the image's ENV overlaid by the service's environment."""
    environment = compose["services"][CEMESH].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {**dockerfile_env(dockerfile), **{k: str(v) for k, v in environment.items()}}


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings read from ``env`` exactly as the container's process reads them."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name == "PUBSUB_EMULATOR_HOST":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# --- the compose file against the Compose Specification -------------------------------------


def test_vendored_compose_schema_is_a_draft7_json_schema(schema: dict[str, Any]) -> None:
    """tests/data/compose-spec.json is JSON and a valid JSON Schema (draft-07, as it declares)."""
    assert "draft-07" in schema["$schema"]
    Draft7Validator.check_schema(schema)
    assert {"services", "volumes", "networks"} <= set(schema["properties"])


@pytest.mark.parametrize("stage", ["as written", "interpolated"])
def test_compose_file_validates_against_the_compose_specification(
    stage: str, raw_compose: dict[str, Any], compose: dict[str, Any], schema: dict[str, Any]
) -> None:
    """docker-compose.yml is a valid Compose file, as written and after ${VAR:-default}."""
    document = raw_compose if stage == "as written" else compose
    errors = sorted(Draft7Validator(schema).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors
    )


def test_the_schema_check_catches_a_broken_compose_file(
    compose: dict[str, Any], schema: dict[str, Any]
) -> None:
    """The validation above has teeth: a misspelt key and a bad depends_on condition fail."""
    broken = json.loads(json.dumps(compose))
    broken["services"][CEMESH]["healthchek"] = {}
    broken["services"][CEMESH]["depends_on"]["postgres"]["condition"] = "healthy"
    messages = [e.message for e in Draft7Validator(schema).iter_errors(broken)]
    assert any("healthchek" in m for m in messages), messages
    assert len(messages) >= 2, messages


# --- cemesh's settings ----------------------------------------------------------------------


def test_every_cemesh_variable_names_a_real_setting(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    """Each CEMESH_* in the compose file and the Dockerfile maps to a Settings field."""
    env = cemesh_environment(compose, dockerfile)
    names = [name for name in env if name.startswith(ENV_PREFIX)]
    assert names, "cemesh gets no CEMESH_* settings"
    unknown = [n for n in names if n[len(ENV_PREFIX) :].lower() not in Settings.model_fields]
    assert not unknown, f"not cemesh settings (see broker/core/config.py): {unknown}"
    # Settings would silently ignore a variable in another case; keep them as documented.
    assert all(name == name.upper() for name in names)


def test_cemesh_variables_build_valid_settings_with_their_defaults(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interpolated values pass Settings' validation and arrive unchanged."""
    env = cemesh_environment(compose, dockerfile)
    settings = settings_from(env, monkeypatch)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            field = name[len(ENV_PREFIX) :].lower()
            actual = getattr(settings, field)
            # List settings (CEMESH_ALLOWED_HOSTS) are given comma-separated.
            shown = ",".join(actual) if isinstance(actual, list) else str(actual)
            assert shown == value, field
    # Explicit arguments take the same names (extra="forbid" rejects any other).
    fields: dict[str, Any] = {
        n[len(ENV_PREFIX) :].lower(): v for n, v in env.items() if n.startswith(ENV_PREFIX)
    }
    monkeypatch.delenv("CEMESH_CONFIG", raising=False)
    Settings(**fields)


def test_stack_defaults_to_postgresql_and_a_durable_bus(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default cemesh stores in the stack's PostgreSQL and puts Brokers on Kafka."""
    settings = settings_from(cemesh_environment(compose, dockerfile), monkeypatch)
    assert settings.default_channel == "KafkaChannel"
    assert bus_of_channel(settings.default_channel) == "kafka"

    url = make_url(settings.database_url)
    postgres = compose["services"]["postgres"]["environment"]
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.database == postgres["POSTGRES_DB"]


def test_the_postgres_password_is_set_in_one_place(raw_compose: dict[str, Any]) -> None:
    """Overriding POSTGRES_PASSWORD changes the server's password and cemesh's URL together."""
    env = {"POSTGRES_PASSWORD": "s3cret"}
    compose = interpolate(raw_compose, env)
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    url = make_url(compose["services"][CEMESH]["environment"]["CEMESH_DATABASE_URL"])
    assert url.password == "s3cret"


@pytest.mark.parametrize("kind", get_args(Settings.model_fields["default_channel"].annotation))
def test_every_channel_kind_is_one_variable_away(
    kind: str,
    raw_compose: dict[str, Any],
    dockerfile: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CEMESH_DEFAULT_CHANNEL=<kind> alone puts cemesh on that bus, reachable in the stack."""
    compose = interpolate(raw_compose, {"CEMESH_DEFAULT_CHANNEL": kind})
    env = cemesh_environment(compose, dockerfile)
    settings = settings_from(env, monkeypatch)
    assert settings.default_channel == kind
    bus = bus_of_channel(settings.default_channel)
    assert bus in BUS_ADDRESS, f"bus {bus!r} has no connection setting in this test's table"
    address_of = BUS_ADDRESS[bus]
    if address_of is None:
        return  # in-process, nothing to reach
    host, port = host_and_port(address_of(settings, env))
    services = compose["services"]
    assert host in services, f"{bus} address {host!r} is not a service of the stack"
    assert port is not None, f"{bus} address names no port"
    condition = services[CEMESH]["depends_on"][host]["condition"]
    assert condition == "service_healthy"


def test_kafka_listens_where_cemesh_connects(compose: dict[str, Any]) -> None:
    """KRaft single node: cemesh's bootstrap address is an advertised listener of the broker."""
    kafka = compose["services"]["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node_id = str(kafka["KAFKA_NODE_ID"])
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node_id}@kafka:")
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    bootstrap = compose["services"][CEMESH]["environment"]["CEMESH_KAFKA_BOOTSTRAP_SERVERS"]
    assert any(listener.endswith(f"://{bootstrap}") for listener in advertised)
    # The listener for clients on the host is the one published, on loopback.
    host_listeners = [lst for lst in advertised if "://127.0.0.1:" in lst]
    published = {port for _, port in published_ports(compose["services"]["kafka"])}
    assert host_listeners
    assert {lst.rsplit(":", 1)[1] for lst in host_listeners} <= published


# --- the stack's shape ----------------------------------------------------------------------


def test_published_ports_bind_loopback_only(compose: dict[str, Any]) -> None:
    """Nothing in the stack is reachable from other machines: every port is on 127.0.0.1."""
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name
        for host_ip, port in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on {host_ip or 'all'}"
    assert published_ports(compose["services"][CEMESH]) == [("127.0.0.1", "8080")]


def test_every_service_has_a_healthcheck(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    """Each service has an enabled healthcheck (its own, or its Dockerfile's HEALTHCHECK)."""
    built_with_healthcheck = any(keyword == "HEALTHCHECK" for keyword, _ in dockerfile)
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        if check is None:
            assert "build" in service and built_with_healthcheck, f"{name} has no healthcheck"
            continue
        assert not check.get("disable"), name
        test = check["test"]
        assert test and (isinstance(test, str) or test[0] in ("CMD", "CMD-SHELL")), name


def test_stateful_services_keep_data_in_declared_named_volumes(compose: dict[str, Any]) -> None:
    """PostgreSQL, Kafka, NATS and Redis data survive `docker compose down` (named volumes)."""
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        named = []
        for mount in service.get("volumes", []):
            source = mount.get("source") if isinstance(mount, dict) else mount.split(":")[0]
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"
                named.append(source)
        if name in STATEFUL:
            assert named, f"{name} keeps its data in no named volume"


def test_stateful_services_are_configured_to_persist(compose: dict[str, Any]) -> None:
    """Redis writes its append-only file, NATS JetStream stores under its volume."""
    services = compose["services"]
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    nats_command = services["nats"]["command"]
    assert "-js" in nats_command
    store_dir = nats_command[nats_command.index("-sd") + 1]
    assert any(mount.endswith(f":{store_dir}") for mount in services["nats"]["volumes"])
    pubsub_command = " ".join(services["pubsub"]["command"])
    assert "emulators pubsub start" in pubsub_command
    assert "--host-port=0.0.0.0:8085" in pubsub_command


def test_cemesh_starts_after_every_backend_is_healthy(compose: dict[str, Any]) -> None:
    """cemesh depends_on each other service with condition service_healthy."""
    services = compose["services"]
    depends_on = services[CEMESH]["depends_on"]
    assert set(depends_on) == set(services) - {CEMESH}
    for name, rule in depends_on.items():
        assert rule["condition"] == "service_healthy", name


def test_cemesh_is_built_by_deploy_dockerfile(compose: dict[str, Any]) -> None:
    """The cemesh service builds deploy/Dockerfile with the repository root as context."""
    build = compose["services"][CEMESH]["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


# --- the Dockerfile -------------------------------------------------------------------------


def test_dockerfile_starts_from_python_311_slim_and_runs_as_non_root(
    dockerfile: list[tuple[str, str]],
) -> None:
    """python:3.11-slim base; the last USER before CMD is neither root nor uid 0."""
    froms = [arguments for keyword, arguments in dockerfile if keyword == "FROM"]
    assert froms == ["python:3.11-slim"]
    keywords = [keyword for keyword, _ in dockerfile]
    users = [arguments for keyword, arguments in dockerfile if keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert max(i for i, k in enumerate(keywords) if k == "USER") < keywords.index("CMD")


def test_dockerfile_copies_only_what_exists_and_the_build_context_holds(
    dockerfile: list[tuple[str, str]], pyproject: dict[str, Any]
) -> None:
    """COPY sources exist, .dockerignore lets them through, and they cover the distribution."""
    ignore = read_dockerignore()
    sources: set[str] = set()
    for keyword, arguments in dockerfile:
        if keyword not in ("COPY", "ADD"):
            continue
        tokens = shlex.split(arguments)
        assert not any(t.startswith("--from") for t in tokens), "multi-stage COPY not expected"
        paths = [t for t in tokens if not t.startswith("--")][:-1]
        for source in paths:
            path = REPO / source
            assert path.exists(), f"COPY source {source} does not exist"
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if "__pycache__" in relative:
                    continue
                assert not dockerignore_excludes(ignore, relative), f"{relative} is ignored"
            sources.add(PurePosixPath(source).as_posix().rstrip("/"))

    project = pyproject["project"]
    assert {"pyproject.toml", project["readme"]} <= sources
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*").rstrip(".") for p in packages} <= sources


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    """.venv, .git, tests and local databases never reach the engine."""
    ignore = read_dockerignore()
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "cemesh.db"):
        assert dockerignore_excludes(ignore, path), path
    for path in ("pyproject.toml", "broker/server/app.py", "migrations/alembic.ini"):
        assert not dockerignore_excludes(ignore, path), path
    assert dockerignore_excludes(ignore, "broker/__pycache__/app.cpython-311.pyc")


def test_dockerfile_installs_declared_extras(
    dockerfile: list[tuple[str, str]], pyproject: dict[str, Any]
) -> None:
    """`pip install .[kafka,nats,redis,pubsub]`: every bus driver, each a declared extra."""
    runs = " ".join(arguments for keyword, arguments in dockerfile if keyword == "RUN")
    match = re.search(r"pip install [^;&|]*\.\[([A-Za-z0-9_,-]+)\]", runs)
    assert match, "the Dockerfile does not pip install the project with extras"
    extras = set(match.group(1).split(","))
    assert extras == {"kafka", "nats", "redis", "pubsub"}
    assert extras <= set(pyproject["project"]["optional-dependencies"])


def test_dockerfile_cmd_is_the_cemesh_console_script(
    dockerfile: list[tuple[str, str]], pyproject: dict[str, Any], compose: dict[str, Any]
) -> None:
    """CMD runs the `cemesh` script from pyproject.toml; `cemesh serve` accepts its arguments."""
    cmds = [json.loads(arguments) for keyword, arguments in dockerfile if keyword == "CMD"]
    assert len(cmds) == 1
    cmd = cmds[0]
    assert cmd == ["cemesh", "serve", "--host", "0.0.0.0", "--port", "8080"]

    target = pyproject["project"]["scripts"][cmd[0]]
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute))

    from broker.cli import cli

    serve = cli.commands[cmd[1]]
    params = serve.make_context(cmd[1], list(cmd[2:])).params
    assert (params["host"], params["port"]) == ("0.0.0.0", 8080)
    # The port cemesh listens on is the one compose publishes.
    assert [port for _, port in published_ports(compose["services"][CEMESH])] == ["8080"]


def test_dockerfile_healthcheck_polls_readyz(dockerfile: list[tuple[str, str]]) -> None:
    """HEALTHCHECK asks /readyz on the port CMD listens on, with a tool the image has."""
    checks = [arguments for keyword, arguments in dockerfile if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    match = re.fullmatch(r"(?P<options>(?:--\S+\s+)*)CMD\s+(?P<command>.+)", checks[0])
    assert match, checks[0]
    command = match.group("command")
    argv = json.loads(command) if command.startswith("[") else shlex.split(command)
    assert argv[0] == "python"  # python:3.11-slim has no curl or wget
    assert "http://127.0.0.1:8080/readyz" in " ".join(argv)
    assert "--timeout=" in match.group("options")


# --- the helpers above, on known inputs -----------------------------------------------------


def test_interpolation_follows_the_compose_specification() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d}", env) == "x d d "
    assert interpolate("$SET ${SET} $$SET ${UNSET}", env) == "x x $SET "
    assert interpolate("${SET:+alt}${UNSET:+alt}", env) == "alt"
    with pytest.raises(ValueError, match="UNSET"):
        interpolate("${UNSET:?needed}", env)


def test_dockerignore_matching_follows_docker_rules() -> None:
    patterns = ["*", "!broker", "**/__pycache__", "broker/secret*"]
    assert dockerignore_excludes(patterns, "tests/x.py")
    assert not dockerignore_excludes(patterns, "broker/dataplane/dispatch/retry.py")
    assert dockerignore_excludes(patterns, "broker/dataplane/dispatch/__pycache__/retry.pyc")
    assert dockerignore_excludes(patterns, "broker/secret.key")
    assert not dockerignore_excludes(["*.db"], "data/cemesh.db")  # * stays in one segment
