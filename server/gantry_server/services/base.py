"""Fill every RPC a servicer does not implement with an async UNIMPLEMENTED answer.

The generated base classes answer UNIMPLEMENTED from a *sync* method, which grpc.aio runs on a thread
pool; this keeps every handler async and the message explicit about what is missing.
"""
from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from ..errors import Unimplemented


def _stub(full_name: str, streaming: bool):
    message = f"{full_name} is not implemented yet (see README: endpoint status)"
    if streaming:
        async def stream_stub(self, request, context):
            raise Unimplemented(message)
            yield  # pragma: no cover - makes this an async generator

        return stream_stub

    async def unary_stub(self, request, context):
        raise Unimplemented(message)

    return unary_stub


def complete(impl_cls: type, base_cls: type, service: ServiceDescriptor) -> type:
    """Return a subclass of `impl_cls` where every RPC left as the generated default is an async stub."""
    stubs = {}
    for method in service.methods:
        current = getattr(impl_cls, method.name, None)
        if current is None or current is getattr(base_cls, method.name, None):
            stubs[method.name] = _stub(method.full_name, method.server_streaming)
    if not stubs:
        return impl_cls
    return type(impl_cls.__name__, (impl_cls,), stubs)


def implemented(impl_cls: type, base_cls: type, service: ServiceDescriptor) -> set[str]:
    """Full names of the RPCs `impl_cls` really implements (used by docs/endpoints.md and tests)."""
    return {m.full_name for m in service.methods
            if getattr(impl_cls, m.name, None) not in (None, getattr(base_cls, m.name, None))}
