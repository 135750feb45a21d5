"""What a hotkey signature covers, checked where mutation testing found it unchecked (issue 17).

grpc-v1 (and v1 over a native request body) signs sha256 of the request's *deterministic* serialisation. For
messages without map fields every protobuf runtime writes the same bytes; for map fields the order of entries is
not canonical across languages (Python's upb puts "alpha2" before "alpha", Go sorts "alpha" first; see
clients/go/gantry/signer_test.go), and without `deterministic=True` it is not even stable within one process. So:

- the digest the server computes must not depend on map insertion order (kills "deterministic=False");
- no request message of an RPC that accepts a hotkey signature may contain a map field, anywhere in its tree.
  The day one does, Go clients' signatures over it stop verifying: this test fails first, saying why.
"""
from __future__ import annotations

import importlib
import pkgutil

import pytest
from google.protobuf import descriptor_pool, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

import gantry
from gantry_server.auth_policy import POLICIES
from gantry_server.domain.auth import signatures as s

SIGNING_KINDS = {"hotkey", "user"}  # the kinds whose RPCs accept x-chutes-signature (user: hotkey with purpose)


def _load_all_protos() -> None:
    for mod in pkgutil.walk_packages(gantry.__path__, "gantry."):
        if mod.name.endswith("_pb2"):
            importlib.import_module(mod.name)


def signed_request_types() -> dict[str, Descriptor]:
    _load_all_protos()
    pool = descriptor_pool.Default()
    out = {}
    for rpc, policy in POLICIES.items():
        if policy.kind not in SIGNING_KINDS:
            continue
        service, method = rpc.strip("/").split("/")
        out[rpc] = pool.FindServiceByName(service).FindMethodByName(method).input_type
    return out


def map_fields(message: Descriptor, path: str = "", seen: frozenset = frozenset()) -> list[str]:
    """Every map field reachable from `message` (through nested messages, well-known types included)."""
    found = []
    for field in message.fields:
        where = f"{path}{field.name}"
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            found.append(f"{where} (map<...> in {message.full_name})")
            continue
        if field.message_type.full_name not in seen:
            found += map_fields(field.message_type, f"{where}.", seen | {message.full_name})
    return found


def test_the_walk_sees_a_map_where_there_is_one():
    assert map_fields(struct_pb2.Struct.DESCRIPTOR) == ["fields (map<...> in google.protobuf.Struct)"]
    assert map_fields(struct_pb2.ListValue.DESCRIPTOR) == [
        "values.struct_value.fields (map<...> in google.protobuf.Struct)"]


def test_no_request_signed_by_a_hotkey_has_a_map_field():
    types = signed_request_types()
    assert len(types) >= 20, "the table of signed RPCs looks empty: is auth_policy.POLICIES still read here?"
    offenders = {rpc: found for rpc, msg in types.items() if (found := map_fields(msg))}
    assert not offenders, (
        "These hotkey-signed requests contain map fields, whose deterministic serialisation differs between "
        "protobuf runtimes (Python and Go order map entries differently), so a grpc-v1 signature made by a Go "
        "client would not verify on the server. Use a repeated message of (key, value) instead, or define a "
        f"canonical hash for maps in signatures.request_sha256 and every client signer first: {offenders}")


@pytest.mark.parametrize("order", ["fdeacb", "acbdef", "zyx"])
def test_the_request_digest_does_not_depend_on_map_insertion_order(order):
    reference = struct_pb2.Struct()
    for key in sorted(order):
        reference.fields[key].string_value = key
    shuffled = struct_pb2.Struct()
    for key in order:
        shuffled.fields[key].string_value = key
    assert s.request_sha256(shuffled) == s.request_sha256(reference)
    assert s.request_sha256(shuffled) == s.sha256_hex(reference.SerializeToString(deterministic=True))
