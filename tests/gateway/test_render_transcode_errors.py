"""Units of the pipeline: JSON rendering, request building, error bodies (no server needed)."""
from __future__ import annotations

import grpc
import pytest
from gantry.broker.v1 import inventory_pb2
from gantry.miner.v1 import miner_pb2
from google.protobuf import json_format
from grpc_health.v1 import health_pb2
from google.api import http_pb2

from gantry_gateway.errors import Failure, render_error
from gantry_gateway.render import FieldRenderer, to_jsonable
from gantry_gateway.transcode import RequestBuilder, TranscodeError
from gantry_server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable, to_rpc_status
from gantry_server.http_rules import HttpBinding


def test_defaults_present_optional_null_int64_number():
    offer = inventory_pb2.Offer(id="vastai-1", gpu_count=2)
    out = to_jsonable(offer)
    assert out["available"] is False and out["max_duration_hours"] == 0 and out["id"] == "vastai-1"
    fields = {f.name: f for f in offer.DESCRIPTOR.fields}
    for name, fd in fields.items():
        assert name in out
        if fd.has_presence and not fd.is_repeated:
            assert out[name] is None
    chute = miner_pb2.Chute(invocation_count=9007199254740993)
    assert to_jsonable(chute)["invocation_count"] == 9007199254740993  # a number, not "9007..."


def test_same_values_as_json_format_where_legacy_agrees():
    node = miner_pb2.MetagraphNode(hotkey="h", stake=1.5, node_id=3)
    node.synced_at.FromSeconds(1_700_000_000)
    ours = to_jsonable(node)
    theirs = json_format.MessageToDict(node, preserving_proto_field_name=True,
                                       always_print_fields_with_no_presence=True)
    theirs["last_updated"] = int(theirs["last_updated"])  # int64: proto3 JSON says "0", legacy clients read 0
    assert {k: v for k, v in ours.items() if v is not None} == theirs


def test_response_body_selects_a_bare_value():
    resp = miner_pb2.GetMetagraphResponse(items=[miner_pb2.MetagraphNode(hotkey="a")])
    assert FieldRenderer(resp.DESCRIPTOR, "items")(resp)[0]["hotkey"] == "a"
    release = miner_pb2.ReleaseJobResponse()
    assert FieldRenderer(release.DESCRIPTOR, "result")(release) is None  # JSON null


def _builder(message_cls, body="", verb="GET", path="/x"):
    method = type("M", (), {"input_type": message_cls.DESCRIPTOR, "full_name": "t.M"})()
    return RequestBuilder(HttpBinding(verb, path, body, "", method), [])


def test_query_scalars_repeated_enums_and_unknown_keys():
    req = _builder(inventory_pb2.ListOffersRequest).build({}, b"", b"provider=vastai&min_vram=24&max_price=1.5&x=1")
    assert req.provider == "vastai" and req.min_vram == 24 and req.max_price == 1.5
    # Enums by name (the protos have none yet; grpc.health's response has one).
    health = _builder(health_pb2.HealthCheckResponse).build({}, b"", b"status=SERVING")
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(TranscodeError) as err:
        _builder(health_pb2.HealthCheckResponse).build({}, b"", b"status=BOGUS")
    [v] = err.value.violations
    assert v.loc == ("query", "status") and v.type == "enum" and "'SERVING'" in v.msg


def test_nested_and_repeated_query_keys():
    rule = http_pb2.HttpRule
    req = _builder(rule).build({}, b"", b"custom.kind=HEAD&custom.path=/a&body=*")
    assert req.custom.kind == "HEAD" and req.custom.path == "/a" and req.body == "*"
    assert "too many values" in str(pytest.raises(TranscodeError, _builder(rule).build, {}, b"", b"selector=a&selector=b").value)
    many = _builder(http_pb2.Http).build({}, b"", b"fully_decode_reserved_expansion=true")
    assert many.fully_decode_reserved_expansion is True


def test_body_star_with_unknown_enum_in_json():
    with pytest.raises(TranscodeError) as err:
        _builder(health_pb2.HealthCheckResponse, body="*", verb="POST").build({}, b'{"status": "NOPE"}', b"")
    assert err.value.violations[0].loc == ("body", "status")


@pytest.mark.parametrize("family,expected_status", [("broker", 400), ("validator", 422)])
def test_invalid_argument_with_violations(family, expected_status):
    exc = InvalidArgument.field("reservation_hours", "must be at most 12")
    f = Failure.from_rpc_status(exc.code, exc.message, to_rpc_status(exc, "rid-1"))
    status, _, body = render_error(f, family, "rid-1")
    assert status == expected_status
    if family == "validator":
        assert b'"loc":["body","reservation_hours"]' in body
    else:
        assert body == b'{"error":"reservation_hours: must be at most 12","request_id":"rid-1"}'


def test_structured_broker_fields_and_legacy_status():
    exc = Unavailable("offer gone", reason="STALE_INVENTORY",
                      metadata={"error_type": "stale_inventory", "retry_suggested": "true", "offer_id": "vastai-1",
                                "provider": "vastai", "message": "Please refresh inventory."})
    f = Failure.from_rpc_status(exc.code, exc.message, to_rpc_status(exc, "r"))
    import orjson
    status, _, body = render_error(f, "broker", "r")
    assert status == 503
    assert orjson.loads(body) == {"error": "offer gone", "error_type": "stale_inventory", "retry_suggested": True,
                                  "offer_id": "vastai-1", "provider": "vastai",
                                  "message": "Please refresh inventory.", "request_id": "r"}
    gone = FailedPrecondition("config expired", http_status=410)
    f = Failure.from_rpc_status(gone.code, gone.message, to_rpc_status(gone))
    assert render_error(f, "validator", "r")[:1] == (410,)


def test_retry_info_becomes_retry_after():
    exc = ResourceExhausted("slow down", retry_after_seconds=2.2)
    f = Failure.from_rpc_status(exc.code, exc.message, to_rpc_status(exc))
    status, headers, _ = render_error(f, "validator", "r")
    assert status == 429 and (b"retry-after", b"3") in headers


def test_plain_status_uses_the_standard_table():
    f = Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "too slow")
    assert render_error(f, "validator", "r")[0] == 504
