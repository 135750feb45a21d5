"""`connect`: a grpc.aio channel to Gantry with the signing and admin-token interceptors installed.

>>> async with connect("127.0.0.1:50051", signer=Signer.from_sr25519_seed(seed)) as channel:
...     await MinerServiceStub(channel).ListServers(ListServersRequest())
>>> connect("gantry.example:50051", ca_file="ca.pem")                       # TLS, server verified by ca.pem
>>> connect("gantry.example:50051", ca_file="ca.pem", cert_file="vm.pem", key_file="vm.key")   # mTLS
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import grpc
from grpc import aio

from ._interceptors import interceptors
from ._signer import Signer

PathLike = str | os.PathLike


def tls_credentials(ca_file: PathLike | None = None, cert_file: PathLike | None = None,
                    key_file: PathLike | None = None) -> grpc.ChannelCredentials:
    """TLS trusting `ca_file` (the system roots when None), presenting `cert_file`/`key_file` for mTLS."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file go together (the client certificate and its key)")
    read = lambda p: Path(p).read_bytes() if p is not None else None  # noqa: E731
    return grpc.ssl_channel_credentials(root_certificates=read(ca_file), private_key=read(key_file),
                                        certificate_chain=read(cert_file))


def connect(addr: str, signer: Signer | None = None, admin_token: str | None = None, *,
            credentials: grpc.ChannelCredentials | None = None, ca_file: PathLike | None = None,
            cert_file: PathLike | None = None, key_file: PathLike | None = None,
            options: Sequence[tuple[str, object]] | None = None) -> aio.Channel:
    """An aio channel to `addr` ("host:port"): TLS when `ca_file` (or `credentials`) is given, plaintext otherwise.

    With `signer`, every call is signed grpc-v1; with `admin_token`, AdminService calls carry it as a bearer
    token. `cert_file`/`key_file` present a client certificate to a server that requires one (mTLS). Use it as
    an async context manager, or `await channel.close()`.
    """
    if credentials is None and (ca_file is not None or cert_file is not None):
        credentials = tls_credentials(ca_file, cert_file, key_file)
    chain = interceptors(signer, admin_token) or None
    if credentials is not None:
        return aio.secure_channel(addr, credentials, options=options, interceptors=chain)
    return aio.insecure_channel(addr, options=options, interceptors=chain)
