"""TLS for both listeners, and the rule that refuses a public plaintext one.

    GANTRY_TLS_CERT_FILE=server.pem GANTRY_TLS_KEY_FILE=server.key        # TLS on gRPC and REST
    GANTRY_TLS_CLIENT_CA_FILE=clients-ca.pem                             # + mTLS: no certificate, no connection
    GANTRY_ALLOW_PLAINTEXT=true                                          # plaintext beyond loopback (TLS proxy)

The same files feed both faces: `grpc_credentials` for grpc.aio, `ssl_context` for uvicorn. With a client CA a
peer that presents no certificate (or one the CA did not sign) fails the handshake, so no RPC, signed or not,
reaches a handler. The verified client certificate then feeds the TDX report-data binding
(`domain/auth/client_cert.py`).
"""
from __future__ import annotations

import ssl

import grpc

from .config import ConfigError, Settings, is_loopback


def enabled(settings: Settings) -> bool:
    return settings.tls_cert_file is not None


def grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Server credentials for `add_secure_port`, or None for plaintext."""
    if not enabled(settings):
        return None
    key, chain = settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes()
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The REST listener's context (TLS 1.2+), requiring a client certificate signed by the client CA if any."""
    if not enabled(settings):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_client_ca_file:
            ctx.load_verify_locations(cafile=str(settings.tls_client_ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS files (GANTRY_TLS_*): {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if settings.tls_client_ca_file else ssl.CERT_NONE
    return ctx


def refuse_public_plaintext(settings: Settings, listeners: dict[str, str | None]) -> None:
    """ConfigError when a listener (env name -> host:port) is beyond loopback without TLS, unless
    GANTRY_ALLOW_PLAINTEXT says a TLS-terminating proxy stands in front."""
    if enabled(settings) or settings.allow_plaintext:
        return
    public = [f"{name}={addr}" for name, addr in listeners.items() if addr and not is_loopback(addr)]
    if public:
        raise ConfigError(f"refusing to listen without TLS on {', '.join(public)}: set GANTRY_TLS_CERT_FILE and "
                          "GANTRY_TLS_KEY_FILE, or GANTRY_ALLOW_PLAINTEXT=true behind a TLS-terminating proxy")
