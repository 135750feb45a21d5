"""Hotkey signatures: known-answer vectors (docs/auth.md), nonce windows, and what a forged request looks like."""
from __future__ import annotations

import pytest
from bittensor_wallet import Keypair
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.miner.v1 import miner_pb2
from gantry_server.domain.auth import signatures as s
from gantry_server.domain.auth.signatures import SignatureError, SignedRequest, verify, verify_request
from gantry_server.domain.auth.ss58 import InvalidAddress, decode_ss58, encode_ss58

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"  # sr25519 //Alice
ED = "5Gw54ghuAHodDGAS91DUxqvKa6PeT9bhDdns3ztBupY8pSyn"  # ed25519, RFC 8032 test-1 seed 9d61b19d...7f60
NOW = 1767225600  # 2026-01-01T00:00:00Z, the nonce of every vector
BODY = b'{"name":"gpu-box-1"}'
BODY_SHA = "f942b6751bd57eb1e171a1b419494344289ab99d0f9c4b6eb8ea158657364cfe"
REQ = miner_pb2.ReleaseJobRequest(job_id="job-1")
REQ_SHA = "56d97619697a6893c49665e144e59408202488c64b77b25e5acfb530ea7cdc8d"
RPC = "/gantry.miner.v1.MinerService/ReleaseJob"

VECTORS = [  # (name, hotkey, signed string, signature): the same table as docs/auth.md
    ("sr25519 v1 purpose", ALICE, f"{ALICE}:1767225600:miner",
     "7a0d9d401d5540ab5f4e425e30b8abf488ce0f743f9f621e76c85772edaf8942e3ce09d82a271cd6dc5c9c1319d05dccaffa1391e386c64e19415e0f44fc5c88"),
    ("sr25519 v1 body", ALICE, f"{ALICE}:1767225600:{BODY_SHA}",
     "b8aabfabf6a6163aecde1c8c05c3b52d5048c496ed8bf82a32ecd0b0c3270244e7ab7547944ac8f60d6949ec76d81e38b7fa39a761742a77e5f15a1f192ffa81"),
    ("sr25519 v2", ALICE, f"v2:{ALICE}:POST:/servers/:1767225600.k3y5:{BODY_SHA}",
     "3a66f413f2b14237c433445c051ef348200819fe3420f3a0c9fef983fb9144460e23258a3b389b1aec4e2845a492f4fe5074c42e15119d97ea413a1ff2f24f88"),
    ("sr25519 grpc-v1", ALICE, f"grpc-v1:{ALICE}:{RPC}:1767225600.k3y5:{REQ_SHA}",
     "3a3b0cf18f83cca2d30bd32a76b1833d818e4e102e89ae4deceb087c219bdb6b6f27f00ffa87c7ad4a923827336f49c4ffcc4edb3a1a774e1e2ec958306aff85"),
    ("ed25519 v1 purpose", ED, f"{ED}:1767225600:miner",
     "f93e3e4073a357a062520f5285576c12a664757c4386139dba17814490cb9d81f3ef4332bec64cf4d576b57a2728d1780b2ba33fdef539bb1febfc650a38f10e"),
    ("ed25519 v1 body", ED, f"{ED}:1767225600:{BODY_SHA}",
     "3bbd798caef06c3ccd519b461b2b5879741cf070fa9f8a99391c114f8e1644c3291bb03a4fbde71ff52fb9332e291d889c0bfc645c937ea5bb29cde1988dcd09"),
    ("ed25519 v2", ED, f"v2:{ED}:POST:/servers/:1767225600.k3y5:{BODY_SHA}",
     "c495376b19f7127440b9ed867ef82207c3bbc20837a4f9ce67cfcd23a51ac63bddf6bacb8446806530f521949e6c902e80d2db8d7fd802df48cca618f019e906"),
    ("ed25519 grpc-v1", ED, f"grpc-v1:{ED}:{RPC}:1767225600.k3y5:{REQ_SHA}",
     "6d39779f54a797e84ab9637301217640a49734785e2cadb3c0c95a40044862aaa06ffc89a7cd4d41af4eec8bd3541697e5e1290d402bce61904436fdf7d3ed0f"),
]


