"""`gantry gpu ...` as a GPU consumer runs it: a real `gantry serve` (embedded PostgreSQL and Redis, the simulated
provider, whose instances are real SSH servers on loopback), the CLI as a separate process, in a pipe and on a
pseudo-terminal. Credentials and the idempotent create are shown against an in-process broker whose clock and
loops the test drives.
"""
from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select as sql_select

from gantry_server.cli_tools import gpu
from gantry_server.store.models import broker_sessions

from ..conftest import TEST_KEK
from .broker_harness import running_broker
from .test_broker_auth import consumer
from .test_cli import _free_port, _wait_serving

pytestmark = pytest.mark.timeout(240)
GANTRY = [sys.executable, "-m", "gantry_server.cli"]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n
needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client (ssh) is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`gantry serve` on the embedded default (open broker, simulated provider), one per module."""
    data = tmp_path_factory.mktemp("gpu-cli-server")
    addr = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    env.update(GANTRY_DATA_DIR=str(data / "data"), GANTRY_GRPC_ADDR=addr, GANTRY_HTTP_ADDR=f"127.0.0.1:{_free_port()}",
               GANTRY_KEK=TEST_KEK, GANTRY_LOG_FORMAT="json", GANTRY_WORKERS="1")
    with open(data / "server.log", "wb") as log:
        proc = subprocess.Popen([*GANTRY, "serve"], env=env, stdout=log, stderr=log)
    try:
        _wait_serving(addr, proc, timeout=120)
        yield addr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def user(server, tmp_path):
    """A consumer of the open broker with its own configuration directory: runs `gantry gpu ARGS`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_") and k != "NO_COLOR"}
    env.update(GANTRY_GRPC_ADDR=server, GANTRY_CONSUMER_ID=f"cli-{uuid.uuid4().hex[:10]}",
               XDG_CONFIG_HOME=str(tmp_path / "config"), TERM="xterm-256color")

    def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*GANTRY, "gpu", *argv], env=env, capture_output=True, text=True, timeout=timeout)
    run.env = env
    run.sessions = tmp_path / "config" / "gantry" / "sessions"
    return run


def _json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_ssh
def test_ssh_runs_the_command_on_the_rented_instance_with_its_key_and_a_pinned_host_key(user):
    rented = _json(user("rent", "--gpu", "A100", "--json"))
    sid = rented["session"]["id"]
    ran = user("ssh", sid, "--", "echo", "ok")
    assert (ran.returncode, ran.stdout) == (0, "ok\n"), ran.stderr
    assert " ssh-ed25519 " in (user.sessions / sid / "known_hosts").read_text()  # the host key, pinned
    assert user("ssh", sid, "--", "exit 7").returncode == 7  # the remote command's status
    assert user("done", sid).returncode == 0
    gone = user("ssh", sid, "--", "echo", "ok")
    assert gone.returncode == 1 and f"session {sid} is stopped" in gone.stderr


def test_rent_extend_done_costs(user):
    rented = _json(user("rent", "--gpu", "RTX 4090", "--max-price", "5", "--hours", "2", "--json"))
    session = rented["session"]
    sid = session["id"]
    assert session["status"] == "running" and session["gpu_type"] == "RTX 4090"
    key = Path(rented["key_file"])
    assert key == user.sessions / sid / "key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(user.sessions.stat().st_mode) == 0o700
    assert rented["ssh_command"].startswith(f"ssh -i {key} -p {session['ssh_port']} ")

    if shutil.which("ssh"):
        ran = user("ssh", sid, "--", "echo", "ok")
        assert (ran.returncode, ran.stdout) == (0, "ok\n"), ran.stderr

    listed = _json(user("ls", "--json"))["sessions"]
    assert [(s["id"], s["status"]) for s in listed] == [(sid, "running")]
    table = user("ls")
    assert table.returncode == 0 and sid in table.stdout and "running" in table.stdout

    extended = _json(user("extend", sid, "1", "--json"))
    assert extended["session_id"] == sid
    shown = _json(user("show", sid, "--json"))
    assert shown["session"]["reservation_hours"] == 3 and shown["session"]["expires_at"] == extended["new_expires_at"]

    done = user("done", sid)
    assert done.returncode == 0, done.stderr
    assert f"session {sid} stopped; it cost $" in done.stdout
    assert not (user.sessions / sid).exists()  # the key went with the instance
    assert _json(user("show", sid, "--json"))["session"]["status"] == "stopped"

    costs = _json(user("costs", "--json"))
    [row] = costs["sessions"]
    assert row["id"] == sid and row["total_cost"] > 0
    assert costs["session_count"] == 1 and costs["total_cost"] == pytest.approx(row["total_cost"])
    table = user("costs")
    assert table.returncode == 0 and sid in table.stdout and "total $" in table.stdout
    by_gpu = user("costs", "--by", "gpu")
    assert by_gpu.returncode == 0 and "RTX 4090" in by_gpu.stdout
    today = datetime.now(timezone.utc).date()
    since = _json(user("costs", "--since", today.isoformat(), "--json"))
    assert [s["id"] for s in since["sessions"]] == [sid] and since["period_start"] == f"{today}T00:00:00Z"


