"""Admin token hygiene: a weak token stops `serve`, the token never travels on the command line, and every secret
file Gantry writes is its owner's alone from the moment it exists."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from gantry_server import admin_cli
from gantry_server.app import _admin_token
from gantry_server.config import Settings
from gantry_server.domain.secrets_at_rest import load_keyring

STRONG = "0f3c9a6b2d8e41f7a5c0b9e2d4f6a8c1"  # 32 hex digits = 128 bits


@pytest.fixture(autouse=True)
def _no_gantry_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("GANTRY_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("token", ["test-admin-token", "changeme", "a" * 40, "abab" * 10])
def test_serve_refuses_a_weak_admin_token_in_one_line_with_exit_2(token, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    env.update(GANTRY_ADMIN_TOKEN=token, GANTRY_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "gantry_server.cli", "serve"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gantry: GANTRY_ADMIN_TOKEN is too weak: use at least 32 random characters (e.g. `openssl rand -hex 32`)"]
    assert token not in proc.stderr
    assert not (tmp_path / "pg").exists() and list(tmp_path.iterdir()) == []  # stopped before starting anything


def test_a_strong_admin_token_is_accepted():
    assert Settings.from_env({"GANTRY_ADMIN_TOKEN": STRONG}).admin_token == STRONG


@pytest.mark.parametrize("argv", [["--token", STRONG, "user", "create", "--username", "u"],
                                  ["user", "create", "--username", "u", f"--token={STRONG}"]])
async def test_gantry_admin_refuses_a_token_on_the_command_line(argv, capsys):
    assert await admin_cli.amain(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gantry admin: --token is not accepted") and "GANTRY_ADMIN_TOKEN" in err
    assert "--token-file" in err and STRONG not in err


def test_the_token_comes_from_a_token_file_then_the_environment(tmp_path, monkeypatch):
    (tmp_path / "t").write_text(STRONG + "\n")
    monkeypatch.setenv("GANTRY_ADMIN_TOKEN", "from-env")
    assert admin_cli.resolve_token(str(tmp_path / "t")) == STRONG
    assert admin_cli.resolve_token(None) == "from-env"


def test_embedded_secret_files_are_created_0600_not_chmodded_afterwards(tmp_path, monkeypatch):
    """With a permissive umask, a file written then chmodded is world-readable for a moment; one created with
    os.open(..., 0o600) never is. Every creation of the admin token and the KEK must carry the mode itself."""
    created: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        if flags & os.O_CREAT:
            created.append((os.path.basename(path), mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    old_umask = os.umask(0)
    try:
        token = _admin_token(Settings(data_dir=tmp_path))
        load_keyring(None, (), tmp_path, embedded=True)
    finally:
        os.umask(old_umask)
    assert sorted(created) == [("admin_token", 0o600), ("kek", 0o600)]
    for name in ("admin_token", "kek"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert len(token) >= 32 and _admin_token(Settings(data_dir=tmp_path)) == token  # kept across restarts
