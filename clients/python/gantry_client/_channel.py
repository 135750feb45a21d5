"""`connect`: a grpc.aio channel to Gantry with the signing and admin-token interceptors installed.

>>> async with connect("127.0.0.1:50051", signer=Signer.from_sr25519_seed(seed)) as channel:
...     await MinerServiceStub(channel).ListServers(ListServersRequest())
"""
from __future__ import annotations

from typing import Sequence

import grpc
from grpc import aio

from ._interceptors import interceptors
from ._signer import Signer


def connect(addr: str, signer: Signer | None = None, admin_token: str | None = None, *,
            credentials: grpc.ChannelCredentials | None = None,
            options: Sequence[tuple[str, object]] | None = None) -> aio.Channel:
    """An aio channel to `addr` ("host:port"); TLS when `credentials` are given, plaintext otherwise.

    With `signer`, every call is signed grpc-v1; with `admin_token`, AdminService calls carry it as a bearer
    token. Use it as an async context manager, or `await channel.close()`.
    """
    chain = interceptors(signer, admin_token) or None
    if credentials is not None:
        return aio.secure_channel(addr, credentials, options=options, interceptors=chain)
    return aio.insecure_channel(addr, options=options, interceptors=chain)
