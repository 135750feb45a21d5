"""Calling the RPC: in-process through the server's interceptor chain (default), or over a gRPC channel.

In-process is the default because a loopback gRPC hop costs ~15x the ASGI work (architecture §6); the call
goes through `GantryApp.interceptors` exactly as a gRPC call does, so request ids, logs, metrics, error
mapping and auth behave the same on both faces. `RemoteDispatcher` (`gantry gateway --upstream`) is the
option for running the gateway in front of another process.

Both raise `RpcFailed(Failure)` for a non-OK status; streams yield messages as they arrive.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_status import rpc_status

from gantry_server import tracing
from gantry_server.errors import GantryError, internal_status, to_rpc_status
from gantry_server.interceptors.chain import bind
from gantry_server.metadata_keys import CLIENT_CERT

from .context import GatewayAbort, GatewayContext, tls_client_cert
from .errors import Failure
from .transcode import _message_class

log = logging.getLogger("gantry.gateway")


class RpcFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _failure_from_exception(exc: BaseException, context: GatewayContext) -> Failure:
    if isinstance(exc, GatewayAbort):
        return Failure.from_status(exc.status)
    if isinstance(exc, GantryError):  # no interceptor mapped it (empty chain)
        return Failure.from_rpc_status(exc.code, exc.message, to_rpc_status(exc))
    rid = str(uuid.uuid4())
    log.error("unhandled exception in in-process dispatch", exc_info=exc, extra={"request_id": rid})
    return Failure.from_rpc_status(grpc.StatusCode.INTERNAL, "internal error", internal_status(rid))


def _check_code(context: GatewayContext) -> None:
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK and code != 0:
        if not isinstance(code, grpc.StatusCode):
            code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
        raise RpcFailed(Failure(code, context.details() or ""))


class InProcessDispatcher:
    def __init__(self, servicers: dict[str, object], interceptors: list) -> None:
        self.servicers = servicers
        self.interceptors = interceptors
        self._chains: dict[str, Callable] = {}

    def _chain(self, method: MethodDescriptor) -> Callable:
        chain = self._chains.get(method.full_name)
        if chain is None:
            servicer = self.servicers.get(method.containing_service.full_name)
            if servicer is None:
                raise RpcFailed(Failure(grpc.StatusCode.UNIMPLEMENTED,
                                        f"{method.containing_service.full_name} is not served"))
            chain = getattr(servicer, method.name)
            # `interceptors.chain.instrument` may already have bound the chain on the instance (shadowing the
            # class method); wrapping again would run every interceptor twice.
            if method.name not in vars(servicer):
                chain = bind(self.interceptors, chain, f"/{method.containing_service.full_name}/{method.name}",
                             streaming=method.server_streaming)
            self._chains[method.full_name] = chain
        return chain

    async def unary(self, method: MethodDescriptor, request: Message, metadata: tuple, peer: str) -> Message:
        context = GatewayContext(metadata, peer)
        try:
            response = await self._chain(method)(request, context)
        except RpcFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a rendered status
            raise RpcFailed(_failure_from_exception(exc, context)) from None
        _check_code(context)
        return response

    async def stream(self, method: MethodDescriptor, request: Message, metadata: tuple,
                     peer: str) -> AsyncIterator[Message]:
        context = GatewayContext(metadata, peer)
        agen = self._chain(method)(request, context)
        try:
            try:
                async for item in agen:
                    yield item
            except Exception as exc:  # noqa: BLE001
                raise RpcFailed(_failure_from_exception(exc, context)) from None
            _check_code(context)
        finally:
            context.mark_cancelled()
            await agen.aclose()

    async def close(self) -> None:
        return None


class RemoteDispatcher:
    """Over a grpc.aio channel to `upstream` (host:port), rich status decoded from the trailers."""

    def __init__(self, upstream: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.upstream = upstream  # TLS to it when `credentials` are given (`gantry gateway --ca-file`)
        self.channel = (grpc.aio.secure_channel(upstream, credentials) if credentials is not None
                        else grpc.aio.insecure_channel(upstream))
        self._callables: dict[str, Any] = {}

    def _callable(self, method: MethodDescriptor):
        mc = self._callables.get(method.full_name)
        if mc is None:
            path = f"/{method.containing_service.full_name}/{method.name}"
            make = self.channel.unary_stream if method.server_streaming else self.channel.unary_unary
            mc = make(path, request_serializer=lambda m: m.SerializeToString(),
                      response_deserializer=_message_class(method.output_type).FromString)
            self._callables[method.full_name] = mc
        return mc

    @staticmethod
    async def _failure(call, exc: grpc.aio.AioRpcError) -> Failure:
        try:
            rich = await rpc_status.aio.from_call(call)
        except ValueError:
            rich = None
        return Failure.from_rpc_status(exc.code(), exc.details() or "", rich)

    @staticmethod
    def _metadata(metadata: tuple, peer: str) -> tuple:
        metadata += tracing.outgoing_metadata()  # the gateway's span, so the upstream's RPC span joins its trace
        ip = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]") if ":" in peer else ""
        # The upstream believes x-client-cert from this gateway (a trusted proxy): only the certificate this
        # gateway's own TLS handshake verified is forwarded, never one a client wrote in a header.
        metadata = tuple((k, v) for k, v in metadata if k != CLIENT_CERT)
        if cert := tls_client_cert.get():
            metadata += ((CLIENT_CERT, quote(cert)),)
        if not ip:
            return metadata
        # As any proxy: append the address this gateway saw to the client's list; the upstream believes the list
        # only as far as its GANTRY_TRUSTED_PROXIES reach (this gateway, then any trusted proxy before it).
        sent = ", ".join(v for k, v in metadata if k == "x-forwarded-for")
        metadata = tuple((k, v) for k, v in metadata if k != "x-forwarded-for")
        return metadata + (("x-forwarded-for", f"{sent}, {ip}" if sent else ip),)

    async def unary(self, method: MethodDescriptor, request: Message, metadata: tuple, peer: str) -> Message:
        call = self._callable(method)(request, metadata=self._metadata(metadata, peer))
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise RpcFailed(await self._failure(call, exc)) from None

    async def stream(self, method: MethodDescriptor, request: Message, metadata: tuple,
                     peer: str) -> AsyncIterator[Message]:
        call = self._callable(method)(request, metadata=self._metadata(metadata, peer))
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise RpcFailed(await self._failure(call, exc)) from None
        finally:
            call.cancel()  # no-op when finished; cancels the upstream RPC when the client went away

    async def close(self) -> None:
        await self.channel.close()
