"""The client certificate of a call, for the TDX report-data binding (GANTRY_TDX_CLIENT_CERT_BINDING).

Believed from two places only:
- a TLS-terminating proxy in GANTRY_TRUSTED_PROXIES that forwards it as `x-client-cert` (URL-encoded PEM);
- the connection itself, when Gantry terminates mTLS (GANTRY_TLS_CLIENT_CA_FILE): the certificate the handshake
  verified, from `context.auth_context()` (gRPC, and the REST gateway's context on an HTTPS request).
An `x-client-cert` header from anyone else is ignored: otherwise a caller could name any certificate and replay a
quote captured from another VM's connection.

>>> cert = client_cert(context, TrustedProxies(settings.trusted_proxies))   # PEM, or None
"""
from __future__ import annotations

from ...metadata_keys import CLIENT_CERT
from .caller import TrustedProxies, peer_ip


def client_cert(context, proxies: TrustedProxies) -> str | None:
    forwarded = dict(context.invocation_metadata() or ()).get(CLIENT_CERT)
    if forwarded and proxies.trusts(peer_ip(context.peer())):
        return forwarded
    pem = (context.auth_context() or {}).get("x509_pem_cert")
    return pem[0].decode() if pem else None
