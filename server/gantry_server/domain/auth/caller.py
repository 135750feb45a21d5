"""Who is calling: the identity the auth interceptor attaches for handlers, and the caller's IP.

Handlers read `current_caller.get()`; the interceptor sets it on every call (ANONYMOUS for policy none).
"""
from __future__ import annotations

import ipaddress
from contextvars import ContextVar
from dataclasses import dataclass, field

from ...metadata_keys import FORWARDED_FOR


@dataclass(frozen=True)
class Caller:
    kind: str  # "anonymous" | "hotkey" | "user" | "admin" | "launch_token" | "boot_token" | "nonce"
    ip: str = ""
    hotkey: str | None = None
    user_id: str | None = None
    key_type: str | None = None  # sr25519 / ed25519 for hotkey callers
    sig_version: str | None = None  # "1", "2", "grpc-v1"
    registered: bool = False  # the hotkey is in metagraph_nodes on the configured netuid
    attestation_nonce: str | None = None  # consumed by the interceptor, for the handler's report-data check
    claims: dict = field(default_factory=dict)  # launch-token claims
    vm_name: str | None = None  # boot token binding


ANONYMOUS = Caller(kind="anonymous")
current_caller: ContextVar[Caller] = ContextVar("gantry_current_caller", default=ANONYMOUS)


def peer_ip(peer: str | None) -> str:
    """The IP of a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5", "unix:..."); "" when there is none."""
    if not peer:
        return ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        host = rest.rpartition(":")[0]
        return host.strip("[]").split("%")[0]
    return ""


class TrustedProxies:
    """`GANTRY_TRUSTED_PROXIES`: addresses or networks whose `x-forwarded-for` is believed (gRPC metadata, and the
    REST gateway's `X-Forwarded-For` header, which it forwards as metadata beside the TCP peer).

    >>> TrustedProxies(["10.0.0.0/8"]).client_ip("10.1.2.3", "198.51.100.7, 10.1.2.3")
    '198.51.100.7'
    >>> TrustedProxies([]).client_ip("203.0.113.9", "198.51.100.7")
    '203.0.113.9'
    """

    def __init__(self, entries) -> None:
        self.networks = tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())

    def trusts(self, ip: str) -> bool:
        if not self.networks or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    def of_call(self, context) -> str:
        """The caller's address in an RPC without authentication (the interceptor records none): as the
        interceptor would compute it."""
        forwarded = dict(context.invocation_metadata() or ()).get(FORWARDED_FOR)
        return self.client_ip(peer_ip(context.peer()), forwarded)

    def client_ip(self, peer_ip_: str, forwarded_for: str | None) -> str:
        """The one rule of both faces: walk `x-forwarded-for` from the right (each proxy appends the address it
        saw) while the hop is a trusted proxy; the first untrusted address is the client. Entries left of it were
        written by the client and are never believed (`nginx $proxy_add_x_forwarded_for` keeps them).

        >>> TrustedProxies(["10.0.0.0/8"]).client_ip("10.1.2.3", "6.6.6.6, 198.51.100.7")  # forged left entry
        '198.51.100.7'
        """
        if not forwarded_for or not self.trusts(peer_ip_):
            return peer_ip_
        client = peer_ip_
        for entry in reversed(forwarded_for.split(",")):
            try:
                client = str(ipaddress.ip_address(entry.strip()))
            except ValueError:
                return client
            if not self.trusts(client):
                return client
        return client
