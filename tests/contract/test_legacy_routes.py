"""Every legacy (method, path) of the seeds is bound to exactly the RPC the golden table names."""
from __future__ import annotations

from pathlib import Path

import pytest

from gantry_server.services.registry import SERVICES
from gantry_server.endpoint_doc import render
from gantry_server.http_rules import bound_routes, has_binding
from gantry_server.legacy_endpoints import GANTRY_ROUTE_PREFIXES, GANTRY_ROUTES, LEGACY_ROUTES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def routes() -> dict[tuple[str, str], str]:
    return bound_routes([spec.descriptor for spec in SERVICES])


@pytest.mark.parametrize(("seed", "name", "verb", "path", "rpc"), LEGACY_ROUTES,
                         ids=[f"{r[2]} {r[3]}" for r in LEGACY_ROUTES])
def test_legacy_route_is_bound_to_its_rpc(routes, seed, name, verb, path, rpc):
    assert routes.get((verb, path)) == rpc, f"seed {seed} '{name}': {verb} {path} must be bound to {rpc}"


def test_no_unlisted_route_is_bound(routes):
    legacy = {(verb, path) for _, _, verb, path, _ in LEGACY_ROUTES}
    extra = {r for r in routes if r not in legacy and r not in GANTRY_ROUTES
             and not r[1].startswith(GANTRY_ROUTE_PREFIXES)}
    assert not extra, f"bound routes missing from the golden table: {sorted(extra)}"


def test_every_rpc_has_an_http_binding():
    unbound = [m.full_name for spec in SERVICES for m in spec.descriptor.methods if not has_binding(m)]
    assert not unbound, f"RPCs without google.api.http: {unbound}"


def test_endpoints_doc_lists_every_legacy_endpoint():
    doc = (ROOT / "docs" / "endpoints.md").read_text()
    missing = [f"{verb} {path}" for _, _, verb, path, _ in LEGACY_ROUTES if f"`{verb} {path}`" not in doc]
    assert not missing, f"docs/endpoints.md lacks: {missing}"


def test_endpoints_doc_is_current():
    assert (ROOT / "docs" / "endpoints.md").read_text() == render(), \
        "docs/endpoints.md is stale: run `python scripts/endpoints_doc.py`"
