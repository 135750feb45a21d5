"""The failure model in one screen.

    GantryError                      every error a handler may raise on purpose
     ├── InvalidArgument             INVALID_ARGUMENT   names the offending field(s) (BadRequest)
     ├── Unauthenticated             UNAUTHENTICATED    says what was expected (purpose, window, version)
     ├── PermissionDenied            PERMISSION_DENIED
     ├── NotFound                    NOT_FOUND
     ├── Conflict                    ALREADY_EXISTS / ABORTED (legacy 409)
     ├── FailedPrecondition          FAILED_PRECONDITION (legacy 400, 410 Gone, 423 Locked via http_status)
     ├── ResourceExhausted           RESOURCE_EXHAUSTED with RetryInfo (legacy 429)
     ├── OutOfRange                  OUT_OF_RANGE       a resume cursor the stream no longer covers (410 Gone)
     ├── Unavailable                 UNAVAILABLE (legacy 502/503)
     └── Unimplemented               UNIMPLEMENTED      an RPC not built yet
    anything else                    INTERNAL with the request id and no stack trace

Each error becomes a `google.rpc.Status` with one `ErrorInfo` (reason, domain, metadata; the legacy HTTP
status rides in metadata["http_status"] because gRPC has no 410/422/423/502), plus `BadRequest` field
violations and `RetryInfo` where they apply. The REST gateway renders that Status in each API family's
legacy body.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "gantry"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class GantryError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: str = "UNKNOWN"
    default_http_status: int = 500

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
        retry_after_seconds: float | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations or [])
        self.retry_after_seconds = retry_after_seconds
        self.http_status = http_status or self.default_http_status


class InvalidArgument(GantryError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"
    default_http_status = 400

    @classmethod
    def field(cls, field: str, description: str, **kw) -> "InvalidArgument":
        return cls(f"{field}: {description}", violations=[FieldViolation(field, description)], **kw)

    @classmethod
    def fields(cls, violations: list[FieldViolation], **kw) -> "InvalidArgument":
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return cls(message, violations=violations, **kw)


class Unauthenticated(GantryError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"
    default_http_status = 401


class PermissionDenied(GantryError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"
    default_http_status = 403


class NotFound(GantryError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"
    default_http_status = 404


class Conflict(GantryError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "CONFLICT"
    default_http_status = 409


class FailedPrecondition(GantryError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"
    default_http_status = 400


class ResourceExhausted(GantryError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RATE_LIMITED"
    default_http_status = 429


class OutOfRange(GantryError):
    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "CURSOR_EXPIRED"
    default_http_status = 410


class Unavailable(GantryError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    default_http_status = 503


class Unimplemented(GantryError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"
    default_http_status = 501


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_rpc_status(err: GantryError, request_id: str | None = None) -> status_pb2.Status:
    """Build the rich `google.rpc.Status` for a domain error (code and message equal the call's)."""
    metadata = dict(err.metadata)
    metadata["http_status"] = str(err.http_status)
    if request_id:
        metadata["request_id"] = request_id
    details = [_pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=metadata))]
    if err.violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in err.violations
        ])))
    if err.retry_after_seconds is not None:
        secs = max(0.0, err.retry_after_seconds)
        details.append(_pack(error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(secs), nanos=int((secs % 1) * 1e9)))))
    return status_pb2.Status(code=err.code.value[0], message=err.message, details=details)


def internal_status(request_id: str) -> status_pb2.Status:
    """What a caller sees for an unexpected exception: a request id to quote, never a stack trace."""
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN,
                                       metadata={"request_id": request_id, "http_status": "500"})
    return status_pb2.Status(code=code_pb2.INTERNAL,
                             message=f"internal error (request id {request_id})", details=[_pack(info)])


# ---- a dependency that is down ------------------------------------------------------------------------------------
# PostgreSQL or Redis unreachable (refused, reset, restarting, pool exhausted) is not a bug of the call: it is
# UNAVAILABLE (REST 503), the caller may retry, and the log gets one line instead of a traceback.

def _dependency_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    import asyncpg  # noqa: PLC0415
    import redis.exceptions  # noqa: PLC0415
    import sqlalchemy.exc  # noqa: PLC0415

    database = (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError,
                asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
                asyncpg.exceptions.ConnectionDoesNotExistError,
                sqlalchemy.exc.TimeoutError)  # TimeoutError: no pool connection within pool_timeout
    cache = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    return database, cache


_CLASSES: tuple[tuple[type, ...], tuple[type, ...]] | None = None


def dependency_down(exc: BaseException) -> str | None:
    """"PostgreSQL" or "Redis" when `exc` (or what it wraps) says that dependency cannot be reached, else None."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _dependency_classes()
    database, cache = _CLASSES
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, cache):
            return "Redis"
        if isinstance(current, database) or getattr(current, "connection_invalidated", False):
            return "PostgreSQL"
        if type(current).__module__.startswith("asyncpg") and "connection is closed" in str(current):
            return "PostgreSQL"
        if isinstance(current, OSError) and _from_database(current):
            return "PostgreSQL"
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return None


def _from_database(exc: OSError) -> bool:
    """A refused/reset socket raised while SQLAlchemy or asyncpg was connecting (a provider's own socket errors
    are ProviderErrors, mapped by their adapters)."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("asyncpg", "sqlalchemy")):
            return True
        tb = tb.tb_next
    return False


def unavailable_for(exc: BaseException) -> Unavailable | None:
    """The UNAVAILABLE a call answers when `exc` means a dependency is down, else None."""
    which = dependency_down(exc)
    if which is None:
        return None
    return Unavailable(f"{which} is unavailable; retry shortly", reason="DEPENDENCY_UNAVAILABLE",
                       metadata={"dependency": which.lower()}, retry_after_seconds=1)
