"""The security core: hotkey signatures, one-time nonces and boot tokens, launch-config tokens, API keys, rate
limits, and the caller identity handlers read. Importable without gRPC; `interceptors/auth.py` applies it per
the table in `auth_policy.py`. Reference: docs/auth.md.
"""
from .caller import ANONYMOUS, Caller, TrustedProxies, current_caller, peer_ip
from .launch_tokens import LaunchTokenError, LaunchTokenKeys
from .nonces import AttestationNonces, BootTokens, NonceRejected
from .rate_limit import Limit, RateLimited, RateLimiter
from .signatures import SignatureError, SignedRequest, grpc_message, v1_message, v2_message, verify, verify_request

__all__ = [
    "ANONYMOUS", "AttestationNonces", "BootTokens", "Caller", "Limit", "LaunchTokenError", "LaunchTokenKeys",
    "NonceRejected", "RateLimited", "RateLimiter", "SignatureError", "SignedRequest", "TrustedProxies",
    "current_caller", "grpc_message", "peer_ip", "v1_message", "v2_message", "verify", "verify_request",
]
