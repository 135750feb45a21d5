"""Gantry's REST gateway: legacy REST paths served from the `google.api.http` rules of the protos.

Public surface (everything else is private to the package):

    Gateway              the ASGI app (route -> transcode -> dispatch -> render)
    InProcessDispatcher  call servicers through the server's interceptor chain (default of `gantry serve`)
    RemoteDispatcher     call a remote server over gRPC (`gantry gateway --upstream host:port`)
    HttpServer           uvicorn inside the running event loop (HttpLimits: header/idle timeouts, connection cap)
    in_process_gateway, remote_gateway, build_openapi
"""
from .app import Gateway
from .dispatch import InProcessDispatcher, RemoteDispatcher
from .openapi import build_openapi
from .server import HttpLimits, HttpServer, in_process_gateway, remote_gateway

__all__ = ["Gateway", "InProcessDispatcher", "RemoteDispatcher", "HttpServer", "HttpLimits", "in_process_gateway",
           "remote_gateway", "build_openapi"]
