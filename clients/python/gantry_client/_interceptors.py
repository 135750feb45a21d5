"""grpc.aio client interceptors: sign every call (grpc-v1) and carry the admin token to AdminService.

>>> channel = grpc.aio.insecure_channel("127.0.0.1:50051", interceptors=SigningInterceptor(signer).for_channel())

grpc.aio files an interceptor object under the first kind it implements only (unary-unary before
unary-stream), so one object implementing both would never see server-streaming calls; `for_channel()` returns
the object plus a unary-stream view of it.
"""
from __future__ import annotations

import grpc
from grpc import aio

from ._signer import SIGNATURE, Signer

ADMIN_PREFIX = "/gantry.admin.v1.AdminService/"


def _method_name(details: aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else method


def _with_metadata(details: aio.ClientCallDetails, extra) -> aio.ClientCallDetails:
    metadata = aio.Metadata(*(details.metadata or ()))
    for key, value in extra:
        metadata.add(key, value)
    return details._replace(metadata=metadata)


def _has(details: aio.ClientCallDetails, key: str) -> bool:
    return any(k == key for k, _ in (details.metadata or ()))


class _UnaryInterceptor(aio.UnaryUnaryClientInterceptor, aio.UnaryStreamClientInterceptor):
    """Adds metadata to unary-request calls (unary-unary and server-streaming: every Gantry RPC)."""

    def _extra(self, rpc: str, request, details: aio.ClientCallDetails) -> tuple:
        raise NotImplementedError

    def _details(self, details, request):
        extra = self._extra(_method_name(details), request, details)
        return _with_metadata(details, extra) if extra else details

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details, request), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details, request), request)

    def for_channel(self) -> list[grpc.aio.ClientInterceptor]:
        """What to pass as a channel's `interceptors` so unary and server-streaming calls both go through."""
        return [self, _StreamView(self)]


class _StreamView(aio.UnaryStreamClientInterceptor):
    def __init__(self, inner: _UnaryInterceptor) -> None:
        self._inner = inner

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await self._inner.intercept_unary_stream(continuation, client_call_details, request)


class SigningInterceptor(_UnaryInterceptor):
    """Signs every call with the gRPC canonical string (grpc-v1: x-chutes-sig-version 2, nonce "{ts}.{random}").

    A call that already carries x-chutes-signature (signed by hand) is left alone. The nonce is single-use, so
    a retried call is signed anew by passing through this interceptor again.
    """

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def _extra(self, rpc, request, details):
        if _has(details, SIGNATURE):
            return ()
        return self.signer.grpc_metadata(rpc, request)


class AdminTokenInterceptor(_UnaryInterceptor):
    """`authorization: Bearer <token>` on AdminService calls only (other policies read `authorization` as an
    API key or a launch token, so the admin token is never sent to them)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an admin token is required")
        self._token = token

    def __repr__(self) -> str:
        return "AdminTokenInterceptor(<token>)"

    def _extra(self, rpc, request, details):
        if not rpc.startswith(ADMIN_PREFIX) or _has(details, "authorization"):
            return ()
        return (("authorization", f"Bearer {self._token}"),)


def interceptors(signer: Signer | None, admin_token: str | None) -> list[grpc.aio.ClientInterceptor]:
    chain: list[grpc.aio.ClientInterceptor] = []
    if admin_token:
        chain += AdminTokenInterceptor(admin_token).for_channel()
    if signer is not None:
        chain += SigningInterceptor(signer).for_channel()
    return chain
