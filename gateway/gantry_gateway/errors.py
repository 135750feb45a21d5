"""A gRPC status (with google.rpc details) -> the legacy error response of each API family.

    failure = Failure.from_status(grpc_status)          # in-process abort
    failure = Failure.from_rpc_status(code, msg, rich)  # remote call
    status, headers, body = render_error(failure, family, request_id)

HTTP status: `ErrorInfo.metadata["http_status"]` when present (gRPC has no 410/422/423/502), else the
standard gRPC -> HTTP table. Broker family: `{"error": msg, "request_id": id}` plus every other ErrorInfo
metadata entry as a structured field (`error_type`, `retry_suggested` as a bool, `offer_id`, ...).
Validator family: `{"detail": msg}`; INVALID_ARGUMENT with field violations (from request parsing or a
BadRequest detail) is FastAPI's 422 `{"detail": [{"loc", "msg", "type"}]}`. RetryInfo -> `Retry-After`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
import orjson
from google.rpc import error_details_pb2, status_pb2

from .families import BROKER
from .transcode import Violation

GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}

# ErrorInfo metadata values are strings; these broker fields are typed in the legacy body.
BOOL_FIELDS = frozenset({"retry_suggested"})
NUMBER_FIELDS = frozenset({"requested_gb", "minimum_gb", "recommended_gb", "retries_attempted"})
HIDDEN_FIELDS = frozenset({"http_status", "request_id"})
_DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    retry_after: float | None = None
    parse_error: bool = False  # raised by the gateway before the RPC ran

    @classmethod
    def from_rpc_status(cls, code: grpc.StatusCode, message: str, rich: status_pb2.Status | None) -> "Failure":
        out = cls(code=code, message=message or "")
        if rich is None:
            return out
        out.message = rich.message or out.message
        for any_ in rich.details:
            if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_.Unpack(info)
                out.reason = info.reason
                out.metadata.update(info.metadata)
            elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                any_.Unpack(br)
                out.violations.extend(
                    Violation(("body", *v.field.split(".")) if v.field else ("body",), v.description, "value_error")
                    for v in br.field_violations)
            elif any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                ri = error_details_pb2.RetryInfo()
                any_.Unpack(ri)
                out.retry_after = ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
        return out

    @classmethod
    def from_status(cls, status: grpc.Status) -> "Failure":
        code = status.code if isinstance(status.code, grpc.StatusCode) else _BY_NUMBER.get(
            status.code, grpc.StatusCode.UNKNOWN)
        rich = None
        for key, value in status.trailing_metadata or ():
            if key == _DETAILS_KEY:
                rich = status_pb2.Status.FromString(value)
        return cls.from_rpc_status(code, status.details or "", rich)

    @classmethod
    def from_violations(cls, violations: list[Violation]) -> "Failure":
        message = "; ".join(_describe(v) for v in violations)
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message, reason="INVALID_ARGUMENT",
                   violations=violations, parse_error=True)

    def http_status(self) -> int:
        raw = self.metadata.get("http_status", "")
        if raw.isdigit() and 100 <= int(raw) <= 599:
            return int(raw)
        return GRPC_TO_HTTP.get(self.code, 500)


def _describe(v: Violation) -> str:
    if v.type == "json_invalid":
        return f"invalid request body: {v.msg}"
    if v.loc == ("body",) and v.type == "missing":
        return "request body is required"
    return f"invalid {v.field}: {v.msg}"


def _typed(key: str, value: str):
    if key in BOOL_FIELDS:
        return value.strip().lower() in ("true", "1", "yes")
    if key in NUMBER_FIELDS:
        try:
            number = float(value)
            return int(number) if number.is_integer() else number
        except ValueError:
            return value
    if value[:1] in ("{", "[") and value[-1:] in ("}", "]"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def broker_body(failure: Failure, request_id: str) -> dict:
    body: dict = {"error": failure.message}
    for key, value in failure.metadata.items():
        if key not in HIDDEN_FIELDS and key != "error":
            body[key] = _typed(key, value)
    body["request_id"] = failure.metadata.get("request_id") or request_id
    return body


def render_error(failure: Failure, family: str, request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    status = failure.http_status()
    headers = [(b"content-type", b"application/json")]
    if failure.retry_after is not None:
        headers.append((b"retry-after", str(max(0, math.ceil(failure.retry_after))).encode()))
    if family == BROKER:
        return status, headers, orjson.dumps(broker_body(failure, request_id))
    if failure.code == grpc.StatusCode.INVALID_ARGUMENT and failure.violations and status in (400, 422):
        detail = [{"loc": list(v.loc), "msg": v.msg, "type": v.type} for v in failure.violations]
        return 422, headers, orjson.dumps({"detail": detail})
    return status, headers, orjson.dumps({"detail": failure.message})


def plain_error(status: int, family: str, request_id: str, message: str, detail: str | None = None,
                extra_headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, list, bytes]:
    """Gateway-level errors (no route, wrong method, body too large) in the family's body."""
    headers = [(b"content-type", b"application/json"), *(extra_headers or [])]
    if family == BROKER:
        return status, headers, orjson.dumps({"error": message, "request_id": request_id})
    return status, headers, orjson.dumps({"detail": detail or message})


def stream_error_payload(failure: Failure, family: str, request_id: str) -> dict:
    """The final in-band error of a stream whose 200 status is already out."""
    if family == BROKER:
        return broker_body(failure, request_id)
    return {"detail": failure.message, "status": failure.http_status()}
