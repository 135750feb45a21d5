"""Router: literal > {var} > {var=**}, ambiguous sets refused at start, 405 vs 404, safe path values."""
from __future__ import annotations

import pytest

from gantry_gateway.routes import AmbiguousRoutes, BadPathVariable, Router
from gantry_server.http_rules import bindings
from gantry_server.services.registry import SERVICES


def test_every_rule_of_the_protos_compiles_without_ambiguity():
    router = Router.from_bindings(bindings([s.descriptor for s in SERVICES]))
    assert len(router.routes) >= 70


def test_literal_beats_variable_beats_deep_wildcard():
    router = Router.from_templates([("GET", "/files/{path=**}"), ("GET", "/files/{id}"), ("GET", "/files/search"),
                                    ("GET", "/files/{id}/meta")])
    assert router.match("GET", "/files/search").route.template == "/files/search"
    assert router.match("GET", "/files/abc").route.template == "/files/{id}"
    assert router.match("GET", "/files/abc").params == {"id": "abc"}
    assert router.match("GET", "/files/abc/meta").route.template == "/files/{id}/meta"
    deep = router.match("GET", "/files/a/b/c")
    assert deep.route.template == "/files/{path=**}" and deep.params == {"path": "a/b/c"}


def test_servers_nonce_is_the_literal_route():
    router = Router.from_bindings(bindings([s.descriptor for s in SERVICES]))
    assert router.match("GET", "/servers/nonce").route.binding.method.name == "GetNonce"
    assert router.match("GET", "/servers/srv-1").route.binding.method.name == "GetServerDetails"
    assert router.match("GET", "/servers/srv-1/nonce").route.binding.method.name == "GetRuntimeNonce"


def test_trailing_slash_is_part_of_the_route():
    router = Router.from_templates([("POST", "/servers/"), ("GET", "/servers/{server_id}")])
    assert router.match("POST", "/servers/").route.template == "/servers/"
    assert router.match("GET", "/servers/") == "method"  # {server_id} never matches an empty segment
    assert router.match("GET", "/servers") is None


@pytest.mark.parametrize("pairs", [
    [("GET", "/a/{x}"), ("GET", "/a/{y}")],
    [("GET", "/a/{x=**}"), ("GET", "/a/{y=**}")],
    [("DELETE", "/i/{chute_id}/{instance_id}"), ("DELETE", "/i/{a}/{b}")],
])
def test_ambiguous_route_sets_are_refused_at_start(pairs):
    with pytest.raises(AmbiguousRoutes, match="match the same paths"):
        Router.from_templates(pairs)


def test_same_shape_different_methods_is_fine():
    router = Router.from_templates([("GET", "/a/{x}"), ("DELETE", "/a/{y}")])
    assert router.match("DELETE", "/a/1").params == {"y": "1"}


def test_wrong_method_on_a_known_path_is_405_not_404():
    router = Router.from_templates([("GET", "/health")])
    assert router.match("POST", "/health") == "method"
    assert router.allowed("/health") == ["GET"]
    assert router.match("GET", "/nope") is None


@pytest.mark.parametrize("raw", ["/a/..%2Fetc", "/a/..", "/a/.", "/a/%2E%2E", "/a/x%0Ay", "/a/%C3"])
def test_unsafe_single_segment_values_are_refused(raw):
    router = Router.from_templates([("GET", "/a/{x}")])
    with pytest.raises(BadPathVariable):
        router.match("GET", raw)


def test_percent_decoding_happens_after_routing():
    router = Router.from_templates([("GET", "/a/{x}"), ("GET", "/a/{x}/b")])
    m = router.match("GET", "/a/hello%20w%C3%B6rld")
    assert m.params == {"x": "hello wörld"}
