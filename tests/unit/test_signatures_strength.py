"""Signature checks that mutation testing showed untested (issue 17): a malformed v1 nonce or a hotkey that is not
SS58 is a SignatureError saying what was expected (the interceptor's 401), never a bare ValueError from int() or
the base58 decoder (which would answer INTERNAL); the single-use record's lifetime at its edges."""
from __future__ import annotations

import pytest
from bittensor_wallet import Keypair

from gantry_server.domain.auth import signatures as s
from gantry_server.domain.auth.signatures import SignatureError, SignedRequest, verify_request

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
NOW = 1767225600
SIG = ("7a0d9d401d5540ab5f4e425e30b8abf488ce0f743f9f621e76c85772edaf8942"
       "e3ce09d82a271cd6dc5c9c1319d05dccaffa1391e386c64e19415e0f44fc5c88")  # //Alice over "{ALICE}:{NOW}:miner"


def _req(**kw) -> SignedRequest:
    base = dict(hotkey=ALICE, signature=SIG, nonce=str(NOW), version="1",
                rpc="/gantry.miner.v1.MinerService/ListChutes", request_sha256="")
    return SignedRequest(**{**base, **kw})


@pytest.mark.parametrize("nonce", ["abc", "", "12a", "1" * 13, "-5", " 1767225600", "1767225600 ", "1.5", "１２"])
def test_a_malformed_v1_nonce_is_a_signature_error_saying_what_a_nonce_is(nonce):
    with pytest.raises(SignatureError) as err:
        verify_request(_req(nonce=nonce), "miner", NOW)
    assert type(err.value) is SignatureError
    assert str(err.value) == f"v1 nonce must be decimal unix seconds, got {nonce[:40]!r}"


def test_a_long_malformed_nonce_is_quoted_only_in_part():
    with pytest.raises(SignatureError) as err:
        s.check_v1_nonce("x" * 500, NOW)
    assert str(err.value) == f"v1 nonce must be decimal unix seconds, got {'x' * 40!r}"


@pytest.mark.parametrize("hotkey", ["not-a-hotkey", "0" * 48, ALICE[:-1] + "Z", ALICE.lower(), "l" * 48, "",
                                    "5" * 200])
def test_a_hotkey_that_is_not_ss58_is_a_signature_error(hotkey):
    with pytest.raises(SignatureError) as err:
        verify_request(_req(hotkey=hotkey), "miner", NOW)
    assert type(err.value) is SignatureError
    assert str(err.value).startswith(f"hotkey {hotkey[:60]!r} is not an SS58 address: ")
    assert str(err.value).endswith("(scheme 1, signing purpose 'miner')")


def test_nonces_parse_to_their_timestamp_inside_the_window():
    assert s.check_v1_nonce(str(NOW - 599), NOW) == NOW - 599
    assert s.check_v1_nonce(str(NOW + 599), NOW + 0.5) == NOW + 599
    assert s.check_v2_nonce(f"{NOW + 599}.r4nd", NOW) == NOW + 599
    with pytest.raises(SignatureError, match="600 s in the future"):
        s.check_v2_nonce(f"{NOW + 600}.r4nd", NOW)
    with pytest.raises(SignatureError, match=r"nonce timestamp is 600 s old; it must be within 600 s of the server "
                                             r"time \(1767225600\)"):
        s.check_v1_nonce(str(NOW - 600), NOW)


@pytest.mark.parametrize(("nonce", "now", "seconds"), [
    ("1000.abc", 401.0, 1259),  # client clock 599 s ahead: its record outlives every replica's window
    ("1000.abc", 1599.0, 61),  # 599 s behind: only the skew is left
    ("1000.abc", 1000.0, 660),
    ("1000.abc", 1000.5, 660),  # rounded up, never short
    ("1000.abc", 1660.0, 1),  # never 0 (Redis EX 0 is an error)
    ("1000.abc", 5000.0, 1),
    ("not-a-nonce", 1000.0, 660),  # from now when the nonce has no timestamp
])
def test_the_single_use_record_lives_until_no_replica_accepts_the_nonce(nonce, now, seconds):
    assert s.single_use_seconds(nonce, now) == seconds


# -- every branch of the signed string, with real signatures ---------------------------------------------------
KEY = Keypair.create_from_uri("//Alice")
RPC = "/gantry.miner.v1.MinerService/ReleaseJob"
REQ_SHA = "56d97619697a6893c49665e144e59408202488c64b77b25e5acfb530ea7cdc8d"


