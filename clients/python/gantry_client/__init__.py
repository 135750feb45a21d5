"""Hand-written helpers for Gantry's Python clients (the generated stubs live in the `gantry` package).

>>> from gantry_client import MinerEvents, Signer, connect
>>> signer = Signer.from_sr25519_seed("0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a")  # //Alice
>>> signer.hotkey
'5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY'
>>> channel = connect("127.0.0.1:50051", signer=signer)  # every call signed grpc-v1
>>> feed = MinerEvents("127.0.0.1:50051", signer)  # async for event in feed: ... (reconnects, resumes by cursor)

The public surface is this list; everything else is private.
"""
from ._channel import connect, tls_credentials
from ._interceptors import AdminTokenInterceptor, SigningInterceptor
from ._miner import CursorExpired, MinerEvents
from ._signer import Signer

__all__ = ["AdminTokenInterceptor", "CursorExpired", "MinerEvents", "Signer", "SigningInterceptor", "connect",
           "tls_credentials"]
