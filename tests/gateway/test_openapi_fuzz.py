"""`/openapi.json` describes what the gateway does: a bounded, deterministic schemathesis run finds no 5xx
and no response that violates the document (status, content type, body schema).

Scope: every built GET route plus a few POSTs (admin writes with and without the token, a validator create
that the auth layer answers). Unbuilt RPCs answer 501 by design, so they are outside a "no 5xx" run.
"""
from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings

from tests.conftest import ADMIN_METADATA

OPERATIONS = {
    ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("GET", "/miner/metagraph"),
    ("POST", "/admin/v1/metagraph/nodes"), ("POST", "/admin/v1/users"), ("POST", "/servers/"),
}
MAX_EXAMPLES = 25


def _fuzz(base_url: str) -> list[str]:
    import schemathesis
    from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                     status_code_conformance)

    checks = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)
    schema = schemathesis.from_uri(f"{base_url}/openapi.json", base_url=base_url)
    ran = []
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) not in OPERATIONS:
            continue
        headers = {"authorization": dict(ADMIN_METADATA)["authorization"]} if op.path.startswith("/admin/") else {}

        @given(case=op.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(headers=headers, timeout=10)
            case.validate_response(response, checks=checks)

        check()
        ran.append(f"{op.method.upper()} {op.path}")
    return ran


async def test_openapi_document_is_served_and_complete(http):
    doc = (await http.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert "/servers/{server_id}" in doc["paths"] and "/miner/metagraph" in doc["paths"]
    create = doc["paths"]["/servers/"]["post"]
    assert "201" in create["responses"] and "requestBody" in create
    inventory = doc["paths"]["/api/v1/inventory"]["get"]
    assert {p["name"] for p in inventory["parameters"]} >= {"provider", "min_vram", "limit"}


async def test_schemathesis_finds_no_5xx_and_no_schema_violation(app, http):
    ran = await asyncio.to_thread(_fuzz, f"http://{app.http_addr}")
    assert sorted(ran) == sorted(f"{m} {p}" for m, p in OPERATIONS)