@pytest.mark.parametrize(("name", "hotkey", "message", "signature"), VECTORS, ids=[v[0] for v in VECTORS])
def test_known_answer_vectors_verify(name, hotkey, message, signature):
    assert verify(hotkey, message, signature) == name.split()[0]


def test_vector_inputs_are_what_the_signed_strings_say():
    assert s.sha256_hex(BODY) == BODY_SHA
    assert s.request_sha256(REQ) == REQ_SHA
    assert s.v1_message(ALICE, "1767225600", "miner") == VECTORS[0][2]
    assert s.v2_message(ALICE, "post", "/servers/", "1767225600.k3y5", BODY_SHA) == VECTORS[2][2]
    assert s.grpc_message(ALICE, RPC, "1767225600.k3y5", REQ_SHA) == VECTORS[3][2]


def test_ss58_round_trip_and_checksum():
    assert encode_ss58(decode_ss58(ALICE)) == ALICE
    assert decode_ss58(ALICE).hex() == "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"
    broken = ALICE[:-1] + ("Z" if ALICE[-1] != "Z" else "Y")
    with pytest.raises(InvalidAddress):
        decode_ss58(broken)


def _req(**kw) -> SignedRequest:
    base = dict(hotkey=ALICE, signature=VECTORS[0][3], nonce="1767225600", version="1", rpc=RPC,
                request_sha256=REQ_SHA)
    return SignedRequest(**{**base, **kw})


def test_v1_purpose_request_verifies_within_the_window_and_is_reusable():
    for now in (NOW, NOW + 599, NOW - 599):
        verified = verify_request(_req(), "miner", now)
        assert (verified.version, verified.single_use, verified.key_type) == ("1", False, "sr25519")


@pytest.mark.parametrize(("now", "words"), [(NOW + 600, "600 s old"), (NOW - 600, "600 s in the future")])
def test_stale_and_future_nonces_are_refused_naming_the_window(now, words):
    with pytest.raises(SignatureError, match=words) as err:
        verify_request(_req(), "miner", now)
    assert "within 600 s" in str(err.value)


def test_wrong_purpose_is_refused_saying_which_purpose_was_expected():
    with pytest.raises(SignatureError, match="purpose 'tee'") as err:
        verify_request(_req(), "tee", NOW)
    assert f"{ALICE}:1767225600:tee" in str(err.value)


def test_v1_body_hash_via_gateway_and_wrong_body():
    good = _req(signature=VECTORS[1][3], http_method="POST", http_path="/servers/", body_sha256=BODY_SHA)
    assert verify_request(good, None, NOW).version == "1"
    with pytest.raises(SignatureError, match="body hash"):
        verify_request(_req(signature=VECTORS[1][3], http_method="POST", http_path="/servers/",
                            body_sha256=s.sha256_hex(b'{"name":"gpu-box-2"}')), None, NOW)


def test_v1_without_purpose_on_a_bodiless_rest_request_is_refused():
    with pytest.raises(SignatureError, match="sign with v2"):
        verify_request(_req(http_method="GET", http_path="/miner/nodes/", body_sha256=""), None, NOW)


def test_v2_rest_and_grpc_canonical_strings_verify_and_are_single_use():
    rest = _req(version="2", nonce="1767225600.k3y5", signature=VECTORS[2][3], http_method="POST",
                http_path="/servers/", body_sha256=BODY_SHA)
    assert verify_request(rest, None, NOW).single_use
    native = _req(version="2", nonce="1767225600.k3y5", signature=VECTORS[3][3])
    verified = verify_request(native, "miner", NOW)
    assert (verified.version, verified.single_use) == ("grpc-v1", True)


