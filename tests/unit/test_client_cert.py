"""Which client certificate the report-data binding believes: a trusted proxy's header, else the connection's."""
from __future__ import annotations

from gantry_server.domain.auth.caller import TrustedProxies
from gantry_server.domain.auth.client_cert import client_cert

PROXIES = TrustedProxies(["10.0.0.0/8"])
HEADER = "-----BEGIN%20CERTIFICATE-----%0Aforwarded"
CONNECTION = b"-----BEGIN CERTIFICATE-----\nfrom-the-handshake"


class Call:
    """What a grpc.aio ServicerContext (or the gateway's) exposes for this: metadata, peer, auth context."""

    def __init__(self, peer: str, header: str | None = None, tls: bytes | None = None) -> None:
        self._md = (("x-client-cert", header),) if header else ()
        self._peer, self._tls = peer, tls

    def invocation_metadata(self):
        return self._md

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict:
        return {"x509_pem_cert": [self._tls]} if self._tls else {}


def test_a_header_from_an_untrusted_peer_is_ignored():
    assert client_cert(Call("ipv4:203.0.113.9:5000", HEADER), PROXIES) is None
    assert client_cert(Call("ipv4:203.0.113.9:5000", HEADER, CONNECTION), PROXIES) == CONNECTION.decode()


def test_a_trusted_proxy_forwards_the_certificate_it_terminated():
    assert client_cert(Call("ipv4:10.1.2.3:5000", HEADER), PROXIES) == HEADER
    assert client_cert(Call("ipv4:10.1.2.3:5000", HEADER, CONNECTION), PROXIES) == HEADER  # not the proxy's own


def test_without_a_header_the_connection_certificate_is_used():
    assert client_cert(Call("ipv6:[::1]:5000", tls=CONNECTION), TrustedProxies([])) == CONNECTION.decode()
    assert client_cert(Call("ipv4:127.0.0.1:1"), PROXIES) is None


def test_the_remote_gateway_forwards_only_the_certificate_its_own_handshake_verified():
    """`gantry gateway --upstream`: the upstream trusts the gateway as a proxy, so a client's header must not pass."""
    from urllib.parse import unquote

    from gantry_gateway.context import tls_client_cert
    from gantry_gateway.dispatch import RemoteDispatcher

    sent = (("x-client-cert", HEADER), ("x-chutes-hotkey", "5F"))
    assert RemoteDispatcher._metadata(sent, "ipv4:198.51.100.7:1") == (
        ("x-chutes-hotkey", "5F"), ("x-forwarded-for", "198.51.100.7"))
    token = tls_client_cert.set(CONNECTION.decode())
    try:
        md = dict(RemoteDispatcher._metadata(sent, "ipv4:198.51.100.7:1"))
    finally:
        tls_client_cert.reset(token)
    assert unquote(md["x-client-cert"]) == CONNECTION.decode()
