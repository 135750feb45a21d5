"""Gateway fixtures: an HTTP client on the live app's REST side (in-process dispatch, real PostgreSQL/Redis)."""
from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
async def http(app):
    assert app.http_addr, "the app fixture must start the REST gateway (Settings.http_addr)"
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=10) as client:
        yield client
