"""A real PostgreSQL server for tests: one per session, a fresh database per test.

Fixtures (register with ``pytest_plugins = ["tests.support.postgres"]`` or ``-p``):

- ``postgres_server`` (session): starts ``postgres`` from a throwaway ``initdb`` cluster on a
  free port of 127.0.0.1 and stops it (that PID only) at the end of the session.
- ``postgres_url``: a ``postgresql+asyncpg://`` URL of a new, empty database, dropped after.
- ``database_url``: parametrised over ``sqlite`` and ``postgres``: a fresh SQLite file in
  ``tmp_path`` or a fresh PostgreSQL database, so one test runs on both stores.

The binaries are looked up in ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin``, then
PATH. When they are missing the fixture fails (it never skips) and says how to install them.
PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

INSTALL_HINT = "install the PostgreSQL server: `apt-get install postgresql` (Debian/Ubuntu)"
REQUIRED_BINARIES = ("initdb", "postgres")
SUPERUSER = "postgres"
SERVER_OS_USER = "postgres"  # the account the server runs as when the tests run as root
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

T = TypeVar("T")


@dataclass
class PostgresServer:
    """A running throwaway PostgreSQL server (trust authentication, superuser ``postgres``)."""

    host: str
    port: int
    base_dir: Path
    process: subprocess.Popen[bytes]
    user: str = SUPERUSER

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        """libpq/asyncpg DSN of ``database``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy async URL of ``database``."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """Create a new empty database; its name."""
        name = f"cemesh_test_{uuid.uuid4().hex[:12]}"
        run_async(self._admin(f'CREATE DATABASE "{name}"'))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        run_async(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a private loop in a worker thread.

    Sync fixtures use this so they never touch (or close) the event loop pytest-asyncio gives
    the test itself.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-fixture") as pool:
        return pool.submit(asyncio.run, coro).result()


# -- finding and running the binaries ---------------------------------------------------------


def _candidate_dirs() -> list[Path]:
    dirs: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            dirs.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    versioned = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    dirs.extend(sorted(versioned, key=lambda p: int(p.parent.name), reverse=True))
    return dirs


def find_binaries() -> dict[str, Path]:
    """initdb and postgres, from one installation when possible; fails the test if missing."""
    dirs = _candidate_dirs()
    for directory in dirs:
        found = {name: directory / name for name in REQUIRED_BINARIES}
        if all(os.access(path, os.X_OK) for path in found.values()):
            return found
    binaries: dict[str, Path] = {}
    for name in REQUIRED_BINARIES:
        on_path = shutil.which(name)
        if on_path is None:
            looked = ", ".join(str(d) for d in dirs) or "no pg_config, no /usr/lib/postgresql"
            pytest.fail(
                f"PostgreSQL binary {name!r} not found (looked in: {looked}; and PATH). "
                f"The store tests need a real server: {INSTALL_HINT}",
                pytrace=False,
            )
        binaries[name] = Path(on_path)
    return binaries


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root for the server's account (PostgreSQL refuses root).

    ``Popen(user=...)`` switches user in the forked child itself, so the PID we hold is the
    postmaster's (with ``runuser`` it would be runuser's, which also forwards signals its own
    way).
    """
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        pytest.fail(
            f"tests run as root and PostgreSQL refuses root, but there is no {SERVER_OS_USER!r} "
            f"user to run it as; {INSTALL_HINT} (it creates that user)",
            pytrace=False,
        )
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _wait_until_ready(server: PostgresServer, deadline: float) -> None:
    # The postmaster has no readiness signal to wait on; poll a connection, bounded.
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited with status {server.process.returncode}")
        try:
            conn = await asyncpg.connect(server.dsn(), timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres not ready after {START_TIMEOUT}s: {exc!r}") from exc
            await asyncio.sleep(0.05)
        else:
            await conn.close()
            return


def start_server() -> PostgresServer:
    """initdb a cluster in a new temp dir and start postgres on a free port of 127.0.0.1."""
    binaries = find_binaries()
    run_as = _run_as()
    # Straight under the temp root (not pytest's tmp_path, which is private to root): the
    # server's account must reach it, and the socket path must stay short.
    base = Path(tempfile.mkdtemp(prefix="cemesh-pg-"))
    data, sockets, log_path = base / "data", base / "sock", base / "postgres.log"
    sockets.mkdir()
    if run_as:
        for path in (base, sockets):
            os.chown(path, run_as["user"], run_as["group"])
    with log_path.open("ab") as log:
        initdb = subprocess.run(
            [
                str(binaries["initdb"]),
                "-D", str(data),
                "-A", "trust",
                "-U", SUPERUSER,
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=base, timeout=120, check=False, **run_as,
        )  # fmt: skip
        if initdb.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            pytest.fail(f"initdb failed ({initdb.returncode}):\n{_log_tail(log_path)}")
        port = _free_port()
        process = subprocess.Popen(
            [
                str(binaries["postgres"]),
                "-D", str(data),
                "-p", str(port),
                "-k", str(sockets),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=base, **run_as,
        )  # fmt: skip
    server = PostgresServer(host="127.0.0.1", port=port, base_dir=base, process=process)
    try:
        run_async(_wait_until_ready(server, time.monotonic() + START_TIMEOUT))
    except Exception as exc:
        stop_server(server)
        pytest.fail(f"PostgreSQL did not start: {exc}\n{_log_tail(log_path)}", pytrace=False)
    return server


def stop_server(server: PostgresServer) -> None:
    """Stop the postmaster we started (its PID only), escalating if it does not go."""
    process = server.process
    # SIGTERM: smart shutdown. It waits for sessions to end, so escalate to fast (SIGINT),
    # then immediate (SIGQUIT), should a test have leaked a connection.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            process.send_signal(sig)  # signals process.pid only
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            continue
    shutil.rmtree(server.base_dir, ignore_errors=True)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session."""
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """``postgresql+asyncpg://`` URL of a new empty database (dropped after the test)."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL: an SQLite file in tmp_path, or a new PostgreSQL database."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'cemesh.db'}"
