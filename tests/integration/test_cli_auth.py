"""The local token end to end: ``cemesh serve`` makes it, the CLI finds it, with no settings.

Both run as real subprocesses with ``HOME`` and ``XDG_CONFIG_HOME`` pointed at a temp dir, as a
new user's first ``make run`` + ``cemesh apply -f broker.yaml`` would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cemesh import free_port
from tests.support.process import CemeshProcess

CEMESH = Path(sys.executable).parent / "cemesh"
BROKER_YAML = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
"""


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user whose home (and config dir) is ``home``; no CEMESH_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEMESH_")}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")})
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CEMESH), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def test_serve_makes_a_private_token_file_and_the_cli_finds_it_by_itself(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    env = user_env(home)
    server_env = {
        **env,
        "CEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cemesh.db'}",
        "CEMESH_LOG_FORMAT": "text",
    }
    child = CemeshProcess(server_env, free_port(), tmp_path / "cemesh.log")
    await child.start()
    try:
        token_file = home / ".config" / "cemesh" / "token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.parent.stat().st_mode & 0o777 == 0o700
        assert f"management API token in {token_file}" in child.log()
        manifest = tmp_path / "broker.yaml"
        manifest.write_text(BROKER_YAML)

        applied = cli(env, "--server", child.url, "apply", "-f", str(manifest))
        assert (applied.returncode, applied.stdout.strip()) == (
            0,
            "broker.eventing.knative.dev/default created",
        ), applied.stderr
        listed = cli(env, "--server", child.url, "get", "brokers")
        assert listed.returncode == 0 and "default" in listed.stdout
        assert cli(env, "token", "path").stdout.strip() == str(token_file)

        token = token_file.read_text().strip()
        assert cli(env, "token", "show").stdout.strip() == token
        stranger = user_env(tmp_path / "stranger")  # another user: no token file
        refused = cli(stranger, "--server", child.url, "get", "brokers")
        assert refused.returncode == 1
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith("error: ") and "bearer token" in line
        assert "does not exist" in line
        given = cli({**stranger, "CEMESH_TOKEN": token}, "--server", child.url, "get", "brokers")
        assert given.returncode == 0, given.stderr
        flag = cli(stranger, "--server", child.url, "--token", token, "get", "brokers")
        assert flag.returncode == 0, flag.stderr
        wrong = cli({**env, "CEMESH_TOKEN": "wrong"}, "--server", child.url, "get", "brokers")
        assert wrong.returncode == 1
        [line] = wrong.stderr.strip().splitlines()
        assert "not valid" in line and "--token/CEMESH_TOKEN" in line
    finally:
        await child.stop()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_serve_on_a_non_loopback_host_with_auth_off_refuses_in_one_line(
    tmp_path: Path, how: str
) -> None:
    env = {**user_env(tmp_path), "CEMESH_AUTH": "none"}
    args = ["serve", "--port", str(free_port())]
    if how == "flag":
        args += ["--host", "0.0.0.0"]
    else:
        env["CEMESH_HOST"] = "0.0.0.0"
    done = cli(env, *args)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: refusing to listen on 0.0.0.0 with authentication off")
    assert "--insecure" in line and "Traceback" not in done.stderr


def test_token_hash_prints_the_sha256_for_a_tokens_file() -> None:
    done = subprocess.run(
        [str(CEMESH), "token", "hash"], input="s3cr3t\n", capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == "4e738ca5563c06cfd0018299933d58db1dd8bf97f6973dc99bf6cdc64b5550bd"


@pytest.mark.parametrize(
    ("setting", "content", "words"),
    [
        ("CEMESH_RBAC_FILE", None, "cannot read the RBAC file"),
        ("CEMESH_RBAC_FILE", "kind: Role\n", "kind 'Role' is not supported"),
        ("CEMESH_API_TOKENS_FILE", "- name: a\n  sha256: nothex\n", "64 hex digits"),
    ],
)
def test_serve_with_an_unusable_security_file_says_why_in_one_line(
    tmp_path: Path, setting: str, content: str | None, words: str
) -> None:
    path = tmp_path / "security.yaml"
    if content is not None:
        path.write_text(content)
    env = {**user_env(tmp_path), setting: str(path)}
    done = cli(env, "serve", "--port", str(free_port()))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(path) in line and words in line
