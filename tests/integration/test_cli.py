"""`gantry serve` as an operator runs it: one clear line on bad config, clean exit on SIGTERM."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..conftest import TEST_KEK

GANTRY = [sys.executable, "-m", "gantry_server.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    env.update(GANTRY_DATA_DIR=str(tmp_path), GANTRY_LOG_FORMAT="json", GANTRY_KEK=TEST_KEK,
               GANTRY_HTTP_ADDR=f"127.0.0.1:{_free_port()}", GANTRY_WORKERS="1", **extra)  # groups: test_workers.py
    return env


def _wait_serving(addr: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError("server never became SERVING")


def test_bad_database_url_fails_fast_with_one_line(tmp_path, redis_url):
    env = _env(tmp_path, GANTRY_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{_free_port()}/none",
               GANTRY_REDIS_URL=redis_url, GANTRY_GRPC_ADDR=f"127.0.0.1:{_free_port()}")
    started = time.monotonic()
    proc = subprocess.run([*GANTRY, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert time.monotonic() - started < 30
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gantry: cannot reach PostgreSQL at postgresql+asyncpg://nobody@127.0.0.1:")
    assert "Traceback" not in proc.stderr


def test_malformed_setting_is_one_line(tmp_path):
    proc = subprocess.run([*GANTRY, "serve"], env=_env(tmp_path, GANTRY_GRPC_ADDR="nonsense"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gantry: GANTRY_GRPC_ADDR must be host:port, got 'nonsense'"


def test_sigterm_drains_and_exits_zero(tmp_path, database_url, redis_url):
    addr = f"127.0.0.1:{_free_port()}"
    env = _env(tmp_path, GANTRY_DATABASE_URL=database_url, GANTRY_REDIS_URL=redis_url, GANTRY_GRPC_ADDR=addr,
               GANTRY_SHUTDOWN_GRACE_SECONDS="5")
    proc = subprocess.Popen([*GANTRY, "serve"], env=env, stderr=subprocess.PIPE)
    try:
        _wait_serving(addr, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_embedded_default_keeps_rows_across_restarts(tmp_path):
    """No URLs configured: Gantry starts its own PostgreSQL + Redis under GANTRY_DATA_DIR and keeps data."""
    from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
    from gantry.miner.v1 import miner_pb2, miner_pb2_grpc

    addr = f"127.0.0.1:{_free_port()}"
    env = _env(tmp_path / "data", GANTRY_GRPC_ADDR=addr)
    hotkey = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"

    proc = subprocess.Popen([*GANTRY, "serve"], env=env, stderr=subprocess.PIPE)
    try:
        _wait_serving(addr, proc)
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        with grpc.insecure_channel(addr) as ch:
            admin_pb2_grpc.AdminServiceStub(ch).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
                nodes=[admin_pb2.MetagraphNode(hotkey=hotkey, netuid=64, node_id=7, ip_type=4)]),
                metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    proc = subprocess.Popen([*GANTRY, "serve"], env=env, stderr=subprocess.PIPE)
    try:
        _wait_serving(addr, proc)
        with grpc.insecure_channel(addr) as ch:
            graph = miner_pb2_grpc.MinerServiceStub(ch).GetMetagraph(miner_pb2.GetMetagraphRequest(), timeout=10)
        assert [(n.hotkey, n.node_id) for n in graph.items] == [(hotkey, 7)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
