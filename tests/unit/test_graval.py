"""Graval v1: an honest solve verifies; every way a work product, response or sealed key can be wrong is refused
with its reason; generation matches the written spec (docs/graval.md) and its known-answer vector."""
from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry_server.domain import graval
from gantry_server.domain.graval import scheme as s
from gantry_server.domain.graval.solver import Commitment, generate, multiply, prove, solve

SEED, GPU, OTHER_GPU = 1234567890123, "GPU-3f2a9c1e-0000-4000-8000-000000000001", "GPU-3f2a9c1e-0000-4000-8000-0000002"
PARAMS = graval.GravalParams(matrix_n=8, rounds=8, estimate_seconds=30.0)
HONEST = solve(SEED, GPU, PARAMS)
ENV_KEY, CONFIG_ID = "0123456789abcdef0123456789abcdef", "5b0e6c1a-9d1e-4c2b-8f3a-7d6e5c4b3a21"
KEY = bytes(range(16))


def rejected(reason: str, fn, *args, **kwargs) -> str:
    with pytest.raises(graval.WorkRejected) as err:
        fn(*args, **kwargs)
    assert err.value.reason == reason, (err.value.reason, str(err.value))
    assert reason in s.REASONS
    return str(err.value)


def verify(work: str, *, seed: int = SEED, gpu: str = GPU, params: graval.GravalParams = PARAMS) -> None:
    graval.verify_work(work, seed=seed, gpu_uuid=gpu, params=params)


def raw(work: str) -> bytearray:
    return bytearray(base64.b64decode(work))


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode()


# -- the honest path -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, rounds", [(1, 1), (6, 4), (8, 8), (13, 64), (32, 64)])
def test_an_honest_solve_verifies_including_padded_and_odd_trees(n, rounds):
    params = graval.GravalParams(n, rounds, 1.0)
    verify(solve(SEED, GPU, params), params=params)


def test_the_reference_verifier_is_a_work_verifier_and_accepts_the_honest_product():
    verifier = graval.ReferenceWorkVerifier()
    assert isinstance(verifier, graval.WorkVerifier)
    verifier.verify_work(HONEST, seed=SEED, gpu_uuid=GPU, params=PARAMS)


def test_opening_more_entries_than_required_verifies_and_fewer_does_not():
    verify(solve(SEED, GPU, graval.GravalParams(8, 20, 1.0)))
    message = rejected("PROOF_MALFORMED", verify, solve(SEED, GPU, graval.GravalParams(8, 4, 1.0)))
    assert "opens 4 entries; expected 8.." in message


def test_claim_to_verify_in_memory_as_a_miner_would_run_it():
    seed, gpu = graval.new_seed(), GPU
    params = graval.params_for("4090", 24 * 2**30, matrix_n=8)
    sealed = graval.seal_symmetric_key(KEY, env_key=ENV_KEY, config_id=CONFIG_ID, seed=seed, gpu_uuid=gpu)
    claim = {"seed": seed, "iterations": params.iterations,
             "symmetric_key": {"ciphertext": sealed, "uuid": gpu,
                               "response_plaintext": graval.response_plaintext(CONFIG_ID, seed)}}
    # miner: open the key with the launch token's env_key, answer, and compute the product for each GPU
    key = graval.open_symmetric_key(claim["symmetric_key"]["ciphertext"], env_key=ENV_KEY, config_id=CONFIG_ID,
                                    seed=claim["seed"], gpu_uuid=claim["symmetric_key"]["uuid"])
    response, iv = graval.make_response(key, CONFIG_ID, claim["seed"])
    miner_params = graval.GravalParams(claim["iterations"], graval.DEFAULT_ROUNDS, 1.0)
    body = {"response": response, "iv": iv, "proof": {gpu: {"work_product": solve(seed, gpu, miner_params)}}}
    # validator
    graval.check_response(body["response"], body["iv"], KEY, CONFIG_ID, seed)
    graval.verify_work(body["proof"][gpu]["work_product"], seed=seed, gpu_uuid=gpu, params=params)


# -- wrong work --------------------------------------------------------------------------------------------------

