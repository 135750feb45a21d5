"""gRPC interceptors. One composite interceptor on the hot path (each extra one costs 2-4% per RPC)."""
from .observability import ObservabilityInterceptor

__all__ = ["ObservabilityInterceptor"]