def test_offers_are_listed_as_the_server_sorts_them_and_filtered(user):
    offers = _json(user("offers", "--limit", "0", "--json"))["offers"]
    assert len(offers) == 24
    ranks = [(-o["availability_confidence"], o["price_per_hour"], o["id"]) for o in offers]
    assert ranks == sorted(ranks)
    table = user("offers", "--limit", "0").stdout.splitlines()
    assert table[0].split()[:3] == ["offer", "provider", "gpu"]
    assert [line.split()[0] for line in table[1:]] == [o["id"] for o in offers]

    cheap = _json(user("offers", "--gpu", "rtx4090", "--max-price", "0.5", "--json"))["offers"]
    assert cheap and all(o["gpu_type"] == "RTX 4090" and o["price_per_hour"] <= 0.5 for o in cheap)


def test_a_refused_request_prints_the_server_words_and_exits_1(user):
    missing = user("show", "00000000-0000-0000-0000-000000000000")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "gantry gpu: NOT_FOUND: session not found: 00000000-0000-0000-0000-000000000000\n"

    too_long = user("rent", "simulated-1001", "--hours", "13")
    assert too_long.returncode == 1
    assert too_long.stderr == "gantry gpu: INVALID_ARGUMENT: reservation_hours: must be at most 12\n"
    assert not user.sessions.exists() or not any(user.sessions.iterdir())  # nothing rented, no key

    nothing = user("rent", "--gpu", "RTX 4090", "--max-price", "0.01")
    assert nothing.returncode == 1 and "no available offer for RTX 4090" in nothing.stderr


@pytest.mark.parametrize(("argv", "says"), [
    (("rent",), "give an OFFER_ID"),
    (("rent", "simulated-1001", "--gpu", "A100"), "not both"),
    (("extend", "some-id", "two"), "not a whole number"),
    (("costs", "--since", "last week"), "YYYY-MM-DD"),
    (("ls", "--api-key", "cpk_secret"), "--api-key is not accepted"),
    (("teleport",), "invalid choice"),
])
def test_usage_errors_exit_2_with_one_line(user, argv, says):
    proc = user(*argv)
    assert (proc.returncode, proc.stdout) == (2, "") and proc.stderr.count("\n") == 1 and says in proc.stderr
    assert "cpk_secret" not in proc.stderr


def test_an_unreachable_server_exits_3_without_waiting_for_the_rpc_deadline(user):
    started = time.monotonic()
    proc = user("ls", "--addr", f"127.0.0.1:{_free_port()}", "--timeout", "120")
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.startswith("gantry gpu: cannot connect to 127.0.0.1:")
    assert time.monotonic() - started < 30  # the connection is refused at once; a hung one is given 5 s