def _product_with_wrong_row(row: int, *, challenged: bool):
    """Corrupt one whole row, varying the corruption until the root's challenges do (or do not) land on it."""
    honest = multiply(*generate(SEED, GPU, 8))
    for delta in range(1, 200):
        bad = honest.copy()
        bad[row] = (bad[row].astype(np.int64) + delta) % s.P
        entries = s.challenges(SEED, GPU, 8, Commitment(bad).root, PARAMS.rounds)
        if any(e // 8 == row for e in entries) == challenged:
            return bad
    raise AssertionError("no corruption found")


def test_a_wrong_row_that_is_challenged_is_rejected_as_incorrect_work():
    work = prove(_product_with_wrong_row(3, challenged=True), seed=SEED, gpu_uuid=GPU, rounds=PARAMS.rounds)
    assert "C[3][" in rejected("WORK_INCORRECT", verify, work)


def test_a_wrong_row_that_no_challenge_hits_passes_which_is_why_soundness_is_a_probability():
    # docs/graval.md "Soundness": a miner right on a share f of C passes with probability about f^rounds
    verify(prove(_product_with_wrong_row(3, challenged=False), seed=SEED, gpu_uuid=GPU, rounds=PARAMS.rounds))


def test_a_partial_inner_product_is_wrong_everywhere():
    a, bt = generate(SEED, GPU, 8)
    half = multiply(a[:, :4], bt[:, :4])  # half the multiply-adds per entry
    rejected("WORK_INCORRECT", verify, prove(half, seed=SEED, gpu_uuid=GPU, rounds=PARAMS.rounds))


def test_a_forged_merkle_path_or_a_changed_opened_value_is_rejected():
    data = raw(HONEST)
    path_byte = s.HEADER.size + 4 * s.CHUNK + 5  # inside the first opening's first sibling
    forged = data.copy()
    forged[path_byte] ^= 0x40
    assert "does not hash up to the committed Merkle root" in rejected("PROOF_INVALID", verify, b64(forged))
    entry = s.challenges(SEED, GPU, 8, bytes(data[34:66]), PARAMS.rounds)[0]
    changed = data.copy()
    at = s.HEADER.size + 4 * (entry % s.CHUNK)
    changed[at:at + 4] = struct.pack("<I", (struct.unpack_from("<I", data, at)[0] + 1) % s.P)
    rejected("PROOF_INVALID", verify, b64(changed))


def test_a_proof_for_another_seed_gpu_or_size_is_rejected_saying_what_was_expected():
    assert "for seed 7, expected seed 1234567890123" in rejected(
        "PROOF_WRONG_CHALLENGE", verify, solve(7, GPU, PARAMS))
    assert f"expected GPU {GPU}" in rejected("PROOF_WRONG_CHALLENGE", verify, solve(SEED, OTHER_GPU, PARAMS))
    assert "for n=9, expected n=8" in rejected(
        "PROOF_WRONG_CHALLENGE", verify, solve(SEED, GPU, graval.GravalParams(9, 8, 1.0)))


def test_a_proof_for_another_seed_relabelled_with_ours_is_still_rejected():
    data = raw(solve(7, GPU, PARAMS))
    data[4:12] = struct.pack("<Q", SEED)
    with pytest.raises(graval.WorkRejected) as err:
        verify(b64(data))
    assert err.value.reason in ("PROOF_INVALID", "WORK_INCORRECT")  # which one depends on where the root points


@pytest.mark.parametrize("work, reason, says", [
    (HONEST[:-3], "PROOF_MALFORMED", "base64"),                                # cut mid-quantum
    (b64(raw(HONEST)[:-32]), "PROOF_MALFORMED", "truncated"),               # cut whole bytes
    (b64(raw(HONEST)[:40]), "PROOF_MALFORMED", "header alone"),
    (b64(raw(HONEST) + b"\x00" * 32), "PROOF_MALFORMED", "trailing"),
    ("not base64 at all!", "PROOF_MALFORMED", "base64"),
    ("", "PROOF_MALFORMED", "header alone"),
    (b64(b"XXXX" + raw(HONEST)[4:]), "PROOF_MALFORMED", "expected b'GGV1'"),
    ("A" * (s.max_work_product_chars(PARAMS) + 4), "PROOF_TOO_LARGE", "no valid one"),
], ids=["cut-chars", "cut-bytes", "cut-header", "trailing", "garbage", "empty", "magic", "oversized"])
def test_truncated_garbage_and_oversized_work_products_are_refused(work, reason, says):
    assert says in rejected(reason, verify, work)


def test_non_canonical_base64_and_unreduced_values_are_malformed():
    data = raw(HONEST)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = HONEST.rstrip("=")
    assert len(body) < len(HONEST)  # padded, so the last data character carries spare bits
    loose = body[:-1] + alphabet[alphabet.index(body[-1]) ^ 1] + HONEST[len(body):]
    assert base64.b64decode(loose) == bytes(data)
    assert "canonical" in rejected("PROOF_MALFORMED", verify, loose)
    entry = s.challenges(SEED, GPU, 8, bytes(data[34:66]), PARAMS.rounds)[0]
    at = s.HEADER.size + 4 * (entry % s.CHUNK)
    data[at:at + 4] = struct.pack("<I", struct.unpack_from("<I", data, at)[0] + s.P)  # same value mod p
    assert "reduced mod p" in rejected("PROOF_MALFORMED", verify, b64(data))


def test_the_size_limit_admits_the_largest_valid_work_product():
    params = graval.GravalParams(5, 25, 1.0)  # every entry opened, so as large as n=5 gets
    work = solve(SEED, GPU, params)
    verify(work, params=params)
    assert len(work) <= s.max_work_product_chars(params)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_flipping_any_byte_of_an_honest_work_product_is_rejected(data):
    binary = raw(HONEST)
    i = data.draw(st.integers(0, len(binary) - 1), label="byte")
    binary[i] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(graval.WorkRejected):
        verify(b64(binary))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_changing_any_character_of_an_honest_work_product_is_rejected(data):
    i = data.draw(st.integers(0, len(HONEST) - 1), label="char")
    c = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=!-_ "))
    if c == HONEST[i]:
        return
    with pytest.raises(graval.WorkRejected):
        verify(HONEST[:i] + c + HONEST[i + 1:])


# -- the response and the sealed key ------------------------------------------------------------------------------

def test_the_response_decrypts_to_the_expected_plaintext():
    response, iv = graval.make_response(KEY, CONFIG_ID, SEED)
    graval.check_response(response, iv, KEY, CONFIG_ID, SEED)
    graval.check_response(iv + response, None, KEY, CONFIG_ID, SEED)  # no iv field: iv ‖ ciphertext
    assert graval.response_plaintext(CONFIG_ID, SEED) == f"secret is {CONFIG_ID} {SEED}"


def test_a_wrong_response_iv_key_or_seed_is_a_mismatch():
    response, iv = graval.make_response(KEY, CONFIG_ID, SEED)
    other, _ = graval.make_response(KEY, CONFIG_ID, SEED + 1)
    message = rejected("RESPONSE_MISMATCH", graval.check_response, other, iv, KEY, CONFIG_ID, SEED)
    assert f"secret is {CONFIG_ID} {SEED}" in message
    rejected("RESPONSE_MISMATCH", graval.check_response, response, "00" * 16, KEY, CONFIG_ID, SEED)
    rejected("RESPONSE_MISMATCH", graval.check_response, response, iv, bytes(16), CONFIG_ID, SEED)
    rejected("RESPONSE_MISMATCH", graval.check_response, response, iv, KEY, CONFIG_ID, SEED + 1)


@pytest.mark.parametrize("response, iv, says", [
    ("zz", "00" * 16, "hex"),
    ("00" * 16, "00" * 8, "iv must be 16 bytes"),
    ("00" * 15, "00" * 16, "multiple of 16"),
    ("00" * 16, None, "multiple of 16"),  # only an iv, no ciphertext
    ("00" * 600, "00" * 16, "at most"),
])
def test_a_malformed_response_says_what_is_wrong(response, iv, says):
    assert says in rejected("RESPONSE_MALFORMED", graval.check_response, response, iv, KEY, CONFIG_ID, SEED)


def test_the_sealed_key_opens_only_for_its_token_config_seed_and_gpu():
    bound = dict(env_key=ENV_KEY, config_id=CONFIG_ID, seed=SEED, gpu_uuid=GPU)
    sealed = graval.seal_symmetric_key(KEY, **bound)
    assert len(sealed) == 2 * s.SEALED_BYTES and sealed != graval.seal_symmetric_key(KEY, **bound)
    assert KEY.hex() not in sealed
    assert graval.open_symmetric_key(sealed, **bound) == KEY
    for change in ({"env_key": "f" * 32}, {"config_id": "another"}, {"seed": SEED + 1}, {"gpu_uuid": OTHER_GPU}):
        assert "sealed for another" in rejected("KEY_SEAL_INVALID", graval.open_symmetric_key, sealed,
                                                **(bound | change))
    rejected("KEY_SEAL_INVALID", graval.open_symmetric_key, sealed[:-2], **bound)
    rejected("KEY_SEAL_INVALID", graval.open_symmetric_key, "nothex", **bound)
    with pytest.raises(ValueError, match="32 hex"):
        graval.seal_symmetric_key(KEY, **(bound | {"env_key": "xyz"}))


# -- parameters and seeds ----------------------------------------------------------------------------------------

def test_params_size_n_to_memory_and_the_estimate_to_the_model():
    h100 = graval.params_for("H100", 80 * 2**30)
    assert h100.matrix_n == 59648 and h100.iterations == h100.matrix_n and h100.rounds == graval.DEFAULT_ROUNDS
    assert 12 * h100.matrix_n ** 2 <= 0.5 * 80 * 2**30
    a10 = graval.params_for("a10", 24 * 2**30)
    rtx4090 = graval.params_for("4090", 24 * 2**30)
    assert a10.matrix_n == rtx4090.matrix_n < h100.matrix_n and a10.estimate_seconds > rtx4090.estimate_seconds
    unknown = graval.params_for("mystery", 24 * 2**30)
    assert unknown.estimate_seconds >= a10.estimate_seconds * 0.99  # slowest listed rate: never too tight
    tiny = graval.params_for("h100", 80 * 2**30, matrix_n=3)
    assert (tiny.matrix_n, tiny.rounds) == (3, 9) and tiny.estimate_seconds == pytest.approx(s.SETUP_SECONDS)


@pytest.mark.parametrize("kwargs", [dict(matrix_n=0, rounds=1, estimate_seconds=1.0),
                                    dict(matrix_n=4, rounds=17, estimate_seconds=1.0),
                                    dict(matrix_n=4, rounds=1, estimate_seconds=0.0)])
def test_params_refuse_impossible_values(kwargs):
    with pytest.raises(ValueError):
        graval.GravalParams(**kwargs)


def test_new_seeds_are_fresh_positive_int64():
    seeds = {graval.new_seed() for _ in range(200)}
    assert len(seeds) == 200 and all(1 <= x < 2**63 for x in seeds)


def test_challenges_are_distinct_in_range_and_prefix_stable():
    root = hashlib.sha256(b"root").digest()
    first = s.challenges(SEED, GPU, 5, root, 10)
    assert first == s.challenges(SEED, GPU, 5, root, 25)[:10]
    assert sorted(s.challenges(SEED, GPU, 5, root, 25)) == list(range(25))
    assert first != s.challenges(SEED, OTHER_GPU, 5, root, 10)


# -- the written spec and its known-answer vector ----------------------------------------------------------------

def _chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """RFC 8439 §2.3, written out, so the test does not trust the library's nonce layout."""
    def rotl(v, c):
        return ((v << c) | (v >> (32 - c))) & 0xFFFFFFFF

    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *struct.unpack("<8I", key), counter,
             *struct.unpack("<3I", nonce)]
    x = state[:]
    for _ in range(10):
        for a, b, c, d in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                           (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
            x[a] = (x[a] + x[b]) & 0xFFFFFFFF; x[d] = rotl(x[d] ^ x[a], 16)  # noqa: E702
            x[c] = (x[c] + x[d]) & 0xFFFFFFFF; x[b] = rotl(x[b] ^ x[c], 12)  # noqa: E702
            x[a] = (x[a] + x[b]) & 0xFFFFFFFF; x[d] = rotl(x[d] ^ x[a], 8)  # noqa: E702
            x[c] = (x[c] + x[d]) & 0xFFFFFFFF; x[b] = rotl(x[b] ^ x[c], 7)  # noqa: E702
    return struct.pack("<16I", *((x[i] + state[i]) & 0xFFFFFFFF for i in range(16)))


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 Merkle Tree Hash, recursive as written there."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << (len(leaves) - 1).bit_length() - 1
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_the_block_function_written_out_matches_rfc_8439():
    block = _chacha20_block(bytes(range(32)), 1, bytes.fromhex("000000090000004a00000000"))
    assert block[:16].hex() == "10f1e7e4d13b5915500fdd1fa32071c4"


@pytest.mark.parametrize("n", [5, 6, 9])
def test_generation_product_and_tree_follow_the_written_spec(n):
    seed = 99
    u = GPU.encode()
    key = hashlib.sha256(b"gantry/graval/v1/matrices\x00" + struct.pack("<QI", seed, len(u)) + u).digest()

    def entry(which, row, col):
        block = _chacha20_block(key, col // 16, struct.pack("<IQ", which, row))  # counter, then the 12-byte nonce
        word = struct.unpack_from("<I", block, 4 * (col % 16))[0]
        return (word & 0x7FFFFFFF) % s.P

    a = [[entry(0, i, l) for l in range(n)] for i in range(n)]
    bt = [[entry(1, j, l) for l in range(n)] for j in range(n)]
    c = [[sum(a[i][l] * bt[j][l] for l in range(n)) % s.P for j in range(n)] for i in range(n)]
    ga, gbt = generate(seed, GPU, n)
    assert ga.tolist() == a and gbt.tolist() == bt and multiply(ga, gbt).tolist() == c
    flat = b"".join(struct.pack("<I", v) for row in c for v in row)
    flat += bytes(-len(flat) % 64)
    leaves = [flat[i:i + 64] for i in range(0, len(flat), 64)]
    tree = Commitment(np.array(c, dtype=np.uint32))
    assert tree.root == _mth(leaves)
    for i in range(len(leaves)):
        assert s.root_from_path(s.leaf_hash(leaves[i]), i, len(leaves), tree.path(i)) == tree.root
        assert len(tree.path(i)) == s.path_length(i, len(leaves))


def test_known_answer_vector_from_docs():
    seed, gpu, n = 1, "GPU-00000000-0000-0000-0000-000000000000", 6
    assert s.matrix_key(seed, gpu).hex() == "0c5647776cd9f4b9752d472497df6382af2efd9f26662e35d162f82cbf3b4e72"
    a, bt = generate(seed, gpu, n)
    assert a[0].tolist() == [1635936618, 920117452, 1356121452, 784151696, 79618989, 1590369148]
    assert bt[0].tolist() == [296408223, 1760936065, 1721026811, 1680209246, 1329683655, 1950111670]
    c = multiply(a, bt)
    assert c[0].tolist() == [1676197919, 1824817926, 753838123, 1428240610, 1258670251, 684197430]
    assert c[5].tolist() == [343899121, 1967875274, 1027327459, 585883143, 785818437, 77530595]
    root = Commitment(c).root
    assert root.hex() == "336854a1d6380e90685ccc7902051068abe90be5ca8192ec8a251f9acba250d1"
    assert s.challenges(seed, gpu, n, root, 4) == [9, 15, 25, 19]
    work = solve(seed, gpu, graval.GravalParams(n, 4, 1.0))
    assert hashlib.sha256(work.encode()).hexdigest() == \
        "26bf119cb4df656244059b577049d8664cb98efeb75ceb9a2701fb476b51fb41"


def test_the_known_answer_work_product_in_the_docs_is_the_one_we_produce():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "graval.md").read_text()
    lines = doc.split("\nwork_product\n", 1)[1].split("```", 1)[0].split()
    work = solve(1, "GPU-00000000-0000-0000-0000-000000000000", graval.GravalParams(6, 4, 1.0))
    assert "".join(lines) == work
