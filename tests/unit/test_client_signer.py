"""gantry_client.Signer: the documented vectors (docs/auth.md), and what it signs verifies with the server's check."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import sr25519
from grpc import aio

import gantry_client
from gantry_client import AdminTokenInterceptor, Signer, SigningInterceptor
from gantry_server.domain.auth import signatures as s
from gantry_server.domain.auth.signatures import SignedRequest, verify, verify_request
from gantry_server.domain.auth.ss58 import decode_ss58

from .test_auth_signatures import BODY, NOW, REQ, RPC, VECTORS

ALICE_SEED = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a"  # //Alice mini secret (subkey)
ED_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"  # RFC 8032 test 1
V2_NONCE = "1767225600.k3y5"


def _clock():
    return NOW + 0.75


SIGNERS = {"sr25519": Signer.from_sr25519_seed(ALICE_SEED, clock=_clock),
           "ed25519": Signer.from_ed25519_seed(ED_SEED, clock=_clock)}
SCHEMES = ["v1 purpose", "v1 body", "v2", "grpc-v1"]


def _vector(key_type: str, scheme: str) -> tuple[str, str, str]:
    _, hotkey, message, signature = next(v for v in VECTORS if v[0] == f"{key_type} {scheme}")
    return hotkey, message, signature


def _message(signer: Signer, scheme: str) -> str:
    return {"v1 purpose": lambda: signer.v1_purpose_message("miner", str(NOW)),
            "v1 body": lambda: signer.v1_body_message(BODY, str(NOW)),
            "v2": lambda: signer.v2_message("post", "/servers/", BODY, V2_NONCE),
            "grpc-v1": lambda: signer.grpc_message(RPC, REQ, V2_NONCE)}[scheme]()


def test_signers_have_the_documented_addresses():
    assert SIGNERS["sr25519"].hotkey == "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
    assert SIGNERS["ed25519"].hotkey == "5Gw54ghuAHodDGAS91DUxqvKa6PeT9bhDdns3ztBupY8pSyn"
    assert SIGNERS["ed25519"].public_key.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert "e5be" not in repr(SIGNERS["sr25519"]) and SIGNERS["sr25519"].hotkey in repr(SIGNERS["sr25519"])


@pytest.mark.parametrize("key_type", ["sr25519", "ed25519"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_signed_strings_equal_the_documented_vectors(key_type, scheme):
    hotkey, message, _ = _vector(key_type, scheme)
    signer = SIGNERS[key_type]
    assert signer.hotkey == hotkey
    assert _message(signer, scheme) == message


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ed25519_signatures_reproduce_the_vectors_exactly(scheme):
    _, message, signature = _vector("ed25519", scheme)
    assert SIGNERS["ed25519"].sign(message) == signature


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sr25519_signatures_verify_with_the_server(scheme):
    hotkey, message, documented = _vector("sr25519", scheme)
    signature = SIGNERS["sr25519"].sign(message)
    assert len(signature) == 128 and signature != documented  # randomised, like the documented one
    assert verify(hotkey, message, signature) == "sr25519"


def test_a_py_sr25519_keypair_signs_as_the_same_hotkey():
    signer = Signer.from_sr25519_keypair(sr25519.pair_from_seed(bytes.fromhex(ALICE_SEED[2:])))
    assert signer.hotkey == SIGNERS["sr25519"].hotkey
    with pytest.raises(ValueError, match="32 bytes"):
        Signer.from_ed25519_seed("abcd")


@pytest.mark.parametrize("key_type", ["sr25519", "ed25519"])
def test_headers_pass_the_servers_request_check(key_type):
    signer = SIGNERS[key_type]
    base = dict(hotkey=signer.hotkey, rpc=RPC, request_sha256=s.request_sha256(REQ))

    def request(headers, **kw) -> SignedRequest:
        return SignedRequest(signature=headers["x-chutes-signature"], nonce=headers["x-chutes-nonce"],
                             version=headers.get("x-chutes-sig-version", "1"), **{**base, **kw})

    purpose = signer.v1_purpose_headers("tee")
    assert (purpose["x-chutes-nonce"], purpose["x-chutes-hotkey"]) == (str(NOW), signer.hotkey)
    assert verify_request(request(purpose), "tee", NOW).version == "1"

    body = signer.v1_body_headers(BODY)
    assert verify_request(request(body, http_method="POST", http_path="/servers/",
                                  body_sha256=s.sha256_hex(BODY)), None, NOW).version == "1"

    rest = signer.v2_headers("DELETE", "/miner/jobs/job-1")  # no body: signs '' as the gateway sends it
    assert rest["x-chutes-sig-version"] == "2"
    verified = verify_request(request(rest, http_method="DELETE", http_path="/miner/jobs/job-1",
                                      body_sha256=""), None, NOW)
    assert (verified.version, verified.single_use) == ("2", True)

    native = dict(signer.grpc_metadata(RPC, REQ))
    assert re.fullmatch(rf"{NOW}\.[A-Za-z0-9_-]{{16}}", native["x-chutes-nonce"])
    assert verify_request(request(native), "miner", NOW).version == "grpc-v1"


def test_v2_nonces_are_fresh_each_time():
    signer = SIGNERS["ed25519"]
    assert len({signer.v2_nonce() for _ in range(50)}) == 50


def test_v2_without_a_body_signs_an_empty_hash():
    assert SIGNERS["ed25519"].v2_message("GET", "/x", None, V2_NONCE).endswith(f":{V2_NONCE}:")


def test_client_ss58_matches_the_server_decoder():
    for _ in range(20):
        key = os.urandom(32)
        signer = Signer(key, lambda m: b"", "test")
        assert decode_ss58(signer.hotkey) == key


def test_public_surface_is_one_list_and_the_client_does_not_import_the_server():
    assert gantry_client.__all__ == ["AdminTokenInterceptor", "CursorExpired", "MinerEvents", "Signer",
                                     "SigningInterceptor", "connect", "tls_credentials"]
    code = ("import sys, gantry_client; bad = [m for m in sys.modules if m.startswith('gantry_server')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


class _Recorder:
    """The continuation of a client interceptor: records what the call would send."""

    def __init__(self):
        self.details = None

    async def __call__(self, details, request):
        self.details = details
        return "call"


def _details(method: str, metadata=None) -> aio.ClientCallDetails:
    return aio.ClientCallDetails(method.encode(), None, metadata, None, None)


async def test_signing_interceptor_adds_a_grpc_v1_signature_and_keeps_caller_metadata():
    signer = SIGNERS["sr25519"]
    continuation = _Recorder()
    result = await SigningInterceptor(signer).intercept_unary_stream(
        continuation, _details(RPC, aio.Metadata(("x-request-id", "r1"))), REQ)
    assert result == "call"
    md = dict(continuation.details.metadata)
    assert md["x-request-id"] == "r1" and md["x-chutes-sig-version"] == "2"
    req = SignedRequest(hotkey=md["x-chutes-hotkey"], signature=md["x-chutes-signature"], nonce=md["x-chutes-nonce"],
                        version="2", rpc=RPC, request_sha256=s.request_sha256(REQ))
    assert verify_request(req, None, NOW).version == "grpc-v1"

    hand_signed = _details(RPC, aio.Metadata(("x-chutes-signature", "ab")))
    await SigningInterceptor(signer).intercept_unary_unary(continuation, hand_signed, REQ)
    assert continuation.details is hand_signed


async def test_admin_token_goes_to_admin_rpcs_only():
    interceptor, continuation = AdminTokenInterceptor("t0k"), _Recorder()
    await interceptor.intercept_unary_unary(continuation, _details("/gantry.admin.v1.AdminService/CreateUser"), None)
    assert dict(continuation.details.metadata)["authorization"] == "Bearer t0k"
    await interceptor.intercept_unary_unary(continuation, _details(RPC), REQ)
    assert continuation.details.metadata is None
    assert "t0k" not in repr(interceptor)


def test_for_channel_covers_unary_and_server_streaming_calls():
    """grpc.aio files an interceptor under its first kind only, so the streaming view must be its own object."""
    chain = SigningInterceptor(SIGNERS["ed25519"]).for_channel()
    assert isinstance(chain[0], aio.UnaryUnaryClientInterceptor)
    assert isinstance(chain[1], aio.UnaryStreamClientInterceptor)
    assert not isinstance(chain[1], aio.UnaryUnaryClientInterceptor)


async def test_connect_returns_an_aio_channel():
    channel = gantry_client.connect("127.0.0.1:1", signer=SIGNERS["ed25519"], admin_token="x")
    assert isinstance(channel, aio.Channel)
    await channel.close()
