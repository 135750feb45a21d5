"""Bind the interceptor chain to each RPC handler once, at registration.

Interceptors keep grpc-interceptor's `intercept(method, request, context, method_name)` signature, but the
chain is applied once per method instead of through `grpc.aio.server(interceptors=...)`, which rebuilds a
method handler on every call (measured: -13% unary throughput vs. -4% when bound once). The REST gateway
calls the same bound handlers in-process, so both faces run identical cross-cutting code.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from google.protobuf.descriptor import ServiceDescriptor


def bind(chain: Sequence, handler: Callable, method_name: str, *, streaming: bool) -> Callable:
    """Wrap `handler(request, context)` so `chain[0]` is outermost; `method_name` is `/pkg.Service/Method`."""
    bound = handler
    for interceptor in reversed(chain):
        bound = _wrap(interceptor, bound, method_name, streaming)
    return bound


def _wrap(interceptor, inner: Callable, method_name: str, streaming: bool) -> Callable:
    if streaming:
        async def stream_handler(request, context):
            result = await interceptor.intercept(inner, request, context, method_name)
            async for item in result:
                yield item

        return stream_handler

    async def unary_handler(request, context):
        return await interceptor.intercept(inner, request, context, method_name)

    return unary_handler


def instrument(servicer: object, service: ServiceDescriptor, chain: Sequence) -> object:
    """Shadow each RPC method of `servicer` (on the instance) with its chain-bound version."""
    for method in service.methods:
        handler = getattr(servicer, method.name)
        if method.client_streaming:  # no client-streaming RPCs yet; keep them unwrapped rather than wrong
            continue
        setattr(servicer, method.name, bind(chain, handler, f"/{service.full_name}/{method.name}",
                                            streaming=method.server_streaming))
    return servicer
