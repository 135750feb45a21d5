"""What a web page open in the developer's browser must not do through the REST gateway.

Gantry's REST clients are programs (miners, TEE VMs, SDKs, curl); none of them sends `Origin`. A browser does, on
every cross-origin state-changing request, and can send "simple" requests (form or text bodies) without a CORS
preflight. So:

- a POST/PUT/PATCH/DELETE carrying an `Origin` not in `GANTRY_HTTP_ALLOWED_ORIGINS` (default: none) is refused
  (403), as is one a browser marks cross-site (`Sec-Fetch-Site`) without an `Origin`;
- a request with a body must say `Content-Type: application/json` (415): a browser cannot send that cross-origin
  without a preflight, which the gateway never answers;
- with the simulated provider (a shell on this machine behind the broker), the `Host` must be a name this
  listener answers to: an IP literal, `localhost` or the listen host. A DNS-rebinding page reaches the gateway
  under its own domain name in `Host`, and is refused (403) before any route runs, GETs included.

    guard = BrowserGuard(allowed_origins=("https://console.example",), listen_host="127.0.0.1", check_host=True)
    refusal = guard.refusal(scope["method"], scope["headers"])   # None, or (status, message)
    refusal = guard.body_refusal(scope["headers"], body)         # once the body is read
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", ""})


def _host_name(host: str) -> str:
    """"example.com:8080" -> "example.com", "[::1]:8080" -> "::1", lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserGuard:
    def __init__(self, allowed_origins: Iterable[str] = (), *, listen_host: str = "",
                 check_host: bool = False) -> None:
        self.allowed_origins = frozenset(o.strip().rstrip("/").lower() for o in allowed_origins if o.strip())
        self.check_host = check_host
        self.host_names = _LOOPBACK_NAMES | {_host_name(listen_host + ":0")}

    @classmethod
    def for_settings(cls, settings) -> "BrowserGuard":
        """Allowed origins from `GANTRY_HTTP_ALLOWED_ORIGINS`; the Host check whenever the simulated provider runs."""
        broker = getattr(settings, "broker", None)
        return cls(getattr(settings, "http_allowed_origins", ()),
                   listen_host=(settings.http_addr or "").rpartition(":")[0],
                   check_host="simulated" in (getattr(broker, "providers", ()) or ()))

    def refusal(self, verb: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
        """Host and Origin, before the body is read: None, or (HTTP status, message)."""
        origin = host = fetch_site = None
        for k, v in headers:
            if k == b"origin":
                origin = v.decode("latin-1")
            elif k == b"host":
                host = v.decode("latin-1")
            elif k == b"sec-fetch-site":
                fetch_site = v.decode("latin-1").lower()
        if self.check_host and host is not None:
            name = _host_name(host)
            if not (name in self.host_names or _is_ip(name)):
                return 403, (f"Host {host[:100]!r} is not a name this server answers to (with the simulated "
                             "provider only IP addresses, localhost or the listen host are: DNS rebinding)")
        if verb in _STATE_CHANGING:
            if origin is not None and origin.strip().rstrip("/").lower() not in self.allowed_origins:
                return 403, (f"cross-origin request from {origin[:100]!r} refused: browser origins must be listed "
                             "in GANTRY_HTTP_ALLOWED_ORIGINS")
            if origin is None and fetch_site in ("cross-site", "same-site"):
                return 403, "cross-site browser request refused (Sec-Fetch-Site without an allowed Origin)"
        return None

    @staticmethod
    def body_refusal(headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, str] | None:
        """A non-empty body must be declared JSON: None, or (415, message)."""
        if not body:
            return None
        content_type = next((v.decode("latin-1") for k, v in headers if k == b"content-type"), None)
        if (content_type or "").partition(";")[0].strip().lower() == "application/json":
            return None
        return 415, (f"request bodies must be JSON sent with 'Content-Type: application/json', got "
                     f"{(content_type or 'no Content-Type')[:100]!r}")