def _pty_run(argv: list[str], env: dict, timeout: float = 120) -> tuple[int, str]:
    """Run on a pseudo-terminal (stdin, stdout and stderr), as in a terminal window: (exit code, all output)."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(argv[0], argv, env)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def test_rent_on_a_terminal_shows_progress_and_ends_with_the_ssh_line_and_piped_is_plain(user):
    code, shown = _pty_run([*GANTRY, "gpu", "rent", "--gpu", "RTX 4090"], user.env)
    assert code == 0, shown
    assert "\x1b[" in shown  # drawn by rich: styles and the spinner
    sid = re.search(r"session ([0-9a-f-]{36}) is running", shown).group(1)
    assert "provisioning: instance created at 127.0.0.1:" in shown and "running: SSH verified" in shown
    ssh_line = [line for line in shown.splitlines() if line.startswith("ssh -i ")]
    assert ssh_line and f"/sessions/{sid}/key" in ssh_line[0] and ssh_line[0].rstrip().endswith("root@127.0.0.1")
    assert user("done", sid, "--no-wait").returncode == 0

    piped = user("rent", "--gpu", "L4")
    assert piped.returncode == 0, piped.stderr
    assert not CONTROL.search(piped.stdout) and not CONTROL.search(piped.stderr)
    assert "gantry gpu: provisioning: instance created at 127.0.0.1:" in piped.stderr
    last = piped.stdout.splitlines()
    assert last[-2].startswith("ssh -i ") and last[-1].startswith("(or: gantry gpu ssh ")
    assert user("done", re.search(r"session ([0-9a-f-]{36}) is running", piped.stdout).group(1)).returncode == 0


def test_no_color_keeps_the_terminal_free_of_colours(user):
    code, shown = _pty_run([*GANTRY, "gpu", "offers", "--limit", "3"], {**user.env, "NO_COLOR": "1"})
    assert code == 0 and "simulated-" in shown
    assert not re.search(r"\x1b\[[0-9;]*3[0-9](;|m)", shown)  # no foreground colour codes


# -- credentials and the idempotent create, against a broker whose time the test moves ---------------------------
@pytest.fixture
async def broker(database_url, redis_url, tmp_path, clean_db, redis):
    async with running_broker(database_url, redis_url, tmp_path, auth="required") as h:
        yield h


@pytest.fixture
def cli(broker, capsys, monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("GANTRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    async def run(*argv: str, key: str | None = None):
        if key is None:
            monkeypatch.delenv("GANTRY_API_KEY", raising=False)
        else:
            monkeypatch.setenv("GANTRY_API_KEY", key)
        code = await gpu.amain(["--addr", broker.app.grpc_addr, *argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


async def test_an_api_key_makes_the_sessions_the_users_own(broker, cli):
    alice, alice_md = await consumer(broker)
    _, bob_md = await consumer(broker)
    alice_key, bob_key = (dict(md)["authorization"].removeprefix("Bearer ") for md in (alice_md, bob_md))
    offer = await broker.offer(gpu_type="A100")

    code, out, err = await cli("rent", offer, "--no-wait", "--json", key=alice_key)
    assert code == 0, err
    session = json.loads(out)["session"]
    assert session["consumer_id"] == alice and session["status"] == "provisioning"
    assert Path(json.loads(out)["key_file"]).read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

    code, out, _ = await cli("ls", "--json", key=alice_key)
    assert (code, [s["id"] for s in json.loads(out)["sessions"]]) == (0, [session["id"]])
    code, out, _ = await cli("ls", "--json", key=bob_key)
    assert (code, json.loads(out)) == (0, {"sessions": []})
    code, _, err = await cli("show", session["id"], key=bob_key)
    assert (code, err) == (1, f"gantry gpu: NOT_FOUND: session not found: {session['id']}\n")
    code, _, err = await cli("ls")
    assert code == 1 and err.startswith("gantry gpu: UNAUTHENTICATED: ")


async def test_a_create_whose_answer_was_lost_is_retried_with_the_same_key_and_rents_once(broker, cli, monkeypatch):
    _, md = await consumer(broker)
    key = dict(md)["authorization"].removeprefix("Bearer ")
    real_call, seen = gpu.Client.call, []

    async def lose_first_answer(self, method, request, timeout=None):
        response = await real_call(self, method, request, timeout)
        if isinstance(request, gpu.sessions_pb2.CreateSessionRequest):
            seen.append(request.request_id)
            if len(seen) == 1:  # the server made the session; the answer never arrived
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           details="Socket closed")
        return response
    monkeypatch.setattr(gpu.Client, "call", lose_first_answer)
    monkeypatch.setattr(gpu, "CREATE_ATTEMPTS", 2)

    code, out, err = await cli("rent", await broker.offer(gpu_type="H100"), "--no-wait", "--json", key=key)
    assert code == 0, err
    assert "retrying with the same request id" in err
    assert len(seen) == 2 and seen[0] == seen[1] and uuid.UUID(seen[0])
    async with broker.app.rt.engine.connect() as conn:
        rows = (await conn.execute(sql_select(broker_sessions.c.id, broker_sessions.c.request_id))).all()
    assert [(r.id, r.request_id) for r in rows] == [(json.loads(out)["session"]["id"], seen[0])]


async def test_an_offer_gone_at_the_provider_is_the_servers_words_not_retried_and_leaves_no_key(broker, cli, tmp_path):
    _, md = await consumer(broker)
    key = dict(md)["authorization"].removeprefix("Bearer ")
    offer = await broker.offer(gpu_type="L4")
    broker.provider.fail_next_create()  # stale inventory: the offer is gone by the time of the create

    code, out, err = await cli("rent", offer, key=key)
    assert (code, out) == (1, "")
    assert err.startswith(f"gantry gpu: UNAVAILABLE: offer {offer} from simulated unavailable (stale inventory)")
    assert "retrying" not in err and err.count("\n") == 1
    sessions = tmp_path / "config" / "gantry" / "sessions"
    assert not sessions.exists() or not any(sessions.iterdir())


async def test_a_session_that_fails_while_provisioning_ends_the_rent_with_the_servers_reason(broker, cli, tmp_path):
    _, md = await consumer(broker)
    key = dict(md)["authorization"].removeprefix("Bearer ")
    rent = asyncio.create_task(cli("rent", await broker.offer(gpu_type="RTX 4090"), key=key))
    for _ in range(600):  # until the create has answered and the CLI is watching (no clock involved)
        async with broker.app.rt.engine.connect() as conn:
            row = (await conn.execute(sql_select(broker_sessions).where(broker_sessions.c.status == "provisioning"))
                   ).first()
        if row is not None:
            break
        await asyncio.sleep(0.05)
    assert row is not None
    broker.clock.advance(minutes=broker.app.settings.broker.ssh_verify_timeout_minutes + 1)  # SSH never answered
    await broker.lifecycle.tick()

    code, out, err = await asyncio.wait_for(rent, 60)
    assert (code, out) == (1, "")
    assert err.endswith(f"gantry gpu: session {row.id} failed: SSH verification timeout\n")
    assert "gantry gpu: provisioning: instance created at 127.0.0.1:" in err
    assert not (tmp_path / "config" / "gantry" / "sessions" / row.id).exists()  # nothing to connect to any more
