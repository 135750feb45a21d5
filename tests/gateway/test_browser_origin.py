"""A web page open on the developer's machine cannot drive the REST gateway (gantry_gateway/browser.py).

The test app runs the simulated provider with the broker open (the embedded default): before these checks, any
page could create a session there, i.e. get a shell on the machine. Each refusal leaves no session behind.
"""
from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from gantry_server import cli
from gantry_server.app import GantryApp
from gantry_server.store.models import broker_sessions

from ..conftest import make_settings

CREATE = {"consumer_id": "me", "offer_id": "simulated-1001", "workload_type": "interactive", "reservation_hours": 1}


async def _sessions(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(broker_sessions))).scalar_one()


async def test_cross_origin_browser_post_is_refused_and_creates_nothing(http, clean_db):
    r = await http.post("/api/v1/sessions", json=CREATE, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert "cross-origin" in r.json()["error"] and "GANTRY_HTTP_ALLOWED_ORIGINS" in r.json()["error"]
    r = await http.delete("/api/v1/sessions/s-1", headers={"Origin": "null"})  # sandboxed iframe
    assert r.status_code == 403
    r = await http.post("/api/v1/sessions", json=CREATE, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    assert await _sessions(clean_db) == 0


async def test_form_and_text_bodies_are_415_and_create_nothing(http, clean_db):
    import orjson

    body = orjson.dumps(CREATE)
    for ctype in ("application/x-www-form-urlencoded", "text/plain;charset=UTF-8", "multipart/form-data", None):
        r = await http.post("/api/v1/sessions", content=body, headers={"content-type": ctype} if ctype else {})
        assert r.status_code == 415, ctype
        assert "Content-Type: application/json" in r.json()["error"]
    assert await _sessions(clean_db) == 0


async def test_programs_without_origin_and_bodyless_posts_still_work(http, clean_db):
    r = await http.post("/api/v1/sessions/no-such-session/done")  # no body, no Content-Type: reaches the handler
    assert r.status_code == 404
    r = await http.post("/api/v1/sessions", json={**CREATE, "reservation_hours": "x"})  # JSON: reaches validation
    assert r.status_code == 400 and "reservation_hours" in r.json()["error"]
    r = await http.get("/api/v1/inventory", headers={"Origin": "https://evil.example"})  # reads are not refused
    assert r.status_code == 200


async def test_dns_rebinding_host_is_refused_with_the_simulated_provider(http, app):
    port = app.http_addr.rpartition(":")[2]
    r = await http.get("/api/v1/sessions", headers={"Host": f"rebind.evil.example:{port}"})
    assert r.status_code == 403 and "DNS rebinding" in r.json()["error"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert (await http.get("/api/v1/sessions", headers={"Host": host})).status_code == 200, host


@pytest.fixture(scope="module")
async def console(database_url, redis_url, tmp_path_factory):
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("origins"),
                                     http_allowed_origins=("https://console.example",)))
    await gantry.start()
    async with httpx.AsyncClient(base_url=f"http://{gantry.http_addr}", timeout=10) as client:
        yield client
    await gantry.stop(0)


async def test_an_allowed_origin_is_let_through(console):
    r = await console.post("/api/v1/sessions/no-such-session/done", headers={"Origin": "https://console.example"})
    assert r.status_code == 404
    r = await console.post("/api/v1/sessions/no-such-session/done", headers={"Origin": "https://other.example"})
    assert r.status_code == 403


def test_allowed_origins_are_read_and_checked_from_the_environment():
    from gantry_server.config import ConfigError, Settings

    s = Settings.from_env({"GANTRY_HTTP_ALLOWED_ORIGINS": "https://a.example, http://localhost:3000/"})
    assert s.http_allowed_origins == ("https://a.example", "http://localhost:3000")
    with pytest.raises(ConfigError, match="GANTRY_HTTP_ALLOWED_ORIGINS"):
        Settings.from_env({"GANTRY_HTTP_ALLOWED_ORIGINS": "a.example/path"})


def test_a_remote_gateway_with_the_simulated_provider_must_listen_on_loopback(monkeypatch, capsys,
                                                                              process_logging):
    for name in [n for n in __import__("os").environ if n.startswith("GANTRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GANTRY_HTTP_ADDR", "0.0.0.0:0")
    monkeypatch.setenv("GANTRY_ALLOW_PLAINTEXT", "true")
    assert cli.main(["gateway", "--upstream", "127.0.0.1:1"]) != 0
    assert "simulated" in capsys.readouterr().err


async def test_the_simulated_shell_sees_neither_the_data_directory_nor_gantrys_secrets(app, http, clean_db):
    import asyncio
    import os

    import asyncssh

    from gantry_server.providers.simulated_host import masking_available, process_dumpable

    created = await http.post("/api/v1/sessions", json={**CREATE, "offer_id": "simulated-1004"})
    assert created.status_code == 201, created.text
    sid, key = created.json()["session"]["id"], created.json()["ssh_private_key"]
    for _ in range(400):
        session = (await http.get(f"/api/v1/sessions/{sid}")).json()
        if session["status"] != "provisioning":
            break
        await asyncio.sleep(0.05)
    assert session["status"] == "running", session
    data_dir = os.path.realpath(app.settings.data_dir)
    probe = os.path.join(data_dir, "probe-secret")
    with open(probe, "w") as f:
        f.write("kek-material")
    async with asyncssh.connect(session["ssh_host"], session["ssh_port"], username="root", known_hosts=None,
                                client_keys=[asyncssh.import_private_key(key)]) as conn:
        seen = (await conn.run('pwd; echo "$HOME"; env', check=False)).stdout.splitlines()
        # the data directory is an empty, unreadable mount for the shell, and it cannot take the mask away
        peek = await conn.run(f"umount {data_dir}; umount -l {data_dir}; cat {probe}; ls -A {data_dir}",
                              check=False)
    if masking_available():
        assert "kek-material" not in peek.stdout and "probe-secret" not in peek.stdout, peek.stdout
    else:  # pragma: no cover - a kernel without unprivileged user namespaces
        pytest.skip("unprivileged mount namespaces are not available on this machine")
    cwd, home = os.path.realpath(seen[0]), os.path.realpath(seen[1])
    assert not cwd.startswith(data_dir) and not home.startswith(data_dir)
    leaked = [line for line in seen[2:] if line.startswith("GANTRY_") and not line.startswith("GANTRY_SIMULATED_HOST=")]
    assert leaked == [] and not any(app.settings.kek in line for line in seen)
    # same-user shells cannot read the server's /proc/<pid>/environ or memory (root still can: run as a user)
    assert process_dumpable() in (False, None)
    await http.post(f"/api/v1/sessions/{sid}/done")