def signed(message: str) -> str:
    return KEY.sign(message.encode()).hex()


def test_v2_over_a_bodiless_rest_request_signs_an_empty_body_hash():
    message = f"v2:{ALICE}:GET:/miner/nodes/:{NOW}.k3y5:"
    req = _req(version="2", nonce=f"{NOW}.k3y5", signature=signed(message), http_method="get",
               http_path="/miner/nodes/", body_sha256="")
    assert verify_request(req, None, NOW) == s.Verified(ALICE, "sr25519", "2", f"{NOW}.k3y5", single_use=True)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "put", "patch"])
def test_v1_over_a_rest_body_signs_its_hash_for_every_body_method(method):
    body = s.sha256_hex(b'{"x":1}')
    req = _req(signature=signed(f"{ALICE}:{NOW}:{body}"), http_method=method, http_path="/x", body_sha256=body)
    assert verify_request(req, None, NOW) == s.Verified(ALICE, "sr25519", "1", str(NOW), single_use=False)


def test_v1_over_an_empty_rest_body_signs_the_hash_of_nothing():
    empty = s.sha256_hex(b"")
    req = _req(signature=signed(f"{ALICE}:{NOW}:{empty}"), http_method="POST", http_path="/x", body_sha256="")
    assert verify_request(req, None, NOW).version == "1"


@pytest.mark.parametrize("method", ["GET", "DELETE", "head"])
def test_v1_without_a_purpose_on_a_bodiless_method_says_to_sign_v2(method):
    with pytest.raises(SignatureError) as err:
        verify_request(_req(http_method=method, http_path="/x", body_sha256=""), None, NOW)
    assert str(err.value) == ("v1 without a purpose signs the body hash, and this request has no body; sign with v2 "
                              "(x-chutes-sig-version: 2)")


@pytest.mark.parametrize("version", ["1", ""])
def test_v1_over_a_native_request_signs_the_request_digest(version):
    req = _req(version=version, signature=signed(f"{ALICE}:{NOW}:{REQ_SHA}"), rpc=RPC, request_sha256=REQ_SHA)
    assert verify_request(req, None, NOW) == s.Verified(ALICE, "sr25519", "1", str(NOW), single_use=False)
    wrong = _req(version=version, signature=signed(f"{ALICE}:{NOW}:{REQ_SHA}"), rpc=RPC, request_sha256="0" * 64)
    with pytest.raises(SignatureError) as err:
        verify_request(wrong, None, NOW)
    assert str(err.value).endswith("(scheme 1, signing the body hash)")


def test_v2_with_a_method_but_no_path_is_the_grpc_canonical_string():
    message = f"grpc-v1:{ALICE}:{RPC}:{NOW}.k3y5:{REQ_SHA}"
    req = _req(version="2", nonce=f"{NOW}.k3y5", signature=signed(message), rpc=RPC, request_sha256=REQ_SHA,
               http_method="POST", http_path=None)
    assert verify_request(req, None, NOW) == s.Verified(ALICE, "sr25519", "grpc-v1", f"{NOW}.k3y5", single_use=True)
    with pytest.raises(SignatureError) as err:
        verify_request(_req(version="2", nonce=f"{NOW}.k3y5", signature=signed("other"), rpc=RPC), None, NOW)
    assert str(err.value).endswith("(scheme grpc-v1, signing the gRPC canonical string)")


def test_refusals_say_exactly_what_was_expected():
    with pytest.raises(SignatureError) as err:
        s.check_v2_nonce("1767225600", NOW)
    assert str(err.value) == "v2 nonce must be '{ts}.{random}' (random: 1-128 of [A-Za-z0-9_-])"
    with pytest.raises(SignatureError) as err:
        verify_request(_req(version="12345678901234"), "miner", NOW)
    assert str(err.value) == "x-chutes-sig-version must be 1 or 2, got '1234567890'"
    with pytest.raises(SignatureError) as err:
        s.parse_signature("ab" * 10)
    assert str(err.value) == "signature must be 128 hex characters (64 bytes, no 0x), got 20 characters"
    with pytest.raises(SignatureError) as err:
        s.parse_signature("0x" + "ab" * 64)
    assert str(err.value) == "signature must be plain hex without a 0x prefix (128 characters)"
    with pytest.raises(SignatureError) as err:
        verify_request(_req(signature="ab" * 64, http_method="POST", http_path="/x", body_sha256="0" * 64), None, NOW)
    assert str(err.value).endswith("(scheme 1, signing the body hash)")
