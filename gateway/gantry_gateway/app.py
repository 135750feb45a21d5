"""The ASGI app: route -> transcode -> dispatch -> render, with the family's legacy error bodies.

    gateway = Gateway.for_services(descriptors, InProcessDispatcher(app.servicers, app.interceptors))
    # any ASGI server: uvicorn.Server(uvicorn.Config(gateway, ...))

No handler per endpoint: every route comes from a `google.api.http` rule and every legacy quirk from the
tables in `families.py`.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from google.protobuf.descriptor import ServiceDescriptor

from gantry_server.http_rules import HttpBinding, bindings
from gantry_server.metadata_keys import (BODY_SHA256, FORWARDED_FOR, FORWARDED_HEADERS, HTTP_METHOD, HTTP_PATH,
                                        IDEMPOTENCY_KEY, REQUEST_ID)

from . import families as fam
from .browser import BrowserGuard
from .dispatch import RpcFailed
from .errors import Failure, plain_error, render_error, stream_error_payload
from gantry_server.lru import Lru

from .render import FieldRenderer, encoder_for
from .routes import BadPathVariable, Match, Router
from .transcode import RequestBuilder, TranscodeError, Violation, check_path_fields

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB, as the broker reference
RENDER_CACHE_SIZE = 512  # rendered CACHED_READS responses kept
RENDER_CACHE_BYTES = 64 << 20  # and at most this many body bytes
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_FORWARDED = frozenset(h.encode() for h in FORWARDED_HEADERS)
_XFF = FORWARDED_FOR.encode()
_IDEMPOTENCY_KEY = IDEMPOTENCY_KEY.encode()

_BODY_VERBS = frozenset({"POST", "PUT", "PATCH"})  # methods whose raw body is hashed for signatures


_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*\Z")


def _printable_ascii(value: bytes) -> bool:
    return _PRINTABLE_ASCII.match(value) is not None


@dataclass
class Endpoint:
    """Everything decided at start-up for one HTTP rule."""

    binding: HttpBinding
    builder: RequestBuilder
    full_name: str
    unary: fam.Unary
    stream: fam.Stream | None
    success: int
    render: object  # message -> jsonable
    cached: bool = False  # fam.CACHED_READS: rendered once per response object, ETag / If-None-Match


class _BodyTooLarge(Exception):
    pass


class _BadHeader(Exception):
    """A header the API reads has a value that cannot be carried (not printable ASCII): refused, never dropped."""


class _ClientGone(Exception):
    """The client went away (or the server's read deadline closed the connection) before its body arrived: the
    request is dropped, never dispatched with part of a body."""


class Gateway:
    def __init__(self, http_bindings: list[HttpBinding], dispatcher, *, max_body_bytes: int = DEFAULT_MAX_BODY,
                 openapi: bytes | None = None, browser: BrowserGuard | None = None) -> None:
        self.router = Router.from_bindings(http_bindings)
        self.dispatcher = dispatcher
        self.max_body_bytes = max_body_bytes
        self.browser = browser or BrowserGuard()  # no browser origins; Host unchecked (for_settings decides)
        self.endpoints: dict[int, Endpoint] = {}
        for route in self.router.routes:
            b = route.binding
            check_path_fields(b, route.variables)
            out = b.method.output_type
            full = b.method.full_name
            self.endpoints[id(route)] = Endpoint(
                binding=b,
                builder=RequestBuilder(b, route.variables),
                full_name=full,
                unary=fam.UNARY.get(full, fam.Unary()),
                stream=fam.STREAMS.get(full, fam.Stream()) if b.method.server_streaming else None,
                success=fam.SUCCESS_STATUS.get(full, 200),
                render=FieldRenderer(out, b.response_body) if b.response_body else encoder_for(out),
                cached=full in fam.CACHED_READS,
            )
        # id(response) -> (response, status, headers, body, etag); the entry holds the message, so its id is not
        # reused while cached. Services return one shared message per snapshot for CACHED_READS.
        self._rendered: Lru = Lru(RENDER_CACHE_SIZE, max_weight=RENDER_CACHE_BYTES)
        self._openapi = openapi
        self._bindings = http_bindings

    @classmethod
    def for_services(cls, services: Iterable[ServiceDescriptor], dispatcher, **kw) -> "Gateway":
        return cls(bindings(list(services)), dispatcher, **kw)

    def openapi_bytes(self) -> bytes:
        if self._openapi is None:
            from .openapi import build_openapi

            self._openapi = orjson.dumps(build_openapi(self._bindings))
        return self._openapi

    # ------------------------------------------------------------------ ASGI entry point
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = scope["headers"]
        rid = None
        for k, v in headers:
            if k == b"x-request-id":
                text = v.decode("latin-1")
                if _REQUEST_ID_RE.match(text):
                    rid = text
                break
        rid = rid or str(uuid.uuid4())
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        raw_path = raw_path.split("?", 1)[0]
        family = fam.family_of(raw_path)
        verb = scope["method"]
        try:
            await self._handle(scope, receive, send, verb, raw_path, family, rid)
        except _ClientGone:
            return
        except _BodyTooLarge:
            await self._send(send, rid, *plain_error(413, family, rid, "http: request body too large",
                                                     "Request body too large"))
        except _BadHeader as exc:
            message = f"header {exc}: must be printable ASCII"
            await self._send(send, rid, *plain_error(400, family, rid, message))

    async def _handle(self, scope, receive, send, verb: str, raw_path: str, family: str, rid: str) -> None:
        if refused := self.browser.refusal(verb, scope["headers"]):
            await self._send(send, rid, *plain_error(refused[0], family, rid, refused[1]))
            return
        if raw_path == "/openapi.json" and verb == "GET":
            await self._send(send, rid, 200, [(b"content-type", b"application/json")], self.openapi_bytes())
            return
        try:
            match = self.router.match(verb, raw_path)
        except BadPathVariable as exc:
            body = await self._read_body(scope, receive)  # drain, so the connection stays usable
            del body
            await self._fail(send, family, rid,
                             Failure.from_violations([Violation(("path", exc.name), str(exc), "value_error")]))
            return
        if match is None:
            await self._send(send, rid, *plain_error(404, family, rid, "404 page not found", "Not Found"))
            return
        if match == "method":
            allow = ", ".join(self.router.allowed(raw_path)).encode()
            await self._send(send, rid, *plain_error(405, family, rid, "405 method not allowed",
                                                     "Method Not Allowed", [(b"allow", allow)]))
            return
        assert isinstance(match, Match)
        endpoint = self.endpoints[id(match.route)]
        body = await self._read_body(scope, receive)
        if refused := self.browser.body_refusal(scope["headers"], body):
            await self._send(send, rid, *plain_error(refused[0], family, rid, refused[1]))
            return
        try:
            request = endpoint.builder.build(match.params, body, scope.get("query_string", b""))
        except TranscodeError as exc:
            await self._fail(send, family, rid, Failure.from_violations(exc.violations))
            return
        metadata = self._metadata(scope, verb, raw_path, body, rid)
        peer = _peer(scope)
        method = endpoint.binding.method
        if endpoint.stream is not None:
            if endpoint.stream.sse_on_accept and _accepts_event_stream(scope):
                endpoint = dataclasses.replace(endpoint,
                                               stream=dataclasses.replace(endpoint.stream, framing=fam.SSE_EVENTS))
            await self._stream(endpoint, request, metadata, peer, family, rid, receive, send)
            return
        try:
            response = await self.dispatcher.unary(method, request, metadata, peer)
        except RpcFailed as exc:
            await self._fail(send, family, rid, exc.failure)
            return
        if endpoint.cached:
            await self._send_cached(scope, send, rid, endpoint, response)
            return
        await self._send(send, rid, *self._render_unary(endpoint, response))

    # ------------------------------------------------------------------ request side
    async def _read_body(self, scope, receive) -> bytes:
        limit = self.max_body_bytes
        for k, v in scope["headers"]:
            if k == b"content-length":
                if v.isdigit() and int(v) > limit:
                    raise _BodyTooLarge
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    @staticmethod
    def _metadata(scope, verb: str, raw_path: str, body: bytes, rid: str) -> tuple:
        md: list[tuple[str, str]] = []
        forwarded_for: list[str] = []
        for k, v in scope["headers"]:
            if k == _IDEMPOTENCY_KEY and not _printable_ascii(v):  # dropped, the retry could never match it
                raise _BadHeader("Idempotency-Key")
            if k in _FORWARDED and k != b"x-request-id" and _printable_ascii(v):
                if k == _XFF:
                    forwarded_for.append(v.decode())
                else:
                    md.append((k.decode(), v.decode()))
        if forwarded_for:  # one list, as RFC 9110 joins repeated header lines; the server's rule reads it
            md.append((FORWARDED_FOR, ", ".join(forwarded_for)))
        query = scope.get("query_string", b"")
        path = raw_path + ("?" + query.decode("latin-1") if query else "")
        md.append((REQUEST_ID, rid))
        md.append((HTTP_METHOD, verb))
        md.append((HTTP_PATH, path if _printable_ascii(path.encode("latin-1", "replace")) else raw_path))
        # As the reference's middleware: only POST/PUT/PATCH bodies are hashed; others sign '' under v2.
        md.append((BODY_SHA256, hashlib.sha256(body).hexdigest() if verb in _BODY_VERBS else ""))
        return tuple(md)

    # ------------------------------------------------------------------ response side
    def _render_unary(self, ep: Endpoint, response) -> tuple[int, list, bytes]:
        status = ep.success
        spec = ep.unary
        for field, value, code in spec.status_when:
            if getattr(response, field) == value:
                status = code
        if spec.kind == fam.TEXT:
            text = getattr(response, ep.binding.response_body)
            return status, [(b"content-type", b"text/plain; charset=utf-8")], text.encode()
        if spec.kind == fam.RAW:
            ctype = getattr(response, spec.content_type_field) or "application/octet-stream"
            body = getattr(response, spec.body_field)
            return status, [(b"content-type", ctype.encode())], body if isinstance(body, bytes) else body.encode()
        body = ep.render(response)
        if spec.keys_by_presence is not None:
            field, when_set, when_unset = spec.keys_by_presence
            body = {k: body[k] for k in (when_set if response.HasField(field) else when_unset)}
        return status, [(b"content-type", b"application/json")], orjson.dumps(body)

    async def _send_cached(self, scope, send, rid: str, ep: Endpoint, response) -> None:
        """A CACHED_READS answer: bytes and ETag rendered once per response object; 304 when the client has them."""
        entry = self._rendered.get(id(response))
        if entry is None or entry[0] is not response:
            status, headers, body = self._render_unary(ep, response)
            etag = b'"' + hashlib.blake2b(body, digest_size=16).hexdigest().encode() + b'"'
            entry = (response, status, headers + [(b"etag", etag)], body, etag)
            self._rendered.put(id(response), entry, weight=len(body))
        _, status, headers, body, etag = entry
        if status == 200:
            for k, v in scope["headers"]:
                if k == b"if-none-match":
                    if _etag_matches(v, etag):
                        await send({"type": "http.response.start", "status": 304,
                                    "headers": [(b"etag", etag), (b"x-request-id", rid.encode())]})
                        await send({"type": "http.response.body", "body": b""})
                        return
                    break
        await self._send(send, rid, status, headers, body)

    async def _fail(self, send, family: str, rid: str, failure: Failure) -> None:
        await self._send(send, rid, *render_error(failure, family, rid))

    @staticmethod
    async def _send(send, rid: str, status: int, headers: list, body: bytes) -> None:
        headers = headers + [(b"content-length", str(len(body)).encode()), (b"x-request-id", rid.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ streams
    def _frame(self, ep: Endpoint, message) -> bytes:
        framing = ep.stream.framing
        keepalive = ep.stream.keepalive_field
        if keepalive and getattr(message, keepalive):
            return b": keep-alive\n\n" if framing == fam.SSE_EVENTS else orjson.dumps({keepalive: True}) + b"\n"
        if framing == fam.SSE_EVENTS:
            return (b"id: " + getattr(message, ep.stream.id_field).encode() + b"\ndata: "
                    + orjson.dumps(ep.render(message)) + b"\n\n")
        if framing == fam.SSE_RAW:
            return message.raw
        if framing == fam.CSV:
            data = getattr(message, ep.binding.response_body or "data")
            return data if isinstance(data, bytes) else data.encode()
        if framing == fam.NDJSON:
            return orjson.dumps(ep.render(message)) + b"\n"
        return b"data: " + orjson.dumps(ep.render(message)) + b"\n\n"

    @staticmethod
    def _error_frame(framing: str, payload: dict) -> bytes:
        if framing in (fam.SSE_ROWS, fam.SSE_LOG, fam.SSE_RAW, fam.SSE_EVENTS):
            return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
        if framing == fam.CSV:
            return b"\n# error: " + orjson.dumps(payload) + b"\n"
        return orjson.dumps({"error": payload}) + b"\n"

    @staticmethod
    def _stream_headers(ep: Endpoint) -> list:
        framing = ep.stream.framing
        if framing in (fam.SSE_ROWS, fam.SSE_LOG, fam.SSE_RAW, fam.SSE_EVENTS):
            return [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no")]
        if framing == fam.CSV:
            disp = f'attachment; filename="{ep.stream.filename}"'.encode()
            return [(b"content-type", b"text/csv; charset=utf-8"), (b"content-disposition", disp)]
        return [(b"content-type", b"application/x-ndjson")]

    async def _stream(self, ep: Endpoint, request, metadata, peer, family, rid, receive, send) -> None:
        """Write each message as it arrives; a client disconnect cancels the RPC (its `finally` runs)."""
        pump = asyncio.ensure_future(self._pump(ep, request, metadata, peer, family, rid, send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watcher):
                if not task.done():
                    task.cancel()
            for task in (pump, watcher):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if pump in done and pump.exception() is not None:
            raise pump.exception()

    async def _pump(self, ep: Endpoint, request, metadata, peer, family, rid, send) -> None:
        agen = self.dispatcher.stream(ep.binding.method, request, metadata, peer)
        started = False
        try:
            try:
                async for message in agen:
                    chunk = self._frame(ep, message)
                    if not started:
                        await self._start_stream(ep, rid, send)
                        started = True
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except RpcFailed as exc:
                if not started:
                    await self._fail(send, family, rid, exc.failure)
                    return
                payload = stream_error_payload(exc.failure, family, rid)
                await send({"type": "http.response.body", "body": self._error_frame(ep.stream.framing, payload),
                            "more_body": True})
            else:
                if not started:
                    await self._start_stream(ep, rid, send)
                    field = ep.stream.empty_marker_field
                    if field and getattr(request, field, False):
                        await send({"type": "http.response.body", "body": fam.NO_ITEMS, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await agen.aclose()

    async def _start_stream(self, ep: Endpoint, rid: str, send) -> None:
        headers = self._stream_headers(ep) + [(b"x-request-id", rid.encode())]
        await send({"type": "http.response.start", "status": ep.success, "headers": headers})


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """If-None-Match (RFC 9110 13.1.2): `*`, or a comma list of entity tags compared weakly."""
    if header.strip() == b"*":
        return True
    return any(tag.strip().removeprefix(b"W/") == etag for tag in header.split(b","))


def _accepts_event_stream(scope) -> bool:
    return any(k == b"accept" and b"text/event-stream" in v.lower() for k, v in scope["headers"])


async def _wait_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _peer(scope) -> str:
    client = scope.get("client")
    if not client:
        return "unknown"
    host, port = client[0], client[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