def test_v2_rest_signature_does_not_verify_for_another_path_or_method():
    for kw in ({"http_path": "/servers/?x=1"}, {"http_method": "PUT"}):
        base = dict(version="2", nonce="1767225600.k3y5", signature=VECTORS[2][3], http_method="POST",
                    http_path="/servers/", body_sha256=BODY_SHA)
        with pytest.raises(SignatureError, match="method, path, nonce and body hash"):
            verify_request(_req(**{**base, **kw}), None, NOW)


@pytest.mark.parametrize("nonce", ["1767225600", "1767225600.", "abc.def", "1767225600.a:b", "1767225600.k3y5 "])
def test_v2_nonce_must_be_ts_dot_random(nonce):
    with pytest.raises(SignatureError, match=r"v2 nonce must be '\{ts\}.\{random\}'"):
        verify_request(_req(version="2", nonce=nonce), None, NOW)


@pytest.mark.parametrize("version", ["3", "v2", "02"])
def test_unknown_signature_version_is_refused(version):
    with pytest.raises(SignatureError, match="must be 1 or 2"):
        verify_request(_req(version=version), "miner", NOW)


@pytest.mark.parametrize(("signature", "words"), [
    (VECTORS[0][3][:-2], "128 hex characters"),
    (VECTORS[0][3][:-1] + "g", "128 hex characters"),
    ("0x" + VECTORS[0][3], "without a 0x prefix"),
    ("", "128 hex characters"),
])
def test_truncated_or_non_hex_signatures_are_refused(signature, words):
    with pytest.raises(SignatureError, match=words):
        verify_request(_req(signature=signature), "miner", NOW)


def test_bytes_wrapped_sr25519_signature_is_accepted():
    alice = Keypair.create_from_uri("//Alice")
    message = f"{ALICE}:1767225600:miner"
    wrapped = alice.sign(f"<Bytes>{message}</Bytes>".encode()).hex()
    assert verify(ALICE, message, wrapped) == "sr25519"


def test_another_keys_signature_is_refused():
    bob = Keypair.create_from_uri("//Bob")
    forged = bob.sign(VECTORS[0][2].encode()).hex()
    with pytest.raises(SignatureError, match="does not verify"):
        verify(ALICE, VECTORS[0][2], forged)


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(["hotkey", "signature", "nonce", "http_method", "http_path", "body_sha256"]),
       data=st.data())
def test_no_mutation_of_a_signed_v2_request_verifies(field, data):
    """Change any one part of a signed REST v2 request: it never verifies."""
    signed = dict(hotkey=ALICE, signature=VECTORS[2][3], nonce="1767225600.k3y5", version="2", rpc=RPC,
                  request_sha256=REQ_SHA, http_method="POST", http_path="/servers/", body_sha256=BODY_SHA)
    original = signed[field]
    if field == "signature":
        i = data.draw(st.integers(0, 127))
        ch = data.draw(st.sampled_from("0123456789abcdef").filter(lambda c: c != original[i]))
        mutated = original[:i] + ch + original[i + 1:]
    elif field == "nonce":
        mutated = data.draw(st.from_regex(r"\A1767225[0-9]{3}\.[A-Za-z0-9_-]{1,8}\Z").filter(lambda n: n != original))
    elif field == "hotkey":
        mutated = data.draw(st.sampled_from([ED, "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"]))
    else:
        mutated = data.draw(st.text(min_size=0, max_size=70).filter(lambda t: t != original
                                                                    and (field != "http_method" or t.upper() != original)))
    with pytest.raises(SignatureError):
        verify_request(SignedRequest(**{**signed, field: mutated}), None, NOW)


@settings(max_examples=100, deadline=None)
@given(job_id=st.text(max_size=40).filter(lambda j: j != "job-1"))
def test_no_other_grpc_request_verifies_under_a_grpc_signature(job_id):
    other = s.request_sha256(miner_pb2.ReleaseJobRequest(job_id=job_id))
    with pytest.raises(SignatureError, match="gRPC canonical string"):
        verify_request(_req(version="2", nonce="1767225600.k3y5", signature=VECTORS[3][3], request_sha256=other),
                       None, NOW)
