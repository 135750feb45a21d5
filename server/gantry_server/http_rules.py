"""Read `google.api.http` rules from service descriptors (contract tests, endpoint doc, REST gateway)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class HttpBinding:
    verb: str  # upper-case HTTP method
    path: str  # template, e.g. /instances/{chute_id}/
    body: str  # "", "*" or a top-level field name
    response_body: str
    method: MethodDescriptor


def _rule_bindings(rule: http_pb2.HttpRule, method: MethodDescriptor) -> Iterator[HttpBinding]:
    kind = rule.WhichOneof("pattern")
    if kind in _VERBS:
        yield HttpBinding(kind.upper(), getattr(rule, kind), rule.body, rule.response_body, method)
    elif kind == "custom":
        yield HttpBinding(rule.custom.kind.upper(), rule.custom.path, rule.body, rule.response_body, method)
    for extra in rule.additional_bindings:
        yield from _rule_bindings(extra, method)


def bindings(services: Iterable[ServiceDescriptor]) -> list[HttpBinding]:
    out: list[HttpBinding] = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if options.HasExtension(annotations_pb2.http):
                out.extend(_rule_bindings(options.Extensions[annotations_pb2.http], method))
    return out


def bound_routes(services: Iterable[ServiceDescriptor]) -> dict[tuple[str, str], str]:
    """(verb, path template) -> RPC full name."""
    return {(b.verb, b.path): b.method.full_name for b in bindings(services)}


def has_binding(method: MethodDescriptor) -> bool:
    return method.GetOptions().HasExtension(annotations_pb2.http)
