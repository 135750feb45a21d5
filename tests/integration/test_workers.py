"""`gantry serve` as a process group (--workers N) and as one process: what an operator sees from outside.

Every server here is a real `gantry serve` subprocess on the embedded default (its own PostgreSQL and Redis
under a temporary data dir) or on the test's PostgreSQL/Redis; the provider, where one is needed, is the fake
Vast.ai server (the simulated provider keeps its machines in one process and runs one worker only).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..conftest import TEST_KEK
from ..fakes.vastai import FakeVastAi

GANTRY = [sys.executable, "-m", "gantry_server.cli"]
SERVING = health_pb2.HealthCheckResponse.SERVING
pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    env.update(GANTRY_DATA_DIR=str(data_dir), GANTRY_LOG_FORMAT="json", GANTRY_KEK=TEST_KEK,
               GANTRY_GRPC_ADDR=f"127.0.0.1:{_free_port()}", GANTRY_HTTP_ADDR=f"127.0.0.1:{_free_port()}")
    env.update(extra)
    return env


def _eventually(check, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def _health(addr: str) -> int | None:
    """gRPC health over a new connection (so the kernel may pick any worker)."""
    try:
        with grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
    except grpc.RpcError:
        return None


def _worker_pid(base: str) -> int:
    """The PID of the worker that answered GET /metrics on a new connection (gantry_worker_info)."""
    text = httpx.get(f"{base}/metrics", headers={"connection": "close"}, timeout=10).text
    return int(re.search(r'gantry_worker_info\{[^}]*pid="(\d+)"', text).group(1))


def _started(log: Path, proc: subprocess.Popen) -> str:
    def announced():
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        return text if "serving REST on" in text and "workers (pids" in text else None
    return _eventually(announced, "the group announced")


def _data_dir_processes(data_dir: Path) -> list[psutil.Process]:
    """PostgreSQL, Redis and Gantry processes working on `data_dir`."""
    out = []
    for p in psutil.process_iter(["cmdline", "environ", "cwd"]):
        try:
            cmd = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
            if str(data_dir) in cmd or (p.info["environ"] or {}).get("GANTRY_DATA_DIR") == str(data_dir):
                out.append(p)
        except psutil.Error:
            pass
    return [p for p in out if p.pid != os.getpid() and _alive(p)]


@pytest.fixture
def fake_vast():
    fake = FakeVastAi(api_key="vast-test-key")
    fake.add_offer(gpu_name="RTX 4090", dph_total=0.42)
    url = fake.start_thread()
    yield url
    fake.stop_thread()


def test_two_workers_share_both_ports_health_follows_every_worker_and_sigterm_ends_the_group(tmp_path, fake_vast):
    data = tmp_path / "data"
    env = _env(data, GANTRY_BROKER_PROVIDERS="vastai", GANTRY_VASTAI_API_KEY="vast-test-key",
               GANTRY_VASTAI_BASE_URL=fake_vast, GANTRY_SHUTDOWN_GRACE_SECONDS="5")
    grpc_addr, base = env["GANTRY_GRPC_ADDR"], f"http://{env['GANTRY_HTTP_ADDR']}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*GANTRY, "serve", "--workers", "2"], env=env, stderr=out)
    try:
        text = _started(log, proc)
        assert f"serving gRPC on {grpc_addr}" in text and f"serving REST on {env['GANTRY_HTTP_ADDR']}" in text
        pids = {int(p) for p in re.search(r"2 workers \(pids ([\d, ]+)\)", text).group(1).split(", ")}
        assert len(pids) == 2 and all(psutil.Process(p).ppid() == proc.pid for p in pids)

        # Both faces answer, SERVING, and new connections reach both workers.
        assert _health(grpc_addr) == SERVING
        assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/ready").status_code == 200
        seen = {_worker_pid(base) for _ in range(40)}
        assert seen == pids
        offers = httpx.get(f"{base}/api/v1/inventory", timeout=10).json()["offers"]
        assert len(offers) == 1

        # One worker killed: the survivor stops saying SERVING until the supervisor's replacement serves.
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        _eventually(lambda: _health(grpc_addr) not in (SERVING, None), "NOT_SERVING after a worker died")
        assert httpx.get(f"{base}/ready").status_code == 503
        _eventually(lambda: _health(grpc_addr) == SERVING and httpx.get(f"{base}/ready").status_code == 200,
                    "SERVING again")
        now = {p.pid for p in psutil.Process(proc.pid).children() if "gantry_server.cli" in " ".join(p.cmdline())}
        assert len(now) == 2 and victim not in now and pids - {victim} < now
        _eventually(lambda: {_worker_pid(base) for _ in range(20)} == now, "both workers answer")
        assert "worker died: restarting" in log.read_text()

        # SIGTERM of the supervisor: every worker drains, then embedded PostgreSQL and Redis stop.
        assert _data_dir_processes(data)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _eventually(lambda: not _data_dir_processes(data), "no worker, PostgreSQL or Redis left", timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_simulated_provider_refuses_more_than_one_worker(tmp_path):
    proc = subprocess.run([*GANTRY, "serve", "--workers", "2"], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("gantry:")] == [
        "gantry: GANTRY_WORKERS/--workers above 1 cannot run the simulated provider (its machines live in one "
        "process): use one worker, or list real providers in GANTRY_BROKER_PROVIDERS"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_grpc_address_in_use_is_one_line_and_exit_2(tmp_path, database_url, redis_url, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        env = _env(tmp_path, GANTRY_DATABASE_URL=database_url, GANTRY_REDIS_URL=redis_url, GANTRY_GRPC_ADDR=addr,
                   GANTRY_WORKERS=workers)
        proc = subprocess.run([*GANTRY, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("{")]  # not JSON log records
    assert len(lines) == 1 and lines[0].startswith(f"gantry: cannot listen on GANTRY_GRPC_ADDR={addr}"), proc.stderr
    assert "Traceback" not in proc.stderr


def _postmaster(data: Path) -> psutil.Process | None:
    pidfile = data / "postgres" / "postmaster.pid"
    if not pidfile.exists():
        return None
    try:
        return psutil.Process(int(pidfile.read_text().split()[0]))
    except (psutil.NoSuchProcess, ValueError):
        return None


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_after_a_sigkill_the_next_clean_exit_stops_embedded_postgres(tmp_path):
    """A SIGKILLed serve leaves PostgreSQL running (nothing can stop it then) and its PID in pgserver's handle
    list; the next serve drops the dead PID, adopts the server, and stops it on its clean exit."""
    data = tmp_path / "data"
    env = _env(data, GANTRY_WORKERS="1")
    grpc_addr = env["GANTRY_GRPC_ADDR"]
    proc = subprocess.Popen([*GANTRY, "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        _eventually(lambda: _health(grpc_addr) == SERVING, "SERVING")
        proc.kill()
        proc.wait()
        postgres = _postmaster(data)
        assert postgres is not None and _alive(postgres)

        proc = subprocess.Popen([*GANTRY, "serve"], env=env, stderr=subprocess.DEVNULL)
        _eventually(lambda: _health(grpc_addr) == SERVING, "SERVING again")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert _postmaster(data) is None
        assert not _alive(postgres)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if (pg := _postmaster(data)) is not None:
            pg.terminate()


def test_embedded_redis_stops_on_one_shutdown_without_retrying(tmp_path, monkeypatch):
    """SHUTDOWN is answered by the server closing the connection: the client must not retry it (its default
    retries, with backoff, were the 4-6 s every idle SIGTERM took)."""
    import redis.connection

    from gantry_server import embedded

    sent = []
    send = redis.connection.AbstractConnection.send_command

    def recording(self, *args, **kwargs):
        sent.append(args[0])
        return send(self, *args, **kwargs)

    services = embedded.start(tmp_path, need_postgres=False, need_redis=True)
    pid = services._redis.pid
    services._redis.set("kept", "1")
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", recording)
    services.stop()
    assert sent.count("SHUTDOWN") == 1
    _eventually(lambda: not _alive(psutil.Process(pid)) if psutil.pid_exists(pid) else True, "redis-server gone")
    assert (tmp_path / "redis.rdb").exists()  # SHUTDOWN SAVE: the data is on disk
