"""The Go client module builds and its tests pass against a live Gantry server started here."""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

GO_MODULE = Path(__file__).resolve().parents[2] / "clients" / "go"


@pytest.mark.skipif(shutil.which("go") is None and not os.environ.get("CI"),
                    reason="no go binary on this machine (CI always runs this test)")
async def test_go_client_against_live_server(app):
    """Async subprocess: the server under test runs on this same event loop."""
    env = dict(os.environ, GANTRY_TEST_GRPC_ADDR=app.grpc_addr, CI=os.environ.get("CI", "1"))
    proc = await asyncio.create_subprocess_exec(
        "go", "test", "-count=1", "-v", "./...", cwd=GO_MODULE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "--- PASS: TestHealthIsServing" in text and "--- PASS: TestReadyOverOpsService" in text
