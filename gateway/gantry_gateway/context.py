"""A lightweight `grpc.aio.ServicerContext` for in-process dispatch from the REST gateway.

Handlers and interceptors see the same surface as on the gRPC path: metadata, peer, abort, codes,
trailing metadata, deadlines. `abort`/`abort_with_status` raise `GatewayAbort` (an `aio.AbortError`, as
the interceptors expect) carrying a `grpc.Status`, which the gateway renders in the family's legacy body.
"""
from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

import grpc
from grpc import aio


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata=()) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)


class GatewayAbort(aio.AbortError):
    """Raised by the context's abort methods; `status` is what a gRPC client would have received."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


# The PEM client certificate the REST listener's TLS handshake verified (mTLS), set per request by the server.
tls_client_cert: ContextVar[str | None] = ContextVar("gantry_tls_client_cert", default=None)


class GatewayContext:
    """What `grpc.aio.ServicerContext` offers, minus the transport."""

    __slots__ = ("_metadata", "_peer", "_code", "_details", "_trailing", "_initial", "_deadline", "_cancelled")

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str, timeout: float | None = None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: tuple = ()
        self._initial: tuple = ()
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._cancelled = False

    # -- what handlers read
    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._cancelled

    def auth_context(self) -> dict:
        """As grpc.aio's: the verified client certificate under `x509_pem_cert` when the connection has one."""
        cert = tls_client_cert.get()
        return {"transport_security_type": [b"ssl"], "x509_pem_cert": [cert.encode()]} if cert else {}

    def peer_identities(self):
        return None

    def peer_identity_key(self):
        return None

    # -- what handlers write
    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str | None:
        return self._details

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self):
        return self._trailing

    async def send_initial_metadata(self, initial_metadata) -> None:
        self._initial = tuple(initial_metadata)

    def initial_metadata(self):
        return self._initial

    def set_compression(self, compression) -> None:  # noqa: ARG002 - no transport to compress
        return None

    def disable_next_message_compression(self) -> None:
        return None

    def add_done_callback(self, callback: Any) -> None:  # noqa: ARG002 - nothing outlives the request
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self._code, self._details = code, details
        raise GatewayAbort(_Status(code, details, tuple(trailing_metadata) or self._trailing))

    async def abort_with_status(self, status: grpc.Status) -> None:
        self._code, self._details = status.code, status.details
        raise GatewayAbort(status)

    def mark_cancelled(self) -> None:
        self._cancelled = True
